//! What a worker takes from the primary at start: its channel limits (so a frame the
//! primary would refuse fails at the sender), the listen flags it asked for under every
//! policy, and an environment that makes only the primary's own children workers.

mod cluster_util;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use cluster_util::*;
use forkloop::ipc::{ChannelConfig, Endpoint, Limits};
use forkloop::primary::{Event, Policy, PrimaryOptions};
use forkloop::worker::ListenOptions;

/// Reads the single message the worker sends, then lets it go.
fn only_message(test: &str, opts: PrimaryOptions) -> Vec<String> {
    let (mut lp, p) = primary_with(test, opts);
    let got = Log::default();
    let g = got.clone();
    p.on(move |lp, p, ev| match ev {
        Event::Message { data, .. } => {
            g.push(String::from_utf8_lossy(data).into_owned());
            p.disconnect(lp, |_, _| {});
        }
        Event::Error { reason, .. } => g.push(format!("error {reason}")),
        _ => {}
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    got.get()
}

#[test]
fn a_worker_refuses_to_send_what_its_primary_would_refuse() {
    worker(|lp, w| {
        let big = w.send(lp, &[7u8; 2000]).map_err(|e| e.to_string());
        let small = w.send(lp, format!("big: {big:?}").as_bytes());
        assert!(small.is_ok(), "a frame within the limits goes through");
    });
    let config = ChannelConfig {
        limits: Limits {
            max_payload: 1024,
            ..Limits::default()
        },
        ..ChannelConfig::default()
    };
    let got = only_message(
        "a_worker_refuses_to_send_what_its_primary_would_refuse",
        PrimaryOptions {
            channel: config,
            ..PrimaryOptions::default()
        },
    );
    assert_eq!(got.len(), 1, "one message and no channel error: {got:?}");
    assert!(
        got[0].starts_with("big: Err(") && got[0].contains("1024"),
        "the worker's send failed naming the primary's limit: {got:?}"
    );
}

const CHILD_ENV: &str = "FORKLOOP_TEST_WORKER_CHILD";

#[test]
fn a_workers_own_child_is_not_a_worker() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // The worker's child: it inherited every worker variable.
        println!(
            "child role {:?}",
            forkloop::try_role().map_err(|e| e.to_string())
        );
        std::process::exit(0);
    }
    worker(|lp, w| {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(args_for("a_workers_own_child_is_not_a_worker"))
            .env(CHILD_ENV, "1")
            .output()
            .expect("run the child");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("child role"))
            .unwrap_or("no answer")
            .to_string();
        let _ = w.send(lp, line.as_bytes());
    });
    let got = only_message(
        "a_workers_own_child_is_not_a_worker",
        PrimaryOptions::default(),
    );
    assert_eq!(got, ["child role Ok(Primary)"]);
}

/// Listens on `[::]:0` with `ipv6_only` and reports the port.
fn listen_v6_only(lp: &mut forkloop::EventLoop, w: &forkloop::worker::Worker) {
    let opts = ListenOptions {
        ipv6_only: true,
        ..ListenOptions::default()
    };
    let addr: SocketAddr = "[::]:0".parse().unwrap();
    let server = w.listen_with(lp, Endpoint::Tcp(addr), opts, |lp, _, c| c.destroy(lp));
    let w2 = w.clone();
    server.on_listening(lp, move |lp, s| {
        let port = s.address().map_or(0, |a| a.port());
        let _ = w2.send(lp, format!("port {port}").as_bytes());
    });
    let w3 = w.clone();
    server.on_error(move |lp, _, e| {
        let _ = w3.send(lp, format!("error {e}").as_bytes());
    });
}

/// Whether an IPv4 client reaches a v6-only listener on `port` (it must not).
fn ipv4_reaches(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn ipv6_only_is_kept(test: &str, policy: Policy) {
    if std::fs::read_to_string("/proc/net/if_inet6").map_or(true, |s| !s.contains(" lo")) {
        eprintln!("{test}: no IPv6 on the loopback interface; nothing to test");
        return;
    }
    let (mut lp, p) = primary_with(
        test,
        PrimaryOptions {
            policy: Some(policy),
            ..PrimaryOptions::default()
        },
    );
    let got = Log::default();
    let g = got.clone();
    p.on(move |lp, p, ev| {
        if let Event::Message { data, .. } = ev {
            let text = String::from_utf8_lossy(data).into_owned();
            if let Some(port) = text.strip_prefix("port ").and_then(|s| s.parse().ok()) {
                let v6 = TcpStream::connect(("::1", port)).is_ok();
                g.push(format!("v6 {v6} v4 {}", ipv4_reaches(port)));
            } else {
                g.push(text);
            }
            p.disconnect(lp, |_, _| {});
        }
    });
    p.fork(&mut lp).unwrap();
    run(&mut lp);
    assert_eq!(got.get(), ["v6 true v4 false"], "{policy:?}");
}

#[test]
fn ipv6_only_is_kept_under_reuseport() {
    worker(listen_v6_only);
    ipv6_only_is_kept("ipv6_only_is_kept_under_reuseport", Policy::ReusePort);
}

#[test]
fn ipv6_only_is_kept_under_shared() {
    worker(listen_v6_only);
    ipv6_only_is_kept("ipv6_only_is_kept_under_shared", Policy::Shared);
}

#[test]
fn ipv6_only_is_kept_under_round_robin() {
    worker(listen_v6_only);
    ipv6_only_is_kept("ipv6_only_is_kept_under_round_robin", Policy::RoundRobin);
}

#[test]
fn start_gives_each_side_its_handle() {
    use forkloop::Side;
    let mut lp = forkloop::EventLoop::new().unwrap();
    match forkloop::start(&mut lp).expect("start") {
        Side::Worker(w) => {
            let again = forkloop::start(&mut lp)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = w.send(
                &mut lp,
                format!("worker {} then {again:?}", w.id()).as_bytes(),
            );
            std::process::exit(lp.run().unwrap_or(1));
        }
        Side::Primary(p) => {
            p.setup(
                &mut lp,
                forkloop::primary::Settings::default()
                    .args(args_for("start_gives_each_side_its_handle")),
            );
            let got = Log::default();
            let g = got.clone();
            p.on(move |lp, p, ev| {
                if let Event::Message { data, .. } = ev {
                    g.push(String::from_utf8_lossy(data).into_owned());
                    p.disconnect(lp, |_, _| {});
                }
            });
            p.fork(&mut lp).unwrap();
            run(&mut lp);
            assert_eq!(
                got.get(),
                [
                    r#"worker 1 then Err("invalid configuration: worker 1: its channel was attached already")"#
                ]
            );
        }
    }
}
