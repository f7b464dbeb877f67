//! Reload and scale races against live workers: the two reproductions (a reload and then
//! the oldest worker killed; a reload and then a scale-down while the removed worker
//! drains) and random interleavings of every supervisor input, with the supervisor's
//! invariants checked after each one and a final reload that must replace everyone.
//!
//! `FORKLOOP_RACE_SEEDS` (default 20) sets how many seeds the random test runs;
//! `FORKLOOP_RACE_SEED` runs that one seed only.

mod cluster_util;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use cluster_util::{port_of, primary, run, worker};
use forkloop::cluster::WorkerState;
use forkloop::primary::supervise::{Cause, RestartPolicy, Supervisor, SupervisorOptions};
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;
use nix::sys::signal::Signal;

/// Serves `w<ID>`; a message `die` crashes the worker, `down` makes it go down.
fn serve(lp: &mut EventLoop, w: &Worker) {
    cluster_util::serve_id(lp, w);
    w.on_message(lp, |lp, w, m| match m.data.as_slice() {
        b"die" => std::process::exit(9),
        b"down" => w.going_down(lp, "asked to"),
        _ => {}
    });
}

fn options(workers: usize) -> SupervisorOptions {
    SupervisorOptions {
        ready_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(3),
        shutdown_timeout: Duration::from_secs(3),
        restart: RestartPolicy {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(200),
            min_uptime: Duration::from_millis(100),
            breaker_max: 4,
            breaker_window: Duration::from_secs(2),
            breaker_cooldown: Duration::from_millis(200),
            breaker_cooldown_cap: Duration::from_millis(400),
            ..RestartPolicy::default()
        },
        ..cluster_util::supervisor_options(workers)
    }
}

/// The first failure seen (invariant or assertion inside the loop).
type Failure = Rc<RefCell<Option<String>>>;

/// Checks the invariants after every supervisor event; a failure is recorded and the
/// cluster stopped.
fn watch(sup: &Supervisor) -> Failure {
    let failure: Failure = Rc::default();
    let f = failure.clone();
    sup.on(move |lp, s, ev| {
        if let Err(e) = s.check_invariants()
            && f.borrow().is_none()
        {
            *f.borrow_mut() = Some(format!("after {ev:?}: {e}"));
            s.force(lp);
        }
    });
    failure
}

/// Polls every 20 ms until `cond` holds (then runs `then`), at most `tries` times (then
/// records a failure and stops the cluster).
fn when<C, T>(
    lp: &mut EventLoop,
    sup: &Supervisor,
    failure: &Failure,
    what: &'static str,
    tries: u32,
    cond: C,
    then: T,
) where
    C: Fn(&Supervisor) -> bool + 'static,
    T: FnOnce(&mut EventLoop, &Supervisor) + 'static,
{
    if cond(sup) {
        then(lp, sup);
        return;
    }
    if tries == 0 {
        if failure.borrow().is_none() {
            *failure.borrow_mut() =
                Some(format!("never happened: {what}; stats {:?}", sup.stats()));
        }
        sup.force(lp);
        return;
    }
    let (s, f) = (sup.clone(), failure.clone());
    lp.set_timeout(20, move |lp| when(lp, &s, &f, what, tries - 1, cond, then));
}

/// As many workers as the target, each listening (none booting, none leaving).
fn settled(s: &Supervisor) -> bool {
    let st = s.stats();
    st.len() == s.size() && st.iter().all(|w| w.state == WorkerState::Listening)
}

/// After a final reload: `size` workers, all of the newest generation and none other.
fn all_replaced(s: &Supervisor, before: &[u32]) -> Result<(), String> {
    let st = s.stats();
    let g = st.iter().map(|w| w.generation).max().unwrap_or(0);
    if st.len() != s.size()
        || st
            .iter()
            .any(|w| w.generation != g || before.contains(&w.id))
    {
        return Err(format!(
            "after the final reload: {st:?} (target {})",
            s.size()
        ));
    }
    Ok(())
}

/// Ends the test: final reload, check everything was replaced, shut down.
fn final_reload(lp: &mut EventLoop, sup: &Supervisor, failure: &Failure) {
    let (s, f) = (sup.clone(), failure.clone());
    when(
        lp,
        sup,
        failure,
        "settled before the final reload",
        400,
        settled,
        move |lp, _| {
            let before: Vec<u32> = s.stats().iter().map(|w| w.id).collect();
            let (s2, f2) = (s.clone(), f.clone());
            s.reload(lp, move |lp, result| {
                if let Err(e) = result {
                    f2.borrow_mut()
                        .get_or_insert(format!("final reload failed: {e}"));
                    s2.force(lp);
                    return;
                }
                let (s3, f3) = (s2.clone(), f2.clone());
                when(
                    lp,
                    &s2,
                    &f2,
                    "old workers gone after the final reload",
                    400,
                    move |s| s.stats().len() == s.size(),
                    move |lp, s| {
                        if let Err(e) = all_replaced(s, &before) {
                            f3.borrow_mut().get_or_insert(e);
                        }
                        s3.shutdown(lp);
                    },
                );
            });
        },
    );
}

#[test]
fn reload_then_kill_the_oldest_worker_keeps_one_worker_per_slot() {
    worker(serve);
    let (mut lp, p) = primary("reload_then_kill_the_oldest_worker_keeps_one_worker_per_slot");
    let sup = Supervisor::new(&mut lp, &p, options(2)).unwrap();
    let failure = watch(&sup);
    let f = failure.clone();
    sup.start(&mut lp).unwrap();
    let s = sup.clone();
    when(
        &mut lp,
        &sup,
        &failure,
        "two ready workers",
        400,
        settled,
        move |lp, _| {
            // Up longer than the minimum uptime, then: SIGHUP, and SIGKILL the oldest.
            lp.set_timeout(200, move |lp| {
                let oldest = s.stats()[0].id;
                s.reload(lp, |_, _| {});
                s.primary().kill(oldest, Signal::SIGKILL as i32).unwrap();
                let s2 = s.clone();
                let f2 = f.clone();
                when(
                    lp,
                    &s,
                    &f,
                    "the reload to end",
                    400,
                    settled,
                    move |lp, _| {
                        let n = s2.stats().len();
                        if n != 2 {
                            f2.borrow_mut()
                                .get_or_insert(format!("{n} workers for 2 slots"));
                        }
                        final_reload(lp, &s2, &f2);
                    },
                );
            });
        },
    );
    assert_eq!(run(&mut lp), 0, "{:?}", failure.borrow());
    assert_eq!(*failure.borrow(), None);
}

#[test]
fn reload_then_scale_down_while_the_removed_worker_drains() {
    worker(serve);
    let (mut lp, p) = primary("reload_then_scale_down_while_the_removed_worker_drains");
    let sup = Supervisor::new(&mut lp, &p, options(2)).unwrap();
    let failure = watch(&sup);
    let port = port_of(&p);
    sup.start(&mut lp).unwrap();
    let (s, f) = (sup.clone(), failure.clone());
    let reloaded = Rc::new(Cell::new(None));
    let r = reloaded.clone();
    when(
        &mut lp,
        &sup,
        &failure,
        "two ready workers",
        400,
        settled,
        move |lp, _| {
            // Connections that send nothing keep both workers draining for a while.
            let addr = SocketAddr::from(([127, 0, 0, 1], port.get()));
            let held: Vec<TcpStream> = (0..4)
                .filter_map(|_| TcpStream::connect(addr).ok())
                .collect();
            lp.set_timeout(100, move |lp| {
                let r2 = r.clone();
                s.reload(lp, move |_, result| r2.set(Some(result.is_ok())));
                s.scale(lp, 1);
                let (s2, f2) = (s.clone(), f.clone());
                when(
                    lp,
                    &s,
                    &f,
                    "the reload to end while a removed worker drains",
                    150,
                    move |_| r.get().is_some(),
                    move |lp, _| {
                        drop(held);
                        final_reload(lp, &s2, &f2);
                    },
                );
            });
        },
    );
    assert_eq!(run(&mut lp), 0, "{:?}", failure.borrow());
    assert_eq!(*failure.borrow(), None);
    assert_eq!(reloaded.get(), Some(true));
}

/// A small deterministic generator (xorshift64*).
struct Rng(Cell<u64>);

impl Rng {
    fn below(&self, n: usize) -> usize {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

/// One random action against the cluster.
fn poke(lp: &mut EventLoop, sup: &Supervisor, rng: &Rng) {
    let ids: Vec<u32> = sup.stats().iter().map(|w| w.id).collect();
    let pick = ids.get(rng.below(ids.len())).copied();
    let p = sup.primary();
    match (rng.below(8), pick) {
        (0, Some(w)) => {
            let _ = p.kill(w, Signal::SIGKILL as i32);
        }
        (1, Some(w)) => {
            let _ = p.send(lp, w, b"die");
        }
        (2, Some(w)) => {
            let _ = p.send(lp, w, b"down");
        }
        (3, Some(w)) => sup.retire(lp, w, Cause::Unresponsive),
        (4, Some(w)) => sup.retire(lp, w, Cause::Memory),
        (5, _) | (6, _) => sup.reload(lp, |_, _| {}),
        (_, _) => {
            let n = 1 + rng.below(3);
            sup.scale(lp, n);
        }
    }
}

fn race(seed: u64) {
    eprintln!("supervise race seed {seed} (FORKLOOP_RACE_SEED={seed} runs it alone)");
    let (mut lp, p) = primary("random_interleavings_against_live_workers");
    let sup = Supervisor::new(&mut lp, &p, options(2)).unwrap();
    let failure = watch(&sup);
    sup.start(&mut lp).unwrap();
    let rng = Rc::new(Rng(Cell::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)));
    fn step(lp: &mut EventLoop, sup: Supervisor, failure: Failure, rng: Rc<Rng>, left: u32) {
        if failure.borrow().is_some() {
            return;
        }
        if left == 0 {
            // Quiet: scale to two, let everything settle, then the final reload.
            sup.scale(lp, 2);
            final_reload(lp, &sup, &failure);
            return;
        }
        poke(lp, &sup, &rng);
        if let Err(e) = sup.check_invariants() {
            failure
                .borrow_mut()
                .get_or_insert(format!("after a random action: {e}"));
            sup.force(lp);
            return;
        }
        let delay = rng.below(60) as u64;
        lp.set_timeout(delay, move |lp| step(lp, sup, failure, rng, left - 1));
    }
    let (s, f) = (sup.clone(), failure.clone());
    lp.set_timeout(50, move |lp| step(lp, s, f, rng, 20));
    let code = run(&mut lp);
    assert_eq!(*failure.borrow(), None, "seed {seed}");
    assert_eq!(code, 0, "seed {seed}");
}

#[test]
fn random_interleavings_against_live_workers() {
    worker(serve);
    let one: Option<u64> = std::env::var("FORKLOOP_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let seeds: u64 = std::env::var("FORKLOOP_RACE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    match one {
        Some(seed) => race(seed),
        None => (0..seeds).for_each(race),
    }
}
