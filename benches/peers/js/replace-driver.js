'use strict';
// Time from SIGKILL of a Node.js cluster worker to its replacement listening, for the same
// unmodified app under two primaries: Node's own (`node replace-app.js`, whose primary
// forks a replacement on every exit) and forkloop's (`forkloop run -- node replace-app.js`).
// Used by scripts/node-replace-compare.sh.
//
// Usage: node replace-driver.js ITERATIONS COMMAND ARGS...
//   (env PORT for the app; the command's output must carry the workers' lines)
//
// Both sides are measured the same way: the driver reads the monotonic clock and sends
// SIGKILL to the oldest worker; the replacement prints `listening pid=P t=T` with T read
// from the same clock (process.hrtime is CLOCK_MONOTONIC, system-wide) once its server
// listens; the figure is T minus the kill time, so the primaries' output forwarding does
// not count. Workers are killed after being up at least 1.1 s (a stable worker: both
// primaries replace it at once). Prints one `kill_to_listening_ms=X` line per iteration
// and `summary n=N median_ms=M min_ms=A max_ms=B`.
const { spawn } = require('child_process');
const readline = require('readline');

const iterations = Number(process.argv[2]) || 10;
const [cmd, ...args] = process.argv.slice(3);
if (!cmd) {
  console.error('usage: node replace-driver.js ITERATIONS COMMAND ARGS...');
  process.exit(2);
}
const now = () => Number(process.hrtime.bigint()) / 1e6;
const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
const workers = new Map(); // pid -> time it listened (ms)
let waiter = null;
const onLine = (line) => {
  const m = /listening pid=(\d+) t=([\d.]+)/.exec(line);
  if (!m) return;
  const pid = Number(m[1]);
  const t = Number(m[2]);
  workers.set(pid, t);
  if (waiter) waiter(pid, t);
};
readline.createInterface({ input: child.stdout }).on('line', onLine);
readline.createInterface({ input: child.stderr }).on('line', onLine);

const stop = (code) => {
  try { process.kill(-child.pid, 'SIGTERM'); } catch (e) { /* gone */ }
  setTimeout(() => {
    try { process.kill(-child.pid, 'SIGKILL'); } catch (e) { /* gone */ }
    process.exit(code);
  }, 500);
};
const deadline = setTimeout(() => { console.error('replace-driver: timed out'); stop(1); }, 120000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const next = (ms) => new Promise((resolve, reject) => {
  const t = setTimeout(() => { waiter = null; reject(new Error('no replacement within ' + ms + ' ms')); }, ms);
  waiter = (pid, at) => { clearTimeout(t); waiter = null; resolve([pid, at]); };
});

(async () => {
  const start = now();
  while (workers.size < 2) {
    if (now() - start > 20000) throw new Error('the app did not start 2 workers');
    await sleep(20);
  }
  const results = [];
  for (let i = 0; i < iterations; i++) {
    await sleep(1100);
    const [victim] = [...workers.entries()].sort((a, b) => a[1] - b[1])[0];
    workers.delete(victim);
    const replaced = next(10000);
    const t0 = now();
    process.kill(victim, 'SIGKILL');
    const [, at] = await replaced;
    const ms = at - t0;
    results.push(ms);
    console.log(`kill_to_listening_ms=${ms.toFixed(2)}`);
  }
  const v = [...results].sort((a, b) => a - b);
  const mid = v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
  console.log(`summary n=${v.length} median_ms=${mid.toFixed(2)} min_ms=${v[0].toFixed(2)} max_ms=${v[v.length - 1].toFixed(2)}`);
  clearTimeout(deadline);
  stop(0);
})().catch((e) => {
  console.error('replace-driver:', e.message);
  stop(1);
});
