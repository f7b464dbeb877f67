'use strict';
// Node cluster hello-world server (the peer of forkloop's examples/http_cluster.rs).
// Usage: PORT=18082 WORKERS=2 [NODE_CLUSTER_SCHED_POLICY=none|rr] [STATS=1] node benches/peers/js/http-cluster.js
// Prints 'ready ...' once every worker is listening, and 'worker pid=N' per worker
// so the calling script can clean up by pid.
// STATS=1: every worker counts the connections it accepted and the requests it answered,
// and prints 'stats pid=N connections=C requests=R' (totals since it started) on SIGUSR2
// and when it exits on SIGTERM (scripts/balance-compare.sh reads the per-worker shares
// from these lines). Off by default, so throughput runs measure the plain server.
const cluster = require('cluster');
const { startHelloServer } = require('./hello-server');

const port = Number(process.env.PORT) || 18082;
const workers = Number(process.env.WORKERS) || 2;
const stats = process.env.STATS === '1';

if (cluster.isPrimary) {
  const policy = cluster.schedulingPolicy === cluster.SCHED_RR ? 'rr' : 'none';
  let listening = 0;
  let stopping = false;
  cluster.on('fork', (w) => console.log(`worker pid=${w.process.pid}`));
  cluster.on('listening', () => {
    if (++listening === workers) {
      console.log(`ready cluster policy=${policy} workers=${workers} primary=${process.pid} port=${port}`);
    }
  });
  cluster.on('exit', (w, code, signal) => {
    if (!stopping) console.log(`worker ${w.process.pid} exited code=${code} signal=${signal}`);
  });
  process.on('SIGTERM', () => {
    stopping = true;
    for (const id in cluster.workers) cluster.workers[id].process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 200).unref();
    cluster.on('exit', () => {
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
    });
  });
  // The primary ignores SIGUSR2 (the script signals the workers themselves).
  process.on('SIGUSR2', () => {});
  for (let i = 0; i < workers; i++) cluster.fork();
} else {
  const server = startHelloServer(port, '127.0.0.1');
  let connections = 0;
  let requests = 0;
  const report = () => console.log(`stats pid=${process.pid} connections=${connections} requests=${requests}`);
  if (stats) {
    server.on('connection', () => { connections++; });
    server.on('request', () => { requests++; });
    process.on('SIGUSR2', report);
  }
  process.on('SIGTERM', () => {
    if (stats) report();
    process.exit(0);
  });
}
