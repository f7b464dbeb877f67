'use strict';
// Worker (re)start latency in a Node cluster (scripts/restart-compare.sh).
// Usage: node benches/peers/js/restart.js [iterations=20]   (env PORT, default 18090)
// Workers run the hello-world HTTP server (hello-server.js).
//
// Phase 1 'fork':    cluster.fork() -> 'online' and -> 'listening' for a fresh worker,
//                    <iterations> times, one at a time (each worker is then killed and
//                    its exit awaited before the next fork).
// Phase 2 'restart': two workers running; <iterations> times: t0 just before
//                    worker.process.kill('SIGKILL'); the primary forks the replacement
//                    in its 'exit' handler; we record t0 -> 'exit', t0 -> replacement
//                    'online', t0 -> replacement 'listening'.
// A 100 ms pause separates iterations. Prints one key=value line per iteration and
// 'summary ...' lines with the median/min/max (ms).
const cluster = require('cluster');

if (!cluster.isPrimary) {
  require('./hello-server').startHelloServer(Number(process.env.PORT) || 18090, '127.0.0.1');
  return;
}

const iterations = Number(process.argv[2]) || 20;
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const once = (emitter, ev) => new Promise((r) => emitter.once(ev, (...a) => r(a)));

function summary(name, values) {
  const v = [...values].sort((a, b) => a - b);
  const mid = v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
  console.log(`summary ${name} n=${v.length} median_ms=${mid.toFixed(2)} min_ms=${v[0].toFixed(2)} ` +
    `max_ms=${v[v.length - 1].toFixed(2)}`);
}

async function forkPhase() {
  const online = [], listening = [];
  for (let i = 0; i < iterations; i++) {
    const t0 = now();
    const w = cluster.fork();
    let tOnline;
    w.once('online', () => { tOnline = now(); });
    await once(w, 'listening');
    const tListen = now();
    online.push(tOnline - t0);
    listening.push(tListen - t0);
    console.log(`fork i=${i} online_ms=${(tOnline - t0).toFixed(2)} listening_ms=${(tListen - t0).toFixed(2)}`);
    const exited = once(w, 'exit');
    w.process.kill('SIGKILL');
    await exited;
    await sleep(100);
  }
  summary('fork_to_online', online);
  summary('fork_to_listening', listening);
}

async function restartPhase() {
  const toExit = [], toOnline = [], toListening = [];
  let pending = null; // {t0, resolve}
  cluster.on('exit', (dead) => {
    if (!pending) return;
    const p = pending;
    p.tExit = now();
    const w = cluster.fork();
    w.once('online', () => { p.tOnline = now(); });
    w.once('listening', () => { p.tListening = now(); p.resolve(); });
  });
  const start = [cluster.fork(), cluster.fork()];
  await Promise.all(start.map((w) => once(w, 'listening')));
  await sleep(200);
  for (let i = 0; i < iterations; i++) {
    const ids = Object.keys(cluster.workers);
    const victim = cluster.workers[ids[0]]; // the oldest live worker
    const done = new Promise((resolve) => { pending = { resolve }; });
    pending.t0 = now();
    victim.process.kill('SIGKILL');
    await done;
    const p = pending;
    pending = null;
    toExit.push(p.tExit - p.t0);
    toOnline.push(p.tOnline - p.t0);
    toListening.push(p.tListening - p.t0);
    console.log(`restart i=${i} kill_to_exit_ms=${(p.tExit - p.t0).toFixed(2)} ` +
      `kill_to_online_ms=${(p.tOnline - p.t0).toFixed(2)} kill_to_listening_ms=${(p.tListening - p.t0).toFixed(2)}`);
    await sleep(100);
  }
  summary('kill_to_exit', toExit);
  summary('kill_to_online', toOnline);
  summary('kill_to_listening', toListening);
  for (const id in cluster.workers) cluster.workers[id].process.kill('SIGKILL');
}

(async () => {
  await forkPhase();
  await restartPhase();
  setTimeout(() => process.exit(0), 200);
})();
