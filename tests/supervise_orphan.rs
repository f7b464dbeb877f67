//! Orphan safety (issue 6 item 7, fault test (d)): workers die with their primary, even
//! with a blocked loop, and the watchdog never cuts a graceful exit short. The test binary
//! re-executes itself as workers and as a sub-primary (see `cluster_util`).

mod cluster_util;

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster_util::{ChildGuard, PidGuard, args_for, primary, run, wait_gone, worker};
use forkloop::primary::Event;
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;

const SUB_ENV: &str = "FORKLOOP_TEST_SUB";

/// Says `what` to the primary, then spins forever: a loop that never comes back.
fn spin(lp: &mut EventLoop, w: &Worker, what: &str) -> ! {
    w.send(lp, what.as_bytes()).expect("send");
    loop {
        std::hint::black_box(());
    }
}

/// Runs this test binary as a primary of its own; its stdout lines arrive on the channel.
fn spawn_sub_primary(test: &str) -> (ChildGuard, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args(args_for(test))
        .env(SUB_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sub-primary");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    // Ends at EOF, once the sub-primary and every worker (which share its stdout) are gone.
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (ChildGuard(child), rx)
}

/// Collects `n` pids printed as `worker-pid <pid>` lines, within a deadline.
fn worker_pids(rx: &mpsc::Receiver<String>, n: usize) -> Vec<u32> {
    let end = Instant::now() + Duration::from_secs(20);
    let mut pids = Vec::new();
    while pids.len() < n {
        let left = end.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("sub-primary printed {pids:?} only"));
        if let Some(pid) = line.strip_prefix("worker-pid ") {
            pids.push(pid.trim().parse().expect("pid"));
        }
    }
    pids
}

#[test]
fn primary_sigkill_leaves_no_worker_even_a_spinning_one() {
    worker(|lp, w| {
        if w.id() == 1 {
            w.send(lp, b"idle").expect("send"); // then idle: only its channel keeps it up
        } else {
            spin(lp, w, "spinning");
        }
    });
    if std::env::var_os(SUB_ENV).is_some() {
        // The sub-primary: two workers; print each pid once it has spoken (so the second
        // one is really spinning), then wait to be killed.
        let (mut lp, p) = primary("primary_sigkill_leaves_no_worker_even_a_spinning_one");
        p.on(|_, p, ev| {
            if let Event::Message { worker, .. } = ev {
                let pid = p.worker(*worker).expect("worker").pid;
                let mut out = std::io::stdout().lock();
                writeln!(out, "worker-pid {pid}").expect("print");
                out.flush().expect("flush");
            }
        });
        p.fork(&mut lp).expect("fork");
        p.fork(&mut lp).expect("fork");
        run(&mut lp);
        return;
    }
    let (mut sub, lines) =
        spawn_sub_primary("primary_sigkill_leaves_no_worker_even_a_spinning_one");
    let pids = worker_pids(&lines, 2);
    let _guards: Vec<PidGuard> = pids.iter().map(|&p| PidGuard(p)).collect();
    sub.0.kill().expect("SIGKILL the primary");
    sub.0.wait().expect("reap the primary");
    let killed = Instant::now();
    for pid in pids {
        let left = Duration::from_secs(1).saturating_sub(killed.elapsed());
        assert!(
            wait_gone(pid, left),
            "worker {pid} still alive 1 s after the primary's SIGKILL"
        );
    }
}

/// Each worker's exit code and when it came.
type Exits = Rc<RefCell<Vec<(Option<i32>, Instant)>>>;

/// Records each worker's exit code and when it came.
fn exits(p: &forkloop::primary::Primary) -> Exits {
    let got: Exits = Rc::default();
    let g = got.clone();
    p.on(move |_, _, ev| {
        if let Event::Exit { status, .. } = ev {
            g.borrow_mut().push((status.code, Instant::now()));
        }
    });
    got
}

#[test]
fn watchdog_ends_a_blocked_worker_whose_channel_closes() {
    // The primary stays alive (no parent-death signal): only the watchdog can end it.
    worker(|lp, w| spin(lp, w, "spinning"));
    let (mut lp, p) = primary("watchdog_ends_a_blocked_worker_whose_channel_closes");
    let closed = Rc::new(RefCell::new(None));
    let c = closed.clone();
    p.on(move |lp, p, ev| {
        if let Event::Message { worker, .. } = ev {
            *c.borrow_mut() = Some(Instant::now());
            assert!(p.close_channel(lp, *worker));
        }
    });
    let got = exits(&p);
    p.fork(&mut lp).expect("fork");
    run(&mut lp);
    let got = got.borrow();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Some(0), "the watchdog exits with code 0");
    let closed = closed.borrow().expect("channel closed");
    let took = got[0].1 - closed;
    assert!(
        took < Duration::from_secs(3),
        "a blocked worker outlived its closed channel by {took:?}"
    );
}

#[test]
fn a_responsive_worker_still_runs_its_disconnect_handlers() {
    // The primary closes the channel; the loop sees EOF within the watchdog's grace and
    // leaves on its own terms (code 5, not the watchdog's 0).
    worker(|lp, w| {
        w.on_disconnect(|lp, _| lp.exit(5));
        w.send(lp, b"up").expect("send");
    });
    let (mut lp, p) = primary("a_responsive_worker_still_runs_its_disconnect_handlers");
    p.on(|lp, p, ev| {
        if let Event::Message { worker, .. } = ev {
            assert!(p.close_channel(lp, *worker));
        }
    });
    let got = exits(&p);
    p.fork(&mut lp).expect("fork");
    run(&mut lp);
    assert_eq!(got.borrow().len(), 1);
    assert_eq!(got.borrow()[0].0, Some(5));
}

/// A worker that keeps running for 1.5 s (longer than the watchdog's 1 s grace) after
/// closing its channel on purpose, then exits with code 7.
fn lingers_after_disconnect(lp: &mut EventLoop, w: &Worker) {
    w.on_disconnect(|lp, _| {
        lp.set_timeout(1500, |lp| lp.exit(7));
    });
    w.send(lp, b"up").expect("send");
}

#[test]
fn worker_disconnect_is_not_cut_short_by_the_watchdog() {
    worker(|lp, w| {
        lingers_after_disconnect(lp, w);
        w.disconnect(lp);
    });
    let (mut lp, p) = primary("worker_disconnect_is_not_cut_short_by_the_watchdog");
    let got = exits(&p);
    p.fork(&mut lp).expect("fork");
    run(&mut lp);
    assert_eq!(got.borrow().len(), 1);
    assert_eq!(got.borrow()[0].0, Some(7), "exited on its own terms");
}

#[test]
fn primary_disconnect_is_not_cut_short_by_the_watchdog() {
    worker(lingers_after_disconnect);
    let (mut lp, p) = primary("primary_disconnect_is_not_cut_short_by_the_watchdog");
    p.on(|lp, p, ev| {
        if let Event::Message { worker, .. } = ev {
            assert!(p.disconnect_worker(lp, *worker));
        }
    });
    let got = exits(&p);
    p.fork(&mut lp).expect("fork");
    run(&mut lp);
    assert_eq!(got.borrow().len(), 1);
    assert_eq!(got.borrow()[0].0, Some(7), "exited on its own terms");
}
