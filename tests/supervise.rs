//! Supervision: restarts with backoff and the breaker, reload, scaling, health, shutdown,
//! the control handle (issue 6; the load-driven fault tests live in scripts/).

mod cluster_util;

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster_util::{
    ChildGuard, IO_TIMEOUT, args_for, fetch, port_of, primary, run, serve_id as serve,
    supervisor_options as opts, worker,
};
use forkloop::ipc::Endpoint;
use forkloop::net::Stream;
use forkloop::primary::supervise::{
    Cause, HealthPolicy, RestartPolicy, Supervisor, SupervisorEvent, SupervisorOptions,
};
use forkloop::primary::{Event, Primary};
use forkloop::rt::EventLoop;

fn record(sup: &Supervisor) -> Rc<RefCell<Vec<SupervisorEvent>>> {
    let log: Rc<RefCell<Vec<SupervisorEvent>>> = Rc::default();
    let l = log.clone();
    sup.on(move |_, _, ev| l.borrow_mut().push(ev.clone()));
    log
}

#[test]
fn boot_crash_backs_off_and_trips_the_breaker() {
    // Fault (c): slot 0's workers crash at boot; slot 1's worker (id 2) is healthy.
    worker(|lp, w| {
        if w.id() != 2 {
            std::process::exit(3);
        }
        serve(lp, w);
        w.on_message(lp, |lp, w, _| {
            let _ = w.send(lp, b"still serving");
        });
    });
    let (mut lp, p) = primary("boot_crash_backs_off_and_trips_the_breaker");
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            restart: RestartPolicy {
                base: Duration::from_millis(20),
                factor: 2.0,
                cap: Duration::from_millis(200),
                breaker_max: 3,
                breaker_window: Duration::from_secs(30),
                ..RestartPolicy::default()
            },
            ..opts(2)
        },
    )
    .unwrap();
    let log = record(&sup);
    let answered = Rc::new(Cell::new(false));
    let a = answered.clone();
    p.on(move |_, _, ev| {
        if let Event::Message { .. } = ev {
            a.set(true);
        }
    });
    let s2 = sup.clone();
    sup.on(move |lp, _, ev| {
        if let SupervisorEvent::BreakerTripped { .. } = ev {
            // The primary stays responsive and the other slot keeps serving.
            let p = s2.primary();
            p.send(lp, 2, b"are you there?").unwrap();
            let s3 = s2.clone();
            lp.set_timeout(200, move |lp| s3.shutdown(lp));
        }
    });
    sup.start(&mut lp).unwrap();
    assert_eq!(run(&mut lp), 0);
    let log = log.borrow();
    let delays: Vec<Duration> = log
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::Restarting {
                slot: 0,
                delay,
                boot_failure: true,
                ..
            } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays,
        [20, 40, 80].map(Duration::from_millis),
        "exponential backoff for boot failures: {log:?}"
    );
    assert!(
        log.iter().any(|e| matches!(
            e,
            SupervisorEvent::BreakerTripped {
                slot: 0,
                restarts: 4
            }
        )),
        "{log:?}"
    );
    assert!(answered.get(), "the healthy worker kept serving");
}

#[test]
fn stable_crash_restarts_at_once() {
    worker(|lp, w| {
        serve(lp, w);
        w.on_message(lp, |_, _, _| std::process::exit(9));
    });
    let (mut lp, p) = primary("stable_crash_restarts_at_once");
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            restart: RestartPolicy {
                min_uptime: Duration::from_millis(50),
                ..RestartPolicy::default()
            },
            ..opts(1)
        },
    )
    .unwrap();
    let log = record(&sup);
    let readies = Rc::new(Cell::new(0));
    let (r, s2) = (readies.clone(), sup.clone());
    sup.on(move |lp, _, ev| {
        if let SupervisorEvent::Ready { worker, .. } = ev {
            r.set(r.get() + 1);
            let (w, s3) = (*worker, s2.clone());
            if r.get() == 1 {
                // Crash it once it has been up past the minimum uptime.
                lp.set_timeout(100, move |lp| s3.primary().send(lp, w, b"crash").unwrap());
            } else {
                s3.shutdown(lp);
            }
        }
    });
    sup.start(&mut lp).unwrap();
    assert_eq!(run(&mut lp), 0);
    let restarting: Vec<_> = log
        .borrow()
        .iter()
        .filter(|e| matches!(e, SupervisorEvent::Restarting { .. }))
        .cloned()
        .collect();
    assert_eq!(
        restarting,
        [SupervisorEvent::Restarting {
            slot: 0,
            worker: 1,
            delay: Duration::ZERO,
            boot_failure: false
        }]
    );
}

#[test]
fn reload_replaces_every_worker_and_keeps_the_port() {
    worker(serve);
    let (mut lp, p) = primary("reload_replaces_every_worker_and_keeps_the_port");
    let sup = Supervisor::new(&mut lp, &p, opts(2)).unwrap();
    let port = port_of(&p);
    let result = Rc::new(RefCell::new(None));
    let ready = Rc::new(Cell::new(0));
    let (r, res, s2, pt) = (ready.clone(), result.clone(), sup.clone(), port.clone());
    sup.on(move |lp, _, ev| {
        if let SupervisorEvent::Ready { .. } = ev {
            r.set(r.get() + 1);
            if r.get() == 2 {
                let before: Vec<u32> = s2.stats().iter().map(|s| s.id).collect();
                let (res, s3, port) = (res.clone(), s2.clone(), pt.get());
                s2.reload(lp, move |lp, outcome| {
                    let after = s3.stats();
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    // The client runs off the loop: the loop must hand its connection off.
                    lp.spawn_blocking(
                        move || fetch(addr).unwrap(),
                        move |lp, answer| {
                            *res.borrow_mut() = Some((outcome, before, after, answer.unwrap()));
                            s3.shutdown(lp);
                        },
                    );
                });
            }
        }
    });
    sup.start(&mut lp).unwrap();
    assert_eq!(run(&mut lp), 0);
    let (outcome, before, after, answer) = result.borrow_mut().take().unwrap();
    assert_eq!(outcome, Ok(()));
    assert_eq!(before, [1, 2]);
    let ids: Vec<u32> = after.iter().map(|s| s.id).collect();
    assert_eq!(ids, [3, 4], "every worker replaced");
    assert!(after.iter().all(|s| s.generation == 2));
    assert!(
        answer == "w3" || answer == "w4",
        "the new generation serves the same port: {answer}"
    );
}

#[test]
fn failed_reload_keeps_the_old_generation() {
    // New workers crash at boot once the marker file exists.
    let marker = std::env::temp_dir().join(format!("forkloop-reload-fail-{}", std::process::id()));
    let mk = marker.clone();
    worker(move |lp, w| {
        let marker = std::env::var("FORKLOOP_TEST_MARKER").unwrap();
        if std::path::Path::new(&marker).exists() {
            std::process::exit(1);
        }
        let _ = mk;
        serve(lp, w);
    });
    let (mut lp, p) = primary("failed_reload_keeps_the_old_generation");
    p.setup(
        &mut lp,
        forkloop::primary::Settings::default().env("FORKLOOP_TEST_MARKER", &marker),
    );
    let sup = Supervisor::new(&mut lp, &p, opts(2)).unwrap();
    let port = port_of(&p);
    let result = Rc::new(RefCell::new(None));
    let ready = Rc::new(Cell::new(0));
    let (r, res, s2, mk) = (ready.clone(), result.clone(), sup.clone(), marker.clone());
    sup.on(move |lp, _, ev| {
        if let SupervisorEvent::Ready { .. } = ev {
            r.set(r.get() + 1);
            if r.get() == 2 {
                std::fs::write(&mk, b"fail").unwrap();
                let (res, s3, port) = (res.clone(), s2.clone(), port.get());
                s2.reload(lp, move |lp, outcome| {
                    let ids: Vec<u32> = s3.stats().iter().map(|s| s.id).collect();
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    lp.spawn_blocking(
                        move || fetch(addr).unwrap(),
                        move |lp, answer| {
                            *res.borrow_mut() = Some((outcome, ids, answer.unwrap()));
                            s3.shutdown(lp);
                        },
                    );
                });
            }
        }
    });
    sup.start(&mut lp).unwrap();
    let code = run(&mut lp);
    let _ = std::fs::remove_file(&marker);
    assert_eq!(code, 0);
    let (outcome, ids, answer) = result.borrow_mut().take().unwrap();
    assert!(outcome.is_err(), "the reload reports failure");
    assert_eq!(ids, [1, 2], "the old generation keeps serving");
    assert!(answer == "w1" || answer == "w2", "{answer}");
}

#[test]
fn scale_stats_and_control_from_another_thread() {
    worker(serve);
    let (mut lp, p) = primary("scale_stats_and_control_from_another_thread");
    let sup = Supervisor::new(&mut lp, &p, opts(1)).unwrap();
    let control = sup.control(&lp);
    let outcome = Rc::new(RefCell::new(None));
    let o = outcome.clone();
    let started = Rc::new(Cell::new(false));
    let s2 = sup.clone();
    sup.on(move |lp, _, ev| {
        if let SupervisorEvent::Ready { .. } = ev {
            if started.replace(true) {
                return;
            }
            let c = control.clone();
            let o = o.clone();
            let s3 = s2.clone();
            lp.spawn_blocking(
                move || {
                    // From another thread: scale to 3, wait for it, read the stats, reload.
                    assert!(c.scale(3));
                    let deadline = Instant::now() + IO_TIMEOUT;
                    let mut stats = Vec::new();
                    while Instant::now() < deadline {
                        stats = c.stats(IO_TIMEOUT).unwrap();
                        if stats.len() == 3
                            && stats
                                .iter()
                                .all(|s| s.state == forkloop::cluster::WorkerState::Listening)
                        {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let reload = c.reload().wait_timeout(IO_TIMEOUT).unwrap();
                    assert!(c.scale(1));
                    (stats, reload)
                },
                move |lp, r| {
                    *o.borrow_mut() = Some(r.unwrap());
                    let s4 = s3.clone();
                    lp.set_timeout(100, move |lp| s4.shutdown(lp));
                },
            );
        }
    });
    sup.start(&mut lp).unwrap();
    assert_eq!(run(&mut lp), 0);
    let (stats, reload) = outcome.borrow_mut().take().unwrap();
    assert_eq!(stats.len(), 3);
    assert!(
        stats
            .iter()
            .all(|s| s.pid > 0 && s.generation == 1 && s.routed)
    );
    assert!(stats.iter().all(|s| s.rss_bytes.is_some_and(|r| r > 0)));
    assert_eq!(reload, Ok(()));
    assert_eq!(sup.size(), 1);
}

#[test]
fn hung_worker_is_replaced_without_failed_requests() {
    // Fault (f): worker 1 spins forever on request; heartbeats notice, it is killed and
    // replaced; a client making requests all along sees no failure.
    worker(|lp, w| {
        serve(lp, w);
        w.on_message(lp, |_, _, _| {
            loop {
                std::hint::black_box(0u64);
            }
        });
    });
    let (mut lp, p) = primary("hung_worker_is_replaced_without_failed_requests");
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            health: Some(HealthPolicy {
                interval: Duration::from_millis(50),
                quarantine_lag: Duration::from_millis(500),
                timeout: Duration::from_millis(400),
                kill_grace: Duration::from_millis(100),
            }),
            ..opts(2)
        },
    )
    .unwrap();
    let log = record(&sup);
    let port = port_of(&p);
    let answers = Rc::new(RefCell::new(Vec::new()));
    let ready = Rc::new(Cell::new(0));
    let (r, a, s2) = (ready.clone(), answers.clone(), sup.clone());
    sup.on(move |lp, _, ev| {
        if let SupervisorEvent::Ready { .. } = ev {
            r.set(r.get() + 1);
            if r.get() != 2 {
                return;
            }
            s2.primary().send(lp, 1, b"hang").unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], port.get()));
            let (a, s3) = (a.clone(), s2.clone());
            lp.spawn_blocking(
                move || {
                    let end = Instant::now() + Duration::from_millis(1500);
                    let mut out = Vec::new();
                    while Instant::now() < end {
                        out.push(fetch(addr).map_err(|e| e.to_string()));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    out
                },
                move |lp, r| {
                    *a.borrow_mut() = r.unwrap();
                    s3.shutdown(lp);
                },
            );
        }
    });
    sup.start(&mut lp).unwrap();
    assert_eq!(run(&mut lp), 0);
    let answers = answers.borrow();
    assert!(answers.len() > 20, "{}", answers.len());
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let log = log.borrow();
    assert!(
        log.iter().any(|e| matches!(
            e,
            SupervisorEvent::Retiring {
                worker: 1,
                cause: Cause::Unresponsive
            }
        )),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|e| matches!(e, SupervisorEvent::Ready { slot: 0, worker } if *worker > 2)),
        "a replacement came up in the hung worker's slot: {log:?}"
    );
}

#[test]
fn going_down_starts_the_replacement_first() {
    worker(|lp, w| {
        serve(lp, w);
        w.on_message(lp, |lp, w, _| w.going_down(lp, "fatal error"));
    });
    let (mut lp, p) = primary("going_down_starts_the_replacement_first");
    // A worker up past the minimum uptime that goes down is a stable end: its replacement
    // starts at once (an unstable one waits the restart delay; see going_down_counts_*).
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            restart: RestartPolicy {
                min_uptime: Duration::from_millis(50),
                ..RestartPolicy::default()
            },
            ..opts(1)
        },
    )
    .unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    let o = order.clone();
    p.on(move |_, _, ev| match ev {
        Event::Fork { worker } => o.borrow_mut().push(format!("fork {worker}")),
        Event::Exit { worker, .. } => o.borrow_mut().push(format!("exit {worker}")),
        _ => {}
    });
    let s2 = sup.clone();
    sup.on(move |lp, _, ev| match ev {
        SupervisorEvent::Ready { worker: 1, .. } => {
            let p = s2.primary();
            lp.set_timeout(100, move |lp| p.send(lp, 1, b"die").unwrap());
        }
        SupervisorEvent::Ready { worker: 2, .. } => {
            let s3 = s2.clone();
            lp.set_timeout(100, move |lp| s3.shutdown(lp));
        }
        _ => {}
    });
    sup.start(&mut lp).unwrap();
    assert_eq!(run(&mut lp), 0);
    let order = order.borrow();
    let fork2 = order.iter().position(|s| s == "fork 2").unwrap();
    let exit1 = order.iter().position(|s| s == "exit 1").unwrap();
    assert!(
        fork2 < exit1,
        "replacement before the old one leaves: {order:?}"
    );
}

#[test]
fn max_connections_recycles_one_at_a_time() {
    worker(serve);
    let (mut lp, p) = primary("max_connections_recycles_one_at_a_time");
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            max_connections: Some(3),
            health: Some(HealthPolicy {
                interval: Duration::from_millis(30),
                ..HealthPolicy::default()
            }),
            ..opts(2)
        },
    )
    .unwrap();
    let log = record(&sup);
    let port = port_of(&p);
    let answers = Rc::new(RefCell::new(Vec::new()));
    let started = Rc::new(Cell::new(0));
    let (st, a, s2) = (started.clone(), answers.clone(), sup.clone());
    sup.on(move |lp, _, ev| {
        if let SupervisorEvent::Ready { .. } = ev {
            st.set(st.get() + 1);
            if st.get() != 2 {
                return;
            }
            let addr = SocketAddr::from(([127, 0, 0, 1], port.get()));
            let (a, s3) = (a.clone(), s2.clone());
            lp.spawn_blocking(
                move || {
                    (0..30)
                        .map(|_| {
                            std::thread::sleep(Duration::from_millis(20));
                            fetch(addr).map_err(|e| e.to_string())
                        })
                        .collect::<Vec<_>>()
                },
                move |lp, r| {
                    *a.borrow_mut() = r.unwrap();
                    s3.shutdown(lp);
                },
            );
        }
    });
    sup.start(&mut lp).unwrap();
    assert_eq!(run(&mut lp), 0);
    assert!(
        answers.borrow().iter().all(|a| a.is_ok()),
        "{:?}",
        answers.borrow()
    );
    let recycled = log
        .borrow()
        .iter()
        .filter(|e| {
            matches!(
                e,
                SupervisorEvent::Retiring {
                    cause: Cause::Connections,
                    ..
                }
            )
        })
        .count();
    assert!(
        recycled >= 2,
        "workers were recycled after 3 connections: {:?}",
        log.borrow()
    );
}

/// The sub-primary of the graceful-shutdown test: a supervised cluster whose workers answer
/// each request after 400 ms, with the real signal handlers.
fn slow_cluster() {
    let mut lp = EventLoop::new().unwrap();
    let p = Primary::new(&mut lp).unwrap();
    p.setup(
        &mut lp,
        forkloop::primary::Settings::default().args(args_for("sigterm_lets_slow_requests_finish")),
    );
    p.on(|_, _, ev| {
        if let Event::Listening {
            address: Endpoint::Tcp(a),
            ..
        } = ev
        {
            println!("listening {}", a.port());
        }
    });
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            workers: 1,
            health: None,
            ..SupervisorOptions::default()
        },
    )
    .unwrap();
    sup.start(&mut lp).unwrap();
    std::process::exit(lp.run().unwrap());
}

#[test]
fn sigterm_lets_slow_requests_finish() {
    // Fault (e): SIGTERM with slow in-flight requests: all complete; exit 0.
    worker(|lp, w| {
        let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), |lp, _, c: Stream| {
            c.on_data(lp, |lp, c, _| {
                lp.set_timeout(400, move |lp| {
                    c.write(lp, b"done");
                    c.end(lp);
                });
            });
        });
        server.on_error(|_, _, e| panic!("{e}"));
    });
    if std::env::var_os("FORKLOOP_TEST_SUB").is_some() {
        slow_cluster();
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args(args_for("sigterm_lets_slow_requests_finish"))
        .env("FORKLOOP_TEST_SUB", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let mut lines = BufReader::new(guard.0.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines.next().expect("sub-primary output").unwrap();
        if let Some(p) = line.strip_prefix("listening ") {
            break p.trim().parse().unwrap();
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let clients: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || fetch(addr)))
        .collect();
    std::thread::sleep(Duration::from_millis(100)); // requests are in flight
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guard.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    for c in clients {
        assert_eq!(
            c.join().unwrap().unwrap(),
            "done",
            "in-flight request completed"
        );
    }
    let status = guard.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "clean drain, exit 0");
}

#[test]
fn restart_of_the_only_worker_refuses_no_client() {
    // The only worker dies; its restart waits 300 ms (it was unstable). A client that
    // connects meanwhile waits in the backlog and is served by the replacement.
    worker(serve);
    let (mut lp, p) = primary("restart_of_the_only_worker_refuses_no_client");
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            restart: RestartPolicy {
                base: Duration::from_millis(300),
                min_uptime: Duration::from_secs(60),
                ..RestartPolicy::default()
            },
            ..opts(1)
        },
    )
    .unwrap();
    let port = port_of(&p);
    let answer = Rc::new(RefCell::new(None));
    let (a, s2) = (answer.clone(), sup.clone());
    sup.on(move |lp, _, ev| match ev {
        SupervisorEvent::Ready { worker: 1, .. } => {
            let _ = s2
                .primary()
                .kill(1, nix::sys::signal::Signal::SIGKILL as i32);
        }
        SupervisorEvent::Restarting { .. } => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port.get()));
            let (a, s3) = (a.clone(), s2.clone());
            lp.spawn_blocking(
                move || fetch(addr).map_err(|e| e.to_string()),
                move |lp, r| {
                    *a.borrow_mut() = Some(r.unwrap());
                    s3.shutdown(lp);
                },
            );
        }
        _ => {}
    });
    sup.start(&mut lp).unwrap();
    assert_eq!(run(&mut lp), 0);
    assert_eq!(*answer.borrow(), Some(Ok("w2".to_string())));
    assert_eq!(p.listener_count(), 0, "listeners closed at shutdown");
}

#[test]
fn systemd_notifications_follow_the_lifecycle() {
    worker(serve);
    if std::env::var_os("FORKLOOP_TEST_SUB").is_some() {
        // The sub-primary: ready, reload, shut down.
        let mut lp = EventLoop::new().unwrap();
        let p = Primary::new(&mut lp).unwrap();
        p.setup(
            &mut lp,
            forkloop::primary::Settings::default()
                .args(args_for("systemd_notifications_follow_the_lifecycle")),
        );
        let sup = Supervisor::new(&mut lp, &p, opts(1)).unwrap();
        let s2 = sup.clone();
        sup.on(move |lp, _, ev| {
            if let SupervisorEvent::Ready { worker: 1, .. } = ev {
                let s3 = s2.clone();
                s2.reload(lp, move |lp, _| s3.shutdown(lp));
            }
        });
        sup.start(&mut lp).unwrap();
        std::process::exit(lp.run().unwrap());
    }
    let dir = std::env::temp_dir().join(format!("forkloop-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(args_for("systemd_notifications_follow_the_lifecycle"))
        .env("FORKLOOP_TEST_SUB", "1")
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got
        .iter()
        .any(|m: &String| m.starts_with("STATUS=draining"))
    {
        let n = sock
            .recv(&mut buf)
            .expect("a notification before the timeout");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(guard.0.wait().unwrap().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
    let kinds: Vec<&str> = got
        .iter()
        .map(|m| m.split(['\n', '=']).next().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "READY",
            "STATUS",
            "RELOADING",
            "STATUS",
            "READY",
            "STATUS",
            "STOPPING",
            "STATUS"
        ],
        "{got:?}"
    );
    assert_eq!(got[1], "STATUS=1 workers ready");
    assert!(got[2].contains("MONOTONIC_USEC="), "{got:?}");
    assert_eq!(got[5], "STATUS=reloaded");
}
