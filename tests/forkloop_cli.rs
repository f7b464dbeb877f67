//! `forkloop run --protocol forkloop`: workers built on `forkloop::worker` (this test
//! binary, re-executed) under the command: served, reloaded with no failed request,
//! stopped cleanly.

mod cli_util;
mod cluster_util;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_util::{free_port, get, wait_exit, wait_serving};
use cluster_util::{ChildGuard, args_for, worker};
use forkloop::net::Stream;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Worker `N` answers `w<N>` to every request, on the port in `PORT`.
fn serve(lp: &mut forkloop::EventLoop, w: &forkloop::worker::Worker) {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("PORT");
    let body = format!("w{}\n", w.id());
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let server = w.listen_tcp(
        lp,
        SocketAddr::from(([127, 0, 0, 1], port)),
        move |lp, _, c: Stream| {
            let reply = reply.clone();
            c.on_data(lp, move |lp, c, _| {
                c.write(lp, reply.as_bytes());
                c.end(lp);
            });
        },
    );
    server.on_error(|_, _, e| panic!("listen failed: {e}"));
}

/// The pids of `pid`'s children (Linux).
fn children(pid: u32) -> BTreeSet<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn id_of(body: &str) -> u32 {
    body.strip_prefix('w')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("answer {body:?}"))
}

#[test]
fn forkloop_workers_serve_reload_and_stop_under_the_command() {
    worker(serve);
    let test = "forkloop_workers_serve_reload_and_stop_under_the_command";
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut g = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_forkloop"))
            .args(["run", "--workers", "2", "--protocol", "forkloop", "--"])
            .arg(std::env::current_exe().expect("test binary"))
            .args(args_for(test))
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("forkloop run"),
    );
    wait_serving(addr);
    let ids: BTreeSet<u32> = (0..10)
        .map(|_| id_of(&get(addr).expect("request")))
        .collect();
    assert_eq!(ids, BTreeSet::from([1, 2]));
    let old = children(g.0.id());
    assert_eq!(old.len(), 2, "two workers: {old:?}");
    kill(Pid::from_raw(g.0.id() as i32), Signal::SIGHUP).expect("SIGHUP");
    let end = Instant::now() + Duration::from_secs(15);
    let mut seen = BTreeSet::new();
    while !(seen.contains(&3) && seen.contains(&4)) {
        assert!(Instant::now() < end, "reload did not finish: saw {seen:?}");
        let body = get(addr).unwrap_or_else(|e| panic!("request failed during reload: {e}"));
        seen.insert(id_of(&body));
    }
    // The reload ends once the replaced workers are gone (they drain first).
    while !children(g.0.id()).is_disjoint(&old) {
        assert!(Instant::now() < end, "the old workers did not leave");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(Pid::from_raw(g.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let (status, out) = wait_exit(&mut g.0);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("reload finished"), "{out}");
    // Every worker's exit is told, and before the line saying the command stopped.
    let lines: Vec<&str> = out.lines().collect();
    let stopped = lines
        .iter()
        .position(|l| l.contains("] stopped"))
        .unwrap_or_else(|| panic!("no stopped line: {out}"));
    let exits: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("exited with code") || lines[i].contains("was killed"))
        .collect();
    assert_eq!(
        exits.len(),
        4,
        "four worker exits (two replaced, two stopped): {out}"
    );
    assert!(
        exits.iter().all(|&i| i < stopped),
        "an exit told after stopping: {out}"
    );
}
