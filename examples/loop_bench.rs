//! Event-loop microbenchmarks, one test per run, with the same test names and output line
//! as Node's `benches/peers/js/loop-bench.js` (compare with `scripts/loop-compare.sh`).
//!
//! ```text
//! cargo run --release --example loop_bench -- TEST [N]
//! ```
//!
//! Tests: immediate-chain, nexttick-chain, nexttick-batch, promise-chain, promise-batch,
//! microtask-chain, timeout0-chain, timers-same, timers-spread, and (forkloop only)
//! idle-timer and idle-tcp, which report the CPU an idle loop uses.
//!
//! `promise-chain` is one `spawn_local` future that awaits `yield_now()` N times (each await
//! is one wake-up and one microtask poll, like a chain of `.then`); `promise-batch` spawns
//! N futures in one synchronous loop.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkloop::rt::{EventLoop, yield_now};
use forkloop::sys::cputime::process_cpu_time;

const TESTS: [(&str, u64); 11] = [
    ("immediate-chain", 1_000_000),
    ("nexttick-chain", 1_000_000),
    ("nexttick-batch", 1_000_000),
    ("promise-chain", 1_000_000),
    ("promise-batch", 1_000_000),
    ("microtask-chain", 1_000_000),
    ("timeout0-chain", 100_000),
    ("timers-same", 100_000),
    ("timers-spread", 100_000),
    ("idle-timer", 1),
    ("idle-tcp", 10_000),
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Immediate,
    NextTick,
    Promise,
    Microtask,
    Timeout0,
}

fn cpu() -> Duration {
    process_cpu_time().unwrap_or_default()
}

type Done = Box<dyn FnOnce(&mut EventLoop, f64)>;

struct Run {
    name: &'static str,
    kind: Kind,
    n: u64,
    i: Cell<u64>,
    t0: Instant,
    cpu0: Duration,
    done: RefCell<Option<Done>>,
}

impl Run {
    fn new(name: &'static str, kind: Kind, n: u64, done: Done) -> Rc<Run> {
        Rc::new(Run {
            name,
            kind,
            n,
            i: Cell::new(0),
            t0: Instant::now(),
            cpu0: cpu(),
            done: RefCell::new(Some(done)),
        })
    }

    fn finish(&self, lp: &mut EventLoop) {
        let secs = self.t0.elapsed().as_secs_f64();
        if let Some(done) = self.done.borrow_mut().take() {
            done(lp, secs);
        }
    }

    fn print_rate(&self, secs: f64) {
        let n = self.n as f64;
        let cpu_ms = (cpu() - self.cpu0).as_secs_f64() * 1e3;
        println!(
            "test={} n={} secs={:.4} per_s={:.0} ns_each={:.1} cpu_ms={:.1}",
            self.name,
            self.n,
            secs,
            n / secs,
            secs * 1e9 / n,
            cpu_ms
        );
    }
}

fn schedule(lp: &mut EventLoop, run: Rc<Run>) {
    match run.kind {
        Kind::Immediate => {
            lp.set_immediate(move |lp| step(lp, run));
        }
        Kind::NextTick => lp.next_tick(move |lp| step(lp, run)),
        Kind::Microtask => lp.queue_microtask(move |lp| step(lp, run)),
        Kind::Timeout0 => {
            lp.set_timeout(0, move |lp| step(lp, run));
        }
        Kind::Promise => unreachable!("promise tests use futures"),
    }
}

fn step(lp: &mut EventLoop, run: Rc<Run>) {
    let i = run.i.get() + 1;
    run.i.set(i);
    if i < run.n {
        schedule(lp, run);
    } else {
        run.finish(lp);
    }
}

fn chain(lp: &mut EventLoop, run: Rc<Run>) {
    if run.kind == Kind::Promise {
        lp.spawn_local(async move {
            for _ in 1..run.n {
                yield_now().await;
            }
            forkloop::rt::with_loop(move |lp| run.finish(lp));
        });
    } else {
        schedule(lp, run);
    }
}

fn batch(lp: &mut EventLoop, run: Rc<Run>) {
    for _ in 0..run.n {
        let r = run.clone();
        let cb = move |lp: &mut EventLoop| {
            let i = r.i.get() + 1;
            r.i.set(i);
            if i == r.n {
                r.finish(lp);
            }
        };
        match run.kind {
            Kind::NextTick => lp.next_tick(cb),
            _ => lp.spawn_local(async move {
                forkloop::rt::with_loop(cb);
            }),
        }
    }
}

fn rate_test(lp: &mut EventLoop, name: &'static str, n: u64) {
    let kind = match name.split('-').next() {
        Some("immediate") => Kind::Immediate,
        Some("nexttick") => Kind::NextTick,
        Some("promise") => Kind::Promise,
        Some("microtask") => Kind::Microtask,
        _ => Kind::Timeout0,
    };
    let is_batch = name.ends_with("-batch");
    let go = move |lp: &mut EventLoop| {
        let run = Run::new(name, kind, n, Box::new(|_, _| {}));
        let r2 = run.clone();
        *run.done.borrow_mut() = Some(Box::new(move |_, secs| r2.print_rate(secs)));
        if is_batch {
            batch(lp, run)
        } else {
            chain(lp, run)
        }
    };
    if kind == Kind::Timeout0 {
        go(lp);
        return;
    }
    let warm_n = (n / 10).max(1);
    let warm = Run::new(
        name,
        kind,
        warm_n,
        Box::new(move |lp, _| {
            lp.set_immediate(go);
        }),
    );
    if is_batch {
        batch(lp, warm)
    } else {
        chain(lp, warm)
    }
}

fn timers_test(lp: &mut EventLoop, name: &'static str, n: u64) {
    let spread = name == "timers-spread";
    struct T {
        fired: Cell<u64>,
        t0: Instant,
        cpu0: Duration,
        created: Cell<Option<(Instant, Duration)>>,
        max_delay: Cell<u64>,
    }
    let st = Rc::new(T {
        fired: Cell::new(0),
        t0: Instant::now(),
        cpu0: cpu(),
        created: Cell::new(None),
        max_delay: Cell::new(0),
    });
    for i in 0..n {
        let d = if spread { 1 + i % 100 } else { 1 };
        st.max_delay.set(st.max_delay.get().max(d));
        let s = st.clone();
        lp.set_timeout(d, move |_| {
            let f = s.fired.get() + 1;
            s.fired.set(f);
            if f != n {
                return;
            }
            let end = Instant::now();
            let Some((t_created, cpu_created)) = s.created.get() else {
                return;
            };
            let total = (end - s.t0).as_secs_f64();
            let fire = (end - t_created).as_secs_f64();
            let create = (t_created - s.t0).as_secs_f64();
            let fire_cpu = (cpu() - cpu_created).as_secs_f64();
            let _ = s.cpu0;
            let nf = n as f64;
            let late = if spread {
                format!(" late_ms={:.2}", fire * 1e3 - s.max_delay.get() as f64)
            } else {
                String::new()
            };
            println!(
                "test={name} n={n} create_ms={:.2} create_ns_each={:.0} fire_ms={:.2} \
                 fire_cpu_ms={:.2} total_ms={:.2} total_ns_each={:.0}{late}",
                create * 1e3,
                create * 1e9 / nf,
                fire * 1e3,
                fire_cpu * 1e3,
                total * 1e3,
                total * 1e9 / nf
            );
        });
    }
    st.created.set(Some((Instant::now(), cpu())));
}

/// CPU used by a loop that waits for one timer `secs` away (after 100 ms of settling).
fn idle_timer_test(lp: &mut EventLoop) {
    let t0 = Instant::now();
    let cpu0 = cpu();
    lp.set_timeout(2000, move |_| {
        let wall = t0.elapsed().as_secs_f64();
        let used = (cpu() - cpu0).as_secs_f64();
        println!(
            "test=idle-timer wall_ms={:.1} cpu_ms={:.3} cpu_pct={:.4}",
            wall * 1e3,
            used * 1e3,
            used / wall * 100.0
        );
    });
    let t = lp.set_timeout(10_000, |_| {});
    lp.unref(t);
}

/// CPU used by a loop holding `n` idle TCP connections (clients live in a child process so
/// the descriptors fit the usual limits) over 2 s.
fn idle_tcp_test(lp: &mut EventLoop, n: u64) -> io::Result<()> {
    use forkloop::net::tcp;
    let listener = tcp::listen(
        lp,
        "127.0.0.1:0".parse().map_err(io::Error::other)?,
        |_, s| {
            let _ = s;
        },
    )?;
    let addr = listener.local_addr(lp)?;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args(["--idle-clients", &addr.to_string(), &n.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let accepted = Rc::new(Cell::new(0u64));
    let a = accepted.clone();
    listener.on_connection(lp, move |_, _| a.set(a.get() + 1));
    let start = Rc::new(Cell::new(None::<(Instant, Duration)>));
    let s = start.clone();
    let acc = accepted.clone();
    let poller = Rc::new(Cell::new(None));
    let p = poller.clone();
    let id = lp.set_interval(10, move |lp| {
        if s.get().is_none() && acc.get() >= n {
            if let Some(id) = p.get() {
                lp.clear_interval(id);
            }
            s.set(Some((Instant::now(), cpu())));
            let s2 = s.clone();
            let acc2 = acc.clone();
            // Measure with the polling interval stopped: only the idle sockets remain.
            lp.set_timeout(2000, move |lp| {
                if let Some((t0, c0)) = s2.get() {
                    let wall = t0.elapsed().as_secs_f64();
                    let used = (cpu() - c0).as_secs_f64();
                    println!(
                        "test=idle-tcp conns={} wall_ms={:.1} cpu_ms={:.3} cpu_pct={:.4}",
                        acc2.get(),
                        wall * 1e3,
                        used * 1e3,
                        used / wall * 100.0
                    );
                }
                lp.exit(0);
            });
        }
    });
    poller.set(Some(id));
    let code = lp.run()?;
    let _ = child.kill();
    let _ = child.wait();
    std::process::exit(code);
}

fn idle_clients(addr: &str, n: u64) -> io::Result<()> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(std::net::TcpStream::connect(addr)?);
    }
    std::thread::sleep(Duration::from_secs(30));
    drop(conns);
    Ok(())
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--idle-clients") {
        let n = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
        return idle_clients(args.get(1).map_or("", String::as_str), n);
    }
    let name = args.first().map(String::as_str).unwrap_or("");
    let Some(&(name, default_n)) = TESTS.iter().find(|(t, _)| *t == name) else {
        let names: Vec<&str> = TESTS.iter().map(|t| t.0).collect();
        eprintln!("unknown test {name}; one of: {}", names.join(" "));
        std::process::exit(2);
    };
    let n = args
        .get(1)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 1.0)
        .map_or(default_n, |v| v as u64);
    let mut lp = EventLoop::new()?;
    match name {
        "timers-same" | "timers-spread" => timers_test(&mut lp, name, n),
        "idle-timer" => idle_timer_test(&mut lp),
        "idle-tcp" => idle_tcp_test(&mut lp, n)?,
        _ => rate_test(&mut lp, name, n),
    }
    let code = lp.run()?;
    std::process::exit(code);
}
