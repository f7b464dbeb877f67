//! A bind error on an address no worker of the cluster ever listened on is fatal to the
//! start: the supervisor reports it once (naming the address), stops every worker without
//! restarting any, and the loop exits with 1 quickly — for every listening policy.

mod cluster_util;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster_util::{primary_with, run, worker};
use forkloop::primary::supervise::{Supervisor, SupervisorEvent};
use forkloop::primary::{Policy, PrimaryOptions, Settings};

/// 127.0.0.1 and the port in `FORKLOOP_TEST_PORT` (set by the test for its workers).
fn given_port() -> std::net::SocketAddr {
    let port: u16 = std::env::var("FORKLOOP_TEST_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("FORKLOOP_TEST_PORT");
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Listens on the given port; a failed listen ends the worker.
fn listen_on_the_given_port(lp: &mut forkloop::rt::EventLoop, w: &forkloop::worker::Worker) {
    let server = w.listen_tcp(lp, given_port(), |lp, _, c| c.destroy(lp));
    server.on_error(|_, _, e| {
        eprintln!("worker: cannot listen: {e}");
        std::process::exit(3);
    });
}

fn port_in_use_stops_the_start(test: &str, policy: Policy) {
    // The port is taken by this test process (a plain listener, no SO_REUSEPORT).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (mut lp, p) = primary_with(
        test,
        PrimaryOptions {
            policy: Some(policy),
            ..PrimaryOptions::default()
        },
    );
    p.setup(
        &mut lp,
        Settings::default().env("FORKLOOP_TEST_PORT", port.to_string()),
    );
    let sup =
        Supervisor::new(&mut lp, &p, cluster_util::supervisor_options(2)).expect("supervisor");
    let events: Rc<RefCell<Vec<SupervisorEvent>>> = Rc::default();
    let ev = events.clone();
    sup.on(move |_, _, e| ev.borrow_mut().push(e.clone()));
    sup.start(&mut lp).expect("start");
    let began = Instant::now();
    let code = run(&mut lp);
    let took = began.elapsed();
    drop(taken);
    let events = events.borrow();
    assert_eq!(code, 1, "a failed start exits non-zero: {events:?}");
    assert!(took < Duration::from_secs(5), "it took {took:?}");
    let fatal: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::ListenFailed {
                address,
                error,
                fatal: true,
                ..
            } => Some((address.clone(), error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(fatal.len(), 1, "reported once: {events:?}");
    assert_eq!(fatal[0].0, format!("127.0.0.1:{port}"));
    assert!(
        fatal[0].1.to_lowercase().contains("in use"),
        "{:?}",
        fatal[0].1
    );
    assert!(
        !events.iter().any(|e| matches!(
            e,
            SupervisorEvent::Restarting { .. } | SupervisorEvent::BreakerTripped { .. }
        )),
        "no restart dance: {events:?}"
    );
}

#[test]
fn port_in_use_stops_the_start_rr() {
    worker(listen_on_the_given_port);
    port_in_use_stops_the_start("port_in_use_stops_the_start_rr", Policy::RoundRobin);
}

#[test]
fn port_in_use_stops_the_start_shared() {
    worker(listen_on_the_given_port);
    port_in_use_stops_the_start("port_in_use_stops_the_start_shared", Policy::Shared);
}

#[test]
#[cfg(target_os = "linux")]
fn port_in_use_stops_the_start_reuseport() {
    worker(listen_on_the_given_port);
    port_in_use_stops_the_start("port_in_use_stops_the_start_reuseport", Policy::ReusePort);
}

#[test]
fn a_listen_error_after_the_start_is_the_workers_own() {
    // Workers serve on port 0 first; asked to, they also try the taken port.
    worker(|lp, w| {
        let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), |lp, _, c| c.destroy(lp));
        server.on_error(|_, _, e| panic!("listen failed: {e}"));
        w.on_message(lp, |lp, w, _| listen_on_the_given_port_quietly(lp, w));
    });
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (mut lp, p) = cluster_util::primary("a_listen_error_after_the_start_is_the_workers_own");
    p.setup(
        &mut lp,
        Settings::default().env("FORKLOOP_TEST_PORT", port.to_string()),
    );
    let sup =
        Supervisor::new(&mut lp, &p, cluster_util::supervisor_options(1)).expect("supervisor");
    let seen: Rc<RefCell<Vec<SupervisorEvent>>> = Rc::default();
    let s2 = seen.clone();
    sup.on(move |lp, s, ev| {
        s2.borrow_mut().push(ev.clone());
        match ev {
            SupervisorEvent::Ready { worker, .. } => {
                let _ = s.primary().send(lp, *worker, b"listen on the taken port");
            }
            SupervisorEvent::ListenFailed { .. } => {
                let s = s.clone();
                lp.set_timeout(100, move |lp| s.shutdown(lp));
            }
            _ => {}
        }
    });
    sup.start(&mut lp).expect("start");
    assert_eq!(
        run(&mut lp),
        0,
        "the cluster served on: {:?}",
        seen.borrow()
    );
    drop(taken);
    assert!(
        seen.borrow()
            .iter()
            .any(|e| matches!(e, SupervisorEvent::ListenFailed { fatal: false, .. })),
        "{:?}",
        seen.borrow()
    );
}

/// Like [`listen_on_the_given_port`], but the worker only logs the error and serves on.
fn listen_on_the_given_port_quietly(
    lp: &mut forkloop::rt::EventLoop,
    w: &forkloop::worker::Worker,
) {
    let server = w.listen_tcp(lp, given_port(), |lp, _, c| c.destroy(lp));
    server.on_error(|_, _, e| eprintln!("worker: cannot listen: {e}"));
}
