//! Helpers for tests that drive other programs (`node`, `python3`, the `forkloop`
//! command): whether a program is there, a free port, one HTTP request, a bounded wait.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Every client-side wait gives up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `program` runs (`program --version`); prints why `test` is skipped if not.
pub fn have(program: &str, test: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("{test}: skipped: `{program}` is not on the PATH");
    }
    ok
}

/// A port free right now (for programs that need a fixed one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 request with `Connection: close`; the body of a 200 answer.
pub fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.trim().to_owned()),
        _ => Err(std::io::Error::other(format!("bad answer {out:?}"))),
    }
}

/// Requests until one succeeds (at most 10 s).
pub fn wait_serving(addr: SocketAddr) {
    let end = Instant::now() + IO_TIMEOUT;
    while get(addr).is_err() {
        assert!(Instant::now() < end, "never served on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (at most 15 s) for `child` to exit; its status and everything it wrote to its
/// piped stdout, then stderr.
pub fn wait_exit(child: &mut Child) -> (ExitStatus, String) {
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < end, "{} did not exit", child.id());
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut out);
    }
    (status, out)
}
