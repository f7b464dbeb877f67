'use strict';
// Node's side of the IPC comparison: process.send IPC between a parent and a child made by
// child_process.fork (the same channel cluster uses between primary and workers).
//
// Usage: node benches/peers/js/ipc-bench.js <mode> [count]
//   pingpong-small  parent sends {seq:n}, child echoes it, parent sends the next one
//   pingpong-64k    same with {seq:n, data:<65536-char string>}
//   oneway-small    parent streams {seq:n} to the child, 1000 messages per batch, the
//                   next batch queued from the send callback of the previous batch's
//                   last message (so the write queue stays bounded); the child replies
//                   'done' once it has counted them all.
// Env: SERIALIZATION=json|advanced (default json, Node's default).
//      PIN=same (parent and child on CPU 0) | split (parent CPU 0, child CPU 1), applied
//      with the taskset(1) tool to our own two pids; unset = scheduler's choice.
// A warm-up of 10% (min 100 messages) precedes the timed part.
// Prints one line of key=value results.
const { fork } = require('child_process');

const serialization = process.env.SERIALIZATION || 'json';

if (process.argv[2] === 'child') {
  const mode = process.argv[3];
  if (mode.startsWith('pingpong')) {
    process.on('message', (m) => process.send(m));
  } else {
    // oneway: expect <warm> messages, reply 'done', then <count>, reply 'done'.
    const phases = [Number(process.argv[4]), Number(process.argv[5])];
    let n = 0;
    process.on('message', () => {
      if (++n === phases[0]) {
        process.send('done');
        phases.shift();
        n = 0;
      }
    });
  }
  return;
}

const mode = process.argv[2] || 'pingpong-small';
const defaults = { 'pingpong-small': 100000, 'pingpong-64k': 10000, 'oneway-small': 500000 };
if (!(mode in defaults)) {
  console.error(`unknown mode ${mode}; one of ${Object.keys(defaults).join(', ')}`);
  process.exit(2);
}
const count = Number(process.argv[3]) || defaults[mode];
const warm = Math.max(100, Math.floor(count / 10));

function report(secs) {
  console.log(`mode=${mode} serialization=${serialization} count=${count} secs=${secs.toFixed(3)} ` +
    `rate_per_s=${(count / secs).toFixed(0)} mean_us=${(secs * 1e6 / count).toFixed(2)}`);
}

function pin(childPid) {
  const cpus = { same: ['0', '0'], split: ['0', '1'] }[process.env.PIN || ''];
  if (!cpus) return;
  const { execFileSync } = require('child_process');
  execFileSync('taskset', ['-pc', cpus[0], String(process.pid)], { stdio: 'ignore' });
  execFileSync('taskset', ['-pc', cpus[1], String(childPid)], { stdio: 'ignore' });
}

let child;
let t0;
if (mode.startsWith('pingpong')) {
  child = fork(__filename, ['child', mode], { serialization });
  pin(child.pid);
  const big = 'x'.repeat(65536);
  const makeMsg = mode === 'pingpong-64k' ? (i) => ({ seq: i, data: big }) : (i) => ({ seq: i });
  let i = 0;
  child.on('message', (m) => {
    if (m.seq !== i) throw new Error(`out of order: got ${m.seq} want ${i}`);
    i++;
    if (i === warm) t0 = process.hrtime.bigint();
    if (i === warm + count) {
      report(Number(process.hrtime.bigint() - t0) / 1e9);
      child.disconnect();
      return;
    }
    child.send(makeMsg(i));
  });
  child.send(makeMsg(0));
} else {
  const BATCH = 1000;
  const stream = (total) => {
    let sent = 0;
    const pump = () => {
      const end = Math.min(total, sent + BATCH);
      while (sent < end) {
        const cb = sent === end - 1 && end < total ? pump : undefined;
        child.send({ seq: sent }, cb);
        sent++;
      }
    };
    pump();
  };
  child = fork(__filename, ['child', mode, String(warm), String(count)], { serialization });
  pin(child.pid);
  let phase = 0;
  child.on('message', (m) => {
    if (m !== 'done') return;
    if (phase++ === 0) {
      t0 = process.hrtime.bigint();
      stream(count);
    } else {
      report(Number(process.hrtime.bigint() - t0) / 1e9);
      child.disconnect();
    }
  });
  stream(warm);
}
