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
    // Accept and read each connection's reset in this one thread (the generator resets
    // every connection at once): a thread per connection would accept too slowly and let
    // the accept queue overflow.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            a.fetch_add(1, Ordering::SeqCst);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 1];
            match conn.read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    r.fetch_add(1, Ordering::SeqCst);
                }
                other => eprintln!("not a reset: {other:?}"),
            }
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
    // (Until every connect is seen, or nothing has moved for 300 ms: with the generator
    // gone, what is still queued is accepted within that.)
    let end = Instant::now() + Duration::from_secs(10);
    let (mut last, mut still) = (u64::MAX, Instant::now());
    while reset.load(Ordering::SeqCst) < connects && Instant::now() < end {
        let now = (
            accepted.load(Ordering::SeqCst),
            reset.load(Ordering::SeqCst),
        );
        if now.0 == now.1 && now.0 != last {
            (last, still) = (now.0, Instant::now());
        } else if now.0 == now.1 && still.elapsed() > Duration::from_millis(300) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (accepted, reset) = (
        accepted.load(Ordering::SeqCst),
        reset.load(Ordering::SeqCst),
    );
    if kv(&line, "errors") == 0.0 {
        assert_eq!(accepted, connects, "{line}");
    } else {
        // Errors mean the accept queue overflowed: Linux then also drops the last ACK of
        // some handshakes, which the client counts as connected and resets before the
        // listener ever has them. Never more accepted than connected, though.
        assert!(
            accepted <= connects && accepted > 0,
            "{line}: {accepted} accepted"
        );
    }
    assert_eq!(
        reset, accepted,
        "every accepted connection was reset: {line}"
    );
}
