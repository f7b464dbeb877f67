//! A hello-world HTTP/1.1 cluster: every worker serves `hello world\n` with
//! `forkloop::http` (keep-alive, pipelining, limits and timeouts, graceful leaving); the
//! primary shares the port among them.
//!
//! ```text
//! cargo run --release --example http_cluster -- [--workers N] [--port P] [--host H] [--policy rr|none|reuseport] [--credit K] [--accept-window-ms W] [--primary-sched batch|normal]
//! ```
//!
//! Defaults: one worker per available core (at most 256), port 8000, host 127.0.0.1 (any
//! IPv4 or IPv6 address, e.g. `::1`), policy from
//! `FORKLOOP_SCHED_POLICY` or `rr`, credit (round-robin hand-offs a worker may hold
//! unread) 16, no accept windows (`--accept-window-ms W`, fractions allowed: under a
//! heavy stream of new connections the round-robin primary accepts every W ms instead of
//! waking for each one; see `forkloop::primary::window`), the primary's loop in the batch
//! scheduling class on Linux (`--primary-sched normal` keeps it in the normal class; see
//! `PrimaryOptions::yield_to_workers`). The primary prints one line,
//! `listening on ADDR workers=N policy=P` (ADDR as `127.0.0.1:8000` or `[::1]:8000`),
//! once every worker listens.
//!
//! Supervised: a crashed worker is restarted (with backoff if it keeps crashing), a hung
//! one is replaced; SIGHUP replaces every worker one at a time without dropping a
//! connection; SIGTTIN/SIGTTOU add/remove a worker; SIGTERM, SIGINT or SIGQUIT let the
//! workers finish their connections and exit with status 0 (a second SIGINT forces): while a
//! worker leaves, its responses say `Connection: close` and its idle keep-alive
//! connections are closed, with nothing to do here.
//!
//! `kill -USR2 <worker pid>` makes that worker print its own counts,
//! `stats pid=PID connections=C requests=R` (connections it accepted, requests it
//! answered: `forkloop::http::Server::stats`); `scripts/balance-compare.sh` reads them.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use forkloop::Role;
use forkloop::http::{self, Config};
use forkloop::ipc::Endpoint;
use forkloop::primary::supervise::{Supervisor, SupervisorEvent, SupervisorOptions};
use forkloop::primary::{Event, Policy, Primary, PrimaryOptions};
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;

/// Most workers `--workers` accepts.
const MAX_WORKERS: usize = 256;

struct Args {
    workers: usize,
    port: u16,
    host: IpAddr,
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
        workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)),
        port: 8000,
        host: IpAddr::from([127, 0, 0, 1]),
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
            "--host" => {
                let v = val();
                // `[::1]` as well as `::1`.
                let bare = v.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
                a.host = bare
                    .unwrap_or(&v)
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --host {v:?}: not an IP address")))
            }
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
    if !(1..=MAX_WORKERS).contains(&a.workers) {
        usage(&format!("--workers must be 1 to {MAX_WORKERS}"));
    }
    a
}

fn main() {
    env_logger::init();
    let args = parse_args();
    let code = match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("http_cluster: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn run(args: &Args) -> forkloop::Result<i32> {
    let mut lp = EventLoop::new()?;
    match forkloop::role() {
        Role::Primary => primary(&mut lp, args),
        Role::Worker(_) => worker(&mut lp, args),
    }
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
    let host = args.host;
    p.on(move |_, _, ev| {
        if let Event::Listening { address, .. } = ev {
            listening.set(listening.get() + 1);
            if listening.get() == workers && !announced.replace(true) {
                let port = match address {
                    Endpoint::Tcp(a) => a.port(),
                    _ => 0,
                };
                println!(
                    "listening on {} workers={workers} policy={}",
                    SocketAddr::new(host, port),
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
    let addr = SocketAddr::new(args.host, args.port);
    let server = http::Server::listen(
        lp,
        Some(&w),
        addr,
        Config::default(),
        |lp, _req, mut res| {
            if let Err(e) = res.set_header("Content-Type", "text/plain") {
                eprintln!("worker: {e}");
            }
            res.end(lp, b"hello world\n");
        },
    );
    server.net().on_error(|lp, _, e| {
        eprintln!("worker: cannot listen: {e}");
        lp.exit(1);
    });
    let counted = server.clone();
    lp.on_signal(nix::libc::SIGUSR2, move |_, _| {
        let st = counted.stats();
        let pid = std::process::id();
        println!(
            "stats pid={pid} connections={} requests={}",
            st.accepted, st.requests
        );
    })?;
    // Ctrl-C reaches the whole process group: leave gracefully, the primary does the rest.
    let w2 = w.clone();
    lp.on_signal(nix::libc::SIGINT, move |lp, _| w2.disconnect(lp))?;
    Ok(lp.run()?)
}
