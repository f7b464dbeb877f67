//! `forkloop run` with an unmodified Node.js cluster app (tests/node/app.js). Each test
//! prints why it is skipped when `node` is not on the PATH.

mod cli_util;
mod cluster_util;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cli_util::{free_port, get, wait_exit, wait_serving};
use cluster_util::ChildGuard;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn have_node(test: &str) -> bool {
    cli_util::have("node", test)
}

fn app() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node/app.js")
}

fn worker_of(body: &str) -> u32 {
    body.strip_prefix("worker ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("answer {body:?}"))
}

/// Requests until workers 1 and 2 have both answered (round-robin; at most 10 s): both
/// are listening then.
fn wait_both(addr: SocketAddr) {
    wait_serving(addr);
    let end = Instant::now() + Duration::from_secs(10);
    let mut ids = BTreeSet::new();
    while ids.len() < 2 {
        assert!(Instant::now() < end, "only {ids:?} ever answered");
        ids.insert(worker_of(&get(addr).expect("request")));
    }
    assert_eq!(ids, BTreeSet::from([1, 2]));
}

fn start(policy: &str, port: u16) -> ChildGuard {
    start_with(&["--policy", policy], port)
}

fn start_with(flags: &[&str], port: u16) -> ChildGuard {
    start_env(flags, port, &[])
}

fn start_env(flags: &[&str], port: u16, env: &[(&str, &std::ffi::OsStr)]) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_forkloop"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .args(["run", "--workers", "2"])
        .args(flags)
        .arg("--")
        .arg("node")
        .arg(app())
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("forkloop run");
    ChildGuard(child)
}

/// Sends `sig` and waits for the exit; returns the code and the output.
fn stop(mut g: ChildGuard, sig: Signal) -> (Option<i32>, String) {
    kill(Pid::from_raw(g.0.id() as i32), sig).expect("signal");
    let (status, out) = wait_exit(&mut g.0);
    (status.code(), out)
}

/// Serves under `policy`; with `host`, the app listens on `listen(port, host)` (Node then
/// sends no backlog as `false`).
fn serves_unchanged(policy: &str, host: Option<&str>) {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let env: Vec<(&str, &std::ffi::OsStr)> =
        host.map(|h| ("HOST", h.as_ref())).into_iter().collect();
    let g = start_env(&["--policy", policy], port, &env);
    if policy == "rr" {
        // Both served, taking turns.
        wait_both(addr);
        let ids: Vec<u32> = (0..4)
            .map(|_| worker_of(&get(addr).expect("request")))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] != w[1]), "turns: {ids:?}");
    } else {
        wait_serving(addr);
        for _ in 0..20 {
            get(addr).expect("request");
        }
    }
    let (code, out) = stop(g, Signal::SIGTERM);
    assert_eq!(code, Some(0), "{out}");
    for id in [1, 2] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("[worker {id} pid "))
                    && l.ends_with(&format!("] up {id}"))),
            "worker {id}'s output tagged with its id and pid: {out}"
        );
    }
}

#[test]
fn node_app_runs_unchanged_rr() {
    if have_node("node_app_runs_unchanged_rr") {
        serves_unchanged("rr", None);
    }
}

#[test]
fn node_app_listening_on_a_host_runs_unchanged() {
    if have_node("node_app_listening_on_a_host_runs_unchanged") {
        serves_unchanged("rr", Some("127.0.0.1"));
    }
}

#[test]
fn node_app_runs_unchanged_none() {
    if have_node("node_app_runs_unchanged_none") {
        serves_unchanged("none", None);
    }
}

#[test]
fn sighup_replaces_every_node_worker_without_failed_requests() {
    if !have_node("sighup_replaces_every_node_worker_without_failed_requests") {
        return;
    }
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let g = start("rr", port);
    wait_both(addr);
    // Four clients request all along the reload, until the new generation (workers 3 and
    // 4) answers; not one request may fail.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (seen, done) = (seen.clone(), done.clone());
            std::thread::spawn(move || -> Result<u32, String> {
                let mut sent = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = get(addr).map_err(|e| format!("request {sent} failed: {e}"))?;
                    if let Ok(mut s) = seen.lock() {
                        s.insert(worker_of(&body));
                    }
                    sent += 1;
                }
                Ok(sent)
            })
        })
        .collect();
    kill(Pid::from_raw(g.0.id() as i32), Signal::SIGHUP).expect("SIGHUP");
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let now: BTreeSet<u32> = seen.lock().map(|s| s.clone()).unwrap_or_default();
        if now.contains(&3) && now.contains(&4) {
            break;
        }
        if Instant::now() > end || clients.iter().all(|c| c.is_finished()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        match c.join() {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => panic!("during the reload: {e}"),
            Err(_) => panic!("a client panicked"),
        }
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        seen.contains(&3) && seen.contains(&4),
        "reload did not finish: saw {seen:?}"
    );
    assert!(total > 4, "the clients kept asking ({total} requests)");
    let late: BTreeSet<u32> = (0..10)
        .map(|_| worker_of(&get(addr).expect("request")))
        .collect();
    assert_eq!(
        late,
        BTreeSet::from([3, 4]),
        "only the new generation serves"
    );
    let (code, out) = stop(g, Signal::SIGTERM);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn advanced_serialization_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_forkloop"))
        .args(["run", "--serialization", "advanced", "--", "node", "app.js"])
        .output()
        .expect("forkloop run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only json is supported"), "{err}");
}

/// `forkloop ctl --control SOCK ARGS`: exit code and stdout.
fn ctl(sock: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_forkloop"))
        .arg("ctl")
        .arg("--control")
        .arg(sock)
        .args(args)
        .output()
        .expect("forkloop ctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Worker ids and generations from `status --json`.
fn status(sock: &std::path::Path) -> Vec<(u64, u64)> {
    let (code, out) = ctl(sock, &["status", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON status");
    v.as_array()
        .expect("an array")
        .iter()
        .map(|w| {
            (
                w["id"].as_u64().expect("id"),
                w["generation"].as_u64().expect("generation"),
            )
        })
        .collect()
}

#[test]
fn ctl_status_scale_reload_stop() {
    if !have_node("ctl_status_scale_reload_stop") {
        return;
    }
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = std::env::temp_dir().join(format!("forkloop-ctl-{}.sock", std::process::id()));
    let sock_arg = sock.to_string_lossy().into_owned();
    let mut g = start_with(&["--control", &sock_arg], port);
    wait_both(addr);
    assert_eq!(status(&sock), [(1, 1), (2, 1)]);
    let (code, table) = ctl(&sock, &["status"]);
    assert_eq!(code, Some(0));
    assert!(table.starts_with("id\tpid\tstate"), "{table}");
    assert_eq!(ctl(&sock, &["scale", "3"]).0, Some(0));
    let end = Instant::now() + Duration::from_secs(10);
    while status(&sock).len() != 3 {
        assert!(Instant::now() < end, "never 3 workers");
        std::thread::sleep(Duration::from_millis(50));
    }
    // `reload` answers once every worker is replaced.
    assert_eq!(ctl(&sock, &["reload"]), (Some(0), "reloaded\n".to_owned()));
    let after = status(&sock);
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|&(id, _)| id > 3),
        "every worker replaced: {after:?}"
    );
    get(addr).expect("served after the reload");
    assert_eq!(
        ctl(&sock, &["bogus"]).0,
        Some(2),
        "clap refuses unknown requests"
    );
    assert_eq!(ctl(&sock, &["stop"]).0, Some(0));
    let (status, out) = wait_exit(&mut g.0);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(!sock.exists(), "the control socket is removed at exit");
}

#[test]
fn ctl_reload_fails_and_keeps_the_old_generation() {
    if !have_node("ctl_reload_fails_and_keeps_the_old_generation") {
        return;
    }
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let sock = dir.join(format!("forkloop-ctl-fail-{pid}.sock"));
    let marker = dir.join(format!("forkloop-broken-release-{pid}"));
    let _ = std::fs::remove_file(&marker);
    let sock_arg = sock.to_string_lossy().into_owned();
    let mut g = start_env(
        &["--control", &sock_arg],
        port,
        &[("FAIL_IF", marker.as_os_str())],
    );
    wait_both(addr);
    std::fs::write(&marker, b"").expect("marker");
    let (code, _) = ctl(&sock, &["reload"]);
    // The first generation still serves (the broken release never became ready).
    let kept: BTreeSet<u32> = (0..10)
        .map(|_| worker_of(&get(addr).expect("request")))
        .collect();
    let _ = std::fs::remove_file(&marker);
    assert_eq!(code, Some(1), "a failed reload exits non-zero");
    assert_eq!(
        kept,
        BTreeSet::from([1, 2]),
        "the old generation still serves"
    );
    assert_eq!(ctl(&sock, &["stop"]).0, Some(0));
    let (status, out) = wait_exit(&mut g.0);
    assert_eq!(status.code(), Some(0), "{out}");
}

#[test]
fn node_workers_die_with_a_killed_primary() {
    if !have_node("node_workers_die_with_a_killed_primary") {
        return;
    }
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = std::env::temp_dir().join(format!("forkloop-orphan-{}.sock", std::process::id()));
    let sock_arg = sock.to_string_lossy().into_owned();
    let mut g = start_with(&["--control", &sock_arg], port);
    wait_both(addr);
    let (code, out) = ctl(&sock, &["status", "--json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON status");
    let pids: Vec<u32> = v
        .as_array()
        .expect("an array")
        .iter()
        .filter_map(|w| w["pid"].as_u64().map(|p| p as u32))
        .collect();
    assert_eq!(pids.len(), 2);
    let _guards: Vec<cluster_util::PidGuard> =
        pids.iter().map(|&p| cluster_util::PidGuard(p)).collect();
    kill(Pid::from_raw(g.0.id() as i32), Signal::SIGKILL).expect("SIGKILL");
    let _ = g.0.wait();
    for pid in pids {
        assert!(
            cluster_util::wait_gone(pid, Duration::from_secs(10)),
            "Node worker {pid} outlived its primary"
        );
    }
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn listen_fds_from_a_service_manager_are_used() {
    if !have_node("listen_fds_from_a_service_manager_are_used") {
        return;
    }
    use std::os::fd::AsRawFd;
    // The "service manager" (this test) binds the port and keeps it: the primary could not
    // bind it again, so serving proves it took the socket it was given.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_forkloop"))
        .args(["run", "--workers", "2", "--", "node"])
        .arg(app())
        .env("LISTEN_FDS", "1")
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    forkloop::sys::process::inherit_fds_from_3(&mut cmd, vec![listener.as_raw_fd()])
        .expect("pass the socket");
    let g = ChildGuard(cmd.spawn().expect("forkloop run"));
    wait_both(addr);
    let (code, out) = stop(g, Signal::SIGTERM);
    assert_eq!(code, Some(0), "{out}");
}
