//! The README's cluster example, copied unchanged into a new crate (path dependency on
//! this one), really supervises: a SIGKILLed worker is replaced within 50 ms of the
//! primary seeing its exit, and SIGTERM drains the workers and exits with 0.
//!
//! The crate is built with `cargo build --offline` into its own target directory under
//! this crate's (`readme-example/`), so later runs reuse what was compiled.
//!
//! Linux only: it finds the workers through `/proc`.
#![cfg(target_os = "linux")]

mod cluster_util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster_util::ChildGuard;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long building the example crate may take (its dependencies compile once).
const BUILD_LIMIT: Duration = Duration::from_secs(900);
/// The replacement must be forked this soon after the exit is seen.
const REPLACED_WITHIN: Duration = Duration::from_millis(50);

/// The first `rust` code block under "## A cluster in a few lines".
fn readme_example() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let section = readme
        .split("## A cluster in a few lines")
        .nth(1)
        .expect("the README has the cluster section");
    let start = section.find("```rust").expect("a rust block");
    let body = &section[start..];
    let body = &body[body.find('\n').expect("block header") + 1..];
    body[..body.find("\n```").expect("block end") + 1].to_string()
}

/// This crate's target directory (from the test binary's path: target/<profile>/deps/).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Writes the crate and builds it; the binary's path.
fn build_example() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = target_dir().join("readme-example");
    let krate = base.join("crate");
    std::fs::create_dir_all(krate.join("src")).expect("crate dir");
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"readme_cluster\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\nforkloop = {{ path = {:?} }}\n\n[workspace]\n",
            repo.display().to_string()
        ),
    )
    .expect("Cargo.toml");
    // The same versions as this crate's lock, so the build needs no network.
    std::fs::copy(repo.join("Cargo.lock"), krate.join("Cargo.lock")).expect("Cargo.lock");
    std::fs::write(krate.join("src/main.rs"), readme_example()).expect("main.rs");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let errors = base.join("build-errors.txt");
    let mut build = ChildGuard(
        Command::new(cargo)
            .args(["build", "--offline", "--quiet"])
            .current_dir(&krate)
            .env("CARGO_TARGET_DIR", base.join("target"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&errors).expect("error file"))
            .spawn()
            .expect("cargo build"),
    );
    let status = wait_bounded(&mut build, BUILD_LIMIT, "building the README example");
    if !status.success() {
        let err = std::fs::read_to_string(&errors).unwrap_or_default();
        panic!("the README example does not build:\n{err}");
    }
    base.join("target/debug/readme_cluster")
}

/// Waits for `child` to exit, at most `limit` (then the test fails and the guard kills it).
fn wait_bounded(child: &mut ChildGuard, limit: Duration, what: &str) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < end, "{what}: not done within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Direct children of `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit(") ").next() else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(pid)
            && state != Some("Z")
            && let Some(p) = e.file_name().to_str().and_then(|s| s.parse().ok())
        {
            out.push(p);
        }
    }
    out
}

/// Waits for a line that satisfies `want`, at most `limit`; the line and when it came.
fn expect_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    seen: &mut Vec<String>,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) -> (Instant, String) {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, line)) => {
                seen.push(line.clone());
                if want(&line) {
                    return (t, line);
                }
            }
            Err(_) => panic!("no such line within {limit:?}; output so far: {seen:#?}"),
        }
    }
}

#[test]
fn readme_cluster_example_supervises() {
    let bin = build_example();
    let mut child = ChildGuard(
        Command::new(&bin)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the README example"),
    );
    let pid = child.0.id();
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut seen = Vec::new();
    for _ in 0..workers {
        expect_line(&rx, &mut seen, Duration::from_secs(20), |l| {
            l.contains(" listens on ")
        });
    }
    // Up past the default minimum uptime (1 s): a crash now is a stable one, restarted at
    // once (an earlier one waits the restart delay).
    std::thread::sleep(Duration::from_millis(1200));
    let kids = children(pid);
    assert_eq!(kids.len(), workers, "one process per worker: {kids:?}");
    kill(Pid::from_raw(kids[0] as i32), Signal::SIGKILL).expect("kill a worker");
    let (exited, line) = expect_line(&rx, &mut seen, Duration::from_secs(10), |l| {
        l.contains(" exited: ")
    });
    let (started, _) = expect_line(&rx, &mut seen, Duration::from_secs(10), |l| {
        l.ends_with(" started")
    });
    let (listening, _) = expect_line(&rx, &mut seen, Duration::from_secs(20), |l| {
        l.contains(" listens on ")
    });
    let reaction = started.duration_since(exited);
    println!(
        "{line}; replacement forked {reaction:?} later, listening {:?} after the exit",
        listening.duration_since(exited)
    );
    assert!(
        reaction <= REPLACED_WITHIN,
        "replacement forked {reaction:?} after the exit was seen (limit {REPLACED_WITHIN:?})"
    );
    assert_eq!(
        children(pid).len(),
        workers,
        "back to one process per worker"
    );
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM the primary");
    let status = wait_bounded(
        &mut child,
        Duration::from_secs(20),
        "the primary's exit after SIGTERM",
    );
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM drains and exits with 0: {seen:#?}"
    );
}
