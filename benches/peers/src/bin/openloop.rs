//! Open-loop HTTP/1.1 load generator: requests at a fixed rate, latencies measured from
//! the time each request was *meant* to be sent, so a slow response delays no later
//! measurement (no coordinated omission).
//!
//! Why a program of our own: wrk measures in a closed loop (a connection sends its next
//! request only after the last response, so a stall hides the requests that would have
//! waited behind it), and wrk2, its open-loop fork, is not packaged by Debian; a
//! generator here is a few hundred lines on mio, builds with the other peers and
//! measures both ways the comparison needs.
//!
//! ```text
//! openloop --addr 127.0.0.1:PORT --rate R [--duration S] [--warmup S]
//!          [--mode keepalive|close] [--connections N] [--threads T] [--drain S]
//! ```
//!
//! * The schedule: request k of thread i is due at `start + (k * T + i) / R` (the threads
//!   interleave). A timerfd (nanosecond resolution, unlike epoll's millisecond timeout)
//!   wakes the thread at the next due time; every request due by then is queued.
//! * `keepalive` (default): a pool of N (default 64) persistent connections, shared out
//!   among the threads; a queued request goes out on an idle connection, or waits for one
//!   (the wait counts in its latency). A connection the server closes is reopened (the
//!   request on it counts as an error).
//! * `close`: every request on a new connection (`Connection: close`); at most N
//!   requests in flight, the rest wait (and that wait counts). The generator closes its
//!   end only after the server's, so its own ports do not pile up in TIME_WAIT.
//! * Latency: from the due time to the last byte of the response, recorded for requests
//!   due after the warm-up (default 1 s) and before its end (default 10 s later) in an
//!   HDR histogram (3 significant digits). After the schedule ends, requests still queued
//!   or in flight get up to `--drain` (default 5) seconds; those left count as timeouts.
//!
//! Prints one line of `key=value` results on stdout: requests (recorded), the rate
//! achieved (recorded requests answered within the measured time, per second: under the
//! target when the server cannot keep up), errors, non-2xx, timeouts, p50/p90/p99/p99.9/max/mean latency in µs, and `lag_*`, how
//! long requests waited between their due time and the moment they went out (queueing
//! for a free connection, or a generator that cannot keep up). Exit status 0, or 2 on
//! bad arguments or when it cannot connect at all.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

const TIMER: Token = Token(usize::MAX);
/// Largest latency the histograms hold (values above are recorded as this).
const MAX_NS: u64 = 600_000_000_000;
const NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    KeepAlive,
    Close,
}

#[derive(Clone, Debug)]
struct Config {
    addr: SocketAddr,
    rate: f64,
    duration_ns: u64,
    warmup_ns: u64,
    drain_ns: u64,
    mode: Mode,
    connections: usize,
    threads: usize,
}

fn usage(why: &str) -> ! {
    eprintln!("openloop: {why}");
    eprintln!(
        "usage: openloop --addr IP:PORT --rate R [--duration S] [--warmup S] \
         [--mode keepalive|close] [--connections N] [--threads T] [--drain S]"
    );
    std::process::exit(2)
}

fn secs_ns(v: &str, what: &str) -> u64 {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => (s * NS as f64) as u64,
        _ => usage(&format!("bad {what}: {v}")),
    }
}

fn parse_args() -> Config {
    let mut addr = None;
    let mut c = Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        rate: 0.0,
        duration_ns: 10 * NS,
        warmup_ns: NS,
        drain_ns: 5 * NS,
        mode: Mode::KeepAlive,
        connections: 64,
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--addr" => addr = Some(v.parse().unwrap_or_else(|_| usage("bad --addr"))),
            "--rate" => c.rate = v.parse().unwrap_or_else(|_| usage("bad --rate")),
            "--duration" => c.duration_ns = secs_ns(&v, "--duration"),
            "--warmup" => c.warmup_ns = secs_ns(&v, "--warmup"),
            "--drain" => c.drain_ns = secs_ns(&v, "--drain"),
            "--mode" => {
                c.mode = match v.as_str() {
                    "keepalive" => Mode::KeepAlive,
                    "close" => Mode::Close,
                    _ => usage("--mode takes keepalive or close"),
                }
            }
            "--connections" => {
                c.connections = v.parse().unwrap_or_else(|_| usage("bad --connections"))
            }
            "--threads" => c.threads = v.parse().unwrap_or_else(|_| usage("bad --threads")),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    c.addr = addr.unwrap_or_else(|| usage("--addr is required"));
    if !(c.rate.is_finite() && c.rate > 0.0) {
        usage("--rate must be a positive number (requests per second)");
    }
    if c.duration_ns == 0 {
        usage("--duration must be above 0");
    }
    if c.threads == 0 || c.connections < c.threads {
        usage("need --threads >= 1 and --connections >= --threads");
    }
    c
}

/// CLOCK_MONOTONIC in nanoseconds (the clock the timerfd runs on).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * NS + ts.tv_nsec as u64
}

/// A one-shot timerfd armed at absolute CLOCK_MONOTONIC times.
struct Timer {
    fd: OwnedFd,
    armed_at: u64,
}

impl Timer {
    fn new() -> io::Result<Timer> {
        // SAFETY: plain syscall; the descriptor is checked before it is owned.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Timer {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed_at: 0,
        })
    }

    fn arm_at(&mut self, at_ns: u64) -> io::Result<()> {
        if self.armed_at == at_ns {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / NS) as libc::time_t,
                tv_nsec: (at_ns % NS) as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for (null).
        let r = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_at = at_ns;
        Ok(())
    }

    /// Reads the expiry count so that the next expiry raises a new edge.
    fn clear(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer; EAGAIN is fine.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        self.armed_at = 0;
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Non-blocking connect under way (close mode: with its request waiting).
    Connecting,
    /// Keep-alive: connected, no request in flight.
    Idle,
    /// Request (partly) written, response not complete.
    Sent,
    /// Close mode: response complete, waiting for the server to close.
    Draining,
}

struct Conn {
    sock: TcpStream,
    state: State,
    /// Due time of the request on this connection.
    due: u64,
    written: usize,
    rbuf: Vec<u8>,
    want_write: bool,
}

enum Parsed {
    Partial,
    /// A whole response of this many bytes, with this status.
    Complete(usize, u16),
    /// A head without Content-Length: the body runs to the end of the connection.
    UntilEof(u16),
    Bad,
}

fn parse_response(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(head)) => {
            let status = resp.code.unwrap_or(0);
            let mut len = None;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|s| s.trim().parse::<usize>().ok());
                    if len.is_none() {
                        return Parsed::Bad;
                    }
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Parsed::Bad; // not sent by any server compared here
                }
            }
            match len {
                Some(n) if buf.len() >= head + n => Parsed::Complete(head + n, status),
                Some(_) => Parsed::Partial,
                None => Parsed::UntilEof(status),
            }
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Bad,
    }
}

/// What one thread measured.
struct Stats {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    recorded: u64,
    /// Recorded requests answered before the end of the measured time.
    in_window: u64,
    errors: u64,
    non2xx: u64,
    timeouts: u64,
}

impl Stats {
    fn new() -> Stats {
        let h =
            || Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid");
        Stats {
            latency: h(),
            lag: h(),
            recorded: 0,
            in_window: 0,
            errors: 0,
            non2xx: 0,
            timeouts: 0,
        }
    }
}

struct Gen<'a> {
    cfg: &'a Config,
    poll: Poll,
    timer: Timer,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Keep-alive: idle connections, least recently used first (every connection takes
    /// its turn, so the load spreads as the connections do over the server's processes).
    idle: VecDeque<usize>,
    /// Due times of the requests waiting for a connection (or for room under the cap).
    queue: VecDeque<u64>,
    /// Close mode: requests connecting or sent, not yet answered.
    in_flight: usize,
    /// This thread's share of --connections: the pool size, or the cap on `in_flight`.
    share: usize,
    request: Vec<u8>,
    scratch: Vec<u8>,
    record_from: u64,
    record_to: u64,
    stats: Stats,
}

impl Gen<'_> {
    fn recorded(&self, due: u64) -> bool {
        due >= self.record_from && due < self.record_to
    }

    fn error(&mut self, due: Option<u64>) {
        if due.is_none_or(|d| self.recorded(d)) {
            self.stats.errors += 1;
        }
    }

    fn open(&mut self, due: u64) -> io::Result<usize> {
        let mut sock = TcpStream::connect(self.cfg.addr)?;
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(idx);
            return Err(e);
        }
        self.conns[idx] = Some(Conn {
            sock,
            state: State::Connecting,
            due,
            written: 0,
            rbuf: Vec::with_capacity(512),
            want_write: true,
        });
        Ok(idx)
    }

    fn close(&mut self, idx: usize) {
        if let Some(mut c) = self.conns[idx].take() {
            let _ = self.poll.registry().deregister(&mut c.sock);
            if self.cfg.mode == Mode::Close && matches!(c.state, State::Connecting | State::Sent) {
                self.in_flight -= 1;
            }
            self.free.push(idx);
        }
        self.idle.retain(|&i| i != idx);
    }

    /// A keep-alive connection failed: count its request (if any) and open a new one.
    fn reopen(&mut self, idx: usize) {
        let due = self.conns[idx]
            .as_ref()
            .filter(|c| c.state == State::Sent)
            .map(|c| c.due);
        if due.is_some() {
            self.error(due);
        }
        self.close(idx);
        if let Err(e) = self.open(0) {
            eprintln!("openloop: reconnect failed: {e}");
            self.error(None);
        }
    }

    fn fail(&mut self, idx: usize) {
        match self.cfg.mode {
            Mode::KeepAlive => self.reopen(idx),
            Mode::Close => {
                let due = self.conns[idx]
                    .as_ref()
                    .filter(|c| c.state != State::Draining)
                    .map(|c| c.due);
                if due.is_some() {
                    self.error(due);
                }
                self.close(idx);
            }
        }
    }

    /// Writes what is left of the request; false if the connection failed.
    fn flush(&mut self, idx: usize) -> bool {
        let Some(c) = self.conns[idx].as_mut() else {
            return false;
        };
        while c.written < self.request.len() {
            match c.sock.write(&self.request[c.written..]) {
                Ok(0) => return false,
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let want = c.written < self.request.len();
        if want != c.want_write {
            c.want_write = want;
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut c.sock, Token(idx), interest)
                .is_err()
            {
                return false;
            }
        }
        true
    }

    fn send(&mut self, idx: usize, due: u64, now: u64) {
        if let Some(c) = self.conns[idx].as_mut() {
            c.state = State::Sent;
            c.due = due;
            c.written = 0;
        }
        if self.recorded(due) {
            self.stats
                .lag
                .saturating_record((now - due.min(now)).max(1));
        }
        if !self.flush(idx) {
            self.fail(idx);
        }
    }

    /// Sends queued requests while there are connections (or room) for them.
    fn dispatch(&mut self) {
        let now = now_ns();
        while let Some(&due) = self.queue.front() {
            match self.cfg.mode {
                Mode::KeepAlive => {
                    let Some(idx) = self.idle.pop_front() else {
                        break;
                    };
                    self.queue.pop_front();
                    self.send(idx, due, now);
                }
                Mode::Close => {
                    if self.in_flight >= self.share {
                        break;
                    }
                    self.queue.pop_front();
                    if self.recorded(due) {
                        self.stats
                            .lag
                            .saturating_record((now - due.min(now)).max(1));
                    }
                    match self.open(due) {
                        Ok(_) => self.in_flight += 1,
                        Err(_) => self.error(Some(due)),
                    }
                }
            }
        }
    }

    fn complete(&mut self, due: u64, status: u16) {
        if self.recorded(due) {
            let now = now_ns();
            self.stats
                .latency
                .saturating_record((now - due.min(now)).max(1));
            self.stats.recorded += 1;
            if now < self.record_to {
                self.stats.in_window += 1;
            }
            if !(200..300).contains(&status) {
                self.stats.non2xx += 1;
            }
        }
    }

    fn connected(&mut self, idx: usize) -> bool {
        let Some(c) = self.conns[idx].as_mut() else {
            return false;
        };
        match c.sock.take_error() {
            Ok(None) => {}
            _ => return false,
        }
        match c.sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return true, // not yet
            Err(_) => return false,
        }
        let _ = c.sock.set_nodelay(true);
        match self.cfg.mode {
            Mode::KeepAlive => {
                c.state = State::Idle;
                c.want_write = false;
                if self
                    .poll
                    .registry()
                    .reregister(&mut c.sock, Token(idx), Interest::READABLE)
                    .is_err()
                {
                    return false;
                }
                self.idle.push_back(idx);
                true
            }
            Mode::Close => {
                c.state = State::Sent;
                c.written = 0;
                self.flush(idx)
            }
        }
    }

    fn on_event(&mut self, idx: usize, writable: bool) {
        let Some(state) = self.conns[idx].as_ref().map(|c| c.state) else {
            return;
        };
        if state == State::Connecting {
            // Writable: connected or failed; readable: failed (refused, reset).
            if !self.connected(idx) {
                self.fail(idx);
            }
            return;
        }
        if writable && state == State::Sent && !self.flush(idx) {
            self.fail(idx);
            return;
        }
        // Read all there is.
        let mut eof = false;
        loop {
            let Some(c) = self.conns[idx].as_mut() else {
                return;
            };
            match c.sock.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    if c.state != State::Draining {
                        c.rbuf.extend_from_slice(&self.scratch[..n]);
                    }
                    if n < self.scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fail(idx);
                    return;
                }
            }
        }
        self.responses(idx, eof);
    }

    /// Completes the responses in a connection's buffer.
    fn responses(&mut self, idx: usize, eof: bool) {
        loop {
            let Some(c) = self.conns[idx].as_mut() else {
                return;
            };
            if c.state != State::Sent {
                break;
            }
            match parse_response(&c.rbuf) {
                Parsed::Partial => break,
                Parsed::Bad => {
                    self.fail(idx);
                    return;
                }
                Parsed::UntilEof(status) => {
                    if !eof || self.cfg.mode == Mode::KeepAlive {
                        if eof {
                            self.fail(idx);
                            return;
                        }
                        break;
                    }
                    let due = c.due;
                    c.rbuf.clear();
                    c.state = State::Draining;
                    self.in_flight -= 1;
                    self.complete(due, status);
                }
                Parsed::Complete(len, status) => {
                    let due = c.due;
                    c.rbuf.drain(..len);
                    match self.cfg.mode {
                        Mode::KeepAlive => {
                            c.state = State::Idle;
                            self.idle.push_back(idx);
                        }
                        Mode::Close => {
                            c.state = State::Draining;
                            self.in_flight -= 1;
                        }
                    }
                    self.complete(due, status);
                }
            }
        }
        if eof {
            let state = self.conns[idx].as_ref().map(|c| c.state);
            match state {
                Some(State::Draining) => self.close(idx),
                Some(_) => self.fail(idx),
                None => {}
            }
        }
    }
}

/// Runs thread `i`'s share of the schedule from `start`.
fn run(cfg: &Config, i: usize, ready: &Barrier, start: &AtomicU64) -> io::Result<Stats> {
    let conns = cfg.connections / cfg.threads + usize::from(i < cfg.connections % cfg.threads);
    let host = format!("Host: {}\r\n", cfg.addr);
    let request = match cfg.mode {
        Mode::KeepAlive => format!("GET / HTTP/1.1\r\n{host}\r\n"),
        Mode::Close => format!("GET / HTTP/1.1\r\n{host}Connection: close\r\n\r\n"),
    };
    let mut g = Gen {
        cfg,
        poll: Poll::new()?,
        timer: Timer::new()?,
        conns: Vec::new(),
        free: Vec::new(),
        idle: VecDeque::new(),
        queue: VecDeque::new(),
        in_flight: 0,
        share: conns,
        request: request.into_bytes(),
        scratch: vec![0; 64 * 1024],
        record_from: u64::MAX,
        record_to: u64::MAX,
        stats: Stats::new(),
    };
    let tfd = g.timer.fd.as_raw_fd();
    g.poll
        .registry()
        .register(&mut SourceFd(&tfd), TIMER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);

    // Keep-alive: open the pool before the clock starts.
    let mut setup = Ok(());
    if cfg.mode == Mode::KeepAlive {
        for _ in 0..conns {
            g.open(0)?;
        }
        let deadline = now_ns() + 5 * NS;
        while g.idle.len() < conns {
            if now_ns() > deadline || g.stats.errors > 0 {
                setup = Err(io::Error::other(format!(
                    "could not open {conns} connections to {}",
                    cfg.addr
                )));
                break;
            }
            g.poll
                .poll(&mut events, Some(std::time::Duration::from_millis(100)))?;
            for ev in events.iter() {
                let idx = ev.token().0;
                if ev.token() != TIMER {
                    g.on_event(idx, ev.is_writable());
                }
            }
        }
    }
    ready.wait(); // every thread connected (or failed)
    ready.wait(); // the start time is set
    setup?;
    let t0 = start.load(Ordering::SeqCst);
    let interval = NS as f64 / cfg.rate * cfg.threads as f64;
    let offset = NS as f64 / cfg.rate * i as f64;
    g.record_from = t0 + cfg.warmup_ns;
    g.record_to = g.record_from + cfg.duration_ns;
    let due = |k: u64| t0 + (offset + k as f64 * interval) as u64;
    let mut k = 0u64;
    let mut next = due(0);
    let end = g.record_to;
    let give_up = end + cfg.drain_ns;

    loop {
        let now = now_ns();
        while next <= now && next < end {
            g.queue.push_back(next);
            k += 1;
            next = due(k);
        }
        g.dispatch();
        // After the schedule: anything still queued or unanswered?
        let busy = || {
            !g.queue.is_empty()
                || g.in_flight > 0
                || g.conns.iter().flatten().any(|c| c.state == State::Sent)
        };
        let timeout = if next < end {
            g.timer.arm_at(next)?;
            None
        } else if now >= give_up || !busy() {
            break;
        } else {
            Some(std::time::Duration::from_nanos(
                (give_up - now).min(10_000_000),
            ))
        };
        match g.poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == TIMER {
                g.timer.clear();
            } else {
                g.on_event(ev.token().0, ev.is_writable());
            }
        }
    }
    // Whatever is left after the drain: timeouts.
    let left: Vec<u64> = g
        .queue
        .iter()
        .copied()
        .chain(
            g.conns
                .iter()
                .flatten()
                .filter(|c| matches!(c.state, State::Sent | State::Connecting))
                .map(|c| c.due),
        )
        .collect();
    g.stats.timeouts = left
        .into_iter()
        .filter(|&d| d != 0 && g.recorded(d))
        .count() as u64;
    Ok(g.stats)
}

fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to read into and then pass back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
        // Wake-ups on time: no timer slack (threads inherit it from this one).
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

fn main() {
    let cfg = Arc::new(parse_args());
    raise_fd_limit();
    let ready = Arc::new(Barrier::new(cfg.threads + 1));
    let start = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..cfg.threads)
        .map(|i| {
            let (cfg, ready, start) = (cfg.clone(), ready.clone(), start.clone());
            std::thread::spawn(move || run(&cfg, i, &ready, &start))
        })
        .collect();
    ready.wait();
    start.store(now_ns() + NS / 100, Ordering::SeqCst);
    ready.wait();
    let mut total = Stats::new();
    let mut failed = false;
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => {
                let _ = total.latency.add(&s.latency);
                let _ = total.lag.add(&s.lag);
                total.recorded += s.recorded;
                total.in_window += s.in_window;
                total.errors += s.errors;
                total.non2xx += s.non2xx;
                total.timeouts += s.timeouts;
            }
            Ok(Err(e)) => {
                eprintln!("openloop: {e}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    if failed {
        std::process::exit(2);
    }
    let secs = cfg.duration_ns as f64 / NS as f64;
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let l = &total.latency;
    println!(
        "mode={} rate={} duration_s={secs} connections={} threads={} requests={} achieved_rate={:.0} errors={} non2xx={} \
         timeouts={} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} mean_us={:.1} lag_p50_us={:.1} \
         lag_p99_us={:.1} lag_max_us={:.1}",
        if cfg.mode == Mode::KeepAlive {
            "keepalive"
        } else {
            "close"
        },
        cfg.rate,
        cfg.connections,
        cfg.threads,
        total.recorded,
        total.in_window as f64 / secs,
        total.errors,
        total.non2xx,
        total.timeouts,
        us(l, 0.5),
        us(l, 0.9),
        us(l, 0.99),
        us(l, 0.999),
        l.max() as f64 / 1e3,
        l.mean() / 1e3,
        us(&total.lag, 0.5),
        us(&total.lag, 0.99),
        total.lag.max() as f64 / 1e3,
    );
}
