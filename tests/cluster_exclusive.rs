//! The shared (`none`) policy without the thundering herd: on Linux, workers wait on the
//! shared listener exclusively, so one worker is woken per connection, idle workers taking
//! turns; a worker at its connection limit stops waiting and leaves the connections to the
//! others.
#![cfg(target_os = "linux")]

mod cluster_util;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use cluster_util::{IO_TIMEOUT, count_answers, fetch, primary_with, run, tcp_port, worker};

use forkloop::primary::{Event, Policy, Primary, PrimaryOptions};
use forkloop::rt::EventLoop;
use forkloop::worker::{Server, Worker};

fn shared(test: &str) -> (EventLoop, Primary) {
    primary_with(
        test,
        PrimaryOptions {
            policy: Some(Policy::Shared),
            ..PrimaryOptions::default()
        },
    )
}

/// A worker body: serves `w<ID>` to each connection after its first bytes (and ends it
/// if `end`), says "ready" once listening, and answers "report" with
/// `report <wakeups> <empty> <waiting>` from its listener.
fn serve_and_report(lp: &mut EventLoop, w: &Worker, max: Option<usize>, end: bool) {
    let w2 = w.clone();
    let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), move |lp, _, c| {
        let reply = format!("w{}", w2.id());
        c.on_data(lp, move |lp, c, _| {
            c.write(lp, reply.as_bytes());
            if end {
                c.end(lp);
            }
        });
        c.on_end(lp, |lp, c| c.destroy(lp));
    });
    server.set_max_connections(max);
    server.on_error(|_, _, e| panic!("listen failed: {e}"));
    let w3 = w.clone();
    server.on_listening(lp, move |lp, _| {
        let _ = w3.send(lp, b"ready");
    });
    let s: Server = server.clone();
    w.on_message(lp, move |lp, w, m| {
        if m.data != b"report" {
            return;
        }
        let c = s
            .accept_counts(lp)
            .expect("a shared listener in this worker");
        let waiting = s.is_accepting(lp);
        let _ = w.send(
            lp,
            format!("report {} {} {waiting}", c.wakeups, c.empty).as_bytes(),
        );
    });
}

/// One report from every worker, by id: (wake-ups, empty wake-ups, waiting).
type Round = BTreeMap<u32, (u64, u64, bool)>;
/// The rounds of reports, one after each step.
type Rounds = Rc<RefCell<Vec<Round>>>;
/// Answers by text (errors by their message).
type Tally = Rc<RefCell<BTreeMap<String, usize>>>;
/// A client step on a blocking thread: gets the address, returns the answers.
type Step = Box<dyn FnOnce(SocketAddr) -> Vec<std::io::Result<String>> + Send>;

/// Drives the primary side: forks `workers` one after the other (each once the previous
/// one listens, so they wait on the socket in that order), runs `steps` in turn on a
/// blocking thread — each gets the address and its answers are tallied — asks every
/// worker for a report after each step, and disconnects after the last.
fn drive(lp: &mut EventLoop, p: &Primary, workers: usize, steps: Vec<Step>) -> (Tally, Rounds) {
    let tally: Tally = Rc::default();
    let rounds: Rounds = Rc::default();
    let reports: Rc<RefCell<Round>> = Rc::default();
    let steps = Rc::new(RefCell::new(steps.into_iter()));
    let addr = Rc::new(std::cell::Cell::new(0u16));
    let ready = Rc::new(std::cell::Cell::new(0usize));
    let (t, r, rep) = (tally.clone(), rounds.clone(), reports.clone());
    p.on(move |lp, p, ev| {
        if let Some(port) = tcp_port(ev) {
            addr.set(port);
        }
        let Event::Message { worker, data, .. } = ev else {
            return;
        };
        let text = String::from_utf8_lossy(data).into_owned();
        let next_step = if text == "ready" {
            ready.set(ready.get() + 1);
            if ready.get() < workers {
                p.fork(lp).unwrap();
                return;
            }
            true
        } else if let Some(rest) = text.strip_prefix("report ") {
            let f: Vec<&str> = rest.split(' ').collect();
            rep.borrow_mut().insert(
                *worker,
                (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2] == "true"),
            );
            if rep.borrow().len() < workers {
                return;
            }
            r.borrow_mut().push(std::mem::take(&mut *rep.borrow_mut()));
            true
        } else {
            false
        };
        if !next_step {
            return;
        }
        let Some(step) = steps.borrow_mut().next() else {
            p.disconnect(lp, |_, _| {});
            return;
        };
        let a = SocketAddr::from(([127, 0, 0, 1], addr.get()));
        let (t, p2) = (t.clone(), p.clone());
        lp.spawn_blocking(
            move || step(a),
            move |lp, answers| {
                count_answers(&t, answers.unwrap());
                for w in p2.workers() {
                    p2.send(lp, w, b"report").unwrap();
                }
            },
        );
    });
    p.fork(lp).unwrap();
    (tally, rounds)
}

/// Connections answered by some worker.
fn served(tally: &BTreeMap<String, usize>) -> usize {
    tally
        .iter()
        .filter(|(k, _)| k.starts_with('w'))
        .map(|(_, n)| n)
        .sum()
}

fn empty_total(round: &Round) -> u64 {
    round.values().map(|r| r.1).sum()
}

#[test]
fn one_worker_is_woken_per_connection() {
    const CONNS: usize = 40;
    const WORKERS: usize = 3;
    worker(|lp, w| serve_and_report(lp, w, None, true));
    let (mut lp, p) = shared("one_worker_is_woken_per_connection");
    let (tally, rounds) = drive(
        &mut lp,
        &p,
        WORKERS,
        vec![Box::new(|addr| {
            (0..CONNS)
                .map(|_| {
                    // One at a time, with every worker idle when it arrives.
                    std::thread::sleep(Duration::from_millis(2));
                    fetch(addr)
                })
                .collect()
        })],
    );
    run(&mut lp);
    let tally = tally.borrow();
    assert_eq!(served(&tally), CONNS, "{tally:?}");
    // Idle workers take turns: one that accepted waits again behind the others (the
    // kernel wakes the first idle waiter; without that the first worker took them all).
    for id in 1..=WORKERS {
        let n = tally.get(&format!("w{id}")).copied().unwrap_or(0);
        assert!(
            n >= CONNS / WORKERS / 2,
            "worker {id} served {n}: {tally:?}"
        );
    }
    let rounds = rounds.borrow();
    let round = &rounds[0];
    eprintln!("per worker (wake-ups, empty, waiting): {round:?}");
    let wakeups: u64 = round.values().map(|r| r.0).sum();
    assert!(
        wakeups >= CONNS as u64,
        "every connection woke a worker: {round:?}"
    );
    // Woken all together, the other workers would find nothing CONNS × (WORKERS − 1)
    // times; woken one at a time, nearly never.
    assert!(
        empty_total(round) <= (CONNS / 10) as u64,
        "wake-ups that accepted nothing: {round:?}"
    );
}

#[test]
fn a_burst_is_served_in_full() {
    const CONNS: usize = 64;
    worker(|lp, w| serve_and_report(lp, w, None, true));
    let (mut lp, p) = shared("a_burst_is_served_in_full");
    let (tally, rounds) = drive(
        &mut lp,
        &p,
        4,
        vec![Box::new(|addr| {
            let conns: Vec<std::io::Result<TcpStream>> = (0..CONNS)
                .map(|_| {
                    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                    s.set_read_timeout(Some(IO_TIMEOUT))?;
                    s.write_all(b"x")?;
                    Ok(s)
                })
                .collect();
            conns
                .into_iter()
                .map(|s| {
                    let mut out = String::new();
                    s?.read_to_string(&mut out)?;
                    Ok(out)
                })
                .collect()
        })],
    );
    run(&mut lp);
    let tally = tally.borrow();
    assert_eq!(served(&tally), CONNS, "{tally:?}");
    eprintln!("burst: {tally:?}; per worker {:?}", rounds.borrow()[0]);
}

#[test]
fn a_full_worker_stops_waiting_and_another_serves() {
    // Worker 1 (first to wait, so the one woken while both are idle) takes one connection
    // at most. Eight connections held open one after the other are all served: worker 1
    // takes the first, stops waiting, and worker 2 takes the rest (accepting and closing
    // them would fail the clients). Once they close, worker 1 waits again.
    const CONNS: usize = 8;
    worker(|lp, w| {
        let max = (w.id() == 1).then_some(1);
        serve_and_report(lp, w, max, false)
    });
    let (mut lp, p) = shared("a_full_worker_stops_waiting_and_another_serves");
    let held: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>> = Default::default();
    let h = held.clone();
    let (tally, rounds) = drive(
        &mut lp,
        &p,
        2,
        vec![
            Box::new(move |addr| {
                (0..CONNS)
                    .map(|_| {
                        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.write_all(b"x")?;
                        let mut b = [0u8; 2];
                        s.read_exact(&mut b)?;
                        h.lock().unwrap().push(s);
                        Ok(String::from_utf8_lossy(&b).into_owned())
                    })
                    .collect()
            }),
            Box::new(move |_| {
                held.lock().unwrap().clear();
                // Room again is noticed within the worker's poll of its room.
                std::thread::sleep(Duration::from_millis(300));
                Vec::new()
            }),
        ],
    );
    run(&mut lp);
    let tally = tally.borrow();
    assert_eq!(tally.get("w1"), Some(&1), "{tally:?}");
    assert_eq!(tally.get("w2"), Some(&(CONNS - 1)), "{tally:?}");
    let rounds = rounds.borrow();
    assert!(
        !rounds[0][&1].2,
        "worker 1, full, does not wait: {rounds:?}"
    );
    assert!(rounds[0][&2].2, "worker 2 waits: {rounds:?}");
    assert!(
        rounds[1][&1].2,
        "worker 1 waits again once it has room: {rounds:?}"
    );
}

/// The highest descriptor this process has open.
fn highest_open_fd() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
        .max()
        .expect("some descriptor")
}

#[test]
fn a_worker_out_of_descriptors_leaves_the_connections_to_the_others() {
    // Worker 1 (first to wait) cannot accept anything (no descriptor left): it must stop
    // waiting instead of taking every wake-up for connections it cannot accept. Ten
    // clients, one every 20 ms, all held open: worker 2 answers every one (the first may
    // wait for the second to arrive: the wake-up worker 1 took for it is not passed on).
    const CONNS: usize = 10;
    worker(|lp, w| {
        let starve = w.id() == 1;
        let w2 = w.clone();
        let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), move |lp, _, c| {
            let reply = format!("w{}", w2.id());
            c.on_data(lp, move |lp, c, _| {
                c.write(lp, reply.as_bytes());
            });
            c.on_end(lp, |lp, c| c.destroy(lp));
        });
        server.on_error(|_, _, e| panic!("listen failed: {e}"));
        let w3 = w.clone();
        server.on_listening(lp, move |lp, _| {
            if starve {
                // No descriptor left: accept fails (EMFILE). Fill the free numbers below
                // the limit too, and keep them.
                forkloop::sys::set_fd_limit(highest_open_fd() + 1).expect("lower the limit");
                let held: Vec<std::fs::File> =
                    std::iter::from_fn(|| std::fs::File::open("/dev/null").ok())
                        .take(10_000)
                        .collect();
                std::mem::forget(held);
            }
            let _ = w3.send(lp, b"ready");
        });
        let s = server.clone();
        w.on_message(lp, move |lp, w, m| {
            if m.data == b"report" {
                let c = s.accept_counts(lp).unwrap_or_default();
                let waiting = s.is_accepting(lp);
                let _ = w.send(
                    lp,
                    format!("report {} {} {waiting}", c.wakeups, c.empty).as_bytes(),
                );
            }
        });
    });
    let (mut lp, p) = shared("a_worker_out_of_descriptors_leaves_the_connections_to_the_others");
    let (tally, _) = drive(
        &mut lp,
        &p,
        2,
        vec![Box::new(|addr| {
            let conns: Vec<std::io::Result<TcpStream>> = (0..CONNS)
                .map(|_| {
                    std::thread::sleep(Duration::from_millis(20));
                    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    s.write_all(b"x")?;
                    Ok(s)
                })
                .collect();
            conns
                .into_iter()
                .map(|s| {
                    let mut b = [0u8; 2];
                    s?.read_exact(&mut b)?;
                    Ok(String::from_utf8_lossy(&b).into_owned())
                })
                .collect()
        })],
    );
    run(&mut lp);
    let tally = tally.borrow();
    assert_eq!(tally.get("w2"), Some(&CONNS), "{tally:?}");
}
