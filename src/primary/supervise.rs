//! Supervision: restarts with backoff and a crash-loop breaker, heartbeats with quarantine,
//! one retire path for every cause, rolling reload, graceful shutdown, scaling, stats and a
//! thread-safe control handle.
//!
//! # The retire path
//!
//! Every replacement (reload, memory or connection recycling, an unresponsive worker, a
//! worker going down) takes the same steps (peers.md §4 idea 3):
//!
//! 1. start the replacement in the same slot;
//! 2. wait until it is ready (listening, or its explicit `Ready` message), with a deadline;
//! 3. stop routing new connections to the old worker;
//! 4. disconnect the old worker (it finishes its connections) with a drain deadline;
//! 5. `SIGKILL` it if the deadline passes.
//!
//! A replacement that misses its deadline or dies first is killed and the old worker keeps
//! serving; during a reload that aborts the reload and reports the failure. An unresponsive
//! worker is unrouted at once and sent `SIGTERM` (then `SIGKILL` after a grace period)
//! without waiting, since it serves nobody.
//!
//! # Defaults (peers.md §2)
//!
//! | setting | default | reason |
//! |---|---|---|
//! | backoff base / factor / cap | 100 ms / 1.5 / 15 s | systemd's `RestartSec`, PM2's and Einhorn's factor, PM2's cap |
//! | minimum uptime | 1 s | Einhorn counts a worker alive 1 s as healthy |
//! | breaker | more than 5 unstable restarts in 10 s | systemd's `StartLimitBurst`/`StartLimitIntervalSec` |
//! | heartbeat / unresponsive after / kill grace | 1 s / 10 s / 2 s | stricter than Puma (5 s / 60 s) so a hung worker is noticed in seconds |
//! | quarantine lag | 500 ms | a loop that late cannot serve interactive traffic |
//! | ready / drain / shutdown deadlines | 30 s each | gunicorn's and Puma's graceful timeout |
//! | recycling at once | 1 | never lose more than one worker's capacity |
//!
//! # systemd
//!
//! Under `Type=notify`, the supervisor sends `READY=1` once every slot's first worker is
//! ready, `RELOADING=1` and then `READY=1` around a reload, `STOPPING=1` at shutdown,
//! `STATUS=…` along the way, and `WATCHDOG=1` at half of `WATCHDOG_USEC`. With socket
//! activation (`LISTEN_FDS`), listeners whose address matches a passed socket use it
//! instead of binding.
//!
//! A crash after the minimum uptime is restarted at once (the first restart is immediate);
//! a crash before it (unstable) waits `base × factor^(n−1)`, capped; a boot failure (exit
//! before ready) always counts as unstable. After the minimum uptime the count resets.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Event, Primary};
use crate::cluster::WorkerState;
use crate::rt::{EventLoop, LoopHandle, TimerId};

/// How unexpected exits are restarted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// First delay after an unstable exit.
    pub base: Duration,
    /// Growth of the delay per consecutive unstable exit.
    pub factor: f64,
    /// Largest delay.
    pub cap: Duration,
    /// A worker up this long (and ready) is stable: its crash restarts at once.
    pub min_uptime: Duration,
    /// More than this many unstable restarts within `breaker_window` trips the breaker.
    pub breaker_max: u32,
    /// The breaker's window.
    pub breaker_window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base: Duration::from_millis(100),
            factor: 1.5,
            cap: Duration::from_secs(15),
            min_uptime: Duration::from_secs(1),
            breaker_max: 5,
            breaker_window: Duration::from_secs(10),
        }
    }
}

impl RestartPolicy {
    /// The delay before the `n`-th consecutive unstable restart (n ≥ 1).
    pub fn delay(&self, n: u32) -> Duration {
        let exp = self.factor.powi(n.saturating_sub(1).min(64) as i32);
        self.base.mul_f64(exp.min(1e9)).min(self.cap)
    }
}

/// Heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// How often each worker is pinged.
    pub interval: Duration,
    /// Above this loop lag a worker gets no new connections until it recovers.
    pub quarantine_lag: Duration,
    /// No answer for this long: the worker is replaced and killed.
    pub timeout: Duration,
    /// Between `SIGTERM` and `SIGKILL` for an unresponsive worker.
    pub kill_grace: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            interval: Duration::from_secs(1),
            quarantine_lag: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
            kill_grace: Duration::from_secs(2),
        }
    }
}

/// Everything the supervisor does, configurable.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorOptions {
    /// Workers to keep running.
    pub workers: usize,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Heartbeats (`None`: off).
    pub health: Option<HealthPolicy>,
    /// A new worker must be ready within this.
    pub ready_timeout: Duration,
    /// A retiring worker is killed after this.
    pub drain_timeout: Duration,
    /// Graceful shutdown deadline; then `SIGKILL`.
    pub shutdown_timeout: Duration,
    /// Workers replaced at once (reload and recycling).
    pub concurrency: usize,
    /// Recycle a worker whose resident memory exceeds this many bytes.
    pub max_rss: Option<u64>,
    /// Recycle a worker after it accepted this many handed-off connections.
    pub max_connections: Option<u64>,
    /// Ready means the worker's explicit `Ready` message (true) or its first `Listening`.
    pub ready_on_message: bool,
    /// Handle `SIGHUP` (reload), `SIGTERM`/`SIGINT`/`SIGQUIT` (shutdown; a second `SIGINT`
    /// forces), `SIGTTIN`/`SIGTTOU` (one worker more / less).
    pub signals: bool,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            restart: RestartPolicy::default(),
            health: Some(HealthPolicy::default()),
            ready_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            concurrency: 1,
            max_rss: None,
            max_connections: None,
            ready_on_message: false,
            signals: true,
        }
    }
}

/// Why a worker is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Rolling reload.
    Reload,
    /// Resident memory over the limit.
    Memory,
    /// Handed-off connections over the limit.
    Connections,
    /// Missed heartbeats.
    Unresponsive,
    /// The worker said it is going down.
    GoingDown,
}

/// What the supervisor did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A worker is ready (listening or said so).
    Ready {
        /// Slot.
        slot: usize,
        /// Worker.
        worker: u32,
    },
    /// A slot's worker exited unexpectedly and will be restarted after `delay`.
    Restarting {
        /// Slot.
        slot: usize,
        /// The worker that exited.
        worker: u32,
        /// Before the restart.
        delay: Duration,
        /// It exited before it was ready.
        boot_failure: bool,
    },
    /// Too many unstable restarts: the slot stays empty; the others keep serving.
    BreakerTripped {
        /// Slot.
        slot: usize,
        /// Unstable restarts within the window.
        restarts: u32,
    },
    /// A worker's loop lags: no new connections for it until it recovers.
    Quarantined {
        /// Worker.
        worker: u32,
        /// Its lag.
        lag: Duration,
    },
    /// A quarantined worker recovered.
    Released {
        /// Worker.
        worker: u32,
    },
    /// A worker is being replaced.
    Retiring {
        /// Worker.
        worker: u32,
        /// Why.
        cause: Cause,
    },
    /// A replacement failed (missed its deadline or died); the old worker keeps serving.
    ReplacementFailed {
        /// The worker it was to replace.
        worker: u32,
        /// What happened.
        reason: String,
    },
    /// A rolling reload ended.
    ReloadFinished(Result<(), String>),
    /// Shutdown began.
    ShuttingDown,
    /// Every worker is gone after a shutdown; `clean` unless some had to be killed.
    Stopped {
        /// Whether every worker drained in time.
        clean: bool,
    },
}

/// Statistics of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// Worker id.
    pub id: u32,
    /// Slot.
    pub slot: usize,
    /// Process id.
    pub pid: u32,
    /// State.
    pub state: WorkerState,
    /// Generation (grows with every reload).
    pub generation: u64,
    /// Time since spawned.
    pub uptime: Duration,
    /// Restarts of its slot.
    pub restarts: u32,
    /// Connections handed off to it and accepted.
    pub connections_handed: u64,
    /// Hand-offs not yet answered.
    pub in_flight: u32,
    /// Last reported event-loop lag.
    pub loop_lag: Duration,
    /// Resident memory in bytes, where known.
    pub rss_bytes: Option<u64>,
    /// Whether new connections go to it.
    pub routed: bool,
}

type SupHandler = Box<dyn FnMut(&mut EventLoop, &Supervisor, &SupervisorEvent)>;
type ReloadDone = Box<dyn FnOnce(&mut EventLoop, Result<(), String>)>;

#[derive(Debug, Default)]
struct Slot {
    worker: Option<u32>,
    active: bool,
    restarts: u32,
    consecutive: u32,
    unstable: VecDeque<Instant>,
    tripped: bool,
    timer: Option<TimerId>,
}

#[derive(Debug)]
struct Meta {
    slot: usize,
    generation: u64,
    started: Instant,
    ready: bool,
    last_pong: Instant,
    lag: Duration,
    quarantined: bool,
    /// Being replaced (or removed, when scaling down).
    retiring: Option<Cause>,
    /// This worker replaces that one once ready.
    replaces: Option<u32>,
    /// This worker is being retired without replacement.
    removing: bool,
}

struct Reload {
    queue: VecDeque<u32>,
    active: usize,
    failed: Option<String>,
    done: Vec<ReloadDone>,
}

struct Inner {
    id: u64,
    p: Primary,
    opts: SupervisorOptions,
    slots: Vec<Slot>,
    meta: HashMap<u32, Meta>,
    generation: u64,
    shutting_down: bool,
    forced: bool,
    reload: Option<Reload>,
    recycling: usize,
    handlers: Rc<crate::hooks::Hooks<SupHandler>>,
    ping_seq: u64,
    interrupts: u32,
    /// systemd's notification socket, when run as a `Type=notify` service.
    notifier: Option<super::systemd::Notifier>,
    /// `READY=1` was sent for the first generation.
    announced: bool,
}

/// The supervisor of a [`Primary`]; clone the handle freely (it is an `Rc`).
#[derive(Clone)]
pub struct Supervisor(Rc<RefCell<Inner>>);

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.0.borrow();
        f.debug_struct("Supervisor")
            .field("slots", &inner.slots.len())
            .field("workers", &inner.meta.len())
            .field("shutting_down", &inner.shutting_down)
            .finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static REGISTRY: RefCell<HashMap<u64, Weak<RefCell<Inner>>>> = RefCell::new(HashMap::new());
}

impl Supervisor {
    /// Supervises `p` on `lp`; call [`Supervisor::start`] to fork the workers.
    ///
    /// # Errors
    ///
    /// A signal handler cannot be installed.
    pub fn new(lp: &mut EventLoop, p: &Primary, opts: SupervisorOptions) -> io::Result<Supervisor> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let sup = Supervisor(Rc::new(RefCell::new(Inner {
            id,
            p: p.clone(),
            opts,
            slots: Vec::new(),
            meta: HashMap::new(),
            generation: 1,
            shutting_down: false,
            forced: false,
            reload: None,
            recycling: 0,
            handlers: Rc::default(),
            ping_seq: 0,
            interrupts: 0,
            notifier: super::systemd::Notifier::from_env(),
            announced: false,
        })));
        if std::env::var_os("LISTEN_FDS").is_some() {
            // Socket activation: serve the sockets systemd bound instead of binding anew.
            match super::systemd::listen_fds() {
                Ok(fds) if !fds.is_empty() => p.adopt_listeners(fds),
                Ok(_) => {}
                Err(e) => log::warn!("LISTEN_FDS: {e}"),
            }
        }
        REGISTRY.with(|r| r.borrow_mut().insert(id, Rc::downgrade(&sup.0)));
        let weak = Rc::downgrade(&sup.0);
        p.on(move |lp, _, ev| {
            if let Some(inner) = weak.upgrade() {
                Supervisor(inner).on_primary(lp, ev);
            }
        });
        if sup.0.borrow().opts.signals {
            sup.install_signals(lp)?;
        }
        Ok(sup)
    }

    /// Adds a handler for supervisor events.
    pub fn on<F>(&self, handler: F)
    where
        F: FnMut(&mut EventLoop, &Supervisor, &SupervisorEvent) + 'static,
    {
        self.0.borrow().handlers.push(Box::new(handler));
    }

    /// The primary supervised.
    pub fn primary(&self) -> Primary {
        self.0.borrow().p.clone()
    }

    /// Forks the configured number of workers and starts the heartbeats.
    ///
    /// # Errors
    ///
    /// A worker cannot be spawned.
    pub fn start(&self, lp: &mut EventLoop) -> io::Result<()> {
        self.primary().keep_listeners(lp, true);
        let n = self.0.borrow().opts.workers;
        for _ in 0..n {
            let slot = {
                let mut inner = self.0.borrow_mut();
                inner.slots.push(Slot {
                    active: true,
                    ..Slot::default()
                });
                inner.slots.len() - 1
            };
            self.spawn(lp, slot, None)?;
        }
        let notifier = self.0.borrow().notifier.clone();
        if let (Some(n), Some(every)) = (notifier, super::systemd::watchdog_interval()) {
            n.start_watchdog(lp, every);
        }
        let health = self.0.borrow().opts.health;
        if let Some(h) = health {
            let weak = Rc::downgrade(&self.0);
            let t = lp.set_interval(h.interval, move |lp| {
                if let Some(inner) = weak.upgrade() {
                    Supervisor(inner).health_tick(lp);
                }
            });
            lp.unref(t);
        }
        Ok(())
    }

    /// A handle that other threads can use to reload, scale, broadcast, stop, and read
    /// statistics.
    pub fn control(&self, lp: &EventLoop) -> Control {
        Control {
            lp: lp.handle(),
            id: self.0.borrow().id,
        }
    }

    fn emit(&self, lp: &mut EventLoop, ev: SupervisorEvent) {
        let handlers = self.0.borrow().handlers.clone();
        handlers.run(|h| h(lp, self, &ev));
    }

    /// Forks a worker into `slot`; `replaces` is the worker it will take over from.
    fn spawn(&self, lp: &mut EventLoop, slot: usize, replaces: Option<u32>) -> io::Result<u32> {
        let p = self.primary();
        let w = p.fork(lp)?;
        let mut inner = self.0.borrow_mut();
        let generation = inner.generation;
        let now = Instant::now();
        inner.meta.insert(
            w,
            Meta {
                slot,
                generation,
                started: now,
                ready: false,
                last_pong: now,
                lag: Duration::ZERO,
                quarantined: false,
                retiring: None,
                replaces,
                removing: false,
            },
        );
        if replaces.is_none()
            && let Some(s) = inner.slots.get_mut(slot)
        {
            s.worker = Some(w);
        }
        Ok(w)
    }

    fn on_primary(&self, lp: &mut EventLoop, ev: &Event) {
        let on_message = self.0.borrow().opts.ready_on_message;
        match *ev {
            Event::Listening { worker, .. } if !on_message => self.mark_ready(lp, worker),
            Event::Ready { worker } if on_message => self.mark_ready(lp, worker),
            Event::Pong { worker, lag_us, .. } => self.on_pong(lp, worker, lag_us),
            Event::GoingDown { worker, .. } => self.retire(lp, worker, Cause::GoingDown),
            Event::Exit { worker, .. } => self.on_exit(lp, worker),
            _ => {}
        }
    }

    fn mark_ready(&self, lp: &mut EventLoop, worker: u32) {
        let (slot, replaces) = {
            let mut inner = self.0.borrow_mut();
            let Some(m) = inner.meta.get_mut(&worker) else {
                return;
            };
            if m.ready {
                return;
            }
            m.ready = true;
            (m.slot, m.replaces.take())
        };
        self.maybe_announce();
        self.emit(lp, SupervisorEvent::Ready { slot, worker });
        if let Some(old) = replaces {
            // Step 3–5 of the retire path.
            if let Some(s) = self.0.borrow_mut().slots.get_mut(slot) {
                s.worker = Some(worker);
            }
            self.drain(lp, old);
        }
    }

    /// Tells systemd (if it listens) the service is ready once every slot's first worker is.
    fn maybe_announce(&self) {
        let mut inner = self.0.borrow_mut();
        if inner.announced || inner.notifier.is_none() {
            return;
        }
        let all = inner.slots.iter().filter(|s| s.active).all(|s| {
            s.worker
                .and_then(|w| inner.meta.get(&w))
                .is_some_and(|m| m.ready)
        });
        if all {
            inner.announced = true;
            let n = inner.slots.iter().filter(|s| s.active).count();
            if let Some(notifier) = &inner.notifier {
                notifier.ready();
                notifier.status(&format!("{n} workers ready"));
            }
        }
    }

    /// Unroutes `old`, disconnects it, and kills it after the drain deadline.
    fn drain(&self, lp: &mut EventLoop, old: u32) {
        let (p, deadline) = {
            let inner = self.0.borrow();
            (inner.p.clone(), inner.opts.drain_timeout)
        };
        p.set_routing(lp, old, false);
        p.disconnect_worker(lp, old);
        let t = lp.set_timeout(deadline, move |_| {
            if p.worker(old).is_some() {
                log::warn!("worker {old} did not drain in time; killing it");
                let _ = p.kill(old, Signal::SIGKILL);
            }
        });
        lp.unref(t);
    }

    /// Starts replacing `worker` (see the module docs).
    pub fn retire(&self, lp: &mut EventLoop, worker: u32, cause: Cause) {
        let (slot, p, opts) = {
            let mut inner = self.0.borrow_mut();
            if inner.shutting_down {
                return;
            }
            let Some(m) = inner.meta.get_mut(&worker) else {
                return;
            };
            if m.retiring.is_some() {
                return;
            }
            m.retiring = Some(cause);
            let slot = m.slot;
            if matches!(cause, Cause::Memory | Cause::Connections) {
                inner.recycling += 1;
            }
            (slot, inner.p.clone(), inner.opts.clone())
        };
        log::info!("replacing worker {worker}: {cause:?}");
        self.emit(lp, SupervisorEvent::Retiring { worker, cause });
        if cause == Cause::Unresponsive {
            // It serves nobody: unroute and stop it now; the replacement comes up beside.
            p.set_routing(lp, worker, false);
            let _ = p.kill(worker, Signal::SIGTERM);
            let grace = opts.health.map_or(Duration::from_secs(2), |h| h.kill_grace);
            let pk = p.clone();
            let t = lp.set_timeout(grace, move |_| {
                let _ = pk.kill(worker, Signal::SIGKILL);
            });
            lp.unref(t);
        }
        let new = match self.spawn(lp, slot, Some(worker)) {
            Ok(w) => w,
            Err(e) => {
                self.replacement_failed(lp, worker, None, format!("cannot spawn: {e}"));
                return;
            }
        };
        let me = self.clone();
        let t = lp.set_timeout(opts.ready_timeout, move |lp| {
            let pending = me.0.borrow().meta.get(&new).is_some_and(|m| !m.ready);
            if pending {
                me.replacement_failed(lp, worker, Some(new), "missed its ready deadline".into());
            }
        });
        lp.unref(t);
    }

    /// A replacement for `old` failed: kill it, keep `old` serving, report.
    fn replacement_failed(&self, lp: &mut EventLoop, old: u32, new: Option<u32>, reason: String) {
        let p = self.primary();
        if let Some(new) = new {
            if let Some(m) = self.0.borrow_mut().meta.get_mut(&new) {
                m.replaces = None;
                m.removing = true;
            }
            let _ = p.kill(new, Signal::SIGKILL);
        }
        let unresponsive = {
            let mut inner = self.0.borrow_mut();
            let cause = inner.meta.get_mut(&old).and_then(|m| m.retiring.take());
            if matches!(cause, Some(Cause::Memory | Cause::Connections)) {
                inner.recycling = inner.recycling.saturating_sub(1);
            }
            cause == Some(Cause::Unresponsive)
        };
        log::error!("replacement for worker {old} failed: {reason}");
        if !unresponsive {
            p.set_routing(lp, old, true);
        }
        self.emit(
            lp,
            SupervisorEvent::ReplacementFailed {
                worker: old,
                reason: reason.clone(),
            },
        );
        let in_reload = self.0.borrow().reload.is_some();
        if in_reload {
            self.reload_step(lp, Some(reason));
        }
    }

    fn on_exit(&self, lp: &mut EventLoop, worker: u32) {
        let Some(m) = self.0.borrow_mut().meta.remove(&worker) else {
            return;
        };
        let shutting_down = self.0.borrow().shutting_down;
        if shutting_down {
            self.maybe_stopped(lp);
            return;
        }
        if let Some(old) = m.replaces {
            // A replacement died before it was ready.
            self.replacement_failed(
                lp,
                old,
                None,
                format!("replacement worker {worker} exited before ready"),
            );
            return;
        }
        if m.removing {
            return;
        }
        if let Some(cause) = m.retiring {
            let in_reload = {
                let mut inner = self.0.borrow_mut();
                if matches!(cause, Cause::Memory | Cause::Connections) {
                    inner.recycling = inner.recycling.saturating_sub(1);
                }
                inner.reload.is_some() && cause == Cause::Reload
            };
            if in_reload {
                self.reload_step(lp, None);
            }
            let slot_now = self.0.borrow().slots.get(m.slot).and_then(|s| s.worker);
            if slot_now != Some(worker) {
                return; // its replacement holds the slot
            }
        }
        self.restart_slot(lp, m.slot, worker, &m);
    }

    /// The unexpected-exit policy for `slot`.
    fn restart_slot(&self, lp: &mut EventLoop, slot: usize, worker: u32, m: &Meta) {
        let now = Instant::now();
        let decision = {
            let mut inner = self.0.borrow_mut();
            let policy = inner.opts.restart;
            let Some(s) = inner.slots.get_mut(slot) else {
                return;
            };
            if !s.active || s.worker != Some(worker) {
                return;
            }
            s.worker = None;
            let stable = m.ready && now.duration_since(m.started) >= policy.min_uptime;
            if stable {
                s.consecutive = 0;
            } else {
                s.consecutive += 1;
                s.unstable.push_back(now);
            }
            while s
                .unstable
                .front()
                .is_some_and(|t| now.duration_since(*t) > policy.breaker_window)
            {
                s.unstable.pop_front();
            }
            if s.unstable.len() > policy.breaker_max as usize {
                s.tripped = true;
                Err(s.unstable.len() as u32)
            } else {
                s.restarts += 1;
                let delay = if stable {
                    Duration::ZERO
                } else {
                    policy.delay(s.consecutive)
                };
                Ok(delay)
            }
        };
        match decision {
            Err(restarts) => {
                log::error!(
                    "slot {slot}: {restarts} unstable restarts in the breaker window; not restarting it"
                );
                self.emit(lp, SupervisorEvent::BreakerTripped { slot, restarts });
            }
            Ok(delay) => {
                self.emit(
                    lp,
                    SupervisorEvent::Restarting {
                        slot,
                        worker,
                        delay,
                        boot_failure: !m.ready,
                    },
                );
                if delay.is_zero() {
                    self.respawn(lp, slot);
                } else {
                    let me = self.clone();
                    let t = lp.set_timeout(delay, move |lp| me.respawn(lp, slot));
                    if let Some(s) = self.0.borrow_mut().slots.get_mut(slot) {
                        s.timer = Some(t);
                    }
                }
            }
        }
    }

    fn respawn(&self, lp: &mut EventLoop, slot: usize) {
        let go = {
            let mut inner = self.0.borrow_mut();
            let down = inner.shutting_down;
            match inner.slots.get_mut(slot) {
                Some(s) => {
                    s.timer = None;
                    s.active && s.worker.is_none() && !down
                }
                None => false,
            }
        };
        if go && let Err(e) = self.spawn(lp, slot, None) {
            log::error!("slot {slot}: cannot spawn a worker: {e}");
        }
    }

    fn on_pong(&self, lp: &mut EventLoop, worker: u32, lag_us: u64) {
        let lag = Duration::from_micros(lag_us);
        let change = {
            let mut inner = self.0.borrow_mut();
            let q = inner
                .opts
                .health
                .map_or(Duration::MAX, |h| h.quarantine_lag);
            let Some(m) = inner.meta.get_mut(&worker) else {
                return;
            };
            m.last_pong = Instant::now();
            m.lag = lag;
            if !m.quarantined && lag > q && m.retiring.is_none() {
                m.quarantined = true;
                Some(true)
            } else if m.quarantined && lag <= q / 2 {
                m.quarantined = false;
                Some(false)
            } else {
                None
            }
        };
        let p = self.primary();
        match change {
            Some(true) => {
                p.set_routing(lp, worker, false);
                self.emit(lp, SupervisorEvent::Quarantined { worker, lag });
            }
            Some(false) => {
                p.set_routing(lp, worker, true);
                self.emit(lp, SupervisorEvent::Released { worker });
            }
            None => {}
        }
    }

    fn health_tick(&self, lp: &mut EventLoop) {
        let now = Instant::now();
        let (p, opts, workers, seq) = {
            let mut inner = self.0.borrow_mut();
            inner.ping_seq += 1;
            let workers: Vec<(u32, bool, Instant, bool)> = inner
                .meta
                .iter()
                .map(|(w, m)| (*w, m.ready, m.last_pong, m.retiring.is_some() || m.removing))
                .collect();
            (inner.p.clone(), inner.opts.clone(), workers, inner.ping_seq)
        };
        if self.0.borrow().shutting_down {
            return;
        }
        let Some(h) = opts.health else { return };
        for (w, ready, last, leaving) in workers {
            if !ready || leaving {
                continue;
            }
            if now.duration_since(last) > h.timeout {
                log::warn!(
                    "worker {w} missed heartbeats for {:?}: replacing it",
                    h.timeout
                );
                self.retire(lp, w, Cause::Unresponsive);
                continue;
            }
            let _ = p.ping(lp, w, seq);
            let recycling = self.0.borrow().recycling;
            if recycling >= opts.concurrency {
                continue;
            }
            if let (Some(max), Some(info)) = (opts.max_rss, p.worker(w))
                && crate::sys::rss::rss_bytes(info.pid).is_some_and(|r| r > max)
            {
                self.retire(lp, w, Cause::Memory);
                continue;
            }
            if opts.max_connections.is_some_and(|max| p.handed(w) >= max) {
                self.retire(lp, w, Cause::Connections);
            }
        }
    }

    /// Replaces every worker through the retire path, `concurrency` at a time; listeners
    /// stay open. `done` gets `Err` (and the old workers keep serving) if a replacement
    /// misses its deadline or dies.
    pub fn reload<F>(&self, lp: &mut EventLoop, done: F)
    where
        F: FnOnce(&mut EventLoop, Result<(), String>) + 'static,
    {
        {
            let mut inner = self.0.borrow_mut();
            if let Some(r) = inner.reload.as_mut() {
                r.done.push(Box::new(done));
                return;
            }
            inner.generation += 1;
            let queue: VecDeque<u32> = inner.slots.iter().filter_map(|s| s.worker).collect();
            inner.reload = Some(Reload {
                queue,
                active: 0,
                failed: None,
                done: vec![Box::new(done)],
            });
        }
        log::info!("rolling reload started");
        if let Some(n) = &self.0.borrow().notifier {
            n.reloading();
            n.status("reloading");
        }
        self.reload_fill(lp);
    }

    /// One replacement of the reload finished (`failure`: it failed).
    fn reload_step(&self, lp: &mut EventLoop, failure: Option<String>) {
        {
            let mut inner = self.0.borrow_mut();
            let Some(r) = inner.reload.as_mut() else {
                return;
            };
            r.active = r.active.saturating_sub(1);
            if failure.is_some() && r.failed.is_none() {
                r.failed = failure;
                r.queue.clear();
            }
        }
        self.reload_fill(lp);
    }

    fn reload_fill(&self, lp: &mut EventLoop) {
        loop {
            let next = {
                let mut inner = self.0.borrow_mut();
                let k = inner.opts.concurrency.max(1);
                let Some(r) = inner.reload.as_mut() else {
                    return;
                };
                if r.active >= k {
                    return;
                }
                match r.queue.pop_front() {
                    Some(w) => {
                        r.active += 1;
                        Some(w)
                    }
                    None if r.active == 0 => None,
                    None => return,
                }
            };
            match next {
                Some(w) => {
                    let alive = self.0.borrow().meta.contains_key(&w);
                    if alive {
                        self.retire(lp, w, Cause::Reload);
                    } else {
                        self.reload_step(lp, None);
                        return;
                    }
                }
                None => {
                    let r = self.0.borrow_mut().reload.take();
                    if let Some(r) = r {
                        let result = match r.failed {
                            None => Ok(()),
                            Some(e) => Err(e),
                        };
                        match &result {
                            Ok(()) => log::info!("rolling reload finished"),
                            Err(e) => log::error!("rolling reload aborted: {e}"),
                        }
                        if let Some(n) = &self.0.borrow().notifier {
                            n.ready();
                            n.status(match &result {
                                Ok(()) => "reloaded",
                                Err(_) => "reload failed; previous generation serving",
                            });
                        }
                        self.emit(lp, SupervisorEvent::ReloadFinished(result.clone()));
                        for cb in r.done {
                            cb(lp, result.clone());
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Sets the number of workers: forks new slots, or retires the highest slots without
    /// replacement (they drain first).
    pub fn scale(&self, lp: &mut EventLoop, n: usize) {
        loop {
            let active = self.0.borrow().slots.iter().filter(|s| s.active).count();
            if active == n {
                return;
            }
            if active < n {
                let slot = {
                    let mut inner = self.0.borrow_mut();
                    match inner.slots.iter().position(|s| !s.active) {
                        Some(i) => {
                            inner.slots[i].active = true;
                            inner.slots[i].tripped = false;
                            inner.slots[i].unstable.clear();
                            i
                        }
                        None => {
                            inner.slots.push(Slot {
                                active: true,
                                ..Slot::default()
                            });
                            inner.slots.len() - 1
                        }
                    }
                };
                if let Err(e) = self.spawn(lp, slot, None) {
                    log::error!("cannot scale up: {e}");
                    return;
                }
            } else {
                let victim = {
                    let mut inner = self.0.borrow_mut();
                    let Some(i) = inner.slots.iter().rposition(|s| s.active) else {
                        return;
                    };
                    inner.slots[i].active = false;
                    let w = inner.slots[i].worker.take();
                    if let Some(t) = inner.slots[i].timer.take() {
                        drop(inner);
                        lp.clear_timeout(t);
                        inner = self.0.borrow_mut();
                    }
                    if let Some(m) = w.and_then(|w| inner.meta.get_mut(&w)) {
                        m.removing = true;
                    }
                    w
                };
                if let Some(w) = victim {
                    self.drain(lp, w);
                }
            }
        }
    }

    /// Active slots (the target number of workers).
    pub fn size(&self) -> usize {
        self.0.borrow().slots.iter().filter(|s| s.active).count()
    }

    /// Graceful shutdown: no more restarts, every worker disconnects and drains; after
    /// the shutdown deadline the rest are killed. The loop exits with 0 after a clean
    /// drain, 1 otherwise.
    pub fn shutdown(&self, lp: &mut EventLoop) {
        let (p, deadline, timers) = {
            let mut inner = self.0.borrow_mut();
            if inner.shutting_down {
                return;
            }
            inner.shutting_down = true;
            let timers: Vec<TimerId> = inner
                .slots
                .iter_mut()
                .filter_map(|s| s.timer.take())
                .collect();
            (inner.p.clone(), inner.opts.shutdown_timeout, timers)
        };
        for t in timers {
            lp.clear_timeout(t);
        }
        log::info!("shutting down: draining {} workers", p.workers().len());
        if let Some(n) = &self.0.borrow().notifier {
            n.stopping();
            n.status("draining");
        }
        self.emit(lp, SupervisorEvent::ShuttingDown);
        p.keep_listeners(lp, false);
        p.disconnect(lp, |_, _| {});
        let me = self.clone();
        let t = lp.set_timeout(deadline, move |lp| me.force(lp));
        lp.unref(t);
        self.maybe_stopped(lp);
    }

    /// Kills every worker now (`SIGKILL`); the loop exits with 1 once they are reaped.
    pub fn force(&self, lp: &mut EventLoop) {
        self.primary().keep_listeners(lp, false);
        let p = {
            let mut inner = self.0.borrow_mut();
            inner.shutting_down = true;
            inner.forced = true;
            inner.p.clone()
        };
        let ids: Vec<u32> = self.0.borrow().meta.keys().copied().collect();
        for w in ids {
            let _ = p.kill(w, Signal::SIGKILL);
        }
        self.maybe_stopped(lp);
    }

    fn maybe_stopped(&self, lp: &mut EventLoop) {
        let (empty, forced) = {
            let inner = self.0.borrow();
            (inner.meta.is_empty(), inner.forced)
        };
        if empty {
            let clean = !forced;
            self.emit(lp, SupervisorEvent::Stopped { clean });
            lp.exit(if clean { 0 } else { 1 });
        }
    }

    fn install_signals(&self, lp: &mut EventLoop) -> io::Result<()> {
        use nix::libc;
        let weak = Rc::downgrade(&self.0);
        let with = move |f: fn(&Supervisor, &mut EventLoop, i32)| {
            let weak = weak.clone();
            move |lp: &mut EventLoop, sig: i32| {
                if let Some(inner) = weak.upgrade() {
                    f(&Supervisor(inner), lp, sig);
                }
            }
        };
        lp.on_signal(libc::SIGHUP, with(|s, lp, _| s.reload(lp, |_, _| {})))?;
        for sig in [libc::SIGTERM, libc::SIGQUIT] {
            lp.on_signal(sig, with(|s, lp, _| s.shutdown(lp)))?;
        }
        lp.on_signal(
            libc::SIGINT,
            with(|s, lp, _| {
                let n = {
                    let mut inner = s.0.borrow_mut();
                    inner.interrupts += 1;
                    inner.interrupts
                };
                if n == 1 {
                    s.shutdown(lp);
                } else {
                    s.force(lp);
                }
            }),
        )?;
        lp.on_signal(libc::SIGTTIN, with(|s, lp, _| s.scale(lp, s.size() + 1)))?;
        lp.on_signal(
            libc::SIGTTOU,
            with(|s, lp, _| s.scale(lp, s.size().saturating_sub(1).max(1))),
        )?;
        Ok(())
    }

    /// Statistics of every live worker.
    pub fn stats(&self) -> Vec<WorkerStats> {
        let inner = self.0.borrow();
        let now = Instant::now();
        let mut out: Vec<WorkerStats> = inner
            .meta
            .iter()
            .filter_map(|(&w, m)| {
                let info = inner.p.worker(w)?;
                Some(WorkerStats {
                    id: w,
                    slot: m.slot,
                    pid: info.pid,
                    state: info.state,
                    generation: m.generation,
                    uptime: now.duration_since(m.started),
                    restarts: inner.slots.get(m.slot).map_or(0, |s| s.restarts),
                    connections_handed: inner.p.handed(w),
                    in_flight: inner.p.in_flight(w),
                    loop_lag: m.lag,
                    rss_bytes: crate::sys::rss::rss_bytes(info.pid),
                    routed: inner.p.is_routed(w),
                })
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let id = self.id;
        let _ = REGISTRY.try_with(|r| r.borrow_mut().remove(&id));
    }
}

/// A `Send + Clone` handle to a [`Supervisor`] for other threads: each call is posted to
/// the supervisor's loop (crossbeam channel + waker) and runs there.
#[derive(Debug, Clone)]
pub struct Control {
    lp: LoopHandle,
    id: u64,
}

fn with_sup(id: u64, lp: &mut EventLoop, f: impl FnOnce(&Supervisor, &mut EventLoop)) {
    let sup = REGISTRY.with(|r| r.borrow().get(&id).and_then(Weak::upgrade));
    if let Some(inner) = sup {
        f(&Supervisor(inner), lp);
    }
}

impl Control {
    fn post(&self, f: impl FnOnce(&Supervisor, &mut EventLoop) + Send + 'static) -> bool {
        let id = self.id;
        self.lp.post(move |lp| with_sup(id, lp, f))
    }

    /// Starts a rolling reload; the receiver gets its result.
    pub fn reload(&self) -> crossbeam_channel::Receiver<Result<(), String>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let fallback = tx.clone();
        if !self.post(move |s, lp| {
            s.reload(lp, move |_, r| {
                let _ = tx.send(r);
            })
        }) {
            let _ = fallback.send(Err("the supervisor's loop is gone".into()));
        }
        rx
    }

    /// Sets the number of workers.
    pub fn scale(&self, n: usize) -> bool {
        self.post(move |s, lp| s.scale(lp, n))
    }

    /// Sends user bytes to every worker.
    pub fn broadcast(&self, data: Vec<u8>) -> bool {
        self.post(move |s, lp| {
            s.primary().broadcast(lp, &data);
        })
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) -> bool {
        self.post(|s, lp| s.shutdown(lp))
    }

    /// Statistics of every worker, waiting at most `timeout` for the loop to answer.
    ///
    /// # Errors
    ///
    /// The loop is gone or did not answer in time.
    pub fn stats(&self, timeout: Duration) -> io::Result<Vec<WorkerStats>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !self.post(move |s, _| {
            let _ = tx.send(s.stats());
        }) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the supervisor's loop is gone",
            ));
        }
        rx.recv_timeout(timeout).map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer from the supervisor's loop",
            )
        })
    }
}
