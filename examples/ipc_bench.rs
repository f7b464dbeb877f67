//! Two-process IPC benchmark over a forkloop [`Channel`]: the parent re-executes itself as
//! the child, handing it one end of a socketpair.
//!
//! ```text
//! cargo run --release --example ipc_bench -- pingpong SIZE COUNT
//! cargo run --release --example ipc_bench -- oneway SIZE COUNT
//! cargo run --release --example ipc_bench -- fdpass-stream COUNT [WINDOW]
//! cargo run --release --example ipc_bench -- pingpong SIZE COUNT --busy-poll US
//! ```
//!
//! * `pingpong`: a `User` frame of SIZE bytes to the child, which echoes it; COUNT round
//!   trips, each timed.
//! * `oneway`: COUNT `User` frames of SIZE bytes streamed to the child, which acks once at
//!   the end (the channel coalesces them into few `sendmsg` calls).
//! * `fdpass-stream`: COUNT frames each carrying one descriptor (an unconnected TCP socket,
//!   as the raw anchor does); the child acks every 64, the parent keeps at most WINDOW
//!   (default 256) un-acked.
//!
//! Each mode warms up with 10% of COUNT (at least 100) first, as the anchors do, and prints
//! one line: `mode=… size=… count=… secs=… rate_per_s=… mean_us=… p50_us=… p99_us=…`
//! (`oneway` and `fdpass-stream` report percentiles of the per-message time over batches
//! of 1000). `scripts/ipc-compare.sh` runs it beside the raw-socket and Node anchors.
//!
//! `--busy-poll US` (any mode; parent and child): each wait spins for up to US
//! microseconds before it blocks, as a loop with [`EventLoop::set_busy_poll`] does (the
//! same code, [`poll_spinning`]); the line then ends with `busy_poll_us=US`. Off by
//! default: the default figures are those of blocking waits, like the anchors'.
//!
//! `PIN=same` pins parent and child to CPU 0, `PIN=split` the parent to CPU 0 and the
//! child to CPU 1, as the anchors' benchmarks do; unset leaves placement to the scheduler.
//!
//! [`EventLoop::set_busy_poll`]: forkloop::rt::EventLoop::set_busy_poll
//! [`poll_spinning`]: forkloop::rt::poll_spinning

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use forkloop::ipc::{Channel, ChannelConfig, Flush, InFrame, Kind, Recv, SendFd};
use mio::{Events, Interest, Poll, Token};

const FD_ENV: &str = "FORKLOOP_BENCH_FD";
/// Tells the child how long to spin (µs) before blocking.
const SPIN_ENV: &str = "FORKLOOP_BENCH_SPIN_US";
/// How long every wait spins before it blocks (`--busy-poll`; zero: it does not).
static SPIN: OnceLock<Duration> = OnceLock::new();

fn spin() -> Duration {
    SPIN.get().copied().unwrap_or_default()
}
const ACK_EVERY: usize = 64;
const WAIT: Duration = Duration::from_secs(30);

/// A channel with its own poller, waiting with a timeout.
struct Endpoint {
    poll: Poll,
    events: Events,
    ch: Channel,
}

impl Endpoint {
    fn new(fd: OwnedFd) -> io::Result<Endpoint> {
        let poll = Poll::new()?;
        let mut ch = Channel::new(fd, ChannelConfig::default())?;
        poll.registry()
            .register(&mut ch, Token(0), Interest::READABLE | Interest::WRITABLE)?;
        Ok(Endpoint {
            poll,
            events: Events::with_capacity(4),
            ch,
        })
    }

    fn wait(&mut self) -> io::Result<()> {
        forkloop::rt::poll_spinning(&mut self.poll, &mut self.events, Some(WAIT), spin())?;
        if self.events.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "peer silent for 30 s",
            ));
        }
        Ok(())
    }

    fn flush_all(&mut self) -> io::Result<()> {
        while self.ch.flush()? == Flush::Pending {
            self.wait()?;
        }
        Ok(())
    }

    fn send(&mut self, payload: &[u8], fds: Vec<SendFd>) -> io::Result<()> {
        let mut fds = fds;
        loop {
            match self.ch.send_with_fds(Kind::User, payload, fds) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_queue_full() => {
                    fds = e.fds;
                    if self.ch.flush()? == Flush::Pending {
                        self.wait()?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one frame and hands it to `f`; `Ok(None)` at EOF.
    fn recv<R>(&mut self, f: impl FnOnce(InFrame<'_>) -> R) -> io::Result<Option<R>> {
        loop {
            match self.ch.recv()? {
                Recv::Frame(frame) => return Ok(Some(f(frame))),
                Recv::Eof => return Ok(None),
                Recv::WouldBlock => {}
            }
            self.wait()?;
        }
    }

    fn recv_some<R>(&mut self, f: impl FnOnce(InFrame<'_>) -> R) -> io::Result<R> {
        self.recv(f)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed"))
    }
}

fn usage(why: &str) -> ! {
    eprintln!("ipc_bench: {why}");
    eprintln!(
        "usage: ipc_bench pingpong SIZE COUNT | oneway SIZE COUNT | fdpass-stream COUNT [WINDOW] \
         [--busy-poll US]"
    );
    std::process::exit(2)
}

fn num(arg: Option<&String>, what: &str) -> usize {
    arg.and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage(&format!("missing or bad {what}")))
}

fn warm_of(count: usize) -> usize {
    (count / 10).max(100)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(mode: &str, size: usize, count: usize, secs: f64, mut lat_us: Vec<f64>) {
    lat_us.sort_by(f64::total_cmp);
    let spinning = match spin().as_micros() {
        0 => String::new(),
        us => format!(" busy_poll_us={us}"),
    };
    println!(
        "mode={mode} size={size} count={count} secs={secs:.3} rate_per_s={:.0} mean_us={:.2} p50_us={:.2} p99_us={:.2}{spinning}",
        count as f64 / secs,
        secs * 1e6 / count as f64,
        pct(&lat_us, 50.0),
        pct(&lat_us, 99.0)
    );
}

fn spawn_child(args: &[String]) -> io::Result<(Endpoint, std::process::Child)> {
    let (mine, theirs) = forkloop::sys::socketpair()?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--child").args(args);
    cmd.env(SPIN_ENV, spin().as_micros().to_string());
    let child = forkloop::sys::process::spawn_with_fd(&mut cmd, theirs.as_fd(), FD_ENV)?;
    drop(theirs);
    Ok((Endpoint::new(mine)?, child))
}

fn finish(ep: Endpoint, mut child: std::process::Child) -> io::Result<()> {
    drop(ep); // the child sees EOF and exits
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!("child failed: {status}")));
    }
    Ok(())
}

fn pingpong(args: &[String]) -> io::Result<()> {
    let size = num(args.get(1), "SIZE");
    let count = num(args.get(2), "COUNT");
    let (mut ep, child) = spawn_child(&args[..1])?;
    let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let one = |ep: &mut Endpoint| -> io::Result<()> {
        ep.send(&msg, Vec::new())?;
        ep.flush_all()?;
        let ok = ep.recv_some(|f| f.payload == msg.as_slice())?;
        if !ok {
            return Err(io::Error::other("echo mismatch"));
        }
        Ok(())
    };
    for _ in 0..warm_of(count) {
        one(&mut ep)?;
    }
    let mut lat = Vec::with_capacity(count);
    let t0 = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        one(&mut ep)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let secs = t0.elapsed().as_secs_f64();
    finish(ep, child)?;
    report("pingpong", size, count, secs, lat);
    Ok(())
}

/// Streams `n` frames (with `fd` attached to each, if given), timing batches of 1000.
/// Before each send past the window, waits for acks (one frame per `ACK_EVERY`).
fn stream(
    ep: &mut Endpoint,
    payload: &[u8],
    n: usize,
    fd: Option<&Arc<OwnedFd>>,
    window: usize,
    lat: &mut Vec<f64>,
) -> io::Result<()> {
    let mut acked = 0;
    let mut batch = Instant::now();
    for i in 0..n {
        while fd.is_some() && i - acked >= window {
            ep.flush_all()?;
            ep.recv_some(|_| ())?;
            acked += ACK_EVERY;
        }
        let fds = fd
            .map(|f| vec![SendFd::Shared(Arc::clone(f))])
            .unwrap_or_default();
        ep.send(payload, fds)?;
        if (i + 1) % 1000 == 0 {
            lat.push(batch.elapsed().as_secs_f64() * 1e6 / 1000.0);
            batch = Instant::now();
        }
    }
    ep.flush_all()?;
    let acks_left = if fd.is_some() {
        (n - acked) / ACK_EVERY
    } else {
        1
    };
    for _ in 0..acks_left {
        ep.recv_some(|_| ())?;
    }
    Ok(())
}

fn oneway(args: &[String]) -> io::Result<()> {
    let size = num(args.get(1), "SIZE");
    let count = num(args.get(2), "COUNT");
    let warm = warm_of(count);
    let (mut ep, child) = spawn_child(&[args[0].clone(), warm.to_string(), count.to_string()])?;
    let msg = vec![7u8; size];
    stream(&mut ep, &msg, warm, None, 0, &mut Vec::new())?;
    let mut lat = Vec::new();
    let t0 = Instant::now();
    stream(&mut ep, &msg, count, None, 0, &mut lat)?;
    let secs = t0.elapsed().as_secs_f64();
    finish(ep, child)?;
    report("oneway", size, count, secs, lat);
    Ok(())
}

fn fdpass_stream(args: &[String]) -> io::Result<()> {
    let count = num(args.get(1), "COUNT").div_ceil(ACK_EVERY) * ACK_EVERY;
    let window = args
        .get(2)
        .map(|w| w.parse().unwrap_or_else(|_| usage("bad WINDOW")))
        .unwrap_or(256usize)
        .max(ACK_EVERY);
    let warm = warm_of(count).div_ceil(ACK_EVERY) * ACK_EVERY;
    let (mut ep, child) = spawn_child(&args[..1])?;
    let sock = std::net::TcpListener::bind("127.0.0.1:0")?; // any socket fd stands in
    let fd = Arc::new(OwnedFd::from(sock));
    let payload = [7u8; 16];
    stream(&mut ep, &payload, warm, Some(&fd), window, &mut Vec::new())?;
    let mut lat = Vec::new();
    let t0 = Instant::now();
    stream(&mut ep, &payload, count, Some(&fd), window, &mut lat)?;
    let secs = t0.elapsed().as_secs_f64();
    finish(ep, child)?;
    report("fdpass-stream", 16, count, secs, lat);
    Ok(())
}

/// The child side: echo, count, or count-and-ack descriptors, until EOF.
fn child(args: &[String]) -> io::Result<()> {
    // SAFETY: the parent (this benchmark's own `main`) spawned this process with the
    // descriptor in FD_ENV for this one call; nothing else in the child takes it.
    let fd = unsafe { forkloop::sys::process::take_inherited_fd(FD_ENV) }?
        .ok_or_else(|| io::Error::other(format!("{FD_ENV} not set")))?;
    let mut ep = Endpoint::new(fd)?;
    match args.first().map(String::as_str) {
        Some("pingpong") => {
            let mut buf = Vec::new();
            while ep
                .recv(|f| {
                    buf.clear();
                    buf.extend_from_slice(f.payload)
                })?
                .is_some()
            {
                ep.send(&buf, Vec::new())?;
                ep.flush_all()?;
            }
        }
        Some("oneway") => {
            for phase in [num(args.get(1), "warm"), num(args.get(2), "count")] {
                for _ in 0..phase {
                    ep.recv_some(|_| ())?;
                }
                ep.send(&[1], Vec::new())?;
                ep.flush_all()?;
            }
            while ep.recv(|_| ())?.is_some() {}
        }
        Some("fdpass-stream") => {
            let mut n = 0usize;
            while let Some(fds) = ep.recv(|f| f.fds.len())? {
                if fds != 1 {
                    return Err(io::Error::other("frame without its fd"));
                }
                n += 1;
                if n.is_multiple_of(ACK_EVERY) {
                    ep.send(&[1], Vec::new())?;
                    ep.flush_all()?;
                }
            }
        }
        _ => usage("bad child mode"),
    }
    Ok(())
}

/// Pins this process as `PIN` says (`same`, `split` or unset), `child` choosing the side.
fn pin(child: bool) {
    let cpu = match (std::env::var("PIN").as_deref(), child) {
        (Ok("same"), _) | (Ok("split"), false) => 0,
        (Ok("split"), true) => 1,
        (Ok("") | Err(_), _) => return,
        (Ok(other), _) => usage(&format!("PIN must be same or split, not {other}")),
    };
    if let Err(e) = forkloop::sys::pin_to_cpu(cpu) {
        eprintln!("ipc_bench: cannot pin to CPU {cpu}: {e}");
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let spin_us = match args.iter().position(|a| a == "--busy-poll") {
        Some(i) => {
            let us = num(args.get(i + 1), "--busy-poll microseconds");
            args.drain(i..(i + 2).min(args.len()));
            us as u64
        }
        None => std::env::var(SPIN_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    };
    let _ = SPIN.set(Duration::from_micros(spin_us));
    pin(args.first().is_some_and(|a| a == "--child"));
    let res = match args.first().map(String::as_str) {
        Some("--child") => child(&args[1..]),
        Some("pingpong") => pingpong(&args),
        Some("oneway") => oneway(&args),
        Some("fdpass-stream") => fdpass_stream(&args),
        _ => usage("missing or unknown mode"),
    };
    if let Err(e) = res {
        eprintln!("ipc_bench: {e}");
        std::process::exit(1);
    }
}
