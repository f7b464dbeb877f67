//! The classic nextTick / setImmediate / setTimeout / promise examples used to teach Node's
//! loop, each with the output Node prints (CommonJS entry point). Where Node's output is a
//! race (main script or immediate: timeout 0 vs immediate), a fake clock pins each side.

mod util_loop;

use std::io::Write;

use forkloop::rt::{EventLoop, Interest};
use util_loop::{Log, auto_loop, unix_pair};

/// Inside an I/O callback: setTimeout(0), setImmediate(A → nextTick(C)), nextTick(1),
/// nextTick(2) prints `1 2 A C timeout`.
#[test]
fn io_callback_ticks_then_immediate_with_its_tick_then_timeout() {
    let mut lp = EventLoop::new().unwrap();
    let log = Log::new();
    let (a, mut b) = unix_pair();
    b.write_all(b"x").unwrap();
    let l = log.clone();
    lp.register(a, Interest::READABLE, move |lp, id, _| {
        lp.set_timeout(0, l.cb("timeout"));
        let la = l.clone();
        lp.set_immediate(move |lp| {
            la.push("A");
            lp.next_tick(la.cb("C"));
        });
        lp.next_tick(l.cb("1"));
        lp.next_tick(l.cb("2"));
        lp.close(id, |_| {});
    })
    .unwrap();
    lp.run().unwrap();
    log.expect(&["1", "2", "A", "C", "timeout"]);
}

/// `console.log('start'); setTimeout(…, 0); setImmediate(…); Promise.resolve().then(…);
/// process.nextTick(…); console.log('end')` prints start, end, nextTick, promise, then the
/// timeout/immediate race.
#[test]
fn main_script_sync_then_next_tick_then_promise_then_macrotasks() {
    for (advance, last) in [(0, ["immediate", "timeout"]), (1, ["timeout", "immediate"])] {
        let (mut lp, clock) = auto_loop();
        let log = Log::new();
        log.push("start");
        lp.set_timeout(0, log.cb("timeout"));
        lp.set_immediate(log.cb("immediate"));
        let l = log.clone();
        lp.spawn_local(async move { l.push("promise") });
        lp.next_tick(log.cb("nextTick"));
        log.push("end");
        clock.advance(advance);
        lp.run().unwrap();
        let mut want = vec!["start", "end", "nextTick", "promise"];
        want.extend(last);
        log.expect(&want);
    }
}

/// Promise callbacks that queue ticks, and ticks that queue promise callbacks:
/// `t1 p1 p2 p-in-t1 t-in-p1`.
#[test]
fn ticks_and_promises_nested() {
    let mut lp = EventLoop::new().unwrap();
    let log = Log::new();
    let l = log.clone();
    lp.queue_microtask(move |lp| {
        l.push("p1");
        lp.next_tick(l.cb("t-in-p1"));
    });
    lp.queue_microtask(log.cb("p2"));
    let l = log.clone();
    lp.next_tick(move |lp| {
        l.push("t1");
        lp.queue_microtask(l.cb("p-in-t1"));
    });
    lp.run().unwrap();
    log.expect(&["t1", "p1", "p2", "p-in-t1", "t-in-p1"]);
}

/// From a timer callback: nextTick, then the immediate, then the new timeout.
#[test]
fn timer_callback_tick_immediate_timeout() {
    let mut lp = EventLoop::new().unwrap();
    let log = Log::new();
    let l = log.clone();
    lp.set_timeout(0, move |lp| {
        l.push("timeout1");
        lp.set_timeout(0, l.cb("timeout2"));
        lp.set_immediate(l.cb("immediate"));
        lp.next_tick(l.cb("nextTick"));
    });
    lp.run().unwrap();
    log.expect(&["timeout1", "nextTick", "immediate", "timeout2"]);
}

/// Node ≥ 11: ticks run between two timers (and two immediates), not after the batch.
#[test]
fn ticks_run_between_timers_and_between_immediates() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    for n in ["1", "2"] {
        let l = log.clone();
        lp.set_timeout(0, move |lp| {
            l.push(format!("timeout{n}"));
            lp.next_tick(l.cb(&format!("tick{n}")));
            lp.queue_microtask(l.cb(&format!("promise{n}")));
        });
        let l = log.clone();
        lp.set_immediate(move |lp| {
            l.push(format!("immediate{n}"));
            lp.next_tick(l.cb(&format!("itick{n}")));
        });
    }
    lp.run().unwrap();
    log.expect(&[
        "immediate1",
        "itick1",
        "immediate2",
        "itick2",
        "timeout1",
        "tick1",
        "promise1",
        "timeout2",
        "tick2",
        "promise2",
    ]);
}

/// setInterval cleared after three runs; a setTimeout of the same duration created at the
/// same time runs right after the interval's first run.
#[test]
fn interval_three_times_then_cleared() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let l = log.clone();
    let mut n = 0;
    let id = std::rc::Rc::new(std::cell::Cell::new(None));
    let id2 = id.clone();
    id.set(Some(lp.set_interval(10, move |lp| {
        n += 1;
        l.push(format!("interval{n}"));
        if n == 3 {
            lp.clear_interval(id2.get().unwrap());
        }
    })));
    lp.set_timeout(10, log.cb("timeout"));
    lp.run().unwrap();
    log.expect(&["interval1", "timeout", "interval2", "interval3"]);
}

/// From inside an immediate: a new immediate runs next iteration; setTimeout(0) races it.
#[test]
fn immediate_inside_immediate_runs_next_iteration() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let l = log.clone();
    lp.set_immediate(move |lp| {
        l.push("outer");
        lp.set_immediate(l.cb("inner"));
        lp.set_timeout(0, l.cb("timeout"));
        lp.next_tick(l.cb("tick"));
    });
    lp.set_immediate(log.cb("sibling"));
    lp.run().unwrap();
    // With no time passing, the inner immediate wins the race.
    log.expect(&["outer", "tick", "sibling", "inner", "timeout"]);
}
