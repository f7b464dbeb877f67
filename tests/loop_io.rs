//! The general I/O registration, signals, cross-thread posting, blocking work, futures and
//! run modes.

mod util_loop;

use std::cell::Cell;
use std::future::Future;
use std::io::{Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use forkloop::rt::{EventLoop, Interest, Phase, RunMode, with_loop, yield_now};
use util_loop::{Log, auto_loop, guard, unix_pair};

/// Reads what the registered Unix stream `id` has (up to 8 bytes); returns the count.
fn read_some(lp: &mut EventLoop, id: forkloop::rt::IoId) -> usize {
    let mut buf = [0u8; 8];
    lp.io_mut::<mio::net::UnixStream>(id)
        .unwrap()
        .read(&mut buf)
        .unwrap()
}

#[test]
fn registered_source_gets_events_and_drains_after_each_callback() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    let (a, mut b) = unix_pair();
    b.write_all(b"abc").unwrap();
    let l = log.clone();
    lp.register(a, Interest::READABLE, move |lp, id, ready| {
        assert!(ready.readable);
        let n = read_some(lp, id);
        l.push(format!("read {n}"));
        lp.next_tick(l.cb("tick"));
        lp.set_immediate(l.cb("immediate"));
        lp.close(id, l.cb("close"));
    })
    .unwrap();
    lp.run().unwrap();
    log.expect(&["read 3", "tick", "immediate", "close"]);
}

#[test]
fn inactive_or_unrefed_handles_do_not_keep_the_loop_alive() {
    let mut lp = EventLoop::new().unwrap();
    let (a, _b) = unix_pair();
    let id = lp.register(a, Interest::READABLE, |_, _, _| {}).unwrap();
    assert!(lp.alive());
    lp.set_interest(id, None).unwrap();
    assert!(!lp.alive());
    lp.set_interest(id, Some(Interest::READABLE)).unwrap();
    lp.unref(id);
    assert!(!lp.alive() && !lp.has_ref(id));
    assert_eq!(lp.run().unwrap(), 0);
    let back: mio::net::UnixStream = lp.take_source(id).unwrap();
    drop(back);
    assert!(!lp.is_open(id));
    assert!(lp.take_source::<mio::net::UnixStream>(id).is_none());
}

#[test]
fn signal_listener_runs_on_the_loop_and_is_unrefed_by_default() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    let l = log.clone();
    let sig = lp
        .on_signal(nix::libc::SIGUSR2, move |lp, signum| {
            l.push(format!("signal {signum}"));
            lp.next_tick(l.cb("tick"));
        })
        .unwrap();
    assert!(!lp.has_ref(sig));
    assert!(!lp.alive(), "signal listeners are unref'd, as in Node");
    lp.set_ref(sig, true);
    let l = log.clone();
    lp.set_timeout(1, move |_| {
        l.push("raise");
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR2).unwrap();
    });
    let l = log.clone();
    lp.add_watcher(Phase::Check, move |lp| {
        if l.get().iter().any(|s| s == "tick") {
            lp.off_signal(sig);
            lp.exit(0);
        }
    });
    lp.run().unwrap();
    log.expect(&["raise", &format!("signal {}", nix::libc::SIGUSR2), "tick"]);
}

#[test]
fn loop_handle_posts_closures_from_other_threads() {
    thread_local!(static HITS: Cell<usize> = const { Cell::new(0) });
    fn bump(lp: &mut EventLoop) {
        HITS.with(|h| h.set(h.get() + 1));
        if HITS.with(Cell::get) == 400 {
            lp.exit(0);
        }
    }
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let h = lp.handle();
    // Keep the loop alive while the threads post (a handle alone does not).
    lp.set_timeout(10_000, |_| {});
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let h = h.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    assert!(h.post(|lp| lp.queue_microtask(bump)));
                }
            })
        })
        .collect();
    lp.run().unwrap();
    assert_eq!(HITS.with(Cell::get), 400);
    for t in threads {
        t.join().unwrap();
    }
    drop(lp);
    assert!(!h.post(|_| {}), "posting to a dropped loop fails");
}

#[test]
fn spawn_blocking_keeps_the_loop_alive_and_reports_panics() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    let l = log.clone();
    lp.spawn_blocking(
        || {
            std::thread::sleep(Duration::from_millis(30));
            std::thread::current().name().unwrap_or("").to_string()
        },
        move |lp, r| {
            assert!(r.unwrap().starts_with("forkloop-pool-"));
            l.push("done");
            lp.next_tick(l.cb("tick"));
        },
    );
    let l = log.clone();
    lp.spawn_blocking(
        || -> u32 { std::panic::panic_any("boom") },
        move |_, r| {
            assert!(r.is_err());
            l.push("panicked");
        },
    );
    assert_eq!(lp.active_requests(), 2);
    lp.run().unwrap();
    let got = log.get();
    assert_eq!(got.len(), 3, "{got:?}");
    let done = got.iter().position(|s| s == "done").unwrap();
    assert_eq!(got[done + 1], "tick");
    assert!(got.contains(&"panicked".to_string()));
    assert_eq!(lp.active_requests(), 0);
}

/// A future completed from another thread (a oneshot without a runtime).
struct Remote(Arc<Mutex<(Option<u32>, Option<Waker>)>>);

impl Future for Remote {
    type Output = u32;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
        let mut g = self.0.lock().unwrap();
        match g.0.take() {
            Some(v) => Poll::Ready(v),
            None => {
                g.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[test]
fn futures_interleave_like_promises_and_wake_from_other_threads() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let l = log.clone();
    lp.spawn_local(async move {
        l.push("a1");
        yield_now().await;
        l.push("a2");
    });
    let l = log.clone();
    lp.spawn_local(async move {
        l.push("b1");
        yield_now().await;
        l.push("b2");
        let l2 = l.clone();
        assert!(with_loop(move |lp| {
            lp.next_tick(l2.cb("tick-from-future"));
        }));
    });
    lp.queue_microtask(log.cb("microtask"));
    assert!(!with_loop(|_| {}), "with_loop outside a future is refused");
    lp.run().unwrap();
    log.expect(&["a1", "b1", "microtask", "a2", "b2", "tick-from-future"]);

    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let shared = Arc::new(Mutex::new((None, None::<Waker>)));
    let s = shared.clone();
    let worker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        let mut g = s.lock().unwrap();
        g.0 = Some(42);
        if let Some(w) = g.1.take() {
            w.wake();
        }
    });
    let got = Rc::new(Cell::new(0));
    let g = got.clone();
    let keep = lp.set_timeout(4000, |_| {});
    lp.spawn_local(async move {
        g.set(Remote(shared).await);
        with_loop(move |lp| {
            lp.clear_timeout(keep);
        });
    });
    lp.run().unwrap();
    worker.join().unwrap();
    assert_eq!(got.get(), 42);
    assert_eq!(lp.pending_futures(), 0);
}

#[test]
fn run_modes_once_and_nowait_do_one_iteration() {
    let (mut lp, clock) = auto_loop();
    let log = Log::new();
    lp.set_immediate(log.cb("i1"));
    let l = log.clone();
    lp.set_timeout(5, move |lp| {
        l.push("timer");
        lp.set_immediate(l.cb("i2"));
    });
    assert!(lp.run_mode(RunMode::NoWait).unwrap());
    log.expect(&["i1"]);
    // Once: poll may block (the fake clock jumps to the timer), then timers at the end.
    assert!(lp.run_mode(RunMode::Once).unwrap());
    log.expect(&["i1", "timer"]);
    assert!(!lp.run_mode(RunMode::Once).unwrap());
    log.expect(&["i1", "timer", "i2"]);
    assert_eq!(clock.get(), 1005);
}

/// Checks that an idle loop sleeps in poll instead of spinning: over ~1 s of waiting for a
/// timer 10 s away, the loop thread may use at most 50 ms of CPU (typically well under 1).
#[test]
fn idle_loop_with_a_far_timer_uses_no_measurable_cpu() {
    use forkloop::sys::cputime::thread_cpu_time;
    let mut lp = EventLoop::new().unwrap();
    let far = lp.set_timeout(10_000, |_| {});
    let start = Instant::now();
    let cpu0 = thread_cpu_time().unwrap();
    lp.set_timeout(1000, move |lp| {
        lp.clear_timeout(far);
    });
    lp.run().unwrap();
    let cpu = thread_cpu_time().unwrap() - cpu0;
    let wall = start.elapsed();
    assert!(wall >= Duration::from_millis(990), "{wall:?}");
    assert!(
        cpu < Duration::from_millis(50),
        "idle loop used {cpu:?} of CPU in {wall:?}"
    );
}

#[test]
fn exit_in_the_poll_phase_skips_the_rest_of_the_iteration() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    let (a, mut b) = unix_pair();
    b.write_all(b"x").unwrap();
    let l = log.clone();
    lp.register(a, Interest::READABLE, move |lp, _, _| {
        l.push("io");
        lp.exit(9);
    })
    .unwrap();
    lp.queue_pending(|lp| {
        lp.queue_pending(|_| panic!("pending after exit"));
    });
    lp.add_watcher(Phase::Check, |_| panic!("check after exit"));
    lp.set_immediate(|_| panic!("immediate after exit"));
    let (c, _d) = unix_pair();
    let closing = lp.register(c, Interest::READABLE, |_, _, _| {}).unwrap();
    lp.close(closing, |_| panic!("close callback after exit"));
    assert_eq!(lp.run().unwrap(), 9);
    log.expect(&["io"]);
}

#[test]
fn a_loop_can_run_again_after_a_natural_exit() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let l = log.clone();
    lp.on_exit(move |_, _| l.push("exit"));
    lp.set_timeout(1, log.cb("first"));
    assert_eq!(lp.run().unwrap(), 0);
    lp.next_tick(log.cb("tick"));
    lp.set_immediate(log.cb("second"));
    assert_eq!(lp.run().unwrap(), 0);
    log.expect(&["first", "exit", "tick", "second", "exit"]);
}

#[test]
fn busy_poll_spins_then_blocks_and_keeps_timers_on_time() {
    // A loop spinning 2 ms per poll: a message written from another thread mid-wait is
    // read; a 60 ms timer fires at 60 ms (not a spin later); and the waits block after
    // their spin instead of burning the CPU until the timer. Loop time counts whole
    // milliseconds (libuv's `uv_now`), so a timer set at 5.9 ms of loop time is due at 65
    // and fires up to 1 ms short of 60 ms after `start`: the lower bound is 59 ms.
    use forkloop::sys::cputime::thread_cpu_time;
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    lp.set_busy_poll(Duration::from_millis(2));
    assert_eq!(lp.busy_poll(), Duration::from_millis(2));
    let (a, mut b) = unix_pair();
    let got = Rc::new(Cell::new(0usize));
    let g = got.clone();
    lp.register(a, Interest::READABLE, move |lp, id, _| {
        let n = read_some(lp, id);
        g.set(g.get() + n);
        lp.close(id, |_| {});
    })
    .unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        b.write_all(b"hi").unwrap();
        b
    });
    let fired = Rc::new(Cell::new(None));
    let f = fired.clone();
    let start = Instant::now();
    let cpu0 = thread_cpu_time().unwrap();
    lp.set_timeout(60, move |_| f.set(Some(start.elapsed())));
    lp.run().unwrap();
    let cpu = thread_cpu_time().unwrap() - cpu0;
    let _b = writer.join().unwrap();
    assert_eq!(got.get(), 2, "the message arrived");
    let at = fired.get().expect("the timer fired");
    assert!(
        at >= Duration::from_millis(59) && at < Duration::from_millis(200),
        "timer at {at:?}"
    );
    assert!(
        cpu < Duration::from_millis(40),
        "spun {cpu:?} of CPU over {at:?}: the waits must block after their 2 ms spin"
    );
}

#[test]
fn poll_spinning_returns_what_arrives_during_the_spin() {
    // Data already there: found by the first, non-blocking poll of the spin. Nothing there
    // and a 30 ms timeout: the call returns empty after ~30 ms.
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(8);
    let (mut a, mut b) = unix_pair();
    poll.registry()
        .register(&mut a, mio::Token(7), Interest::READABLE)
        .unwrap();
    let spin = Duration::from_millis(5);
    let start = Instant::now();
    forkloop::rt::poll_spinning(
        &mut poll,
        &mut events,
        Some(Duration::from_millis(30)),
        spin,
    )
    .unwrap();
    assert!(events.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(29),
        "{:?}",
        start.elapsed()
    );
    b.write_all(b"x").unwrap();
    forkloop::rt::poll_spinning(&mut poll, &mut events, Some(Duration::from_secs(5)), spin)
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.token()).collect::<Vec<_>>(),
        [mio::Token(7)]
    );
}
