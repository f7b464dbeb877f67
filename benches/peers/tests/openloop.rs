//! openloop against a server that stalls: the latencies must count the requests that were
//! due during the stall from their due time (no coordinated omission), and every request
//! must be answered and counted.

mod common;

use common::kv;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world\n";

/// A hello server (keep-alive, or `Connection: close` when asked), a thread per
/// connection; answering request number
/// `stall_at` holds a server-wide lock for `stall`, so that every connection waits.
fn serve(stall_at: u64, stall: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Mutex::new(()));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (count, gate) = (count.clone(), gate.clone());
            std::thread::spawn(move || answer(conn, &count, &gate, stall_at, stall));
        }
    });
    port
}

fn answer(conn: TcpStream, count: &AtomicU64, gate: &Mutex<()>, stall_at: u64, stall: Duration) {
    let _ = conn.set_nodelay(true);
    let mut out = conn.try_clone().expect("clone");
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    let mut close = false;
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let held = gate.lock().expect("gate");
                if n == stall_at {
                    std::thread::sleep(stall);
                }
                drop(held);
                if out.write_all(RESPONSE).is_err() || close {
                    return;
                }
            }
            Ok(_) => close |= line.eq_ignore_ascii_case("connection: close\r\n"),
        }
    }
}

#[test]
fn a_stall_shows_in_the_percentiles_of_the_requests_due_during_it() {
    // 1000 requests/s for 1 s on 8 connections; the 300th stalls the server for 300 ms:
    // ~300 requests fall due meanwhile, 30% of them all, waiting 300 ms down to 0. Counted
    // from their due time, the slowest 10% waited 200 ms or more; counted from the moment
    // they went out (coordinated omission), all but the 8 in flight would look fast.
    let port = serve(300, Duration::from_millis(300));
    let out = Command::new(env!("CARGO_BIN_EXE_openloop"))
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--rate",
            "1000",
            "--duration",
            "1",
        ])
        .args(["--warmup", "0", "--connections", "8", "--drain", "5"])
        .output()
        .expect("run openloop");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "openloop failed: {line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(kv(&line, "requests"), 1000.0, "{line}");
    assert_eq!(kv(&line, "errors"), 0.0, "{line}");
    assert_eq!(kv(&line, "timeouts"), 0.0, "{line}");
    assert!(
        kv(&line, "p90_us") >= 100_000.0,
        "the stall is missing from p90: {line}"
    );
    assert!(kv(&line, "max_us") >= 250_000.0, "{line}");
    assert!(kv(&line, "p50_us") < 100_000.0, "{line}");
}

#[test]
fn a_connection_per_request_is_answered_and_counted() {
    let port = serve(u64::MAX, Duration::ZERO);
    let out = Command::new(env!("CARGO_BIN_EXE_openloop"))
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--rate",
            "500",
            "--duration",
            "1",
        ])
        .args(["--warmup", "0", "--mode", "close"])
        .output()
        .expect("run openloop");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "openloop failed: {line}");
    assert_eq!(kv(&line, "requests"), 500.0, "{line}");
    assert_eq!(
        kv(&line, "errors") + kv(&line, "timeouts") + kv(&line, "non2xx"),
        0.0,
        "{line}"
    );
}
