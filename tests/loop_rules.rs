//! One test per ordering rule of the `forkloop::rt` module docs ("Ordering rules"), named
//! after the rule.

mod util_loop;

use std::io::Write;

use forkloop::rt::{EventLoop, Interest, Phase, RunMode, TIMEOUT_MAX};
use util_loop::{Log, auto_loop, fake_loop, unix_pair};

#[test]
fn rule_01_main_script_drains_ticks_then_microtasks_before_the_loop() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    lp.set_immediate(log.cb("immediate"));
    lp.set_timeout(0, log.cb("timeout"));
    lp.queue_microtask(log.cb("microtask"));
    lp.next_tick(log.cb("tick"));
    log.push("main");
    lp.run().unwrap();
    log.expect(&["main", "tick", "microtask", "immediate", "timeout"]);
}

#[test]
fn rule_02_ticks_queued_during_the_tick_drain_run_before_microtasks() {
    let (mut lp, _clock) = fake_loop();
    let log = Log::new();
    lp.queue_microtask(log.cb("m1"));
    let l = log.clone();
    lp.next_tick(move |lp| {
        l.push("t1");
        let l2 = l.clone();
        lp.next_tick(move |lp| {
            l2.push("t2");
            lp.next_tick(l2.cb("t3"));
        });
    });
    lp.run().unwrap();
    log.expect(&["t1", "t2", "t3", "m1"]);
}

#[test]
fn rule_03_microtasks_queued_during_the_drain_run_then_ticks_then_microtasks_again() {
    let (mut lp, _clock) = fake_loop();
    let log = Log::new();
    let l = log.clone();
    lp.queue_microtask(move |lp| {
        l.push("m1");
        let l2 = l.clone();
        lp.next_tick(move |lp| {
            l2.push("t1");
            lp.queue_microtask(l2.cb("m3"));
        });
        lp.queue_microtask(l.cb("m2"));
    });
    lp.run().unwrap();
    log.expect(&["m1", "m2", "t1", "m3"]);
}

#[test]
fn rule_04_drain_after_every_single_macrotask_callback() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    for name in ["timer1", "timer2"] {
        let l = log.clone();
        lp.set_timeout(5, move |lp| {
            l.push(name);
            lp.next_tick(l.cb(&format!("{name}-tick")));
            lp.queue_microtask(l.cb(&format!("{name}-micro")));
        });
    }
    for name in ["imm1", "imm2"] {
        let l = log.clone();
        lp.set_immediate(move |lp| {
            l.push(name);
            lp.next_tick(l.cb(&format!("{name}-tick")));
        });
    }
    let mut ids = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..2 {
        let (a, b) = unix_pair();
        ids.push(lp.register(a, Interest::READABLE, |_, _, _| {}).unwrap());
        keep.push(b);
    }
    let l = log.clone();
    lp.set_timeout(10, move |lp| {
        for (i, id) in ids.iter().enumerate() {
            let l2 = l.clone();
            lp.close(*id, move |lp| {
                l2.push(format!("close{i}"));
                lp.next_tick(l2.cb(&format!("close{i}-tick")));
            });
        }
    });
    let l = log.clone();
    let mut once = true;
    lp.on_before_exit(move |lp, _| {
        l.push("before-exit");
        if std::mem::take(&mut once) {
            lp.next_tick(l.cb("before-exit-tick"));
        }
    });
    lp.run().unwrap();
    log.expect(&[
        "imm1",
        "imm1-tick",
        "imm2",
        "imm2-tick",
        "timer1",
        "timer1-tick",
        "timer1-micro",
        "timer2",
        "timer2-tick",
        "timer2-micro",
        "close1",
        "close1-tick",
        "close0",
        "close0-tick",
        "before-exit",
        "before-exit-tick",
    ]);
    drop(keep);
}

#[test]
fn rule_05_iteration_order_timers_on_entry_then_pending_idle_prepare_poll_check_close_timers() {
    let (mut lp, clock) = fake_loop();
    let log = Log::new();
    let (a, mut b) = unix_pair();
    let handle = lp
        .register(a, Interest::READABLE, {
            let l = log.clone();
            move |_, _, _| l.push("poll")
        })
        .unwrap();
    b.write_all(b"x").unwrap();
    lp.set_timeout(1, log.cb("entry-timer"));
    lp.queue_pending(log.cb("pending"));
    let watchers: Vec<_> = [
        (Phase::Idle, "idle"),
        (Phase::Prepare, "prepare"),
        (Phase::Check, "check"),
    ]
    .into_iter()
    .map(|(p, name)| {
        let l = log.clone();
        lp.add_watcher(p, move |_| l.push(name))
    })
    .collect();
    let l = log.clone();
    let c = clock.clone();
    lp.set_immediate(move |lp| {
        l.push("immediate");
        lp.close(handle, l.cb("close"));
        let l2 = l.clone();
        lp.set_timeout(1, move |lp| {
            l2.push("timer");
            for w in &watchers {
                lp.remove_watcher(*w);
            }
        });
        c.advance(1);
    });
    clock.advance(1);
    lp.run().unwrap();
    log.expect(&[
        "entry-timer",
        "pending",
        "idle",
        "prepare",
        "poll",
        "check",
        "immediate",
        "close",
        "timer",
    ]);
}

#[test]
fn rule_06_delays_outside_1_to_2pow31_minus_1_become_1_and_lists_use_whole_ms() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let t0 = lp.now();
    let delays: [(f64, &str); 7] = [
        (2.0, "two"),
        (1.0, "one"),
        (0.0, "zero"),
        (-5.0, "negative"),
        (f64::NAN, "nan"),
        (TIMEOUT_MAX as f64 + 1.0, "overflow"),
        (1.9, "one-point-nine"),
    ];
    for (d, name) in delays {
        let l = log.clone();
        lp.set_timeout(d, move |lp| l.push(format!("{name}@{}", lp.now() - t0)));
    }
    let max = lp.set_timeout(TIMEOUT_MAX, |_| {});
    lp.unref(max);
    lp.run().unwrap();
    log.expect(&[
        "one@1",
        "zero@1",
        "negative@1",
        "nan@1",
        "overflow@1",
        "one-point-nine@1",
        "two@2",
    ]);
}

#[test]
fn rule_07_same_duration_timers_run_in_creation_order() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    lp.set_timeout(10, log.cb("main-1"));
    let l = log.clone();
    lp.set_immediate(move |lp| {
        lp.set_timeout(10, l.cb("immediate"));
    });
    let l = log.clone();
    lp.next_tick(move |lp| {
        lp.set_timeout(10, l.cb("tick"));
    });
    let l = log.clone();
    lp.queue_pending(move |lp| {
        lp.set_timeout(10, l.cb("pending"));
    });
    lp.set_timeout(10, log.cb("main-2"));
    lp.run().unwrap();
    log.expect(&["main-1", "main-2", "tick", "pending", "immediate"]);
}

#[test]
fn rule_08_a_due_list_runs_to_exhaustion_before_the_next_list() {
    let (mut lp, clock) = fake_loop();
    let log = Log::new();
    lp.set_timeout(5, log.cb("a5")); // due +5
    clock.advance(1);
    lp.set_timeout(3, log.cb("b3")); // due +4
    clock.advance(1);
    lp.set_timeout(5, log.cb("c5")); // due +7
    clock.advance(1);
    lp.set_timeout(3, log.cb("d3")); // due +6
    clock.advance(20);
    lp.run().unwrap();
    // Global deadline order would be b3 a5 d3 c5.
    log.expect(&["b3", "d3", "a5", "c5"]);
}

#[test]
fn rule_09_one_now_per_timers_phase_timers_due_meanwhile_wait() {
    let (mut lp, clock) = auto_loop();
    let log = Log::new();
    let l = log.clone();
    let c = clock.clone();
    lp.set_timeout(1, move |lp| {
        l.push("a");
        c.advance(5); // a long callback: b (3 ms) becomes due while the phase runs
        lp.set_timeout(1, l.cb("created-in-phase"));
        lp.set_immediate(l.cb("immediate"));
    });
    lp.set_timeout(3, log.cb("b"));
    lp.run().unwrap();
    log.expect(&["a", "immediate", "b", "created-in-phase"]);
}

#[test]
fn rule_10_check_runs_only_the_snapshot_queued_before_it() {
    let (mut lp, _clock) = fake_loop();
    let log = Log::new();
    let l = log.clone();
    let w = lp.add_watcher(Phase::Prepare, move |_| l.push("iteration"));
    let l = log.clone();
    lp.set_immediate(move |lp| {
        l.push("i1");
        lp.set_immediate(l.cb("i3"));
        let l2 = l.clone();
        lp.next_tick(move |lp| {
            let l3 = l2.clone();
            lp.set_immediate(move |lp| {
                l3.push("i4");
                lp.remove_watcher(w);
            });
        });
    });
    lp.set_immediate(log.cb("i2"));
    lp.run().unwrap();
    log.expect(&["iteration", "i1", "i2", "iteration", "i3", "i4"]);
}

#[test]
fn rule_11_set_immediate_before_timeout_0_from_io_or_timer_callbacks() {
    // From a timer callback (real clock: deterministic whatever the timing).
    let mut lp = EventLoop::new().unwrap();
    let log = Log::new();
    let l = log.clone();
    lp.set_timeout(0, move |lp| {
        lp.set_timeout(0, l.cb("timeout"));
        lp.set_immediate(l.cb("immediate"));
    });
    lp.run().unwrap();
    log.expect(&["immediate", "timeout"]);

    // From an I/O callback.
    let mut lp = EventLoop::new().unwrap();
    let log = Log::new();
    let (a, mut b) = unix_pair();
    b.write_all(b"x").unwrap();
    let l = log.clone();
    lp.register(a, Interest::READABLE, move |lp, id, _| {
        lp.set_timeout(0, l.cb("timeout"));
        lp.set_immediate(l.cb("immediate"));
        lp.close(id, |_| {});
    })
    .unwrap();
    lp.run().unwrap();
    log.expect(&["immediate", "timeout"]);

    // From the main script it is a race on whether 1 ms passes; a fake clock decides it.
    for (advance, want) in [(0, ["immediate", "timeout"]), (1, ["timeout", "immediate"])] {
        let (mut lp, clock) = auto_loop();
        let log = Log::new();
        lp.set_timeout(0, log.cb("timeout"));
        lp.set_immediate(log.cb("immediate"));
        clock.advance(advance);
        lp.run().unwrap();
        log.expect(&want);
    }
}

#[test]
fn rule_12_interval_rescheduled_from_callback_start_runs_once_never_catches_up() {
    let (mut lp, clock) = auto_loop();
    let log = Log::new();
    let t0 = lp.now();
    let l = log.clone();
    let mut calls = 0;
    let c = clock.clone();
    let id = std::rc::Rc::new(std::cell::Cell::new(None));
    let id2 = id.clone();
    let interval = lp.set_interval(10, move |lp| {
        calls += 1;
        l.push(format!("tick@{}", lp.now() - t0));
        if calls == 1 {
            c.advance(25); // two periods missed: no catch-up
            lp.set_immediate(|_| {}); // poll must not sleep on the stale timeout
        }
        if calls == 3 {
            lp.clear_interval(id2.get().unwrap());
        }
    });
    id.set(Some(interval));
    lp.run().unwrap();
    log.expect(&["tick@10", "tick@35", "tick@45"]);
    assert!(!lp.timer_active(interval));
}

#[test]
fn rule_13_clear_takes_effect_at_once_even_mid_batch() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let l = log.clone();
    let victim = std::rc::Rc::new(std::cell::Cell::new(None));
    let v = victim.clone();
    lp.set_timeout(5, move |lp| {
        l.push("t1");
        lp.clear_timeout(v.get().unwrap());
    });
    victim.set(Some(lp.set_timeout(5, log.cb("t2-cleared"))));
    lp.set_timeout(5, log.cb("t3"));

    let imm_victim = std::rc::Rc::new(std::cell::Cell::new(None));
    let v = imm_victim.clone();
    let l = log.clone();
    lp.set_immediate(move |lp| {
        l.push("i1");
        let v = v.clone();
        lp.next_tick(move |lp| {
            lp.clear_immediate(v.get().unwrap());
        });
    });
    imm_victim.set(Some(lp.set_immediate(log.cb("i2-cleared"))));
    lp.set_immediate(log.cb("i3"));
    lp.run().unwrap();
    log.expect(&["i1", "i3", "t1", "t3"]);
}

#[test]
fn rule_14_overdue_timers_all_run_in_the_next_timers_phase_before_check() {
    let (mut lp, clock) = auto_loop();
    let log = Log::new();
    lp.set_timeout(30, log.cb("t30"));
    lp.set_timeout(10, log.cb("t10a"));
    lp.set_timeout(20, log.cb("t20"));
    lp.set_timeout(10, log.cb("t10b"));
    let l = log.clone();
    let c = clock.clone();
    lp.set_immediate(move |lp| {
        l.push("long-immediate");
        c.advance(50);
        lp.set_immediate(l.cb("next-immediate"));
    });
    lp.run().unwrap();
    log.expect(&[
        "long-immediate",
        "t10a",
        "t10b",
        "t20",
        "t30",
        "next-immediate",
    ]);
}

#[test]
fn rule_15_alive_while_refed_work_exists_unrefed_work_runs_only_if_iterating() {
    // Unref'd alone: the loop ends without running them.
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let t = lp.set_timeout(5, log.cb("unref-timer"));
    lp.unref(t);
    let i = lp.set_immediate(log.cb("unref-immediate"));
    lp.unref(i);
    assert!(!lp.alive());
    lp.run().unwrap();
    log.expect(&[]);

    // With a ref'd timer iterating anyway, the unref'd work runs.
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let t = lp.set_timeout(5, log.cb("unref-timer"));
    lp.unref(t);
    assert!(!lp.has_ref(t));
    let i = lp.set_immediate(log.cb("unref-immediate"));
    lp.unref(i);
    lp.set_timeout(10, log.cb("ref-timer"));
    lp.run().unwrap();
    log.expect(&["unref-immediate", "unref-timer", "ref-timer"]);

    // Pending callbacks, blocking jobs and closing handles keep it alive.
    let (mut lp, _clock) = fake_loop();
    let log = Log::new();
    lp.queue_pending(log.cb("pending"));
    assert!(lp.alive());
    let l = log.clone();
    lp.spawn_blocking(
        || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            42
        },
        move |_, r| l.push(format!("job={}", r.unwrap())),
    );
    let (a, _b) = unix_pair();
    let id = lp.register(a, Interest::READABLE, |_, _, _| {}).unwrap();
    lp.unref(id);
    lp.close(id, log.cb("closed"));
    lp.run().unwrap();
    log.expect(&["pending", "closed", "job=42"]);
}

#[test]
fn rule_16_poll_does_not_block_with_a_refed_immediate_unrefed_one_runs_after_the_poll() {
    let (mut lp, _clock) = fake_loop();
    let t = lp.set_timeout(1000, |_| {});
    assert_eq!(lp.poll_timeout(), Some(1000));
    let i = lp.set_immediate(|_| {});
    assert_eq!(lp.poll_timeout(), Some(0));
    lp.unref(i);
    assert_eq!(lp.poll_timeout(), Some(1000));
    lp.clear_timeout(t);
    lp.clear_immediate(i);

    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let t0 = lp.now();
    let l = log.clone();
    let i = lp.set_immediate(move |lp| l.push(format!("immediate@{}", lp.now() - t0)));
    lp.unref(i);
    lp.set_timeout(50, log.cb("timer"));
    lp.run().unwrap();
    log.expect(&["immediate@50", "timer"]);
}

#[test]
fn rule_17_close_callbacks_after_check_in_reverse_order_of_closing() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let mut keep = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (a, b) = unix_pair();
        ids.push(lp.register(a, Interest::READABLE, |_, _, _| {}).unwrap());
        keep.push(b);
    }
    let l = log.clone();
    lp.set_immediate(move |lp| {
        for (i, id) in ids.iter().enumerate() {
            lp.close(*id, l.cb(&format!("close{i}")));
        }
        lp.set_timeout(0, l.cb("timer"));
        lp.set_immediate(l.cb("next-immediate"));
    });
    lp.set_immediate(log.cb("same-batch-immediate"));
    lp.run().unwrap();
    log.expect(&[
        "same-batch-immediate",
        "close2",
        "close1",
        "close0",
        "next-immediate",
        "timer",
    ]);
    drop(keep);
}

#[test]
fn rule_18_before_exit_may_schedule_more_work_and_fires_again() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let l = log.clone();
    let mut n = 0;
    lp.set_exit_code(7);
    lp.on_before_exit(move |lp, code| {
        n += 1;
        l.push(format!("before-exit{n}({code})"));
        if n == 1 {
            lp.set_timeout(5, l.cb("timer"));
            lp.queue_microtask(l.cb("micro"));
        }
    });
    lp.on_exit({
        let l = log.clone();
        move |_, code| l.push(format!("exit({code})"))
    });
    assert_eq!(lp.run().unwrap(), 7);
    log.expect(&[
        "before-exit1(7)",
        "micro",
        "timer",
        "before-exit2(7)",
        "exit(7)",
    ]);
}

#[test]
fn rule_19_exit_fires_once_then_ticks_are_noops_microtasks_run_timers_never() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let l = log.clone();
    lp.on_exit(move |lp, code| {
        l.push(format!("exit({code})"));
        lp.next_tick(l.cb("tick"));
        lp.queue_microtask(l.cb("micro"));
        lp.set_timeout(0, l.cb("timer"));
        lp.set_immediate(l.cb("immediate"));
        lp.set_exit_code(3);
    });
    lp.set_timeout(1, log.cb("work"));
    assert_eq!(lp.run().unwrap(), 3);
    log.expect(&["work", "exit(0)", "micro"]);
}

#[test]
fn rule_20_exit_runs_listeners_synchronously_and_nothing_queued_runs() {
    let (mut lp, _clock) = auto_loop();
    let log = Log::new();
    let l = log.clone();
    lp.on_exit(move |_, code| l.push(format!("exit({code})")));
    let l = log.clone();
    lp.on_before_exit(move |_, _| l.push("before-exit"));
    let l = log.clone();
    lp.set_timeout(5, move |lp| {
        l.push("t1");
        lp.next_tick(l.cb("tick"));
        lp.queue_microtask(l.cb("micro"));
        lp.exit(4);
        l.push("rest-of-callback");
    });
    lp.set_timeout(5, log.cb("t2"));
    lp.set_immediate(log.cb("immediate"));
    assert_eq!(lp.run().unwrap(), 4);
    log.expect(&["immediate", "t1", "exit(4)", "rest-of-callback"]);
    assert!(lp.exited());
    assert!(lp.run_mode(RunMode::NoWait).unwrap());
    log.expect(&["immediate", "t1", "exit(4)", "rest-of-callback"]);
}
