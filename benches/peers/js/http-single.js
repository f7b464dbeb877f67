'use strict';
// Node, one process: the hello-world server.
// Usage: PORT=18081 node benches/peers/js/http-single.js
const { startHelloServer } = require('./hello-server');

const port = Number(process.env.PORT) || 18081;
startHelloServer(port, '127.0.0.1', () => {
  console.log(`ready single pid=${process.pid} port=${port}`);
});
process.on('SIGTERM', () => process.exit(0));
