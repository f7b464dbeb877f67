//! `forkloop run --protocol fds`: a Python server that accepts on descriptor 3 (systemd's
//! socket activation convention) runs unchanged as the workers. Skipped, with the reason
//! printed, when `python3` is not on the PATH.

mod cli_util;
mod cluster_util;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_util::{free_port, wait_exit, wait_serving};
use cluster_util::ChildGuard;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// One request; the worker pid in the answer.
fn get(addr: SocketAddr) -> std::io::Result<u32> {
    let body = cli_util::get(addr)?;
    body.strip_prefix("pid ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad answer {body:?}")))
}

#[test]
fn fd3_server_serves_and_reloads_without_failed_requests() {
    if !cli_util::have(
        "python3",
        "fd3_server_serves_and_reloads_without_failed_requests",
    ) {
        return;
    }
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/fd3_server.py");
    let mut g = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_forkloop"))
            .args(["run", "--workers", "2", "--protocol", "fds", "--listen"])
            .arg(addr.to_string())
            .arg("--")
            .arg("python3")
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("forkloop run"),
    );
    wait_serving(addr);
    let end = Instant::now() + Duration::from_secs(10);
    // The old generation: both workers answering.
    let mut first = BTreeSet::new();
    while first.len() < 2 {
        assert!(Instant::now() < end, "one worker never answered: {first:?}");
        first.insert(get(addr).expect("request"));
    }
    kill(Pid::from_raw(g.0.id() as i32), Signal::SIGHUP).expect("SIGHUP");
    // Requests all along the reload, until two pids never seen before have answered
    // and the old ones are gone.
    let end = Instant::now() + Duration::from_secs(15);
    let mut new = BTreeSet::new();
    let mut sent = 0;
    loop {
        assert!(
            Instant::now() < end,
            "reload did not finish: new pids {new:?}"
        );
        let pid = get(addr).unwrap_or_else(|e| panic!("request {sent} failed during reload: {e}"));
        sent += 1;
        if !first.contains(&pid) {
            new.insert(pid);
        }
        let old_gone = first
            .iter()
            .all(|&p| kill(Pid::from_raw(p as i32), None).is_err());
        if new.len() >= 2 && old_gone {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(Pid::from_raw(g.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let (status, out) = wait_exit(&mut g.0);
    assert_eq!(status.code(), Some(0), "{status:?}\n{out}");
    // Worker 1 may be replaced before it even printed (an fds worker counts as ready once
    // spawned); the new generation ran long enough.
    for id in [3, 4] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("[worker {id} pid "))
                    && l.ends_with("names=listen0")),
            "{out}"
        );
    }
}
