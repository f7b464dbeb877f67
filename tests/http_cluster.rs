//! `forkloop::http` in a cluster worker that leaves while clients use it: with no code in
//! the handler for it, an idle keep-alive connection is closed at once, a request in flight
//! is answered (with `Connection: close`), and connections under load get a last response
//! that says `Connection: close` followed by a clean close — never a cut response.
#![cfg(feature = "http")]

mod cluster_util;
mod http_util;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster_util::{Log, name, on_all_ready, primary, run, worker};
use forkloop::http::{Config, Server};
use http_util::{connect, next_response, read_response, read_to_close};

/// One keep-alive client under load: requests back to back until the server closes.
/// Returns the responses it got; asserts the last one said `Connection: close`.
fn load_client(addr: SocketAddr, stop: &AtomicBool) -> usize {
    let mut s = connect(addr);
    let mut got = 0;
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let (head, body) = next_response(&mut s).expect("a busy connection is never cut");
        assert_eq!(body, b"hello");
        got += 1;
        if head.contains("Connection: close") {
            let (rest, clean) = read_to_close(&mut s);
            assert!(
                rest.is_empty() && clean,
                "after Connection: close: {rest:?} {clean}"
            );
            return got;
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    panic!("the server never said Connection: close ({got} responses)");
}

#[test]
fn a_leaving_worker_closes_idle_connections_and_finishes_requests() {
    worker(|lp, w| {
        let config = Config {
            // Far longer than the test waits: closes seen here come from leaving.
            keep_alive_timeout: Duration::from_secs(60),
            ..Config::default()
        };
        let server = Server::listen(
            lp,
            Some(w),
            "127.0.0.1:0".parse().unwrap(),
            config,
            |lp, req, res| {
                if req.path() == "/slow" {
                    lp.set_timeout(700u64, move |lp| res.end(lp, b"slow"));
                } else {
                    res.end(lp, b"hello");
                }
            },
        );
        let w2 = w.clone();
        server.net().on_listening(lp, move |lp, _| {
            let _ = w2.send(lp, b"ready");
        });
    });
    let (mut lp, p) = primary("a_leaving_worker_closes_idle_connections_and_finishes_requests");
    let log = Log::default();
    let l2 = log.clone();
    p.on(move |_, _, ev| l2.push(name(ev)));
    let results: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let clients_ready = Arc::new(AtomicUsize::new(0));
    let threads: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>> = Arc::default();
    let (r2, ready2, t2) = (results.clone(), clients_ready.clone(), threads.clone());
    on_all_ready(&p, 1, move |lp, p, addr| {
        let mut ts = t2.lock().unwrap();
        // An idle keep-alive connection.
        let (r, ready) = (r2.clone(), ready2.clone());
        ts.push(std::thread::spawn(move || {
            let mut s = connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let (head, _) = read_response(&mut s);
            assert!(!head.contains("Connection: close"), "{head}");
            ready.fetch_add(1, Ordering::SeqCst);
            let t = Instant::now();
            let (rest, clean) = read_to_close(&mut s);
            r.lock().unwrap().push(format!(
                "idle closed clean={clean} empty={} fast={}",
                rest.is_empty(),
                t.elapsed() < Duration::from_secs(5)
            ));
        }));
        // A request in flight when the worker starts leaving.
        let (r, ready) = (r2.clone(), ready2.clone());
        ts.push(std::thread::spawn(move || {
            let mut s = connect(addr);
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            ready.fetch_add(1, Ordering::SeqCst);
            let (head, body) = read_response(&mut s);
            let (rest, clean) = read_to_close(&mut s);
            r.lock().unwrap().push(format!(
                "slow {} close={} then clean={clean} empty={}",
                String::from_utf8_lossy(&body),
                head.contains("Connection: close"),
                rest.is_empty()
            ));
        }));
        // Connections under load.
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..3 {
            let (r, ready, stop) = (r2.clone(), ready2.clone(), stop.clone());
            ts.push(std::thread::spawn(move || {
                ready.fetch_add(1, Ordering::SeqCst);
                let got = load_client(addr, &stop);
                r.lock().unwrap().push(format!("load ok {}", got > 0));
            }));
        }
        drop(ts);
        // Once every client is set (and the slow request is in flight), the worker leaves.
        let ready = ready2.clone();
        let p = p.clone();
        let poll = lp.set_interval(10u64, move |_| {});
        let started = Instant::now();
        lp.set_timeout(1u64, move |lp| {
            wait_then_disconnect(lp, p, ready, poll, started)
        });
    });
    p.fork(&mut lp).expect("fork");
    let code = run(&mut lp);
    assert_eq!(code, 0);
    for t in threads.lock().unwrap().drain(..) {
        t.join().expect("client thread");
    }
    let mut got = results.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            "idle closed clean=true empty=true fast=true",
            "load ok true",
            "load ok true",
            "load ok true",
            "slow slow close=true then clean=true empty=true",
        ]
    );
    let events = log.get();
    assert!(
        events.contains(&"exit 1 Some(0) None".to_string()),
        "{events:?}"
    );
}

/// Polls until the 5 clients are set, waits a little for the slow request to be in
/// flight, then disconnects every worker.
fn wait_then_disconnect(
    lp: &mut forkloop::rt::EventLoop,
    p: forkloop::primary::Primary,
    ready: Arc<AtomicUsize>,
    poll: forkloop::rt::TimerId,
    started: Instant,
) {
    if ready.load(Ordering::SeqCst) < 5 && started.elapsed() < Duration::from_secs(10) {
        lp.set_timeout(10u64, move |lp| {
            wait_then_disconnect(lp, p, ready, poll, started)
        });
        return;
    }
    lp.set_timeout(150u64, move |lp| {
        lp.clear_interval(poll);
        p.disconnect(lp, |_, _| {});
    });
}

/// A worker's HTTP counters reach the primary with its heartbeat answers.
#[test]
fn http_counters_reach_the_primary_with_heartbeats() {
    worker(|lp, w| {
        let server = Server::listen(
            lp,
            Some(w),
            "127.0.0.1:0".parse().unwrap(),
            Config::default(),
            |lp, _, res| res.end(lp, b"hello"),
        );
        let w2 = w.clone();
        server.net().on_listening(lp, move |lp, _| {
            let _ = w2.send(lp, b"ready");
        });
    });
    let (mut lp, p) = primary("http_counters_reach_the_primary_with_heartbeats");
    let seen: std::rc::Rc<std::cell::RefCell<Vec<Option<forkloop::ipc::HttpReport>>>> =
        std::rc::Rc::default();
    let s = seen.clone();
    p.on(move |lp, p, ev| {
        if let forkloop::primary::Event::Pong { worker, seq, .. } = *ev {
            // The report follows the Pong in the same read: look once it is handled.
            let (p, s) = (p.clone(), s.clone());
            lp.set_immediate(move |lp| {
                s.borrow_mut().push(p.http_stats(worker));
                if seq == 1 {
                    p.disconnect(lp, |_, _| {});
                }
            });
        }
    });
    on_all_ready(&p, 1, move |lp, p, addr| {
        // Before any request: a report of nothing yet.
        p.ping(lp, 1, 0).unwrap();
        let p2 = p.clone();
        lp.spawn_blocking(
            move || {
                for _ in 0..3 {
                    let mut s = connect(addr);
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .unwrap();
                    let (_, body) = read_response(&mut s);
                    assert_eq!(body, b"hello");
                }
                let mut s = connect(addr);
                s.write_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                )
                .unwrap();
                let (head, _) = read_response(&mut s);
                assert!(head.starts_with("HTTP/1.1 400"), "{head}");
            },
            move |lp, r| {
                r.unwrap();
                p2.ping(lp, 1, 1).unwrap();
            },
        );
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let first = seen[0].as_ref().expect("a report with the first heartbeat");
    assert_eq!((first.requests, first.accepted, first.open), (0, 0, 0));
    let last = seen[1]
        .as_ref()
        .expect("a report with the second heartbeat");
    assert_eq!((last.requests, last.accepted), (3, 4), "{last:?}");
    assert_eq!(last.errors, [("ambiguous_length".to_string(), 1)]);
}
