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
    for (name, node_lines) in [
        ("chat_relay", 17),
        ("graceful_exit", 34),
        ("loop_order", 41),
        ("kv_service", 44),
    ] {
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

/// An example started with arguments, killed and reaped when dropped (its workers follow
/// their primary: they get the parent-death signal).
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Starts example `name` with `args`, its standard output read line by line.
    fn start(name: &str, args: &[&str]) -> Running {
        let path = example(name);
        assert!(
            path.exists(),
            "{} not built (cargo test builds the examples; alone: cargo build --examples --all-features)",
            path.display()
        );
        let mut child = Command::new(&path)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn example");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running { child, lines }
    }

    /// The address in the example's `listening on ADDR` line.
    fn address(&self) -> std::net::SocketAddr {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("no `listening on ADDR` line within 20 s");
        let addr = line.strip_prefix("listening on ").unwrap_or(&line);
        addr.parse()
            .unwrap_or_else(|_| panic!("not an address line: {line:?}"))
    }

    /// Sends `signal` and waits (at most `limit`) for the exit status.
    fn stop(
        &mut self,
        signal: nix::sys::signal::Signal,
        limit: Duration,
    ) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the example");
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "still running {limit:?} after {signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A response as the tests read it.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        let mut it = self.headers.iter();
        it.find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `X-Worker` header as a number.
    #[cfg(feature = "serde")]
    fn worker(&self) -> u32 {
        let w = self
            .header("X-Worker")
            .unwrap_or_else(|| panic!("no X-Worker: {self:?}"));
        w.parse().expect("X-Worker is a number")
    }
}

/// One request on a new connection (`Connection: close`), every step bounded. A refused,
/// reset or cut connection is an error.
fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<Reply> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response {text:?}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status: status.ok_or_else(bad)?,
        headers,
        body: body.to_string(),
    })
}

/// Node's graceful-exit cluster: while one client keeps asking workers to crash and others
/// keep sending requests, every request gets its answer, crashed workers are replaced, and
/// SIGTERM ends the cluster with status 0.
#[test]
fn graceful_exit_loses_no_request_while_workers_crash() {
    let mut ex = Running::start("graceful_exit", &["--port", "0"]);
    let addr = ex.address();
    let end = Instant::now() + Duration::from_secs(2);
    let clients: Vec<_> = (0..3)
        .map(|n| {
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut i = 0;
                while Instant::now() < end {
                    i += 1;
                    // Client 0 crashes a worker every 400 ms (within the restart budget:
                    // at most 5 unstable restarts per slot in 10 s); the others keep asking.
                    let path = if n == 0 {
                        "/crash".to_string()
                    } else {
                        format!("/p{n}-{i}")
                    };
                    let r = request(addr, "GET", &path, "")
                        .unwrap_or_else(|e| panic!("{path} failed: {e}"));
                    assert_eq!(r.status, 200, "{path}: {r:?}");
                    let id = if n == 0 {
                        assert_eq!(r.header("Connection"), Some("close"), "{r:?}");
                        r.body
                            .strip_prefix("worker ")
                            .and_then(|b| b.strip_suffix(" going down\n"))
                    } else {
                        r.body
                            .strip_prefix(&format!("{path} served by worker "))
                            .and_then(|b| b.strip_suffix('\n'))
                    };
                    let id: u32 = id
                        .and_then(|id| id.parse().ok())
                        .unwrap_or_else(|| panic!("{path}: {r:?}"));
                    seen.push(id);
                    if n == 0 {
                        std::thread::sleep(Duration::from_millis(400));
                    }
                }
                seen
            })
        })
        .collect();
    let mut crashed = Vec::new();
    let mut served = Vec::new();
    for (n, c) in clients.into_iter().enumerate() {
        let seen = c.join().unwrap_or_else(|_| panic!("client {n} failed"));
        if n == 0 {
            crashed = seen
        } else {
            served.extend(seen)
        }
    }
    assert!(crashed.len() >= 3, "only {} crashes", crashed.len());
    assert!(served.len() >= 20, "only {} requests served", served.len());
    // Workers 1 and 2 went down (or others did): replacements (ids above 2) served.
    assert!(
        served.iter().any(|&id| id > 2),
        "no replacement served: {served:?}"
    );
    let status = ex.stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "SIGTERM: {status:?}");
}

/// GETs `path` until worker `want(id)` answers (round-robin alternates the workers).
#[cfg(feature = "serde")]
fn get_on(addr: std::net::SocketAddr, path: &str, want: impl Fn(u32) -> bool) -> Reply {
    for _ in 0..40 {
        let r = request(addr, "GET", path, "").expect("GET");
        if want(r.worker()) {
            return r;
        }
    }
    panic!("GET {path}: the wanted worker never answered in 40 tries");
}

/// GETs `/kv/k` until a worker `want` accepts answers, checks that it answers 200 with
/// `value` and `X-Cache: cache`, and returns the worker.
#[cfg(feature = "serde")]
fn get_kv(addr: std::net::SocketAddr, want: impl Fn(u32) -> bool, value: &str, cache: &str) -> u32 {
    let r = get_on(addr, "/kv/k", want);
    let got = (r.status, r.body.trim_end(), r.header("X-Cache"));
    assert_eq!(got, (200, value, Some(cache)), "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    r.worker()
}

/// Node's cached key-value service: values put through one worker are read through the
/// other, a put through one worker drops the other's cached copy, and errors are answered
/// with their status.
#[cfg(feature = "serde")]
#[test]
fn kv_service_shares_values_and_invalidates_caches() {
    let ex = Running::start("kv_service", &["--port", "0"]);
    let addr = ex.address();
    let put = |body: &str| request(addr, "PUT", "/kv/k", body).expect("PUT");
    let r = put(r#"{"v": 1}"#);
    assert_eq!(
        (r.status, r.body.as_str()),
        (201, "{\"ok\":true}\n"),
        "{r:?}"
    );
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("X-Cache"), Some("-"));
    let a = r.worker();
    // The other worker asks the primary (and caches), then answers from its cache.
    let b = get_kv(addr, |w| w != a, "{\"v\":1}", "miss");
    get_kv(addr, |w| w == b, "{\"v\":1}", "hit");
    // The putting worker cached its own value.
    get_kv(addr, |w| w == a, "{\"v\":1}", "hit");
    // Both cache v1 now. An update through one worker invalidates the other's copy.
    let r = put(r#"{"v": 2}"#);
    assert_eq!(r.status, 200, "an update: {r:?}");
    let (via, other) = if r.worker() == a { (a, b) } else { (b, a) };
    get_kv(addr, |w| w == other, "{\"v\":2}", "miss");
    get_kv(addr, |w| w == via, "{\"v\":2}", "hit");
    // Errors.
    let r = put("{not json");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.starts_with("{\"error\":\"body is not JSON: "),
        "{r:?}"
    );
    for (method, path, status, answer, cache) in [
        ("DELETE", "/kv/k", 405, r#"{"error":"GET or PUT"}"#, "-"),
        (
            "GET",
            "/elsewhere",
            404,
            r#"{"error":"try /kv/<key>"}"#,
            "-",
        ),
        (
            "GET",
            "/kv/nothing",
            404,
            r#"{"error":"no such key"}"#,
            "miss",
        ),
    ] {
        let r = request(addr, method, path, "").expect(method);
        let got = (r.status, r.body.trim_end(), r.header("X-Cache"));
        assert_eq!(got, (status, answer, Some(cache)), "{method} {path}: {r:?}");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
    }
}

#[test]
fn handoff_ceiling_counts_the_connections_its_workers_were_handed() {
    use nix::sys::signal::{Signal, kill};
    const CONNS: u64 = 20;
    let limit = Duration::from_secs(20);
    let mut run = Running::start("handoff_ceiling", &["--workers", "2"]);
    let first = run.lines.recv_timeout(limit).expect("a listening line");
    let port: u16 = first
        .strip_prefix("listening port=")
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a listening line: {first}"));
    for _ in 0..CONNS {
        drop(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    }
    let pid = nix::unistd::Pid::from_raw(run.child.id() as i32);
    // Hand-offs lag the connects a little: ask until all are counted.
    let end = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < end {
        kill(pid, Signal::SIGUSR1).expect("SIGUSR1");
        last = run.lines.recv_timeout(limit).expect("a handed= line");
        if last == format!("handed={CONNS}") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(last, format!("handed={CONNS}"));
    let status = run.stop(Signal::SIGTERM, limit);
    assert!(status.success(), "{status:?}");
}
