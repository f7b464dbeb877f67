//! Helpers for the HTTP server tests: a server on its own thread and loop, raw-socket
//! exchanges, and an external-program runner that skips when the program is missing.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use forkloop::http::{Config, Request, Response, Server};
use forkloop::rt::EventLoop;

/// Every client-side wait gives up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes `/stream` sends.
pub const STREAM_BYTES: usize = 4 << 20;

/// Bytes of `/big`'s body (sent with `end`).
pub const BIG_BYTES: usize = 1 << 20;

/// A server on its own thread; stopped (and joined) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a server with `config` and the test routes (see [`route`]).
pub fn serve(config: Config) -> TestServer {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut lp = EventLoop::new().expect("loop");
        let server = Server::listen(&mut lp, None, "127.0.0.1:0".parse().unwrap(), config, route);
        server.net().on_listening(&mut lp, move |_, s| {
            let _ = tx.send(s.address().expect("address"));
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let t = lp.set_interval(20u64, move |lp| {
            if stop2.load(Ordering::SeqCst) || Instant::now() > deadline {
                lp.exit(0);
            }
        });
        let _ = t;
        lp.run().expect("server loop");
    });
    let addr = rx.recv_timeout(IO_TIMEOUT).expect("server listening");
    TestServer {
        addr,
        stop,
        thread: Some(thread),
    }
}

/// The test routes:
/// * `/echo`: the request body back, with `X-Method`, `X-Chunked`, `X-Version` and
///   `X-Headers` (the request's header names, in order);
/// * `/slow`: `slow`, 200 ms later (from a timer);
/// * `/stream`: [`STREAM_BYTES`] bytes streamed in 64 KiB parts, waiting for each drain;
/// * `/big`: [`BIG_BYTES`] bytes with `end`;
/// * `/close`: `bye` with `Connection: close`;
/// * `/drop`: the response is dropped without being ended;
/// * `/misuse`: the refusals of invalid statuses and header fields, in the body;
/// * `/stats`: the server's counters as text;
/// * `/count`: reads the body with `read_body`, answers `total N parts P`;
/// * `/started`: streams `started` first, then reads the body, then `total N`;
/// * `/early`: `early`, without reading the body;
/// * `/stop`: reads the body until it has 4 bytes or more, then stops and answers 413
///   `stopped at N` at once;
/// * `/late`: as `/count`, but starts reading the body 50 ms after the head came;
/// * anything else: `hello`.
pub fn route(lp: &mut EventLoop, req: &Request, mut res: Response) {
    match req.path() {
        "/echo" => {
            res.set_header("X-Method", req.method()).unwrap();
            res.set_header("X-Chunked", if req.is_chunked() { "yes" } else { "no" })
                .unwrap();
            let v = format!("{:?}", req.version());
            res.set_header("X-Version", &v).unwrap();
            let names: Vec<&str> = req.headers().map(|(n, _)| n).collect();
            res.set_header("X-Headers", &names.join(",")).unwrap();
            res.end(lp, req.body());
        }
        "/slow" => {
            lp.set_timeout(200u64, move |lp| res.end(lp, b"slow"));
        }
        "/stream" => stream_part(lp, res, 0),
        "/big" => res.end(lp, &vec![b'y'; BIG_BYTES]),
        "/close" => {
            res.set_header("Connection", "close").unwrap();
            res.end(lp, b"bye");
        }
        "/drop" => drop(res),
        "/misuse" => {
            // Each refusal, by name, in the body.
            let refusals = [
                res.set_status(99).err(),
                res.set_header("Content-Length", "3").err(),
                res.set_header("Connection", "upgrade").err(),
                res.set_header("Bad Name", "x").err(),
                res.set_header("X-Ok", "a\r\nX-Injected: 1").err(),
            ];
            let text: Vec<String> = refusals
                .iter()
                .map(|e| e.map_or("accepted".to_string(), |e| e.to_string()))
                .collect();
            res.end(lp, text.join("|").as_bytes());
        }
        "/stats" => {
            // The handler reaches its own server through the response.
            let s = res.server().stats();
            let mut text = format!(
                "requests={} accepted={} open={}",
                s.requests, s.accepted, s.open
            );
            for k in forkloop::http::ErrorKind::ALL {
                text.push_str(&format!(" {}={}", k.name(), s.errors_of(k)));
            }
            res.end(lp, text.as_bytes());
        }
        "/count" => {
            let seen = std::rc::Rc::new(std::cell::Cell::new((0usize, 0usize)));
            let s = seen.clone();
            res.read_body(
                lp,
                move |_, part| {
                    s.set((s.get().0 + part.len(), s.get().1 + 1));
                    ControlFlow::Continue(())
                },
                move |lp, res| {
                    let (n, parts) = seen.get();
                    res.end(lp, format!("total {n} parts {parts}").as_bytes());
                },
            );
        }
        "/started" => {
            res.write(lp, b"started\n");
            read_counting(lp, res, usize::MAX, |lp, res, n| {
                res.end(lp, format!("total {n}").as_bytes())
            });
        }
        "/early" => res.end(lp, b"early"),
        "/stop" => read_counting(lp, res, 4, |lp, mut res, n| {
            res.set_status(413).unwrap();
            res.end(lp, format!("stopped at {n}").as_bytes());
        }),
        "/late" => {
            lp.set_timeout(50u64, move |lp| {
                read_counting(lp, res, usize::MAX, |lp, res, n| {
                    res.end(lp, format!("total {n}").as_bytes())
                });
            });
        }
        _ => res.end(lp, b"hello"),
    }
}

/// Reads the request body counting its bytes, stopping once there are `stop_at` or more;
/// then `done` gets the response and the count.
fn read_counting(
    lp: &mut EventLoop,
    res: Response,
    stop_at: usize,
    done: impl FnOnce(&mut EventLoop, Response, usize) + 'static,
) {
    let n = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let seen = n.clone();
    res.read_body(
        lp,
        move |_, part| {
            seen.set(seen.get() + part.len());
            if seen.get() >= stop_at {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
        move |lp, res| done(lp, res, n.get()),
    );
}

fn stream_part(lp: &mut EventLoop, mut res: Response, sent: usize) {
    let part = [b'x'; 64 * 1024];
    let mut sent = sent;
    while sent < STREAM_BYTES {
        sent += part.len();
        if !res.write(lp, &part) {
            res.on_drain(lp, move |lp, res| stream_part(lp, res, sent));
            return;
        }
    }
    res.finish(lp);
}

/// Connects with the client timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Reads until the server closes; returns what came and whether it was a clean EOF (not a
/// reset, not a timeout).
pub fn read_to_close(s: &mut TcpStream) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// Sends `bytes` on a new connection and reads until the server closes it.
pub fn exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = connect(addr);
    s.write_all(bytes).expect("write");
    read_to_close(&mut s)
}

/// Reads one response with a `Content-Length` body from `s`: (head, body), or `None` if
/// the server closed the connection before its first byte. Panics on a response cut short.
pub fn next_response(s: &mut impl Read) -> Option<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut byte = [0u8; 1];
    while !data.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head");
        if n == 0 && data.is_empty() {
            return None;
        }
        assert_eq!(
            n,
            1,
            "response head cut short: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.push(byte[0]);
    }
    let head = String::from_utf8(data).expect("head");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("response body cut short");
    Some((head, body))
}

/// As [`next_response`], for a response that must come.
pub fn read_response(s: &mut impl Read) -> (String, Vec<u8>) {
    next_response(s).expect("connection closed before a response")
}

/// Runs `program` with `args`; `None` (after printing why) when it is not installed.
pub fn run_tool(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Option<std::process::Output> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIP: {program} is not installed");
            return None;
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    let input = stdin.map(<[u8]>::to_vec);
    let mut pipe = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        if let Some(i) = input {
            let _ = pipe.write_all(&i);
        }
    });
    // Bounded: a watchdog kills the tool if it runs longer than 30 s.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(30);
        while !done2.load(Ordering::SeqCst) {
            if Instant::now() > end {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let out = child.wait_with_output().expect("output");
    done.store(true, Ordering::SeqCst);
    let _ = writer.join();
    assert!(
        !watchdog.join().unwrap_or(false),
        "{program} did not finish in 30 s"
    );
    Some(out)
}
