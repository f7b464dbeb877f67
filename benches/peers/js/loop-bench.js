'use strict';
// Node event-loop microbenchmarks (scripts/loop-compare.sh). One test per process run.
// Usage: node benches/peers/js/loop-bench.js <test> [n]
// Each test prints one line of key=value results; the workloads are written plainly so
// they can be re-expressed one-to-one in another runtime:
//   immediate-chain   setImmediate callback schedules the next one; n=1e6 callbacks
//   nexttick-chain    process.nextTick callback schedules the next one; n=1e6
//   nexttick-batch    n=1e6 process.nextTick callbacks queued in one synchronous loop
//   promise-chain     Promise.resolve().then(step), each step queues the next; n=1e6
//   promise-batch     n=1e6 Promise.resolve().then(cb) queued in one synchronous loop
//   microtask-chain   queueMicrotask(step), each step queues the next; n=1e6
//   timeout0-chain    setTimeout(step, 0) (Node clamps 0 to 1 ms), each step queues the
//                     next; n=1e5
//   timers-same       n=1e5 setTimeout(cb, 1) created in one synchronous loop (all share
//                     one duration list); reports create time and fire time
//   timers-spread     n=1e5 setTimeout(cb, 1 + i % 100) (100 duration lists); reports
//                     create time and how long after the last due time the last one fired
// Timing uses process.hrtime.bigint(); a short warm-up run of the same test (n/10)
// precedes the timed run in the same process, except for the timer tests.

const test = process.argv[2];
const defaults = {
  'immediate-chain': 1e6, 'nexttick-chain': 1e6, 'nexttick-batch': 1e6,
  'promise-chain': 1e6, 'promise-batch': 1e6, 'microtask-chain': 1e6,
  'timeout0-chain': 1e5, 'timers-same': 1e5, 'timers-spread': 1e5,
};
if (!(test in defaults)) {
  console.error(`unknown test ${test}; one of: ${Object.keys(defaults).join(' ')}`);
  process.exit(2);
}
const N = Number(process.argv[3]) || defaults[test];
const now = () => process.hrtime.bigint();
const secsSince = (t) => Number(now() - t) / 1e9;

let cpu0 = process.cpuUsage(); // reset right before each timed run (see chain/batch)
const cpuMs = () => { const c = process.cpuUsage(cpu0); return (c.user + c.system) / 1e3; };

function rate(n, secs) {
  console.log(`test=${test} n=${n} secs=${secs.toFixed(4)} per_s=${(n / secs).toFixed(0)} ` +
    `ns_each=${(secs * 1e9 / n).toFixed(1)} cpu_ms=${cpuMs().toFixed(1)}`);
}

// Chain tests: `schedule(fn)` queues fn once; fn re-queues itself until n calls ran.
function chain(schedule, n, done) {
  let i = 0;
  cpu0 = process.cpuUsage();
  const t0 = now();
  function step() {
    if (++i < n) schedule(step);
    else done(secsSince(t0));
  }
  schedule(step);
}

function batch(schedule, n, done) {
  let i = 0;
  cpu0 = process.cpuUsage();
  const t0 = now();
  const cb = () => { if (++i === n) done(secsSince(t0)); };
  for (let k = 0; k < n; k++) schedule(cb);
}

const schedulers = {
  immediate: (f) => setImmediate(f),
  nexttick: (f) => process.nextTick(f),
  promise: (f) => { Promise.resolve().then(f); },
  microtask: (f) => queueMicrotask(f),
  timeout0: (f) => setTimeout(f, 0),
};

function warmThen(kind, fn, n, cont) {
  fn(schedulers[kind], Math.max(1, Math.floor(n / 10)), () => setImmediate(cont));
}

switch (test) {
  case 'immediate-chain':
  case 'nexttick-chain':
  case 'promise-chain':
  case 'microtask-chain':
  case 'timeout0-chain': {
    const kind = test.split('-')[0];
    const run = () => chain(schedulers[kind], N, (s) => rate(N, s));
    if (kind === 'timeout0') run(); // no warm-up: it would only add ~n/10 ms of sleeping
    else warmThen(kind, chain, N, run);
    break;
  }
  case 'nexttick-batch':
  case 'promise-batch': {
    const kind = test.split('-')[0];
    warmThen(kind, batch, N, () => batch(schedulers[kind], N, (s) => rate(N, s)));
    break;
  }
  case 'timers-same':
  case 'timers-spread': {
    const spread = test === 'timers-spread';
    let fired = 0;
    let tCreated;
    let cpuCreated;
    let maxDelay = 0;
    cpu0 = process.cpuUsage();
    const t0 = now();
    const cb = () => {
      if (++fired === N) {
        const total = secsSince(t0);
        const fire = Number(now() - tCreated) / 1e9;
        const create = Number(tCreated - t0) / 1e9;
        const fireCpu = process.cpuUsage(cpuCreated);
        // fire_cpu_ms: CPU time used between the end of creation and the last callback.
        // late_ms (timers-spread): how long after the last-created timer's due time
        // (end of creation + its 100 ms delay) the last callback ran.
        console.log(`test=${test} n=${N} create_ms=${(create * 1e3).toFixed(2)} ` +
          `create_ns_each=${(create * 1e9 / N).toFixed(0)} fire_ms=${(fire * 1e3).toFixed(2)} ` +
          `fire_cpu_ms=${((fireCpu.user + fireCpu.system) / 1e3).toFixed(2)} ` +
          `total_ms=${(total * 1e3).toFixed(2)} total_ns_each=${(total * 1e9 / N).toFixed(0)}` +
          (spread ? ` late_ms=${(fire * 1e3 - maxDelay).toFixed(2)}` : ''));
      }
    };
    for (let i = 0; i < N; i++) {
      const d = spread ? 1 + (i % 100) : 1;
      if (d > maxDelay) maxDelay = d;
      setTimeout(cb, d);
    }
    tCreated = now();
    cpuCreated = process.cpuUsage();
    break;
  }
}
