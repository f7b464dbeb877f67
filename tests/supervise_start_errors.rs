//! A bind error on an address no worker of the cluster ever listened on is fatal to the
//! start: the supervisor reports it once (naming the address), stops every worker without
//! restarting any, and the loop exits with 1 quickly — for every listening policy.

mod cluster_util;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster_util::{primary_with, run, worker};
use forkloop::primary::supervise::{Supervisor, SupervisorEvent, SupervisorOptions};
use forkloop::primary::{Policy, PrimaryOptions, Settings};

/// Listens on the port in `FORKLOOP_TEST_PORT`; a failed listen ends the worker.
fn listen_on_the_given_port(lp: &mut forkloop::rt::EventLoop, w: &forkloop::worker::Worker) {
    let port: u16 = std::env::var("FORKLOOP_TEST_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("FORKLOOP_TEST_PORT");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let server = w.listen_tcp(lp, addr, |lp, c| c.destroy(lp));
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
    let sup = Supervisor::new(
        &mut lp,
        &p,
        SupervisorOptions {
            workers: 2,
            signals: false,
            health: None,
            ..SupervisorOptions::default()
        },
    )
    .expect("supervisor");
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
