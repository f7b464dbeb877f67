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
//! | breaker cool-down | 10 s, doubling per failed try up to 5 min | a tripped slot is tried again, never left empty for good |
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
//! Every event (an exit, a kill, scaling, a reload, a missed heartbeat, a worker going
//! down, a boot or replacement failure) has a defined result in every state: one state
//! machine owns the slots, the workers in them, the generations and the reload cursor.
//!
//! # The restart budget
//!
//! One budget per slot covers every unplanned end of a worker: a crash, a worker going
//! down ([`crate::worker::Worker::going_down`]), a boot failure (exit or missed deadline
//! before ready), a failed spawn and a replacement that fails. An end is *stable* when the
//! worker was ready and up at least [`RestartPolicy::min_uptime`]: it resets the backoff
//! and is restarted at once. Every other end is *unstable*: it is restarted after
//! `base × factor^(n−1)` (n consecutive unstable ends, capped), and counts in the breaker's
//! window. More than [`RestartPolicy::breaker_max`] unstable ends within
//! [`RestartPolicy::breaker_window`] trip the breaker: the slot is not restarted and no
//! automatic replacement (memory or connection recycling) is started in it. After
//! [`RestartPolicy::breaker_cooldown`] the breaker is *half-open*: one worker is started;
//! once it is ready the breaker closes, and if it fails the breaker opens again for twice
//! the cool-down (at most [`RestartPolicy::breaker_cooldown_cap`]). Planned replacements
//! (reload, recycling, an unresponsive worker) do not count unless the replacement fails.
//! A worker going down drains while its slot restarts under this policy (at once when it
//! was stable, so its replacement boots beside it). A worker that exits while its
//! replacement boots is not restarted: the replacement takes the slot. A reload or a
//! scaling fills every empty slot at once (a tripped breaker goes half-open for it).
//!
//! # Reload
//!
//! A reload raises the generation and walks the slots, `concurrency` at a time. A slot's
//! step is done when its owner is a ready worker of the new generation and the worker it
//! replaced has exited (so at most `concurrency` workers are on their way out): a
//! serving owner of an older one is retired (its replacement boots beside it), a booting
//! one is killed and the slot refilled, an empty slot is refilled. A step fails when a
//! replacement fails or the slot's breaker trips; the reload then starts no further step
//! and reports the first failure once the steps under way end. A reload reports `Ok(())`
//! only if every slot ended with a ready worker of the new generation; with no slot at
//! all it reports an error (there was nothing to reload).
//!
//! # Lifetime
//!
//! [`Supervisor::start`] hands the supervisor to the loop: from then on the loop keeps it
//! alive (dropping every [`Supervisor`] handle does not stop supervision) until the loop
//! ends. A supervisor that is never started does nothing, so [`Supervisor::new`]'s result
//! must be used.
//!
//! # Start failures
//!
//! When, while the cluster starts (before every slot had a ready worker), a listen
//! request fails in the primary because of its address (in use, permission denied, not
//! available) and no worker of the cluster ever listened on that address, the start has
//! failed: the supervisor logs one line naming the address and the error (and
//! writes it to standard error if no logger is installed), emits
//! [`SupervisorEvent::ListenFailed`] with `fatal: true`, kills the workers and ends the
//! loop with exit code 1 once they are reaped — no restarts.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
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
mod table;

pub use control::{Control, PendingReload};
pub use options::{
    Cause, HealthPolicy, ReloadError, RestartPolicy, SupervisorEvent, SupervisorOptions,
    WorkerStats,
};

use super::{Event, Primary};
use crate::ipc::Endpoint;
use crate::rt::{EventLoop, TimerId};
use table::{Action, Host, Table};

type SupHandler = Box<dyn FnMut(&mut EventLoop, &Supervisor, &SupervisorEvent)>;
type ReloadDone = Box<dyn FnOnce(&mut EventLoop, Result<(), ReloadError>)>;

struct Inner {
    id: u64,
    p: Primary,
    opts: SupervisorOptions,
    table: Table,
    started: bool,
    forced: bool,
    /// The start failed (a listen error): the loop exits with 1.
    failed: bool,
    stopped: bool,
    /// Callbacks of the reload under way.
    reload_done: Vec<ReloadDone>,
    /// The armed timer of each slot (restart delay or breaker cool-down).
    slot_timers: HashMap<usize, TimerId>,
    /// Addresses some worker of the cluster has listened on.
    listened: HashSet<Endpoint>,
    /// Every slot had a ready worker once: the start is over.
    up: bool,
    handlers: Rc<crate::hooks::Hooks<SupHandler>>,
    ping_seq: u64,
    interrupts: u32,
    /// systemd's notification socket, when run as a `Type=notify` service.
    notifier: Option<super::systemd::Notifier>,
    /// `READY=1` was sent for the first generation.
    announced: bool,
}

/// The supervisor of a [`Primary`]; clone the handle freely (it is an `Rc`). Once
/// [`started`](Supervisor::start), the loop keeps it alive.
#[derive(Clone)]
pub struct Supervisor(Rc<RefCell<Inner>>);

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.0.borrow();
        f.debug_struct("Supervisor")
            .field("slots", &inner.table.size())
            .field("workers", &inner.table.members.len())
            .field("shutting_down", &inner.table.down)
            .finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static REGISTRY: RefCell<HashMap<u64, Weak<RefCell<Inner>>>> = RefCell::new(HashMap::new());
}

/// A [`Supervisor`] handle that does not keep it alive.
struct WeakSupervisor(Weak<RefCell<Inner>>);

impl WeakSupervisor {
    fn upgrade(&self) -> Option<Supervisor> {
        self.0.upgrade().map(Supervisor)
    }
}

/// Forks through the primary.
struct LoopHost<'a> {
    lp: &'a mut EventLoop,
    p: &'a Primary,
}

impl Host for LoopHost<'_> {
    fn spawn(&mut self) -> io::Result<u32> {
        self.p.fork(self.lp)
    }
}

impl Supervisor {
    /// Supervises `p` on `lp`; call [`Supervisor::start`] to fork the workers.
    ///
    /// # Errors
    ///
    /// A signal handler cannot be installed.
    #[must_use = "a supervisor does nothing until it is started"]
    pub fn new(lp: &mut EventLoop, p: &Primary, opts: SupervisorOptions) -> io::Result<Supervisor> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let sup = Supervisor(Rc::new(RefCell::new(Inner {
            id,
            p: p.clone(),
            table: Table::new(opts.restart, opts.concurrency),
            opts,
            started: false,
            forced: false,
            failed: false,
            stopped: false,
            reload_done: Vec::new(),
            slot_timers: HashMap::new(),
            listened: HashSet::new(),
            up: false,
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
        let weak = sup.weak();
        p.on(move |lp, _, ev| {
            if let Some(s) = weak.upgrade() {
                s.on_primary(lp, ev);
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

    /// Forks the configured number of workers, starts the heartbeats, and hands the
    /// supervisor to the loop: the loop keeps it alive until the loop ends, so the
    /// handle may be dropped (supervision goes on).
    ///
    /// A worker that cannot be spawned is retried after the restart delay
    /// ([`SupervisorEvent::SpawnFailed`]).
    ///
    /// # Errors
    ///
    /// The supervisor was started already.
    pub fn start(&self, lp: &mut EventLoop) -> io::Result<()> {
        if std::mem::replace(&mut self.0.borrow_mut().started, true) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the supervisor was started already",
            ));
        }
        let keep = self.clone();
        lp.on_exit(move |_, _| {
            // The loop owns this handle: supervision lasts as long as the loop.
            let _ = &keep;
        });
        self.primary().keep_listeners(lp, true);
        let n = self.0.borrow().opts.workers;
        self.apply(lp, |t, host, now, out| t.start(host, n, now, out));
        let notifier = self.0.borrow().notifier.clone();
        if let (Some(n), Some(every)) = (notifier, super::systemd::watchdog_interval()) {
            n.start_watchdog(lp, every);
        }
        let health = self.0.borrow().opts.health;
        if let Some(h) = health {
            let weak = self.weak();
            let t = lp.set_interval(h.interval, move |lp| {
                if let Some(s) = weak.upgrade() {
                    s.health_tick(lp);
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

    /// Checks the supervisor's bookkeeping: every worker in exactly one place (a slot's
    /// owner, its pending replacement, or leaving), every empty slot waiting on a timer,
    /// the reload cursor within the slots, every slot on the current generation after a
    /// successful reload; and that the primary tracks exactly the workers the supervisor
    /// does. For tests: the first broken invariant.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let inner = self.0.borrow();
        inner.table.check()?;
        let mut known = inner.p.live_workers();
        known.sort_unstable();
        let mine: Vec<u32> = inner.table.members.keys().copied().collect();
        if known != mine {
            return Err(format!(
                "the primary runs workers {known:?}, the supervisor tracks {mine:?}"
            ));
        }
        Ok(())
    }

    /// A handle that does not keep the supervisor alive (for the loop's callbacks: the
    /// loop holds one strong handle from [`Supervisor::start`] on).
    fn weak(&self) -> WeakSupervisor {
        WeakSupervisor(Rc::downgrade(&self.0))
    }

    fn emit(&self, lp: &mut EventLoop, ev: SupervisorEvent) {
        let handlers = self.0.borrow().handlers.clone();
        handlers.run(|h| h(lp, self, &ev));
    }

    /// Feeds one input to the table, then carries out what it asks for.
    fn apply(
        &self,
        lp: &mut EventLoop,
        f: impl FnOnce(&mut Table, &mut dyn Host, Instant, &mut Vec<Action>),
    ) {
        let mut out = Vec::new();
        {
            let mut inner = self.0.borrow_mut();
            let p = inner.p.clone();
            let mut host = LoopHost { lp, p: &p };
            f(&mut inner.table, &mut host, Instant::now(), &mut out);
        }
        for a in out {
            self.act(lp, a);
        }
    }

    fn act(&self, lp: &mut EventLoop, action: Action) {
        let (p, opts) = {
            let inner = self.0.borrow();
            (inner.p.clone(), inner.opts.clone())
        };
        match action {
            Action::Emit(ev) => {
                let ready = matches!(ev, SupervisorEvent::Ready { .. });
                if ready {
                    self.maybe_announce();
                }
                self.emit(lp, ev);
            }
            Action::Drain(w) => self.drain(lp, w),
            Action::Stop(w) => {
                // It serves nobody: unroute and stop it now.
                p.set_routing(lp, w, false);
                let _ = p.signal(w, Signal::SIGTERM);
                let grace = opts.health.map_or(Duration::from_secs(2), |h| h.kill_grace);
                let t = lp.set_timeout(grace, move |_| {
                    let _ = p.signal(w, Signal::SIGKILL);
                });
                lp.unref(t);
            }
            Action::Kill(w) => {
                p.set_routing(lp, w, false);
                let _ = p.signal(w, Signal::SIGKILL);
            }
            Action::Route(w) => p.set_routing(lp, w, true),
            Action::ReadyDeadline(w) => {
                let me = self.weak();
                let t = lp.set_timeout(opts.ready_timeout, move |lp| {
                    if let Some(me) = me.upgrade() {
                        me.apply(lp, |t, host, now, out| t.ready_deadline(host, w, now, out));
                    }
                });
                lp.unref(t);
            }
            Action::Timer { slot, epoch, delay } => {
                let me = self.weak();
                let t = lp.set_timeout(delay, move |lp| {
                    if let Some(me) = me.upgrade() {
                        me.0.borrow_mut().slot_timers.remove(&slot);
                        me.apply(lp, |t, host, now, out| t.timer(host, slot, epoch, now, out));
                    }
                });
                let old = self.0.borrow_mut().slot_timers.insert(slot, t);
                if let Some(old) = old {
                    lp.clear_timeout(old);
                }
            }
            Action::ReloadFinished(result) => {
                if let Some(n) = &self.0.borrow().notifier {
                    n.ready();
                    n.status(match &result {
                        Ok(()) => "reloaded",
                        Err(_) => "reload failed; previous generation serving",
                    });
                }
                let done = std::mem::take(&mut self.0.borrow_mut().reload_done);
                for cb in done {
                    cb(lp, result.clone());
                }
            }
        }
    }

    fn on_primary(&self, lp: &mut EventLoop, ev: &Event) {
        let on_message = self.0.borrow().opts.ready_on_message;
        match ev {
            Event::Listening { worker, address } => {
                self.0.borrow_mut().listened.insert(address.clone());
                if !on_message {
                    self.mark_ready(lp, *worker);
                }
            }
            Event::Ready { worker } if on_message => self.mark_ready(lp, *worker),
            Event::Pong { worker, lag_us, .. } => self.on_pong(lp, *worker, *lag_us),
            Event::GoingDown { worker, .. } => self.retire(lp, *worker, Cause::GoingDown),
            Event::Exit { worker, .. } => self.on_exit(lp, *worker),
            Event::ListenFailed {
                worker,
                address,
                error,
            } => self.on_listen_failed(lp, *worker, address, error),
            _ => {}
        }
    }

    fn mark_ready(&self, lp: &mut EventLoop, worker: u32) {
        self.apply(lp, |t, host, now, out| t.ready(host, worker, now, out));
    }

    /// A listen request failed in the primary: fatal while the cluster starts (before
    /// every slot had a ready worker) if no worker ever listened on that address and the
    /// error is about the address.
    fn on_listen_failed(&self, lp: &mut EventLoop, worker: u32, address: &Endpoint, e: &io::Error) {
        let fatal = {
            let inner = self.0.borrow();
            !inner.table.down
                && !inner.up
                && !inner.listened.contains(address)
                && matches!(
                    e.kind(),
                    io::ErrorKind::AddrInUse
                        | io::ErrorKind::PermissionDenied
                        | io::ErrorKind::AddrNotAvailable
                )
        };
        let text = address.to_string();
        self.emit(
            lp,
            SupervisorEvent::ListenFailed {
                worker,
                address: text.clone(),
                error: e.to_string(),
                fatal,
            },
        );
        if !fatal {
            return;
        }
        let line = format!("cannot listen on {text}: {e}; stopping");
        log::error!("{line}");
        if log::max_level() == log::LevelFilter::Off {
            // No logger: the one line must still reach the operator.
            eprintln!("forkloop: {line}");
        }
        self.0.borrow_mut().failed = true;
        self.force(lp);
    }

    /// Once every slot has a ready worker: the start is over, and systemd (if it listens)
    /// hears the service is ready.
    fn maybe_announce(&self) {
        let mut inner = self.0.borrow_mut();
        if !inner.table.all_ready() {
            return;
        }
        inner.up = true;
        if inner.announced || inner.notifier.is_none() {
            return;
        }
        inner.announced = true;
        let n = inner.table.size();
        if let Some(notifier) = &inner.notifier {
            notifier.ready();
            notifier.status(&format!("{n} workers ready"));
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
                let _ = p.signal(old, Signal::SIGKILL);
            }
        });
        lp.unref(t);
    }

    /// Starts replacing `worker` (see the module docs). [`Cause::GoingDown`] is handled as
    /// the worker's going down: it drains and its slot restarts under the restart budget.
    pub fn retire(&self, lp: &mut EventLoop, worker: u32, cause: Cause) {
        self.apply(lp, |t, host, now, out| {
            t.retire(host, worker, cause, now, out)
        });
    }

    fn on_exit(&self, lp: &mut EventLoop, worker: u32) {
        self.apply(lp, |t, host, now, out| t.exit(host, worker, now, out));
        if self.0.borrow().table.down {
            self.maybe_stopped(lp);
        }
    }

    /// Graceful shutdown: no more restarts, every worker disconnects and drains; after
    /// the shutdown deadline the rest are killed. The loop exits with 0 after a clean
    /// drain, 1 otherwise. A reload under way ends with an error.
    pub fn shutdown(&self, lp: &mut EventLoop) {
        if self.0.borrow().table.down {
            return;
        }
        self.stop_restarts(lp);
        let (p, deadline) = {
            let inner = self.0.borrow();
            (inner.p.clone(), inner.opts.shutdown_timeout)
        };
        log::info!("shutting down: draining {} workers", p.workers().len());
        if let Some(n) = &self.0.borrow().notifier {
            n.stopping();
            n.status("draining");
        }
        self.emit(lp, SupervisorEvent::ShuttingDown);
        p.keep_listeners(lp, false);
        p.disconnect(lp, |_, _| {});
        let me = self.weak();
        let t = lp.set_timeout(deadline, move |lp| {
            if let Some(me) = me.upgrade() {
                me.force(lp);
            }
        });
        lp.unref(t);
        self.maybe_stopped(lp);
    }

    /// Marks the table down and clears the slot timers.
    fn stop_restarts(&self, lp: &mut EventLoop) {
        self.apply(lp, |t, _, _, out| t.shut_down(out));
        let timers: Vec<TimerId> = self
            .0
            .borrow_mut()
            .slot_timers
            .drain()
            .map(|(_, t)| t)
            .collect();
        for t in timers {
            lp.clear_timeout(t);
        }
    }

    /// Kills every worker now (`SIGKILL`); the loop exits with 1 once they are reaped.
    pub fn force(&self, lp: &mut EventLoop) {
        self.stop_restarts(lp);
        self.primary().keep_listeners(lp, false);
        let (p, ids) = {
            let mut inner = self.0.borrow_mut();
            inner.forced = true;
            let ids: Vec<u32> = inner.table.members.keys().copied().collect();
            (inner.p.clone(), ids)
        };
        for w in ids {
            let _ = p.signal(w, Signal::SIGKILL);
        }
        self.maybe_stopped(lp);
    }

    fn maybe_stopped(&self, lp: &mut EventLoop) {
        let (empty, forced, failed) = {
            let mut inner = self.0.borrow_mut();
            if inner.stopped || !inner.table.members.is_empty() {
                (false, false, false)
            } else {
                inner.stopped = true;
                (true, inner.forced, inner.failed)
            }
        };
        if empty {
            let clean = !forced;
            self.emit(lp, SupervisorEvent::Stopped { clean });
            lp.exit(if clean && !failed { 0 } else { 1 });
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
            .table
            .members
            .iter()
            .filter_map(|(&w, m)| {
                let info = inner.p.worker(w)?;
                Some(WorkerStats {
                    id: w,
                    slot: m.home,
                    pid: info.pid,
                    state: info.state,
                    generation: m.generation,
                    uptime: now.duration_since(m.started),
                    restarts: inner.table.slots.get(m.home).map_or(0, |s| s.restarts),
                    connections_handed: inner.p.handed(w),
                    in_flight: inner.p.in_flight(w),
                    loop_lag: m.lag,
                    rss_bytes: crate::sys::rss::rss_bytes(info.pid),
                    routed: inner.p.is_routed(w),
                    http: inner.p.http_stats(w),
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
