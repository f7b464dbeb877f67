'use strict';
// The hello-world HTTP handler shared by the single-process and cluster peers.
// Fixed 200 response, body 'hello world\n', keep-alive as Node does by default.
const http = require('http');

const BODY = 'hello world\n';
const HEADERS = { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(BODY) };

function startHelloServer(port, host, onListening) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, HEADERS);
    res.end(BODY);
  });
  server.listen(port, host, onListening);
  return server;
}

module.exports = { startHelloServer };
