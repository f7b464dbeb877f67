//! Worker (re)start latency, the forkloop side of `benches/peers/js/restart.js`: the
//! same per-iteration lines and the same `summary NAME n=… median_ms=… min_ms=… max_ms=…`
//! lines, so the two can be compared line by line (`scripts/restart-compare.sh`).
//!
//! ```text
//! cargo run --release --example restart_bench -- [ITERATIONS] [--default-policy]
//! ```
//!
//! ITERATIONS defaults to 20. Every worker is a hello-world HTTP server listening on
//! 127.0.0.1 port 0 (or `$PORT`) through the cluster (round-robin by default; see
//! `FORKLOOP_SCHED_POLICY`). Three phases, each with a 100 ms pause between iterations:
//!
//! 1. `fork` — `Primary::fork` of a fresh worker → its `Online` and `Listening` events;
//!    the worker is then SIGKILLed and its exit awaited before the next fork.
//!    Prints `fork i=…` lines and `summary fork_to_online|fork_to_listening`.
//! 2. `refork` — restart.js's phase 2 exactly: two workers; the oldest one is SIGKILLed
//!    by the primary and the primary forks the replacement in its `Exit` handler.
//!    Prints `refork i=…` lines and `summary refork_kill_to_exit|…_online|…_listening`.
//! 3. `restart` — what users get: a `Supervisor` keeps two workers; the oldest one is
//!    SIGKILLed and the supervisor restarts it. t0 is taken just before `kill(2)`; the
//!    intervals are t0 → the victim's `Exit` event, t0 → the replacement's `Online`,
//!    t0 → its `Listening`. Prints `restart i=…` lines and
//!    `summary kill_to_exit|kill_to_online|kill_to_listening` (the names restart.js uses).
//!
//! The supervisor restarts a worker at once when it crashed after being ready for at
//! least `RestartPolicy::min_uptime` (1 s by default); an earlier crash counts as unstable
//! and waits for the backoff (100 ms, ×1.5…). This benchmark kills a worker every ~100 ms,
//! so by default it sets `min_uptime` to zero (every ready worker counts as stable) — the
//! immediate path is the one measured. With `--default-policy` it keeps the default
//! policy and pauses `min_uptime` + 100 ms between kills instead (slower to run, same
//! path). The first output line, `config …`, says which; a restart that was delayed by
//! the backoff anyway is reported on stderr and fails the run (exit 1).
//!
//! Every wait has a 10 s deadline; a stuck benchmark kills its workers and exits 1.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkloop::Role;
use forkloop::net::Stream;
use forkloop::primary::supervise::{RestartPolicy, Supervisor, SupervisorEvent, SupervisorOptions};
use forkloop::primary::{Event, Primary};
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;
use nix::sys::signal::Signal;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";
/// Pause between iterations (restart.js: 100 ms).
const PAUSE: Duration = Duration::from_millis(100);
/// Pause after the two workers of a kill phase are up (restart.js: 200 ms).
const SETTLE: Duration = Duration::from_millis(200);
/// Longest wait for any one step.
const DEADLINE: Duration = Duration::from_secs(10);
/// Workers during the kill phases.
const WORKERS: usize = 2;

fn main() -> forkloop::Result<()> {
    env_logger::init();
    let mut lp = EventLoop::new()?;
    let code = match forkloop::role() {
        Role::Primary => primary(&mut lp)?,
        Role::Worker(_) => worker(&mut lp)?,
    };
    std::process::exit(code)
}

// ------------------------------------------------------------------------- worker

fn worker(lp: &mut EventLoop) -> forkloop::Result<i32> {
    let w = Worker::attach(lp)?.ok_or_else(|| forkloop::Error::Config("no channel".into()))?;
    let port: u16 = match std::env::var("PORT") {
        Ok(v) => v
            .parse()
            .map_err(|e| forkloop::Error::Config(format!("bad PORT {v:?}: {e}")))?,
        Err(_) => 0,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = w.listen_tcp(lp, addr, serve);
    server.on_error(|lp, _, e| {
        eprintln!("restart_bench worker: cannot listen: {e}");
        lp.exit(1);
    });
    Ok(lp.run()?)
}

/// A minimal hello-world responder: one response per request head seen.
fn serve(lp: &mut EventLoop, _: &forkloop::worker::Server, conn: Stream) {
    let tail: Rc<RefCell<Vec<u8>>> = Rc::default();
    conn.on_data(lp, move |lp, conn, data| {
        let mut buf = tail.borrow_mut();
        buf.extend_from_slice(data);
        let mut used = 0;
        while let Some(end) = buf[used..].windows(4).position(|w| w == b"\r\n\r\n") {
            used += end + 4;
            conn.write(lp, RESPONSE);
        }
        buf.drain(..used);
        if buf.len() > 16 << 10 {
            conn.destroy(lp);
        }
    });
    conn.on_end(lp, |lp, c| c.end(lp));
}

// ------------------------------------------------------------------------ primary

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fork,
    Refork,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Fork phase: waiting for the fresh worker to listen.
    ForkUp,
    /// Fork phase: waiting for the killed worker's exit.
    ForkDown,
    /// Kill phases: waiting for the initial workers to listen.
    Boot,
    /// Kill phases: waiting for the victim's exit and the replacement's events.
    Kill,
    /// Refork phase over: waiting for every worker to exit.
    Drain,
    /// Between steps (a timer is pending).
    Pause,
    /// Supervisor shutting down at the end.
    Done,
}

#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    exit: Option<Instant>,
    online: Option<Instant>,
    listening: Option<Instant>,
}

struct State {
    iterations: usize,
    default_policy: bool,
    phase: Phase,
    stage: Stage,
    i: usize,
    /// Fork phase: the fresh worker; kill phases: the replacement.
    cur: Option<u32>,
    victim: Option<u32>,
    t0: Instant,
    sample: Sample,
    booted: BTreeSet<u32>,
    progress: Instant,
    series: Vec<(&'static str, Vec<f64>)>,
    delayed_restarts: u32,
    failed: bool,
}

impl State {
    fn push(&mut self, name: &'static str, v: f64) {
        match self.series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, vs)) => vs.push(v),
            None => self.series.push((name, vec![v])),
        }
    }

    fn summary(&self, name: &str) {
        if let Some((_, vs)) = self.series.iter().find(|(n, _)| *n == name) {
            println!("{}", summary_line(name, vs));
        }
    }

    fn step(&mut self, stage: Stage) {
        self.stage = stage;
        self.progress = Instant::now();
    }

    fn pause(&self) -> Duration {
        if self.phase == Phase::Restart && self.default_policy {
            RestartPolicy::default().min_uptime + PAUSE
        } else {
            PAUSE
        }
    }
}

/// `summary NAME n=… median_ms=… min_ms=… max_ms=…`, as restart.js computes it.
fn summary_line(name: &str, values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return format!("summary {name} n=0");
    }
    let mid = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    format!(
        "summary {name} n={n} median_ms={mid:.2} min_ms={:.2} max_ms={:.2}",
        v[0],
        v[n - 1]
    )
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.duration_since(from).as_secs_f64() * 1000.0
}

type Shared = Rc<RefCell<State>>;
type SupSlot = Rc<RefCell<Option<Supervisor>>>;

fn primary(lp: &mut EventLoop) -> forkloop::Result<i32> {
    let mut iterations = 20usize;
    let mut default_policy = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--default-policy" => default_policy = true,
            s => match s.parse::<usize>() {
                Ok(n) if n > 0 => iterations = n,
                _ => {
                    eprintln!("usage: restart_bench [ITERATIONS] [--default-policy]");
                    return Ok(2);
                }
            },
        }
    }
    let min_uptime = if default_policy {
        RestartPolicy::default().min_uptime
    } else {
        Duration::ZERO
    };
    let pause = if default_policy {
        min_uptime + PAUSE
    } else {
        PAUSE
    };
    println!(
        "config iterations={iterations} workers={WORKERS} restart=supervisor \
         min_uptime_ms={} pause_ms={}",
        min_uptime.as_millis(),
        pause.as_millis()
    );

    let p = Primary::new(lp)?;
    let now = Instant::now();
    let st: Shared = Rc::new(RefCell::new(State {
        iterations,
        default_policy,
        phase: Phase::Fork,
        stage: Stage::Pause,
        i: 0,
        cur: None,
        victim: None,
        t0: now,
        sample: Sample::default(),
        booted: BTreeSet::new(),
        progress: now,
        series: Vec::new(),
        delayed_restarts: 0,
        failed: false,
    }));
    let sup: SupSlot = Rc::default();

    // Registered before the supervisor's own handler, so the victim's Exit is timed
    // before the supervisor forks the replacement.
    {
        let st = st.clone();
        let sup = sup.clone();
        p.on(move |lp, p, ev| on_event(lp, p, &*ev, &st, &sup));
    }

    // Watchdog: no step may take longer than DEADLINE.
    {
        let st = st.clone();
        let p = p.clone();
        let t = lp.set_interval(Duration::from_millis(250), move |lp| {
            let (stuck, stage, phase, i) = {
                let s = st.borrow();
                (s.progress.elapsed() > DEADLINE, s.stage, s.phase, s.i)
            };
            if stuck {
                eprintln!(
                    "restart_bench: no progress for {DEADLINE:?} in phase {phase:?}, stage \
                     {stage:?}, iteration {i}; giving up"
                );
                abort(lp, &p);
            }
        });
        lp.unref(t);
    }

    start_fork(lp, &p, &st)?;
    let code = lp.run()?;
    let s = st.borrow();
    if s.failed {
        return Ok(1);
    }
    if s.delayed_restarts > 0 {
        eprintln!(
            "restart_bench: {} supervised restart(s) waited for the backoff; the immediate \
             path was not what was measured",
            s.delayed_restarts
        );
        return Ok(1);
    }
    Ok(code)
}

/// SIGKILLs every worker and leaves the loop with status 1.
fn abort(lp: &mut EventLoop, p: &Primary) {
    for w in p.workers() {
        let _ = p.kill(w, Signal::SIGKILL as i32);
    }
    lp.exit(1);
}

fn fail(lp: &mut EventLoop, p: &Primary, st: &Shared, what: &str) {
    eprintln!("restart_bench: {what}");
    st.borrow_mut().failed = true;
    abort(lp, p);
}

/// Fork phase, iteration `st.i`: fork a fresh worker.
fn start_fork(lp: &mut EventLoop, p: &Primary, st: &Shared) -> std::io::Result<()> {
    let t0 = Instant::now();
    let w = p.fork(lp)?;
    let mut s = st.borrow_mut();
    s.t0 = t0;
    s.cur = Some(w);
    s.sample = Sample::default();
    s.step(Stage::ForkUp);
    Ok(())
}

/// Kill phases: start the two workers (ourselves, or through a supervisor).
fn start_kill_phase(lp: &mut EventLoop, p: &Primary, st: &Shared, sup: &SupSlot, phase: Phase) {
    {
        let mut s = st.borrow_mut();
        s.phase = phase;
        s.i = 0;
        s.booted.clear();
        s.step(Stage::Boot);
    }
    let started = match phase {
        Phase::Restart => start_supervisor(lp, p, st, sup),
        _ => (0..WORKERS).try_for_each(|_| p.fork(lp).map(|_| ())),
    };
    if let Err(e) = started {
        fail(lp, p, st, &format!("cannot start the workers: {e}"));
    }
}

fn start_supervisor(
    lp: &mut EventLoop,
    p: &Primary,
    st: &Shared,
    slot: &SupSlot,
) -> std::io::Result<()> {
    let default_policy = st.borrow().default_policy;
    let restart = if default_policy {
        RestartPolicy::default()
    } else {
        RestartPolicy {
            min_uptime: Duration::ZERO,
            ..RestartPolicy::default()
        }
    };
    let sup = Supervisor::new(
        lp,
        p,
        SupervisorOptions {
            workers: WORKERS,
            restart,
            signals: false,
            ..SupervisorOptions::default()
        },
    )?;
    let st2 = st.clone();
    sup.on(move |_, _, ev| match ev {
        SupervisorEvent::Restarting { delay, .. } if !delay.is_zero() => {
            eprintln!("restart_bench: supervisor delayed a restart: {ev:?}");
            st2.borrow_mut().delayed_restarts += 1;
        }
        SupervisorEvent::BreakerTripped { .. } | SupervisorEvent::ReplacementFailed { .. } => {
            eprintln!("restart_bench: supervisor: {ev:?}");
        }
        _ => {}
    });
    *slot.borrow_mut() = Some(sup.clone());
    sup.start(lp)
}

/// Kill phases: SIGKILL the oldest live worker.
fn kill_oldest(lp: &mut EventLoop, p: &Primary, st: &Shared) {
    let Some(victim) = p.workers().into_iter().min() else {
        fail(lp, p, st, "no worker left to kill");
        return;
    };
    {
        let mut s = st.borrow_mut();
        s.victim = Some(victim);
        s.cur = None;
        s.sample = Sample::default();
        s.step(Stage::Kill);
        s.t0 = Instant::now();
    }
    if let Err(e) = p.kill(victim, Signal::SIGKILL as i32) {
        fail(lp, p, st, &format!("cannot kill worker {victim}: {e}"));
    }
}

/// After a pause, runs `next`.
fn later<F>(lp: &mut EventLoop, st: &Shared, after: Duration, next: F)
where
    F: FnOnce(&mut EventLoop) + 'static,
{
    st.borrow_mut().step(Stage::Pause);
    lp.set_timeout(after, next);
}

fn on_event(lp: &mut EventLoop, p: &Primary, ev: &Event, st: &Shared, sup: &SupSlot) {
    let now = Instant::now();
    let (phase, stage) = {
        let s = st.borrow();
        (s.phase, s.stage)
    };
    match (ev, phase, stage) {
        // ---------------------------------------------------------------- fork phase
        (&Event::Online { worker }, Phase::Fork, Stage::ForkUp) => {
            let mut s = st.borrow_mut();
            if s.cur == Some(worker) {
                s.sample.online = Some(now);
            }
        }
        (&Event::Listening { worker, .. }, Phase::Fork, Stage::ForkUp) => {
            let line = {
                let mut s = st.borrow_mut();
                if s.cur != Some(worker) {
                    return;
                }
                let t0 = s.t0;
                let online = ms(t0, s.sample.online.unwrap_or(now));
                let listening = ms(t0, now);
                s.push("fork_to_online", online);
                s.push("fork_to_listening", listening);
                s.step(Stage::ForkDown);
                format!(
                    "fork i={} online_ms={online:.2} listening_ms={listening:.2}",
                    s.i
                )
            };
            println!("{line}");
            if let Err(e) = p.kill(worker, Signal::SIGKILL as i32) {
                fail(lp, p, st, &format!("cannot kill worker {worker}: {e}"));
            }
        }
        (&Event::Exit { worker, .. }, Phase::Fork, Stage::ForkDown) => {
            let finished = {
                let mut s = st.borrow_mut();
                if s.cur != Some(worker) {
                    return;
                }
                s.i += 1;
                s.i == s.iterations
            };
            let (p2, st2, sup2) = (p.clone(), st.clone(), sup.clone());
            later(lp, st, PAUSE, move |lp| {
                if finished {
                    {
                        let s = st2.borrow();
                        s.summary("fork_to_online");
                        s.summary("fork_to_listening");
                    }
                    start_kill_phase(lp, &p2, &st2, &sup2, Phase::Refork);
                } else if let Err(e) = start_fork(lp, &p2, &st2) {
                    fail(lp, &p2, &st2, &format!("cannot fork: {e}"));
                }
            });
        }
        // ------------------------------------------------------------ kill phases
        (&Event::Listening { worker, .. }, _, Stage::Boot) => {
            let (up, settle) = {
                let mut s = st.borrow_mut();
                s.booted.insert(worker);
                // With the default policy the first victim must be up min_uptime too.
                (s.booted.len() == WORKERS, SETTLE.max(s.pause()))
            };
            if up {
                let (p2, st2) = (p.clone(), st.clone());
                later(lp, st, settle, move |lp| kill_oldest(lp, &p2, &st2));
            }
        }
        (&Event::Exit { worker, .. }, _, Stage::Kill) => {
            {
                let mut s = st.borrow_mut();
                if s.victim != Some(worker) {
                    return;
                }
                s.sample.exit = Some(now);
                s.progress = now;
            }
            if phase == Phase::Refork {
                // restart.js: `cluster.on('exit', () => cluster.fork())`.
                match p.fork(lp) {
                    Ok(w) => st.borrow_mut().cur = Some(w),
                    Err(e) => fail(lp, p, st, &format!("cannot fork: {e}")),
                }
            }
            // Phase::Restart: the supervisor's handler (after this one) forks it.
        }
        (&Event::Fork { worker }, Phase::Restart, Stage::Kill) => {
            let mut s = st.borrow_mut();
            if s.cur.is_none() && s.sample.exit.is_some() {
                s.cur = Some(worker);
            }
        }
        (&Event::Online { worker }, _, Stage::Kill) => {
            let mut s = st.borrow_mut();
            if s.cur == Some(worker) {
                s.sample.online = Some(now);
            }
        }
        (&Event::Listening { worker, .. }, _, Stage::Kill) => {
            {
                let mut s = st.borrow_mut();
                if s.cur != Some(worker) {
                    return;
                }
                s.sample.listening = Some(now);
            }
            iteration_done(lp, p, st, sup);
        }
        (&Event::Exit { .. }, Phase::Refork, Stage::Drain) if p.workers().is_empty() => {
            let (p2, st2, sup2) = (p.clone(), st.clone(), sup.clone());
            later(lp, st, PAUSE, move |lp| {
                start_kill_phase(lp, &p2, &st2, &sup2, Phase::Restart)
            });
        }
        _ => {}
    }
}

fn iteration_done(lp: &mut EventLoop, p: &Primary, st: &Shared, sup: &SupSlot) {
    let (line, finished, phase, pause) = {
        let mut s = st.borrow_mut();
        let t0 = s.t0;
        let (Some(exit), Some(online), Some(listening)) =
            (s.sample.exit, s.sample.online, s.sample.listening)
        else {
            drop(s);
            fail(
                lp,
                p,
                st,
                "replacement listening before its exit/online was seen",
            );
            return;
        };
        let (e, o, l) = (ms(t0, exit), ms(t0, online), ms(t0, listening));
        let (tag, names) = match s.phase {
            Phase::Refork => (
                "refork",
                [
                    "refork_kill_to_exit",
                    "refork_kill_to_online",
                    "refork_kill_to_listening",
                ],
            ),
            _ => (
                "restart",
                ["kill_to_exit", "kill_to_online", "kill_to_listening"],
            ),
        };
        s.push(names[0], e);
        s.push(names[1], o);
        s.push(names[2], l);
        let line = format!(
            "{tag} i={} kill_to_exit_ms={e:.2} kill_to_online_ms={o:.2} kill_to_listening_ms={l:.2}",
            s.i
        );
        s.i += 1;
        (line, s.i == s.iterations, s.phase, s.pause())
    };
    println!("{line}");
    if !finished {
        let (p2, st2) = (p.clone(), st.clone());
        later(lp, st, pause, move |lp| kill_oldest(lp, &p2, &st2));
        return;
    }
    let names: [&str; 3] = match phase {
        Phase::Refork => [
            "refork_kill_to_exit",
            "refork_kill_to_online",
            "refork_kill_to_listening",
        ],
        _ => ["kill_to_exit", "kill_to_online", "kill_to_listening"],
    };
    {
        let s = st.borrow();
        for n in names {
            s.summary(n);
        }
    }
    match phase {
        Phase::Refork => {
            // restart.js kills the rest at the end; wait for them before the next phase.
            st.borrow_mut().step(Stage::Drain);
            for w in p.workers() {
                let _ = p.kill(w, Signal::SIGKILL as i32);
            }
        }
        _ => {
            st.borrow_mut().step(Stage::Done);
            let s = sup.borrow().clone();
            match s {
                // Exits the loop with 0 once every worker drained (1 if some were killed).
                Some(s) => s.shutdown(lp),
                None => lp.exit(0),
            }
        }
    }
}
