//! connect-flood against a listener that counts what it accepts: the connects it reports
//! all reached the listener, and each was closed with a reset (no `TIME_WAIT` left on the
//! generator's side).

mod common;

use common::kv;
use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[test]
fn every_connect_reaches_the_listener_and_is_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicU64::new(0));
    let reset = Arc::new(AtomicU64::new(0));
    let (a, r) = (accepted.clone(), reset.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            a.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut b = [0u8; 1];
                match conn.read(&mut b) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    other => eprintln!("not a reset: {other:?}"),
                }
            });
        }
    });
    let out = Command::new(env!("CARGO_BIN_EXE_connect-flood"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--threads", "2", "--duration", "0.3"])
        .output()
        .expect("run connect-flood");
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "connect-flood failed: {line}");
    let connects = kv(&line, "connects") as u64;
    assert!(connects > 0, "{line}");
    // Errors are possible: a connect whose SYN the listener dropped (accept queue full)
    // waits out its second and counts as one; they are reported, not counted as connects.
    assert!(kv(&line, "errors") < connects as f64, "{line}");
    // The listener accepts (and sees the reset of) every connection, a little later.
    let end = Instant::now() + Duration::from_secs(10);
    while reset.load(Ordering::SeqCst) < connects && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), connects, "{line}");
    assert_eq!(reset.load(Ordering::SeqCst), connects, "{line}");
}
