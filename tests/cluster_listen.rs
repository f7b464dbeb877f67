//! Shared listening: one port for many workers under each policy, re-expressing the
//! listening tests of Node's cluster suite, plus forkloop's own
//! guarantees: no connection lost when a worker dies with hand-offs in flight, and an even
//! round-robin spread.

mod cluster_util;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use cluster_util::{
    IO_TIMEOUT, count_answers, fetch, on_all_ready, primary, primary_with, run, tcp_port, worker,
};

use forkloop::net::Stream;
use forkloop::primary::{Event, Policy, Primary, PrimaryOptions};
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;
use nix::sys::signal::Signal;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn with_policy(test: &str, policy: Policy) -> (EventLoop, Primary) {
    primary_with(
        test,
        PrimaryOptions {
            policy: Some(policy),
            ..PrimaryOptions::default()
        },
    )
}

/// Serves each connection one answer, `w<ID>`, after its first bytes, then ends it. A
/// connection that reached the worker without `TCP_NODELAY` (the default for handed-off and
/// accepted streams) says so in its answer, which fails every test that checks answers.
fn serve_id(lp: &mut EventLoop, w: &Worker, conn: Stream) {
    let reply = match conn.nodelay(lp) {
        Ok(true) => format!("w{}", w.id()),
        other => format!("w{} without TCP_NODELAY ({other:?})", w.id()),
    };
    conn.on_data(lp, move |lp, c, _| {
        c.write(lp, reply.as_bytes());
        c.end(lp);
    });
}

fn listen_id(lp: &mut EventLoop, w: &Worker, addr: SocketAddr) -> forkloop::worker::Server {
    let w2 = w.clone();
    w.listen_tcp(lp, addr, move |lp, _, c| serve_id(lp, &w2, c))
}

/// A worker body: [`listen_id`] on any port, then tell the primary "ready".
fn listen_id_and_say_ready(lp: &mut EventLoop, w: &Worker) {
    let server = listen_id(lp, w, any_port());
    let w2 = w.clone();
    server.on_listening(lp, move |lp, _| {
        let _ = w2.send(lp, b"ready");
    });
}

#[test]
fn listening_port() {
    worker(|lp, w| {
        listen_id(lp, w, any_port());
    });
    let (mut lp, p) = primary("listening_port");
    let ports = Rc::new(RefCell::new(Vec::new()));
    let pt = ports.clone();
    p.on(move |lp, p, ev| {
        if let Some(port) = tcp_port(ev) {
            pt.borrow_mut().push(port);
            if pt.borrow().len() == 2 {
                p.disconnect(lp, |_, _| {});
            }
        }
    });
    p.fork(&mut lp).unwrap();
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    let ports = ports.borrow();
    assert_ne!(ports[0], 0, "a real port, not the 0 that was asked for");
    assert_eq!(
        ports[0], ports[1],
        "listen(0) in every worker shares one port"
    );
}

#[test]
fn dgram_1() {
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 10;
    worker(|lp, w| {
        let w2 = w.clone();
        let w3 = w.clone();
        w.bind_udp(
            lp,
            any_port(),
            move |lp, _, data, _| {
                let _ = w2.send(lp, data);
            },
            move |lp, sock| {
                let port = sock.unwrap().local_addr(lp).unwrap().port();
                w3.send(lp, format!("bound {port}").as_bytes()).unwrap();
            },
        );
    });
    let (mut lp, p) = primary("dgram_1");
    let ports = Rc::new(RefCell::new(BTreeSet::new()));
    let bound = Rc::new(Cell::new(0));
    let got = Rc::new(Cell::new(0));
    let (pt, b, g) = (ports.clone(), bound.clone(), got.clone());
    p.on(move |lp, p, ev| {
        let Event::Message { data, .. } = ev else {
            return;
        };
        let text = String::from_utf8_lossy(data).into_owned();
        if let Some(port) = text.strip_prefix("bound ") {
            pt.borrow_mut().insert(port.parse::<u16>().unwrap());
            b.set(b.get() + 1);
            if b.get() == WORKERS {
                let port = *pt.borrow().iter().next().unwrap();
                lp.spawn_blocking(
                    move || {
                        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                        for i in 0..WORKERS * PER_WORKER {
                            s.send_to(format!("d{i}").as_bytes(), ("127.0.0.1", port))
                                .unwrap();
                        }
                    },
                    |_, r| r.unwrap(),
                );
            }
        } else {
            g.set(g.get() + 1);
            if g.get() == WORKERS * PER_WORKER {
                p.disconnect(lp, |_, _| {});
            }
        }
    });
    for _ in 0..WORKERS {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);
    assert_eq!(
        ports.borrow().len(),
        1,
        "every worker got the same UDP port"
    );
    assert_eq!(
        got.get(),
        WORKERS * PER_WORKER,
        "every datagram reached a worker"
    );
}

#[test]
fn disconnect() {
    worker(|lp, w| {
        listen_id(lp, w, any_port());
        listen_id(lp, w, any_port());
    });
    fn cycle(lp: &mut EventLoop, p: &Primary, workers: usize) -> (BTreeSet<u16>, Vec<String>) {
        let ports = Rc::new(RefCell::new(BTreeSet::new()));
        let listening = Rc::new(Cell::new(0));
        let answers = Rc::new(RefCell::new(Vec::new()));
        let (pt, l, a) = (ports.clone(), listening.clone(), answers.clone());
        p.on(move |lp, p, ev| {
            let Some(port) = tcp_port(ev) else { return };
            pt.borrow_mut().insert(port);
            l.set(l.get() + 1);
            if l.get() == 2 * workers {
                let targets: Vec<u16> = pt.borrow().iter().copied().collect();
                let (a, p) = (a.clone(), p.clone());
                lp.spawn_blocking(
                    move || {
                        targets
                            .iter()
                            .map(|port| fetch(SocketAddr::from(([127, 0, 0, 1], *port))).unwrap())
                            .collect::<Vec<_>>()
                    },
                    move |lp, r| {
                        *a.borrow_mut() = r.unwrap();
                        p.disconnect(lp, |_, p| {
                            assert!(p.workers().is_empty());
                            assert_eq!(p.listener_count(), 0, "every listener closed");
                        });
                    },
                );
            }
        });
        for _ in 0..workers {
            p.fork(lp).unwrap();
        }
        run(lp);

        (ports.borrow().clone(), answers.borrow().clone())
    }
    let (mut lp, p) = primary("disconnect");
    let (ports, answers) = cycle(&mut lp, &p, 8);
    assert_eq!(
        ports.len(),
        2,
        "8 workers x 2 servers on port 0 give exactly 2 ports"
    );
    assert!(answers.iter().all(|a| a.starts_with('w')), "{answers:?}");
    // A second start/test/disconnect cycle works on the same primary.
    let (mut lp2, p2) = primary("disconnect");
    let (ports2, answers2) = cycle(&mut lp2, &p2, 2);
    assert_eq!(ports2.len(), 2);
    assert_eq!(answers2.len(), 2);
    drop((lp, p));
}

fn server_restart(test: &str, policy: Policy) {
    let (mut lp, p) = with_policy(test, policy);
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Message { worker, data, .. } => {
            l.borrow_mut()
                .push(format!("{worker} {}", String::from_utf8_lossy(data)));
            if l.borrow().len() == 3 {
                p.disconnect(lp, |_, _| {});
            }
        }
        Event::Exit { worker, status } => l
            .borrow_mut()
            .push(format!("{worker} exit {:?}", status.code)),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    let log = log.borrow();
    let port = |who: &str| -> String {
        log.iter()
            .find(|s| s.starts_with(who))
            .and_then(|s| s.rsplit(' ').next())
            .unwrap()
            .to_string()
    };
    assert_eq!(
        port("1 listening"),
        port("2 relistened"),
        "same port after re-listening: {log:?}"
    );
    assert!(log.contains(&"1 exit Some(0)".to_string()), "{log:?}");
    assert!(log.contains(&"2 exit Some(0)".to_string()), "{log:?}");
}

/// Worker 2 closes its server and listens again on port 0 while worker 1 keeps listening.
fn restarting_worker(lp: &mut EventLoop, w: &Worker) {
    let server = listen_id(lp, w, any_port());
    let w2 = w.clone();
    server.on_listening(lp, move |lp, s| {
        let port = s.address().unwrap().port();
        w2.send(lp, format!("listening {port}").as_bytes()).unwrap();
        if w2.id() == 2 {
            let w3 = w2.clone();
            s.close(lp, move |lp| {
                let again = listen_id(lp, &w3, any_port());
                let w4 = w3.clone();
                again.on_listening(lp, move |lp, s| {
                    let port = s.address().unwrap().port();
                    w4.send(lp, format!("relistened {port}").as_bytes())
                        .unwrap();
                });
            });
        }
    });
}

#[test]
fn server_restart_rr() {
    worker(restarting_worker);
    server_restart("server_restart_rr", Policy::RoundRobin);
}

#[test]
fn server_restart_none() {
    worker(restarting_worker);
    server_restart("server_restart_none", Policy::Shared);
}

/// The worker listens on the port in `FORKLOOP_TEST_PORT` and reports the error it gets.
fn report_listen_error(lp: &mut EventLoop, w: &Worker) {
    let port: u16 = std::env::var("FORKLOOP_TEST_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let server = listen_id(lp, w, SocketAddr::from(([127, 0, 0, 1], port)));
    let w2 = w.clone();
    server.on_error(move |lp, _, e| {
        let _ = w2.send(lp, format!("error {:?}", e.kind()).as_bytes());
        w2.disconnect(lp);
    });
}

fn listen_error(test: &str, policy: Policy, port: u16) -> (String, Option<i32>) {
    let (mut lp, p) = with_policy(test, policy);
    let got = Rc::new(RefCell::new((String::new(), None)));
    let g = got.clone();
    p.on(move |_, _, ev| match ev {
        Event::Message { data, .. } => g.borrow_mut().0 = String::from_utf8_lossy(data).into(),
        Event::Exit { status, .. } => g.borrow_mut().1 = status.code,
        _ => {}
    });
    p.fork_with_env(&mut lp, [("FORKLOOP_TEST_PORT", port.to_string())])
        .unwrap();
    run(&mut lp);

    got.borrow().clone()
}

#[test]
fn shared_handle_bind_error() {
    worker(report_listen_error);
    // The primary's process already holds the port.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let (msg, code) = listen_error("shared_handle_bind_error", Policy::Shared, port);
    assert_eq!(msg, "error AddrInUse");
    assert_eq!(code, Some(0), "the worker carries on and exits normally");
}

#[test]
fn bind_privileged_port() {
    worker(report_listen_error);
    if nix::unistd::geteuid().is_root() {
        eprintln!("bind_privileged_port: running as root, port 42 is bindable; nothing to test");
        return;
    }
    let (msg, code) = listen_error("bind_privileged_port", Policy::RoundRobin, 42);
    assert_eq!(msg, "error PermissionDenied");
    assert_eq!(code, Some(0));
}

#[test]
fn worker_handle_close() {
    // Worker 1 is busy when connections are handed to it, then closes its server: it
    // answers the hand-offs it finds with Rejected, and worker 2 serves them all.
    worker(|lp, w| {
        let server = listen_id(lp, w, any_port());
        if w.id() == 1 {
            let w2 = w.clone();
            server.on_listening(lp, move |lp, s| {
                let _ = w2.send(lp, b"ready");
                std::thread::sleep(Duration::from_millis(500)); // hand-offs pile up
                s.close(lp, |_| {});
            });
        } else {
            let w2 = w.clone();
            server.on_listening(lp, move |lp, _| {
                let _ = w2.send(lp, b"ready");
            });
        }
    });
    let (mut lp, p) = primary("worker_handle_close");
    let served = many_clients_after_ready(&mut lp, &p, 2, 10, None);
    run(&mut lp);
    let served = served.borrow();
    assert_eq!(
        served.values().sum::<usize>(),
        10,
        "no connection lost: {served:?}"
    );
    assert_eq!(served.get("w2"), Some(&10), "{served:?}");
}

/// Once `workers` said "ready", opens `n` connections at once from a thread, then reads
/// every answer; the tally of answers by worker is returned. `kill_after` kills worker 1
/// that long after the clients start. Disconnects the cluster afterwards.
/// Opens `n` connections to `addr`, each sending one byte (read timeouts set).
fn ask(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            s.write_all(b"x").unwrap();
            s
        })
        .collect()
}

/// Everything each connection receives until the server ends it, in order; each is
/// closed once read.
fn read_answers(conns: Vec<TcpStream>) -> Vec<std::io::Result<String>> {
    conns
        .into_iter()
        .map(|mut s| {
            let mut out = String::new();
            s.read_to_string(&mut out).map(|_| out)
        })
        .collect()
}

fn many_clients_after_ready(
    lp: &mut EventLoop,
    p: &Primary,
    workers: usize,
    n: usize,
    kill_after: Option<u64>,
) -> Rc<RefCell<BTreeMap<String, usize>>> {
    let tally: Rc<RefCell<BTreeMap<String, usize>>> = Rc::default();
    let t = tally.clone();
    on_all_ready(p, workers, move |lp, p, addr| {
        let (t, p2) = (t.clone(), p.clone());
        lp.spawn_blocking(
            move || {
                let conns = ask(addr, n);
                read_answers(conns)
            },
            move |lp, r| {
                count_answers(&t, r.unwrap());
                p2.disconnect(lp, |_, _| {});
            },
        );
        if let Some(ms) = kill_after {
            let p3 = p.clone();
            lp.set_timeout(ms, move |_| {
                let _ = p3.kill(1, Signal::SIGKILL as i32);
            });
        }
    });
    for _ in 0..workers {
        p.fork(lp).unwrap();
    }
    tally
}

#[test]
fn hand_offs_in_flight_survive_a_killed_worker() {
    // Worker 1 hangs (its loop blocked) while connections are handed to it; the primary
    // kills it; the connections it never read are read back from its channel and go to
    // worker 2, and every client is served.
    worker(|lp, w| {
        let server = listen_id(lp, w, any_port());
        let w2 = w.clone();
        server.on_listening(lp, move |lp, _| {
            let _ = w2.send(lp, b"ready");
            if w2.id() == 1 {
                std::thread::sleep(Duration::from_secs(30)); // hung, until killed
            }
        });
    });
    let (mut lp, p) = primary("hand_offs_in_flight_survive_a_killed_worker");
    let killed_inflight = Rc::new(Cell::new(0));
    let k = killed_inflight.clone();
    p.on(move |_, p, ev| {
        if let Event::Disconnect { worker: 1 } = ev {
            k.set(p.in_flight(1));
        }
    });
    let served = many_clients_after_ready(&mut lp, &p, 2, 10, Some(400));
    run(&mut lp);
    let served = served.borrow();
    assert_eq!(
        served.get("w2"),
        Some(&10),
        "every connection served by the survivor: {served:?}"
    );
    assert_eq!(
        killed_inflight.get(),
        0,
        "nothing left in flight to the dead worker"
    );
    assert!(
        p.taken_back() > 0,
        "the hung worker was handed connections, read back from its channel"
    );
}

#[test]
fn connections_read_along_with_a_message_that_hangs_go_to_another_worker() {
    // Worker 1 is stopped while the primary sends it a message whose handler never
    // returns and hands it connections: when it runs again it reads the message and the
    // connections together. It gives the connections back before running the handler;
    // those handed to it again wait unread until it is killed and are read back. Worker 2
    // serves every client.
    worker(|lp, w| {
        listen_id_and_say_ready(lp, w);
        w.on_message(lp, |_, _, _| {
            loop {
                std::thread::sleep(Duration::from_secs(1)); // hung, until killed
            }
        });
    });
    let (mut lp, p) =
        primary("connections_read_along_with_a_message_that_hangs_go_to_another_worker");
    let tally: Rc<RefCell<BTreeMap<String, usize>>> = Rc::default();
    let t = tally.clone();
    on_all_ready(&p, 2, move |lp, p, addr| {
        p.kill(1, Signal::SIGSTOP as i32).unwrap();
        p.send(lp, 1, b"hang").unwrap();
        let (t, p2) = (t.clone(), p.clone());
        lp.spawn_blocking(
            move || read_answers(ask(addr, 10)),
            move |lp, r| {
                count_answers(&t, r.unwrap());
                p2.disconnect(lp, |_, _| {});
            },
        );
        let p3 = p.clone();
        lp.set_timeout(300, move |_| {
            p3.kill(1, Signal::SIGCONT as i32).unwrap();
        });
        let p4 = p.clone();
        lp.set_timeout(800, move |_| {
            let _ = p4.kill(1, Signal::SIGKILL as i32);
        });
    });
    for _ in 0..2 {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);
    assert_eq!(tally.borrow().get("w2"), Some(&10), "{:?}", tally.borrow());
}

#[test]
fn a_worker_that_used_up_its_credit_gets_more_once_it_has_read_them() {
    // Credit 1 and one worker: of eight connections arriving at once, the primary hands
    // off one and stops accepting; the hand-off that used up the credit asks the worker to
    // say when it has read it, and only then does the next one go. All eight are served
    // by the worker and none comes back.
    worker(listen_id_and_say_ready);
    let (mut lp, p) = primary_with(
        "a_worker_that_used_up_its_credit_gets_more_once_it_has_read_them",
        PrimaryOptions {
            credit: 1,
            ..PrimaryOptions::default()
        },
    );
    let served = many_clients_after_ready(&mut lp, &p, 1, 8, None);
    run(&mut lp);
    assert_eq!(served.borrow().get("w1"), Some(&8), "{:?}", served.borrow());
    assert_eq!(p.taken_back(), 0);
}

#[test]
fn a_burst_of_connections_is_shared_evenly_between_the_workers() {
    // Eight connections wait in the backlog when the primary next accepts: they are
    // shared out one at a time to the worker with the most free credit, so each of the two
    // takes four (in one NewConn message each) and answers them.
    worker(listen_id_and_say_ready);
    let (mut lp, p) = primary("a_burst_of_connections_is_shared_evenly_between_the_workers");
    let tallies: Rc<RefCell<Vec<BTreeMap<String, usize>>>> = Rc::default();
    let t = tallies.clone();
    on_all_ready(&p, 2, move |lp, p, addr| {
        burst(lp, p, addr, t, 2);
    });
    for _ in 0..2 {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);
    let tallies = tallies.borrow();
    assert_eq!(tallies.len(), 2, "{tallies:?}");
    for t in tallies.iter() {
        assert_eq!(t.len(), 2, "both workers served the burst: {t:?}");
        assert!(
            t.iter().all(|(who, &n)| who.starts_with('w') && n == 4),
            "four each: {t:?}"
        );
    }
}

#[test]
fn accept_windows_open_under_a_burst_and_close_when_connections_thin_out() {
    // With 300 ms accept windows: sixteen connections waiting at once open a window (the
    // primary stops waking for each connection); every one is served; once connections
    // thin out the primary wakes for each again, so a client making one connection at a
    // time is not held back by windows.
    const WINDOW_MS: u64 = 300;
    worker(listen_id_and_say_ready);
    let (served, tally, windows, four) = burst_with_windows(
        "accept_windows_open_under_a_burst_and_close_when_connections_thin_out",
        WINDOW_MS,
        |conns, addr| {
            let mut answers = read_answers(conns);
            // The first one-at-a-time connection may still wait for the window that is
            // open; then windows close, and the next four go through at once.
            answers.push(fetch(addr));
            let started = std::time::Instant::now();
            answers.extend((0..4).map(|_| fetch(addr)));
            (answers, started.elapsed())
        },
    );
    assert_eq!(served, 21, "every connection served: {tally:?}");
    assert!(windows >= 1, "the burst opened an accept window");
    assert!(
        four < Duration::from_millis(WINDOW_MS),
        "four connections one at a time took {four:?}: windows stayed open"
    );
}

#[test]
fn an_accept_window_that_ran_out_of_credit_resumes_with_it() {
    // Two workers that each hold at most four connections, answering each after 100 ms:
    // sixteen connections at once open a window, the workers fill up and accepting
    // pauses with the window open. Once they have room the rest are served, and a later
    // client is still accepted (the window resumed, then closed for want of connections).
    worker(|lp, w| {
        let reply = format!("w{}", w.id());
        let server = w.listen_tcp(lp, any_port(), move |lp, _, conn| {
            let reply = reply.clone();
            conn.on_data(lp, move |lp, c, _| {
                let reply = reply.clone();
                lp.set_timeout(100, move |lp| {
                    c.write(lp, reply.as_bytes());
                    c.end(lp);
                });
            });
        });
        server.set_max_connections(Some(4));
        let w2 = w.clone();
        server.on_listening(lp, move |lp, _| {
            let _ = w2.send(lp, b"ready");
        });
    });
    let (served, tally, windows, ()) = burst_with_windows(
        "an_accept_window_that_ran_out_of_credit_resumes_with_it",
        20,
        |conns, addr| {
            let mut answers = read_answers(conns);
            answers.extend((0..2).map(|_| fetch(addr)));
            (answers, ())
        },
    );
    assert_eq!(served, 18, "every connection served: {tally:?}");
    assert!(windows >= 1, "the burst opened an accept window");
}

/// Two workers (the test's `worker` body) under a primary with accept windows of
/// `window_ms`: once both are ready, sixteen clients connect from the primary's loop (so
/// all wait in the backlog when it next accepts) and `clients` gets them on a blocking
/// thread. Returns how many answers came from a worker, all answers tallied (`w<ID>` →
/// count; errors by their text), the accept windows opened by then, and the rest of what
/// `clients` returned.
fn burst_with_windows<T: Send + 'static>(
    test: &str,
    window_ms: u64,
    clients: impl FnOnce(Vec<TcpStream>, SocketAddr) -> (Vec<std::io::Result<String>>, T)
    + Send
    + 'static,
) -> (usize, BTreeMap<String, usize>, u64, T) {
    let (mut lp, p) = primary_with(
        test,
        PrimaryOptions {
            accept_window: Some(Duration::from_millis(window_ms)),
            ..PrimaryOptions::default()
        },
    );
    type Outcome<T> = (BTreeMap<String, usize>, u64, T);
    let outcome: Rc<RefCell<Option<Outcome<T>>>> = Rc::default();
    let o = outcome.clone();
    on_all_ready(&p, 2, move |lp, p, addr| {
        let conns = ask(addr, 16);
        let p2 = p.clone();
        lp.spawn_blocking(
            move || clients(conns, addr),
            move |lp, r| {
                let (answers, rest) = r.unwrap();
                let tally = RefCell::new(BTreeMap::new());
                count_answers(&tally, answers);
                *o.borrow_mut() = Some((tally.into_inner(), p2.accept_windows(), rest));
                p2.disconnect(lp, |_, _| {});
            },
        );
    });
    for _ in 0..2 {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);
    let (tally, windows, rest) = outcome.borrow_mut().take().expect("clients finished");
    let served = tally
        .iter()
        .filter_map(|(k, n)| k.starts_with('w').then_some(n))
        .sum();
    (served, tally, windows, rest)
}

/// Connects eight clients from the primary's loop (so the primary accepts none of them
/// before they all wait in the backlog), collects their answers into `tallies`, and
/// repeats `rounds` times; then disconnects the workers.
fn burst(
    lp: &mut EventLoop,
    p: &Primary,
    addr: SocketAddr,
    tallies: Rc<RefCell<Vec<BTreeMap<String, usize>>>>,
    rounds: usize,
) {
    let conns = ask(addr, 8);
    let p2 = p.clone();
    lp.spawn_blocking(
        move || read_answers(conns),
        move |lp, r| {
            let tally = RefCell::new(BTreeMap::new());
            count_answers(&tally, r.unwrap());
            tallies.borrow_mut().push(tally.into_inner());
            if rounds > 1 {
                burst(lp, &p2, addr, tallies, rounds - 1);
            } else {
                p2.disconnect(lp, |_, _| {});
            }
        },
    );
}

#[test]
fn a_worker_at_its_connection_limit_gets_connections_again_once_one_ends() {
    // One worker with maxConnections 1: three clients one after the other are all served
    // (each connection ends before the next starts), so the primary must learn that the
    // worker has room again after it answered a hand-off with no credit left.
    worker(|lp, w| {
        let server = listen_id(lp, w, any_port());
        server.set_max_connections(Some(1));
        let w2 = w.clone();
        server.on_listening(lp, move |lp, _| {
            let _ = w2.send(lp, b"ready");
        });
    });
    let (mut lp, p) =
        primary("a_worker_at_its_connection_limit_gets_connections_again_once_one_ends");
    let tally: Rc<RefCell<BTreeMap<String, usize>>> = Rc::default();
    let t = tally.clone();
    on_all_ready(&p, 1, move |lp, p, addr| {
        let (t, p2) = (t.clone(), p.clone());
        lp.spawn_blocking(
            move || (0..3).map(|_| fetch(addr)).collect::<Vec<_>>(),
            move |lp, r| {
                count_answers(&t, r.unwrap());
                p2.disconnect(lp, |_, _| {});
            },
        );
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(tally.borrow().get("w1"), Some(&3), "{:?}", tally.borrow());
}

#[test]
fn net_server_drop_connection() {
    // maxConnections 0, 1 and 9 on three workers: of 10 connections each gets exactly that
    // many; the rest are refused and go elsewhere.
    worker(|lp, w| {
        let w2 = w.clone();
        let server = w.listen_tcp(lp, any_port(), move |lp, _, conn| {
            let reply = format!("w{}", w2.id());
            conn.on_data(lp, move |lp, c, _| {
                c.write(lp, reply.as_bytes());
            });
            conn.on_end(lp, |lp, c| c.destroy(lp));
        });
        server.set_max_connections(Some(match w.id() {
            1 => 0,
            2 => 1,
            _ => 9,
        }));
        let w3 = w.clone();
        server.on_listening(lp, move |lp, _| {
            let _ = w3.send(lp, b"ready");
        });
    });
    let (mut lp, p) = primary("net_server_drop_connection");
    let tally: Rc<RefCell<BTreeMap<String, usize>>> = Rc::default();
    let t = tally.clone();
    on_all_ready(&p, 3, move |lp, p, addr| {
        let (t, p2) = (t.clone(), p.clone());
        lp.spawn_blocking(
            move || {
                // Hold all 10 open until each has its answer.
                let mut conns = ask(addr, 10);
                conns
                    .iter_mut()
                    .map(|s| {
                        let mut b = [0u8; 2];
                        s.read_exact(&mut b)
                            .map(|_| String::from_utf8_lossy(&b).into_owned())
                    })
                    .collect::<Vec<_>>()
            },
            move |lp, r| {
                count_answers(&t, r.unwrap());
                p2.disconnect(lp, |_, _| {});
            },
        );
    });
    for _ in 0..3 {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);
    let tally = tally.borrow();
    assert_eq!(tally.get("w1"), None, "{tally:?}");
    assert_eq!(tally.get("w2"), Some(&1), "{tally:?}");
    assert_eq!(tally.get("w3"), Some(&9), "{tally:?}");
}

#[test]
fn rr_handle_keep_loop_alive() {
    // A round-robin server keeps the worker alive after the channel is unref'd.
    worker(|lp, w| {
        let server = listen_id(lp, w, any_port());
        let w2 = w.clone();
        server.on_listening(lp, move |lp, _| w2.unref_channel(lp));
        w.on_message(lp, move |lp, _, _| server.close(lp, |_| {}));
    });
    let (mut lp, p) = primary("rr_handle_keep_loop_alive");
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Listening { worker, .. } => {
            let (l, p, w) = (l.clone(), p.clone(), *worker);
            lp.set_timeout(300, move |lp| {
                l.borrow_mut().push(format!(
                    "alive at 300 ms: {}",
                    !p.worker(w).unwrap().is_dead()
                ));
                p.send(lp, w, b"close your server").unwrap();
            });
        }
        Event::Exit { status, .. } => l.borrow_mut().push(format!("exit {:?}", status.code)),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(*log.borrow(), ["alive at 300 ms: true", "exit Some(0)"]);
}

#[test]
fn rr_handle_close() {
    // Closing the round-robin server and unref'ing the channel lets the worker exit.
    worker(|lp, w| {
        let server = listen_id(lp, w, any_port());
        let w2 = w.clone();
        server.on_listening(lp, move |lp, s| {
            s.close(lp, |_| {});
            w2.unref_channel(lp);
        });
    });
    let (mut lp, p) = primary("rr_handle_close");
    let exit = Rc::new(RefCell::new(None));
    let e = exit.clone();
    p.on(move |_, p, ev| {
        if let Event::Exit { worker, status } = ev {
            *e.borrow_mut() = Some((
                status.code,
                p.worker(*worker).unwrap().exited_after_disconnect,
            ));
        }
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(*exit.borrow(), Some((Some(0), Some(false))));
    assert_eq!(p.listener_count(), 0);
}

#[test]
fn shared_leak() {
    // Shared policy: both workers disconnect while a client connection is open; both exit
    // 0 once it ends, and nothing stays behind.
    worker(|lp, w| {
        let w2 = w.clone();
        let server = w.listen_tcp(lp, any_port(), move |lp, _, conn| {
            let reply = format!("w{}", w2.id());
            conn.on_data(lp, move |lp, c, _| {
                c.write(lp, reply.as_bytes());
            });
            conn.on_end(lp, |lp, c| c.destroy(lp));
        });
        let w3 = w.clone();
        server.on_listening(lp, move |lp, _| {
            let _ = w3.send(lp, b"ready");
        });
    });
    let (mut lp, p) = with_policy("shared_leak", Policy::Shared);
    let port = Rc::new(Cell::new(0u16));
    let exits = Rc::new(RefCell::new(Vec::new()));
    let e = exits.clone();
    p.on(move |_, _, ev| {
        if let Event::Exit { status, .. } = ev {
            e.borrow_mut().push(status.code);
        }
    });
    let pt = port.clone();
    on_all_ready(&p, 2, move |lp, p, addr| {
        pt.set(addr.port());
        let p2 = p.clone();
        lp.spawn_blocking(
            move || {
                let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s.write_all(b"x").unwrap();
                let mut b = [0u8; 2];
                s.read_exact(&mut b).unwrap();
                s
            },
            move |lp, r| {
                let client = r.unwrap();
                p2.disconnect(lp, |_, _| {});
                lp.set_timeout(300, move |_| drop(client));
            },
        );
    });
    p.fork(&mut lp).unwrap();
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(*exits.borrow(), [Some(0), Some(0)]);
    assert_eq!(p.listener_count(), 0, "no listener left");
    std::net::TcpListener::bind(("127.0.0.1", port.get())).expect("the port is free again");
}

#[test]
fn rr_distribution_is_even() {
    // 20 000 connections, one at a time, over 4 workers: each gets 5 000 ± 5 %.
    const N: usize = 20_000;
    worker(listen_id_and_say_ready);
    let (mut lp, p) = primary("rr_distribution_is_even");
    let tally: Rc<RefCell<BTreeMap<String, usize>>> = Rc::default();
    let t = tally.clone();
    on_all_ready(&p, 4, move |lp, p, addr| {
        let (t, p2) = (t.clone(), p.clone());
        lp.spawn_blocking(
            move || (0..N).map(|_| fetch(addr)).collect::<Vec<_>>(),
            move |lp, r| {
                count_answers(&t, r.unwrap());
                p2.disconnect(lp, |_, _| {});
            },
        );
    });
    for _ in 0..4 {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);
    let tally = tally.borrow();
    assert_eq!(tally.values().sum::<usize>(), N, "{tally:?}");
    for w in ["w1", "w2", "w3", "w4"] {
        let n = tally.get(w).copied().unwrap_or(0);
        assert!((4750..=5250).contains(&n), "{w} got {n}: {tally:?}");
    }
}
