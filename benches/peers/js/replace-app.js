'use strict';
// An ordinary Node.js cluster app for scripts/node-replace-compare.sh: under plain `node`
// its primary forks WORKERS (2) workers and a replacement for every worker that exits;
// under `forkloop run` every process is a worker (forkloop's primary replaces them).
// Each worker serves hello world on PORT and prints `listening pid=P t=T` once it
// listens, T being process.hrtime in ms (the monotonic clock the driver reads too).
const cluster = require('cluster');
const { startHelloServer } = require('./hello-server');

if (cluster.isPrimary) {
  const workers = Number(process.env.WORKERS) || 2;
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', () => cluster.fork());
  process.on('SIGTERM', () => {
    cluster.removeAllListeners('exit');
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM');
    process.exit(0);
  });
} else {
  startHelloServer(Number(process.env.PORT) || 18091, '127.0.0.1', () => {
    const t = Number(process.hrtime.bigint()) / 1e6;
    console.log(`listening pid=${process.pid} t=${t.toFixed(3)}`);
  });
}
