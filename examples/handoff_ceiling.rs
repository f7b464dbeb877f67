//! The primary's ceiling: how many connections one primary core hands off per second.
//! Round-robin, and workers that close every handed-off connection at once, so the
//! primary's accept-and-send is all the cluster does per connection (drive it with a
//! connect-only load generator: `benches/peers`' `connect-flood`; `scripts/primary-ceiling.sh`
//! runs both and reports the primary's CPU per hand-off).
//!
//! ```text
//! cargo run --release --example handoff_ceiling -- [--workers N] [--port P] [--credit K] [--accept-window-ms W]
//! ```
//!
//! Prints `listening port=P primary_pid=PID workers=N` once every worker listens. On
//! SIGUSR1 the primary asks each worker how many connections it was handed and prints
//! `handed=TOTAL` (one line, once every worker answered); SIGTERM or SIGINT stops the
//! cluster.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use forkloop::Role;
use forkloop::ipc::Endpoint;
use forkloop::primary::{Event, Policy, Primary, PrimaryOptions};
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;

/// The most workers this example starts.
const MAX_WORKERS: usize = 256;

struct Args {
    workers: usize,
    port: u16,
    credit: u32,
    accept_window_ms: f64,
}

fn usage(why: &str) -> ! {
    eprintln!("handoff_ceiling: {why}");
    eprintln!(
        "usage: handoff_ceiling [--workers N] [--port P] [--credit K] [--accept-window-ms W]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        workers: 2,
        port: 0,
        credit: forkloop::primary::DEFAULT_CREDIT,
        accept_window_ms: 0.0,
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
            "--credit" => a.credit = val().parse().unwrap_or_else(|_| usage("bad --credit")),
            "--accept-window-ms" => {
                a.accept_window_ms = val()
                    .parse()
                    .ok()
                    .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0)
                    .unwrap_or_else(|| usage("bad --accept-window-ms"))
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
    let args = parse_args();
    let code = match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("handoff_ceiling: {e}");
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
        policy: Some(Policy::RoundRobin),
        credit: args.credit,
        accept_window: (args.accept_window_ms > 0.0)
            .then(|| std::time::Duration::from_secs_f64(args.accept_window_ms / 1000.0)),
        ..PrimaryOptions::default()
    };
    let p = Primary::with_options(lp, opts)?;
    let workers = args.workers;
    let listening = Rc::new(Cell::new(0usize));
    // Answers to the current count: (answers, total).
    let counted = Rc::new(Cell::new((0usize, 0u64)));
    let c = counted.clone();
    p.on(move |_, _, ev| match ev {
        Event::Listening { address, .. } => {
            listening.set(listening.get() + 1);
            if listening.get() == workers {
                let port = match address {
                    Endpoint::Tcp(a) => a.port(),
                    _ => 0,
                };
                println!(
                    "listening port={port} primary_pid={} workers={workers}",
                    std::process::id()
                );
            }
        }
        Event::Message { data, .. } => {
            let Some(n) = std::str::from_utf8(data)
                .ok()
                .and_then(|t| t.strip_prefix("handed "))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                return;
            };
            let (answers, total) = c.get();
            c.set((answers + 1, total + n));
            if answers + 1 == workers {
                println!("handed={}", total + n);
            }
        }
        _ => {}
    });
    let p2 = p.clone();
    lp.on_signal(nix::libc::SIGUSR1, move |lp, _| {
        counted.set((0, 0));
        for w in p2.workers() {
            if let Err(e) = p2.send(lp, w, b"count") {
                eprintln!("handoff_ceiling: cannot ask worker {w}: {e}");
            }
        }
    })?;
    for sig in [nix::libc::SIGTERM, nix::libc::SIGINT] {
        let p3 = p.clone();
        lp.on_signal(sig, move |lp, _| {
            p3.disconnect(lp, |lp, _| lp.exit(0));
        })?;
    }
    for _ in 0..workers {
        p.fork(lp)?;
    }
    Ok(lp.run()?)
}

fn worker(lp: &mut EventLoop, args: &Args) -> forkloop::Result<i32> {
    let w = Worker::attach(lp)?.ok_or_else(|| forkloop::Error::Config("no channel".into()))?;
    let handed = Rc::new(Cell::new(0u64));
    let h = handed.clone();
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let server = w.listen_tcp(lp, addr, move |lp, _, conn| {
        h.set(h.get() + 1);
        conn.destroy(lp);
    });
    server.on_error(|lp, _, e| {
        eprintln!("worker: cannot listen: {e}");
        lp.exit(1);
    });
    w.on_message(lp, move |lp, w, m| {
        if m.data == b"count" {
            let _ = w.send(lp, format!("handed {}", handed.get()).as_bytes());
        }
    });
    // Ctrl-C reaches the whole process group: leave it to the primary.
    lp.on_signal(nix::libc::SIGINT, |_, _| {})?;
    Ok(lp.run()?)
}
