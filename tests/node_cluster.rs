//! Unmodified Node.js cluster workers (tests/node/app.js) under a forkloop primary,
//! speaking Node's own protocol. Each test prints why it is skipped when `node` is not on
//! the PATH.

mod cli_util;
mod cluster_util;

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::rc::Rc;

use cli_util::{IO_TIMEOUT, get};
use cluster_util::run;
use forkloop::ipc::Endpoint;
use forkloop::primary::supervise::{Supervisor, SupervisorEvent, SupervisorOptions};
use forkloop::primary::{Event, Policy, Primary, PrimaryOptions, Protocol, Settings};
use forkloop::rt::EventLoop;

fn have_node(test: &str) -> bool {
    cli_util::have("node", test)
}

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/app.js")
}

fn primary(policy: Policy, env: &[(&str, &str)]) -> (EventLoop, Primary) {
    let mut lp = EventLoop::new().expect("loop");
    let opts = PrimaryOptions {
        policy: Some(policy),
        ..PrimaryOptions::default()
    };
    let p = Primary::with_options(&mut lp, opts).expect("primary");
    let mut s = Settings::default()
        .exec("node")
        .args([app()])
        .protocol(Protocol::Node);
    for (k, v) in env {
        s = s.env(k, v);
    }
    p.setup(&mut lp, s);
    (lp, p)
}

/// The worker id in an answer `worker N pid P`.
fn worker_of(body: &str) -> Option<u32> {
    body.strip_prefix("worker ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

type Exits = Rc<RefCell<Vec<(u32, Option<i32>, Option<bool>)>>>;

fn record_exits(p: &Primary) -> Exits {
    let exits: Exits = Rc::default();
    let e = exits.clone();
    p.on(move |_, p, ev| {
        if let Event::Exit { worker, status } = ev {
            let info = p.worker(*worker);
            e.borrow_mut().push((
                *worker,
                status.code,
                info.and_then(|i| i.exited_after_disconnect),
            ));
        }
    });
    exits
}

/// Runs `f` with the shared port's loopback address once both Node workers listen on it.
fn when_both_listen(
    p: &Primary,
    mut f: impl FnMut(&mut EventLoop, &Primary, SocketAddr) + 'static,
) {
    let listening = Cell::new(0);
    p.on(move |lp, p, ev| {
        let Event::Listening {
            address: Endpoint::Tcp(addr),
            ..
        } = ev
        else {
            return;
        };
        listening.set(listening.get() + 1);
        if listening.get() == 2 {
            f(lp, p, SocketAddr::from(([127, 0, 0, 1], addr.port())));
        }
    });
}

/// Two Node workers listen on port 0; once both do, 20 requests, then the primary
/// disconnects them. Returns the answers and the exits.
fn serve(policy: Policy) -> (Vec<std::io::Result<String>>, Exits) {
    let (mut lp, p) = primary(policy, &[]);
    let exits = record_exits(&p);
    let answers = Rc::new(RefCell::new(Vec::new()));
    let a = answers.clone();
    when_both_listen(&p, move |lp, p, addr| {
        let (a, p) = (a.clone(), p.clone());
        lp.spawn_blocking(
            move || (0..20).map(|_| get(addr)).collect::<Vec<_>>(),
            move |lp, got| {
                *a.borrow_mut() = got.unwrap_or_default();
                p.disconnect(lp, |_, _| {});
            },
        );
    });
    p.fork(&mut lp).expect("fork");
    p.fork(&mut lp).expect("fork");
    assert_eq!(run(&mut lp), 0);
    let got = answers.take();
    (got, exits)
}

#[test]
fn node_app_serves_round_robin() {
    if !have_node("node_app_serves_round_robin") {
        return;
    }
    let (answers, exits) = serve(Policy::RoundRobin);
    assert_eq!(answers.len(), 20);
    let ids: BTreeSet<u32> = answers
        .iter()
        .map(|a| match a {
            Ok(body) => worker_of(body).unwrap_or_else(|| panic!("answer {body:?}")),
            Err(e) => panic!("request failed: {e}"),
        })
        .collect();
    assert_eq!(ids, BTreeSet::from([1, 2]), "both workers served");
    let mut exits = exits.take();
    exits.sort();
    assert_eq!(
        exits,
        [(1, Some(0), Some(true)), (2, Some(0), Some(true))],
        "disconnected on purpose, exit 0"
    );
}

#[test]
fn node_app_serves_shared_socket() {
    if !have_node("node_app_serves_shared_socket") {
        return;
    }
    let (answers, exits) = serve(Policy::Shared);
    assert_eq!(answers.len(), 20);
    for a in &answers {
        match a {
            Ok(body) => assert!(worker_of(body).is_some(), "answer {body:?}"),
            Err(e) => panic!("request failed: {e}"),
        }
    }
    assert_eq!(exits.borrow().len(), 2);
}

#[test]
fn node_messages_both_ways_and_worker_disconnect() {
    if !have_node("node_messages_both_ways_and_worker_disconnect") {
        return;
    }
    let (mut lp, p) = primary(Policy::RoundRobin, &[]);
    let exits = record_exits(&p);
    let seen: Rc<RefCell<Vec<(u32, String)>>> = Rc::default();
    let refused_bad_json = Rc::new(Cell::new(false));
    let (s, r) = (seen.clone(), refused_bad_json.clone());
    p.on(move |lp, p, ev| {
        let Event::Message { worker, data, .. } = ev else {
            return;
        };
        let text = String::from_utf8_lossy(data).into_owned();
        s.borrow_mut().push((*worker, text.clone()));
        if text.starts_with(r#"{"listening""#) {
            r.set(p.send(lp, *worker, b"not json").is_err());
            let echo = format!(r#"{{"echo":"hi {worker}"}}"#);
            p.send(lp, *worker, echo.as_bytes()).expect("send");
        } else if text.starts_with(r#"{"echoed""#) {
            // Worker-initiated disconnect: Node's `cluster.worker.disconnect()`.
            p.send(lp, *worker, br#"{"leave":true}"#).expect("send");
        }
    });
    p.fork(&mut lp).expect("fork");
    assert_eq!(run(&mut lp), 0);
    let seen = seen.take();
    assert!(refused_bad_json.get(), "non-JSON user bytes are refused");
    assert!(
        seen.iter()
            .any(|(w, m)| *w == 1 && m == r#"{"echoed":"hi 1","worker":1}"#),
        "{seen:?}"
    );
    assert_eq!(
        exits.take(),
        [(1, Some(0), Some(true))],
        "left on purpose (exitedAfterDisconnect), exit 0"
    );
}

#[test]
fn sigkilled_node_worker_is_replaced() {
    if !have_node("sigkilled_node_worker_is_replaced") {
        return;
    }
    let (mut lp, p) = primary(Policy::RoundRobin, &[]);
    let opts = SupervisorOptions {
        workers: 2,
        signals: false,
        health: None,
        ..SupervisorOptions::default()
    };
    let sup = Supervisor::new(&mut lp, &p, opts).expect("supervisor");
    let port = Rc::new(Cell::new(0u16));
    let pt = port.clone();
    p.on(move |_, _, ev| {
        if let Event::Listening {
            address: Endpoint::Tcp(a),
            ..
        } = ev
        {
            pt.set(a.port());
        }
    });
    let events: Rc<RefCell<Vec<SupervisorEvent>>> = Rc::default();
    let answer = Rc::new(RefCell::new(None));
    let (ev_log, ans, s2, p2) = (events.clone(), answer.clone(), sup.clone(), p.clone());
    let ready = Cell::new(0);
    sup.on(move |lp, _, ev| {
        ev_log.borrow_mut().push(ev.clone());
        let SupervisorEvent::Ready { worker, .. } = ev else {
            return;
        };
        ready.set(ready.get() + 1);
        if ready.get() == 2 {
            let pid = p2.worker(1).map(|i| i.pid).expect("worker 1");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if *worker == 3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], port.get()));
            let (ans, s3) = (ans.clone(), s2.clone());
            lp.spawn_blocking(
                move || (0..4).map(|_| get(addr)).collect::<Vec<_>>(),
                move |lp, got| {
                    *ans.borrow_mut() = got.ok();
                    s3.shutdown(lp);
                },
            );
        }
    });
    sup.start(&mut lp).expect("start");
    assert_eq!(run(&mut lp), 0);
    let events = events.take();
    assert!(
        events.iter().any(|e| matches!(
            e,
            SupervisorEvent::Restarting {
                worker: 1,
                boot_failure: false,
                ..
            }
        )),
        "{events:?}"
    );
    let answers = answer.take().expect("requests ran");
    let ids: BTreeSet<u32> = answers
        .iter()
        .map(|a| match a {
            Ok(body) => worker_of(body).unwrap_or(0),
            Err(e) => panic!("request failed: {e}"),
        })
        .collect();
    assert_eq!(ids, BTreeSet::from([2, 3]), "the replacement serves");
}

/// Sends one keep-alive request on `s` and reads its answer; the body.
fn ask_keep_alive(s: &mut TcpStream) -> std::io::Result<String> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the answer"));
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((_, body)) = text.split_once("\r\n\r\n")
            && body.ends_with('\n')
        {
            return Ok(body.trim().to_owned());
        }
    }
}

#[test]
fn refused_connection_goes_to_another_node_worker() {
    if !have_node("refused_connection_goes_to_another_node_worker") {
        return;
    }
    // Each worker takes one connection at a time (Node's `server.maxConnections`).
    let (mut lp, p) = primary(Policy::RoundRobin, &[("MAX_CONNECTIONS", "1")]);
    let result = Rc::new(RefCell::new(None));
    let r = result.clone();
    when_both_listen(&p, move |lp, p, addr| {
        let (r, p) = (r.clone(), p.clone());
        lp.spawn_blocking(
            move || -> std::io::Result<(u32, u32, u32)> {
                // A stays open on the first worker in turn: that worker is full.
                let mut a = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                let first = ask_keep_alive(&mut a)?;
                // B goes to the other worker and ends.
                let mut b = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
                let second = ask_keep_alive(&mut b)?;
                drop(b);
                std::thread::sleep(std::time::Duration::from_millis(300));
                // C's turn is the full worker's: refused there, it must be served by the
                // other one.
                let third = get(addr)?;
                drop(a);
                let id = |s: &str| worker_of(s).unwrap_or(0);
                Ok((id(&first), id(&second), id(&third)))
            },
            move |lp, got| {
                *r.borrow_mut() = Some(
                    got.map_err(|_| "client panicked".to_owned())
                        .map(|r| r.map_err(|e| e.to_string())),
                );
                p.disconnect(lp, |_, _| {});
            },
        );
    });
    p.fork(&mut lp).expect("fork");
    p.fork(&mut lp).expect("fork");
    assert_eq!(run(&mut lp), 0);
    let got = result.take().expect("client ran");
    let (a, b, c) = match got {
        Ok(Ok(ids)) => ids,
        other => panic!("client failed: {other:?}"),
    };
    assert_eq!((a, b), (1, 2), "connections alternate");
    assert_eq!(c, 2, "worker 1 is full: its turn goes to worker 2");
}

#[test]
fn closing_a_node_workers_channel_ends_it() {
    if !have_node("closing_a_node_workers_channel_ends_it") {
        return;
    }
    // Node's `worker.process.disconnect()`: the worker sees its channel close and exits 0;
    // it did not leave on purpose.
    let (mut lp, p) = primary(Policy::RoundRobin, &[]);
    let exits = record_exits(&p);
    let closed = Rc::new(Cell::new(false));
    let c = closed.clone();
    p.on(move |lp, p, ev| {
        if let Event::Listening { worker, .. } = ev {
            c.set(p.close_channel(lp, *worker));
        }
    });
    p.fork(&mut lp).expect("fork");
    assert_eq!(run(&mut lp), 0);
    assert!(closed.get());
    assert_eq!(exits.take(), [(1, Some(0), Some(false))]);
}

#[test]
fn node_workers_relay_and_broadcast_through_the_primary() {
    if !have_node("node_workers_relay_and_broadcast_through_the_primary") {
        return;
    }
    let (mut lp, p) = primary(Policy::RoundRobin, &[]);
    let got: Rc<RefCell<BTreeSet<(u64, u64, String)>>> = Rc::default();
    let listening = Cell::new(0);
    let g = got.clone();
    p.on(move |lp, p, ev| {
        let Event::Message { data, .. } = ev else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        if v.get("listening").is_some() {
            listening.set(listening.get() + 1);
            if listening.get() == 3 {
                p.send(lp, 1, br#"{"broadcastNow":true}"#).expect("send");
                p.send(lp, 2, br#"{"relayTo":3}"#).expect("send");
            }
        }
        if let (Some(me), Some(from), Some(d)) =
            (v["me"].as_u64(), v["from"].as_u64(), v.get("gotRelay"))
        {
            g.borrow_mut().insert((me, from, d.to_string()));
            if g.borrow().len() == 3 {
                p.disconnect(lp, |_, _| {});
            }
        }
    });
    for _ in 0..3 {
        p.fork(&mut lp).expect("fork");
    }
    assert_eq!(run(&mut lp), 0);
    let want = BTreeSet::from([
        (2, 1, r#"{"all":1}"#.to_owned()),
        (3, 1, r#"{"all":1}"#.to_owned()),
        (3, 2, r#"{"hi":2}"#.to_owned()),
    ]);
    assert_eq!(
        got.take(),
        want,
        "the broadcast reached every other worker, the relay its target"
    );
}
