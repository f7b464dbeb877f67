//! Supervision: restarts with backoff and a crash-loop breaker, heartbeats with quarantine,
//! one retire path for every cause, rolling reload, graceful shutdown, scaling, stats and a
//! thread-safe control handle.
//!
//! # The retire path
//!
//! Every replacement (reload, memory or connection recycling, an unresponsive worker, a
//! worker going down) takes the same steps:
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
//! # Defaults
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

mod control;
mod health;
mod options;
mod reload;

pub use control::Control;
pub use options::{
    Cause, HealthPolicy, RestartPolicy, SupervisorEvent, SupervisorOptions, WorkerStats,
};

use super::{Event, Primary};
use crate::rt::{EventLoop, TimerId};

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
