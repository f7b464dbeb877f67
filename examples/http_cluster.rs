//! A hello-world HTTP/1.1 cluster: every worker serves `hello world\n` with keep-alive;
//! the primary shares the port among them.
//!
//! ```text
//! cargo run --release --example http_cluster -- [--workers N] [--port P] [--host H] [--policy rr|none|reuseport] [--credit K] [--accept-window-ms W] [--primary-sched batch|normal]
//! ```
//!
//! Defaults: one worker per available core, port 8000, host 127.0.0.1, policy from
//! `FORKLOOP_SCHED_POLICY` or `rr`, credit (round-robin hand-offs a worker may hold
//! unread) 16, no accept windows (`--accept-window-ms W`, fractions allowed: under a
//! heavy stream of new connections the round-robin primary accepts every W ms instead of
//! waking for each one; see `forkloop::primary::window`), the primary's loop in the batch
//! scheduling class on Linux (`--primary-sched normal` keeps it in the normal class; see
//! `PrimaryOptions::yield_to_workers`). The primary prints one line,
//! `listening on HOST:PORT workers=N policy=P`, once every worker listens.
//!
//! Supervised: a crashed worker is restarted (with backoff if it keeps crashing), a hung
//! one is replaced; SIGHUP replaces every worker one at a time without dropping a
//! connection; SIGTTIN/SIGTTOU add/remove a worker; SIGTERM, SIGINT or SIGQUIT let the
//! workers finish their connections and exit with status 0 (a second SIGINT forces).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use forkloop::Role;
use forkloop::ipc::Endpoint;
use forkloop::net::Stream;
use forkloop::primary::supervise::{Supervisor, SupervisorEvent, SupervisorOptions};
use forkloop::primary::{Event, Policy, Primary, PrimaryOptions};
use forkloop::rt::EventLoop;
use forkloop::worker::{Server, Worker, WorkerSideState};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";
const RESPONSE_CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello world\n";
/// Largest request head we buffer before answering 431.
const MAX_HEAD: usize = 16 << 10;

struct Args {
    workers: usize,
    port: u16,
    host: String,
    policy: Option<Policy>,
    credit: u32,
    accept_window_ms: f64,
    yield_to_workers: bool,
}

fn usage(why: &str) -> ! {
    eprintln!("http_cluster: {why}");
    eprintln!(
        "usage: http_cluster [--workers N] [--port P] [--host H] [--policy rr|none|reuseport] [--credit K] [--accept-window-ms W] [--primary-sched batch|normal]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        port: 8000,
        host: "127.0.0.1".into(),
        policy: None,
        credit: forkloop::primary::DEFAULT_CREDIT,
        accept_window_ms: 0.0,
        yield_to_workers: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--workers" => a.workers = val().parse().unwrap_or_else(|_| usage("bad --workers")),
            "--port" => a.port = val().parse().unwrap_or_else(|_| usage("bad --port")),
            "--host" => a.host = val(),
            "--policy" => {
                a.policy = Some(
                    val()
                        .parse::<Policy>()
                        .unwrap_or_else(|e| usage(&e.to_string())),
                )
            }
            "--credit" => a.credit = val().parse().unwrap_or_else(|_| usage("bad --credit")),
            "--accept-window-ms" => {
                a.accept_window_ms = val()
                    .parse()
                    .ok()
                    .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0)
                    .unwrap_or_else(|| usage("bad --accept-window-ms"))
            }
            "--primary-sched" => {
                a.yield_to_workers = match val().as_str() {
                    "batch" => true,
                    "normal" => false,
                    _ => usage("--primary-sched takes batch or normal"),
                }
            }
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if a.workers == 0 {
        usage("--workers must be at least 1");
    }
    a
}

fn main() -> forkloop::Result<()> {
    env_logger::init();
    let args = parse_args();
    let mut lp = EventLoop::new()?;
    let code = match forkloop::role() {
        Role::Primary => primary(&mut lp, &args)?,
        Role::Worker(_) => worker(&mut lp, &args)?,
    };
    std::process::exit(code)
}

fn primary(lp: &mut EventLoop, args: &Args) -> forkloop::Result<i32> {
    let opts = PrimaryOptions {
        policy: args.policy,
        credit: args.credit,
        accept_window: (args.accept_window_ms > 0.0)
            .then(|| std::time::Duration::from_secs_f64(args.accept_window_ms / 1000.0)),
        yield_to_workers: args.yield_to_workers,
        ..PrimaryOptions::default()
    };
    let p = Primary::with_options(lp, opts)?;
    let policy = p.policy();
    let workers = args.workers;
    let announced = Rc::new(Cell::new(false));
    let listening = Rc::new(Cell::new(0usize));
    let host = args.host.clone();
    p.on(move |_, _, ev| {
        if let Event::Listening { address, .. } = ev {
            listening.set(listening.get() + 1);
            if listening.get() == workers && !announced.replace(true) {
                let port = match address {
                    Endpoint::Tcp(a) => a.port(),
                    _ => 0,
                };
                println!(
                    "listening on {host}:{port} workers={workers} policy={}",
                    policy.name()
                );
            }
        }
    });
    // Restarts, heartbeats, SIGHUP reload, SIGTERM/SIGINT/SIGQUIT graceful stop (a second
    // SIGINT forces), SIGTTIN/SIGTTOU scaling.
    let sup = Supervisor::new(
        lp,
        &p,
        SupervisorOptions {
            workers,
            ..SupervisorOptions::default()
        },
    )?;
    sup.on(|_, _, ev| match ev {
        SupervisorEvent::Restarting { .. }
        | SupervisorEvent::BreakerTripped { .. }
        | SupervisorEvent::ReplacementFailed { .. }
        | SupervisorEvent::ReloadFinished(_)
        | SupervisorEvent::Quarantined { .. } => eprintln!("supervisor: {ev:?}"),
        _ => {}
    });
    sup.start(lp)?;
    Ok(lp.run()?)
}

fn worker(lp: &mut EventLoop, args: &Args) -> forkloop::Result<i32> {
    let w = Worker::attach(lp)?.ok_or_else(|| forkloop::Error::Config("no channel".into()))?;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .map_err(|e| forkloop::Error::Config(format!("bad address: {e}")))?;
    let w3 = w.clone();
    let slot: Rc<RefCell<Option<Server>>> = Rc::default();
    let s2 = slot.clone();
    let server = w.listen_tcp(lp, addr, move |lp, conn| {
        serve(lp, conn, w3.clone(), s2.borrow().clone())
    });
    *slot.borrow_mut() = Some(server.clone());
    server.on_error(|lp, _, e| {
        eprintln!("worker: cannot listen: {e}");
        lp.exit(1);
    });
    // Ctrl-C reaches the whole process group: leave gracefully, the primary does the rest.
    let w2 = w.clone();
    lp.on_signal(nix::libc::SIGINT, move |lp, _| w2.disconnect(lp))?;
    Ok(lp.run()?)
}

/// Serves one connection: parse every complete request in the buffer, answer each.
/// Once the worker is leaving (reload, recycling, shutdown: its server stops accepting and
/// waits for its connections to end), every response says `Connection: close` and ends
/// its connection, so keep-alive clients move to the other workers instead of holding
/// this one until the drain deadline kills it.
///
/// Between requests the connection is marked idle on its server, so a closing server ends
/// it instead of waiting for the client (Node's `closeIdleConnections`) — once it has been
/// idle for the server's grace (100 ms by default), so that a request already on the wire
/// is answered rather than reset.
fn serve(lp: &mut EventLoop, conn: Stream, w: Worker, server: Option<Server>) {
    let _ = conn.set_nodelay(lp, true);
    let pending: Rc<RefCell<Vec<u8>>> = Rc::default();
    conn.on_data(lp, move |lp, conn, data| {
        if let Some(s) = &server {
            s.set_idle(lp, conn, false);
        }
        let leaving = !matches!(
            w.state(),
            WorkerSideState::Online | WorkerSideState::Listening
        );
        let mut buf = pending.borrow_mut();
        let ended = if buf.is_empty() {
            let (used, ended) = answer(lp, conn, data, leaving);
            buf.extend_from_slice(&data[used..]);
            ended
        } else {
            buf.extend_from_slice(data);
            let (used, ended) = answer(lp, conn, &buf, leaving);
            buf.drain(..used);
            ended
        };
        if ended {
            buf.clear();
            return;
        }
        if buf.is_empty()
            && let Some(s) = &server
        {
            s.set_idle(lp, conn, true); // every request answered
        }
        if buf.len() > MAX_HEAD {
            conn.write(lp, b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            conn.end(lp);
            buf.clear();
        }
    });
    conn.on_end(lp, |lp, c| c.end(lp));
}

/// Answers every complete request at the start of `data`; returns the bytes used and
/// whether the connection was ended. `leaving`: close the connection after the first
/// response.
fn answer(lp: &mut EventLoop, conn: Stream, data: &[u8], leaving: bool) -> (usize, bool) {
    let mut used = 0;
    while used < data.len() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&data[used..]) {
            Ok(httparse::Status::Complete(n)) => {
                let asked = wants_close(&req);
                used += n + body_len(&req).min(data.len() - used - n);
                if asked || leaving {
                    conn.write(lp, RESPONSE_CLOSE);
                    if asked && used == data.len() && conn.buffered(lp) == 0 {
                        // The client asked to close and sent nothing more: the response is
                        // out, so close now rather than wait for its FIN.
                        conn.destroy(lp);
                    } else {
                        conn.end(lp);
                    }
                    return (data.len(), true);
                }
                conn.write(lp, RESPONSE);
            }
            Ok(httparse::Status::Partial) => break,
            Err(_) => {
                conn.write(
                    lp,
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                conn.end(lp);
                return (data.len(), true);
            }
        }
    }
    (used, false)
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn wants_close(req: &httparse::Request<'_, '_>) -> bool {
    match header(req, "connection") {
        Some(v) if v.eq_ignore_ascii_case(b"close") => true,
        Some(v) if v.eq_ignore_ascii_case(b"keep-alive") => false,
        _ => req.version == Some(0),
    }
}

fn body_len(req: &httparse::Request<'_, '_>) -> usize {
    header(req, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
