//! Connect-only load generator: K threads connect to a TCP address and close at once, as
//! fast as they can, for a bounded time. For measuring what a server spends per
//! connection before any byte is exchanged (forkloop's primary handing connections off:
//! `scripts/primary-ceiling.sh`).
//!
//! ```text
//! connect-flood --addr IP:PORT [--threads K] [--duration S]
//! ```
//!
//! * Each connection is closed with `SO_LINGER` 0 (a reset, no `TIME_WAIT`): a graceful
//!   close would leave every local port in `TIME_WAIT` for a minute, and the ~28 000
//!   ephemeral ports would run out within a second at the rates measured here.
//! * A connect that fails or takes more than a second counts as an error; after an error
//!   the thread waits 1 ms (a full accept queue or no free local port clears by itself).
//!
//! Prints one line on stdout: `connects=N errors=E secs=S rate=R` (completed connects,
//! failed ones, the seconds measured, connects per second). Exit status 0, or 2 on bad
//! arguments or when no connect succeeded.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest one connect may take before it counts as an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

struct Config {
    addr: SocketAddr,
    threads: usize,
    duration: Duration,
}

fn usage(why: &str) -> ! {
    eprintln!("connect-flood: {why}");
    eprintln!("usage: connect-flood --addr IP:PORT [--threads K] [--duration S]");
    std::process::exit(2)
}

fn parse_args() -> Config {
    let mut addr = None;
    let mut threads = 4usize;
    let mut secs = 10.0f64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--addr" => addr = Some(v.parse().unwrap_or_else(|_| usage("bad --addr"))),
            "--threads" => threads = v.parse().unwrap_or_else(|_| usage("bad --threads")),
            "--duration" => secs = v.parse().unwrap_or_else(|_| usage("bad --duration")),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if !(1..=1024).contains(&threads) {
        usage("--threads must be 1 to 1024");
    }
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        usage("--duration must be more than 0 and at most 3600 seconds");
    }
    Config {
        addr: addr.unwrap_or_else(|| usage("--addr is required")),
        threads,
        duration: Duration::from_secs_f64(secs),
    }
}

/// Makes closing `s` send a reset at once (`SO_LINGER` on, 0 s).
fn reset_on_close(s: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads one `linger` from a live local; the descriptor is borrowed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One thread: connects and closes until `stop`; returns (connects, errors).
fn flood(addr: SocketAddr, stop: &AtomicBool) -> (u64, u64) {
    let (mut ok, mut errors) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                ok += 1;
                if let Err(e) = reset_on_close(&s) {
                    eprintln!("connect-flood: SO_LINGER: {e}");
                }
            }
            Err(_) => {
                errors += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    (ok, errors)
}

fn main() {
    let cfg = parse_args();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..cfg.threads)
        .map(|_| {
            let stop = stop.clone();
            let addr = cfg.addr;
            std::thread::spawn(move || flood(addr, &stop))
        })
        .collect();
    std::thread::sleep(cfg.duration);
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut errors) = (0u64, 0u64);
    for h in handles {
        match h.join() {
            Ok((o, e)) => {
                ok += o;
                errors += e;
            }
            Err(_) => {
                eprintln!("connect-flood: a thread panicked");
                std::process::exit(2);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "connects={ok} errors={errors} secs={secs:.3} rate={:.0}",
        ok as f64 / secs
    );
    if ok == 0 {
        std::process::exit(2);
    }
}
