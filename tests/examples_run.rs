//! The programs in `examples/` run and behave as their docs say. `cargo test` builds the
//! examples before it runs the tests; each test finds its binary beside the test binary.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The built example `name` (`target/<profile>/examples/<name>`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    dir.join("examples").join(name)
}

/// Runs an example to its end, at most `limit`; kills it past that.
fn run_example(name: &str, limit: Duration) -> Output {
    let path = example(name);
    assert!(
        path.exists(),
        "{} not built (cargo test builds examples; chat_relay needs --features serde)",
        path.display()
    );
    let mut child = Command::new(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn example");
    let end = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{name} still running after {limit:?}; stdout:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn loop_order_prints_nodes_order() {
    let out = run_example("loop_order", Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // Node 20's output for the same program (the read's byte count aside).
    let expected = [
        "-- blocking-pool read done",
        "fs: callback returns",
        "fs: nextTick",
        "fs: nextTick -> nextTick",
        "fs: microtask",
        "fs: promise",
        "fs: nextTick -> microtask",
        "fs: microtask -> nextTick",
        "fs: immediate 1",
        "fs: immediate 1 -> microtask",
        "fs: immediate 2",
        "fs: timeout",
        "fs: timeout -> nextTick",
        "-- tcp connect done",
        "tcp: callback returns",
        "tcp: nextTick",
        "-- server closed",
        "tcp: nextTick -> nextTick",
        "tcp: microtask",
        "tcp: promise",
        "tcp: nextTick -> microtask",
        "tcp: microtask -> nextTick",
        "tcp: immediate 1",
        "tcp: immediate 1 -> microtask",
        "tcp: immediate 2",
        "tcp: timeout",
        "tcp: timeout -> nextTick",
        "-- loop ended, code 0",
    ];
    assert_eq!(lines.len(), expected.len(), "{text}");
    for (got, want) in lines.iter().zip(expected) {
        assert!(got.starts_with(want), "got {got:?}, want {want:?}\n{text}");
    }
}

#[cfg(feature = "serde")]
#[test]
fn chat_relay_passes_every_greeting_on_and_ends() {
    let out = run_example("chat_relay", Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.pop(), Some("[primary] all workers gone"), "{text}");
    lines.sort();
    assert_eq!(
        lines,
        [
            r#"[worker 1] got "hello worker 1, this is worker 3" from 3"#,
            r#"[worker 2] got "hello worker 2, this is worker 1" from 1"#,
            r#"[worker 3] got "hello worker 3, this is worker 2" from 2"#,
        ]
    );
}

/// Lines of code in `examples/<name>.rs`: not blank, not a comment.
fn code_lines(name: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(String::from)
        .collect()
}

/// The classic cluster programs stay at most twice as long as their Node versions
/// (17, 34, 41 and 44 lines of code), with no shared-mutability wrappers in user code.
#[test]
fn the_classic_programs_are_short_and_need_no_refcell() {
    for (name, node_lines) in [("chat_relay", 17), ("loop_order", 41)] {
        let lines = code_lines(name);
        assert!(
            lines.len() <= 2 * node_lines,
            "{name}: {} lines of code, more than 2 × {node_lines}",
            lines.len()
        );
        for l in &lines {
            for word in ["Rc<", "Rc::", "RefCell", "Cell<", "Cell::"] {
                assert!(!l.contains(word), "{name}: `{word}` in {l:?}");
            }
        }
    }
}

/// Kills and reaps the child when dropped, even if the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn handoff_ceiling_counts_the_connections_its_workers_were_handed() {
    use std::io::BufRead;
    use std::sync::mpsc;
    const CONNS: u64 = 20;
    let path = example("handoff_ceiling");
    assert!(path.exists(), "{} not built", path.display());
    let mut child = Reaped(
        Command::new(&path)
            .args(["--workers", "2"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn handoff_ceiling"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let limit = Duration::from_secs(20);
    let first = lines.recv_timeout(limit).expect("a listening line");
    let port: u16 = first
        .strip_prefix("listening port=")
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a listening line: {first}"));
    for _ in 0..CONNS {
        drop(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    }
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    // Hand-offs lag the connects a little: ask until all are counted.
    let end = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < end {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).expect("SIGUSR1");
        last = lines.recv_timeout(limit).expect("a handed= line");
        if last == format!("handed={CONNS}") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(last, format!("handed={CONNS}"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break st;
        }
        assert!(Instant::now() < end, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}
