//! The event loop: Node's phases, timers, immediates, nextTick and microtasks on mio.
//!
//! The [ordering rules](#ordering-rules) at the end of this page are the specification;
//! `tests/loop_rules.rs` tests them one by one. One [`EventLoop`] owns every queue, timer list and handle, and every
//! callback receives `&mut EventLoop`, so callbacks schedule more work directly. Ids
//! ([`TimerId`], [`ImmediateId`], [`IoId`], …) are `Copy` slot indices with a generation: a
//! stale id cancels nothing.
//!
//! # One iteration
//!
//! [`EventLoop::run_mode`] follows libuv 1.46's `uv_run`:
//!
//! 0. on entry, in [`RunMode::Default`] only: refresh the time and run due timers once;
//! 1. **pending**: deferred I/O callbacks ([`EventLoop::queue_pending`]);
//! 2. **idle**, 3. **prepare**: [`Phase::Idle`] / [`Phase::Prepare`] watchers;
//! 4. **poll**: wait for I/O (timeout from [`EventLoop::poll_timeout`]), run ready handles'
//!    callbacks, then closures posted from other threads; then the pending queue again, up to
//!    8 rounds;
//! 5. **check**: [`Phase::Check`] watchers, then the immediates queued before the phase;
//! 6. **closing**: close callbacks, newest close first;
//! 7. refresh the time, then **timers** due at that one `now`.
//!
//! After every single callback (timer, immediate, I/O, close, posted closure, before-exit),
//! the loop's private `invoke` drains nextTicks and then microtasks. Code that runs before
//! [`EventLoop::run`] is the "main script": `run` drains its ticks and microtasks first.
//!
//! # API at a glance
//!
//! | Node | forkloop |
//! |---|---|
//! | `setTimeout` / `setInterval` / `clearTimeout` / `t.refresh()` | [`EventLoop::set_timeout`], [`EventLoop::set_interval`], [`EventLoop::clear_timeout`], [`EventLoop::refresh_timer`] |
//! | `setImmediate` / `clearImmediate` | [`EventLoop::set_immediate`], [`EventLoop::clear_immediate`] |
//! | `process.nextTick` / `queueMicrotask` | [`EventLoop::next_tick`], [`EventLoop::queue_microtask`] |
//! | promises, `async` functions | [`EventLoop::spawn_local`] (first poll is a microtask), [`yield_now`], [`with_loop`] |
//! | `process.getActiveResourcesInfo()` | [`EventLoop::active_handles`] |
//! | `x.ref()` / `x.unref()` / `x.hasRef()` | [`EventLoop::set_ref`], [`EventLoop::unref`], [`EventLoop::has_ref`] with any id ([`Handle`]) |
//! | a libuv handle on any fd | [`EventLoop::register`], [`EventLoop::set_interest`], [`EventLoop::io_mut`], [`EventLoop::close`], [`EventLoop::take_source`] |
//! | `uv__io_feed` (pending phase) | [`EventLoop::queue_pending`] |
//! | `process.on('SIGTERM')` | [`EventLoop::on_signal`] (unref'd, as in Node) |
//! | `uv_async_send` | [`EventLoop::handle`] → [`LoopHandle::post`] |
//! | `uv_queue_work` (`UV_THREADPOOL_SIZE`) | [`EventLoop::spawn_blocking`] ([`POOL_SIZE_ENV`]) |
//! | `beforeExit` / `exit` / `process.exit(n)` / `exitCode` | [`EventLoop::on_before_exit`], [`EventLoop::on_exit`], [`EventLoop::exit`], [`EventLoop::set_exit_code`] |
//! | libuv idle / prepare / check handles | [`EventLoop::add_watcher`] with a [`Phase`] |
//!
//! Differences from Node, by design: [`EventLoop::exit`] returns to its caller (finish the
//! callback; nothing else runs and [`EventLoop::run`] returns the code); calling an `async`
//! block's future starts it at the next microtask, not synchronously up to its first
//! `await`; a timeout that already fired cannot be re-armed with `refresh`. One addition:
//! [`EventLoop::set_busy_poll`] lets the poll phase spin before it blocks (off by default).
//!
//! # Example
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use forkloop::rt::EventLoop;
//!
//! let log = Rc::new(RefCell::new(Vec::new()));
//! let mut lp = EventLoop::new().unwrap();
//! let l = log.clone();
//! lp.set_timeout(0, move |lp| {
//!     let (a, b, c) = (l.clone(), l.clone(), l.clone());
//!     lp.set_immediate(move |_| a.borrow_mut().push("immediate"));
//!     lp.next_tick(move |_| b.borrow_mut().push("tick"));
//!     lp.queue_microtask(move |_| c.borrow_mut().push("microtask"));
//! });
//! assert_eq!(lp.run().unwrap(), 0);
//! assert_eq!(*log.borrow(), ["tick", "microtask", "immediate"]);
//! ```
//!
//! # Ordering rules
//!
//! *Drain* means: run nextTicks until that queue is empty, then microtasks until that queue is
//! empty, and repeat until both are empty. The loop keeps these rules, the same as Node 20 on
//! libuv 1.46; `tests/loop_rules.rs` tests each one.
//!
//! 1. After the main script, drain (ticks before microtasks) before the loop starts.
//! 2. A drain runs ticks queued during the tick drain in the same round, before any microtask.
//! 3. A drain runs microtasks queued during the microtask drain in the same round. A tick queued by a
//!    microtask runs after the microtask queue is empty, then microtasks again.
//! 4. A drain happens after every single macrotask callback (each timer, immediate, I/O callback,
//!    close callback, beforeExit and exit listener), not after a batch.
//! 5. Iteration order: initial due timers on entry, then repeat { pending → idle → prepare → poll (I/O) →
//!    check (immediates) → close callbacks → timers }.
//! 6. Timer delays: coerce with `*1`. Anything not in [1, 2^31−1] becomes 1. Choose the list by the
//!    whole-millisecond part.
//! 7. Timers of the same duration run in creation order, whatever phase created them.
//! 8. Timers live in one list per duration. Lists are ordered by (expiry of their head, list id);
//!    a due list runs until it reaches a timer that is not yet due or runs out, before the next
//!    list is considered.
//! 9. The timers phase compares against one `now` taken at its start. A timer is due iff
//!    `now − start ≥ duration`. Timers created during the phase, or becoming due while it runs,
//!    wait for the next timers phase.
//! 10. The check phase runs only the immediates queued before it started, in FIFO order. Immediates
//!     queued during it run in the next iteration's check phase.
//! 11. From an I/O callback or a timer callback, `setImmediate` runs before `setTimeout(0)`. From the
//!     main script or from an immediate it is a race, decided by whether 1 ms passes before the
//!     next timers phase.
//! 12. An interval's next deadline is the time taken just before its callback plus the interval.
//!     It is re-appended to its list, runs at most once per timers phase, never catches up, and
//!     `clearInterval` inside its own callback stops it.
//! 13. `clearTimeout`/`clearImmediate` take effect at once, including on timers already due in the
//!     running pass and on immediates of the running batch.
//! 14. Overdue timers held back by a long callback all run in the next timers phase, in list
//!     order, before the next check phase.
//! 15. The loop stays alive while any ref'd timer, ref'd immediate, ref'd handle, active request,
//!     closing handle or pending callback exists. Unref'd timers and immediates still run if the
//!     loop happens to be iterating when they are due.
//! 16. Poll does not block while a ref'd immediate is queued. An unref'd immediate does not prevent
//!     blocking, but check still runs right after that poll.
//! 17. A handle closed in a callback gets its close callback after this iteration's check phase. Close
//!     callbacks of one batch run in reverse order of closing.
//! 18. When the loop drains, emit `beforeExit(exitCode)` and drain. If the loop is alive again,
//!     continue and emit again at the next drain; otherwise exit.
//! 19. On natural exit, `exit` fires once after the last `beforeExit`. nextTick is a no-op from then
//!     on, microtasks queued by `exit` listeners still run, and timers and immediates never do.
//! 20. `process.exit(n)` runs the `exit` listeners synchronously and stops. Nothing queued runs, not
//!     even the rest of the current callback or batch, and `beforeExit` is skipped.

use std::fmt;

use std::sync::Arc;

use crossbeam_channel::unbounded;

mod clock;
pub(crate) mod id;
mod io;
mod local;
mod pool;
mod remote;
mod signal;
mod state;
mod tasks;
mod timers;
mod watchers;

pub use clock::{Clock, FakeClock, SystemClock};
pub use io::{IoId, Readiness, poll_spinning};
pub use local::{YieldNow, with_loop, yield_now};
pub use mio::Interest;
pub use pool::{POOL_SIZE_ENV, RequestId};
pub use remote::LoopHandle;
pub use signal::SignalId;
pub use timers::{Delay, TIMEOUT_MAX, TimerId, coerce_delay};
pub use watchers::{ImmediateId, Phase, WatcherId};

use id::Slots;
use io::{Io, WAKER_TOKEN};
use remote::{Notify, Remote};
use signal::SignalState;
use tasks::Tasks;
use timers::Timers;
use watchers::{Immediates, Watchers};

/// How far [`EventLoop::run_mode`] goes (libuv's `uv_run_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Run due timers once, then iterate until the loop is no longer alive.
    Default,
    /// One iteration; poll blocks only if nothing was pending and no idle watcher was active.
    Once,
    /// One iteration with a non-blocking poll.
    NoWait,
}

/// Any loop object that can be ref'd or unref'd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handle {
    /// A timeout or interval.
    Timer(TimerId),
    /// A queued immediate.
    Immediate(ImmediateId),
    /// An I/O handle (sockets, listeners, any registered source).
    Io(IoId),
    /// An idle, prepare or check watcher.
    Watcher(WatcherId),
    /// A signal listener.
    Signal(SignalId),
}

macro_rules! handle_from {
    ($($v:ident($t:ty)),*) => {$(
        impl From<$t> for Handle {
            fn from(id: $t) -> Handle {
                Handle::$v(id)
            }
        }
    )*};
}
handle_from!(
    Timer(TimerId),
    Immediate(ImmediateId),
    Io(IoId),
    Watcher(WatcherId),
    Signal(SignalId)
);

/// One thing that keeps the loop alive, as listed by [`EventLoop::active_handles`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActiveHandle {
    /// A ref'd timeout or interval.
    Timer(TimerId),
    /// A ref'd queued immediate.
    Immediate(ImmediateId),
    /// A ref'd I/O handle that waits for readiness (a reading or writing stream, a
    /// listener, a channel, …).
    Io {
        /// The handle.
        id: IoId,
        /// What it is: `"TcpStream"`, `"UnixStream"`, `"TcpListener"`, `"UnixListener"`,
        /// `"UdpSocket"`, or the type name of a source given to [`EventLoop::register`]
        /// (e.g. `"Channel"`).
        kind: &'static str,
    },
    /// A ref'd idle, prepare or check watcher.
    Watcher(WatcherId),
    /// A ref'd signal listener.
    Signal(SignalId),
    /// A blocking job in flight ([`EventLoop::spawn_blocking`]).
    Request(RequestId),
    /// A closed handle whose close callback has not run yet.
    Closing(IoId),
    /// Deferred callbacks waiting for the pending phase (how many).
    Pending(usize),
}

impl ActiveHandle {
    /// A short name for the kind (Node's `process.getActiveResourcesInfo()` strings):
    /// `"Timeout"`, `"Immediate"`, the I/O kind, `"Watcher"`, `"Signal"`, `"Request"`,
    /// `"Closing"` or `"Pending"`.
    pub fn kind(&self) -> &'static str {
        match self {
            ActiveHandle::Timer(_) => "Timeout",
            ActiveHandle::Immediate(_) => "Immediate",
            ActiveHandle::Io { kind, .. } => kind,
            ActiveHandle::Watcher(_) => "Watcher",
            ActiveHandle::Signal(_) => "Signal",
            ActiveHandle::Request(_) => "Request",
            ActiveHandle::Closing(_) => "Closing",
            ActiveHandle::Pending(_) => "Pending",
        }
    }
}

type ExitCb = Box<dyn FnMut(&mut EventLoop, i32)>;
type FlushCb = Box<dyn FnMut(&mut EventLoop)>;

/// A single-threaded event loop that orders callbacks exactly as Node does.
pub struct EventLoop {
    clock: Box<dyn Clock>,
    now: u64,
    timers: Timers,
    imm: Immediates,
    watchers: Watchers,
    tasks: Tasks,
    io: Io,
    signals: SignalState,
    remote: Remote,
    requests: Slots<pool::Done>,
    before_exit: Vec<ExitCb>,
    exit_listeners: Vec<ExitCb>,
    /// Crate-internal writers of output coalesced within an iteration (a worker's
    /// messages): run right before each poll and when the loop exits.
    flushers: Vec<FlushCb>,
    exit_code: i32,
    /// Natural exit or `exit()` started: nextTick is a no-op.
    exiting: bool,
    /// `exit(code)` was called: nothing else runs.
    forced: Option<i32>,
    pub(crate) read_buf: Vec<u8>,
    state: state::StateMap,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("now", &self.now)
            .field("timers", &self.timers.len())
            .field("refed_timers", &self.timers.refed)
            .field("refed_immediates", &self.imm.refed)
            .field("refed_handles", &self.io.refed_active)
            .field("requests", &self.requests.len())
            .field("pending", &self.io.pending.len())
            .field("closing", &self.io.closing.len())
            .field("exit_code", &self.exit_code)
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// A loop on the real monotonic clock.
    ///
    /// # Errors
    ///
    /// Fails if the OS poller or its waker cannot be created.
    pub fn new() -> std::io::Result<EventLoop> {
        EventLoop::with_clock(Box::new(SystemClock::new()))
    }

    /// A loop on `clock` (e.g. a [`FakeClock`] in tests).
    ///
    /// # Errors
    ///
    /// Fails if the OS poller or its waker cannot be created.
    pub fn with_clock(clock: Box<dyn Clock>) -> std::io::Result<EventLoop> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
        let notify = Arc::new(Notify::new(waker));
        let (tx, rx) = unbounded();
        let now = clock.now_ms();
        Ok(EventLoop {
            clock,
            now,
            timers: Timers::default(),
            imm: Immediates::default(),
            watchers: Watchers::default(),
            tasks: Tasks::new(notify.clone()),
            io: Io::new(poll),
            signals: SignalState::default(),
            remote: Remote { tx, rx, notify },
            requests: Slots::default(),
            before_exit: Vec::new(),
            exit_listeners: Vec::new(),
            flushers: Vec::new(),
            exit_code: 0,
            exiting: false,
            forced: None,
            read_buf: Vec::new(),
            state: state::StateMap::default(),
        })
    }

    /// The cached loop time in ms (libuv's `uv_now`; refreshed on run entry, after poll,
    /// before timers and when a timer is created).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Refreshes the cached loop time (libuv's `uv_update_time`).
    pub fn update_time(&mut self) {
        self.now = self.clock.now_ms();
    }

    /// Runs `main` as the main script, then [`EventLoop::run`].
    ///
    /// # Errors
    ///
    /// As [`EventLoop::run`].
    pub fn run_main<F: FnOnce(&mut EventLoop)>(&mut self, main: F) -> std::io::Result<i32> {
        main(self);
        self.run()
    }

    /// Runs the loop to completion like Node's `SpinEventLoop`: drain the main script's
    /// ticks and microtasks, iterate while alive, then call the before-exit listeners and
    /// continue if they made the loop alive again; finally call the exit listeners once.
    /// Returns the exit code: the one given to [`EventLoop::exit`], or else the one set with
    /// [`EventLoop::set_exit_code`] (default 0). The library never exits the process.
    ///
    /// After a natural exit, work scheduled later can be run with another `run` (the exit
    /// listeners fire again); after [`EventLoop::exit`] the loop stays stopped.
    ///
    /// # Errors
    ///
    /// Fails only if the OS poller fails.
    pub fn run(&mut self) -> std::io::Result<i32> {
        self.drain();
        while self.forced.is_none() {
            self.run_mode(RunMode::Default)?;
            if self.halted() || self.alive() {
                continue;
            }
            self.emit_before_exit();
            if !self.alive() {
                break;
            }
        }
        if let Some(code) = self.forced {
            return Ok(code);
        }
        self.emit_exit();
        if let Some(code) = self.forced {
            return Ok(code);
        }
        // The "process" is over; a later `run` starts afresh (nextTick works again).
        self.exiting = false;
        Ok(self.exit_code)
    }

    /// libuv's `uv_run`: see the module docs for the iteration. Returns whether the loop is
    /// still alive.
    ///
    /// # Errors
    ///
    /// Fails only if the OS poller fails.
    pub fn run_mode(&mut self, mode: RunMode) -> std::io::Result<bool> {
        let mut alive = self.alive();
        if !alive {
            self.update_time();
        }
        if mode == RunMode::Default && alive && !self.halted() {
            self.update_time();
            self.run_timers();
        }
        while alive && !self.halted() {
            alive = self.tick(mode)?;
            if mode != RunMode::Default {
                break;
            }
        }
        Ok(alive)
    }

    /// One iteration, in libuv's order (1.45+: timers at the end):
    ///
    /// ```text
    ///   pending → idle → prepare → poll → pending (≤ 8 rounds) → check → closing → timers
    /// ```
    ///
    /// The textbook diagram starts with timers; libuv runs them once on entry to a
    /// [`RunMode::Default`] run and then at the end of each iteration. The two differ under
    /// [`RunMode::Once`] and when the last ref'd handle closes while an unref'd timer is due.
    fn tick(&mut self, mode: RunMode) -> std::io::Result<bool> {
        self.start_turn();
        let can_sleep = self.io.pending.is_empty() && !self.watchers.idle_active();
        self.run_pending();
        self.run_watchers(Phase::Idle);
        self.run_watchers(Phase::Prepare);
        self.run_flushers();
        let timeout = match mode {
            RunMode::Default => self.poll_timeout(),
            RunMode::Once if can_sleep => self.poll_timeout(),
            _ => Some(0),
        };
        self.poll_io(timeout)?;
        // Callbacks deferred during poll (write completions, errors) run now, not a whole
        // iteration later (libuv 1.44.2+).
        for _ in 0..8 {
            if self.io.pending.is_empty() || self.halted() {
                break;
            }
            self.run_pending();
        }
        self.run_watchers(Phase::Check);
        self.run_immediates();
        self.run_closing();
        self.update_time();
        self.run_timers();
        Ok(self.alive())
    }

    /// Whether anything keeps the loop running: a ref'd timer, ref'd immediate, ref'd
    /// active handle (socket, listener, watcher, signal listener), in-flight blocking job,
    /// closing handle or pending callback ([rule 15](#ordering-rules)).
    pub fn alive(&self) -> bool {
        self.has_ref_handles()
            || self.requests.len() > 0
            || self.has_pending()
            || !self.io.closing.is_empty()
    }

    /// What keeps the loop alive now (Node's `process.getActiveResourcesInfo()`): every
    /// ref'd active handle by kind, blocking jobs in flight, closing handles and pending
    /// callbacks. Empty exactly when [`EventLoop::alive`] is `false`. Unref'd handles and
    /// inactive ones (a paused stream with nothing to write, a stopped listener) are not
    /// listed: they do not keep the loop alive.
    pub fn active_handles(&self) -> Vec<ActiveHandle> {
        let mut out: Vec<ActiveHandle> = self.refed_timers().map(ActiveHandle::Timer).collect();
        out.extend(self.refed_immediates().map(ActiveHandle::Immediate));
        out.extend(self.refed_watchers().map(ActiveHandle::Watcher));
        out.extend(self.refed_signals().map(ActiveHandle::Signal));
        out.extend(self.request_ids().map(ActiveHandle::Request));
        self.active_io(&mut out);
        out
    }

    fn has_ref_handles(&self) -> bool {
        self.timers.refed > 0
            || self.imm.refed > 0
            || self.io.refed_active > 0
            || self.watchers.refed > 0
            || self.signals.refed > 0
    }

    /// How long poll may block, in ms (`None`: until I/O arrives). Zero when nothing ref'd
    /// is active, or ref'd immediates, pending callbacks, closing handles or an idle watcher
    /// exist; otherwise the time to the earliest timer list, ref'd or not ([rule 16](#ordering-rules)).
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.halted() || !(self.has_ref_handles() || self.requests.len() > 0) {
            return Some(0);
        }
        if self.imm.refed > 0
            || self.has_pending()
            || !self.io.closing.is_empty()
            || self.watchers.idle_active()
        {
            return Some(0);
        }
        self.timers
            .next_expiry()
            .map(|expiry| expiry.saturating_sub(self.now))
    }

    /// The one place that calls user code from a phase: run `cb`, then drain nextTicks and
    /// microtasks.
    #[inline]
    pub(crate) fn invoke<F: FnOnce(&mut EventLoop)>(&mut self, cb: F) {
        cb(self);
        if !self.tasks.idle() && !self.halted() {
            self.drain();
        }
    }

    /// `exit(code)` was called.
    #[inline]
    pub(crate) fn halted(&self) -> bool {
        self.forced.is_some()
    }

    /// Adds a before-exit listener (Node's `process.on('beforeExit')`): called with the exit
    /// code each time the loop runs out of work; if it schedules more, the loop continues
    /// and the listener fires again at the next drain ([rule 18](#ordering-rules)).
    pub fn on_before_exit<F>(&mut self, cb: F)
    where
        F: FnMut(&mut EventLoop, i32) + 'static,
    {
        self.before_exit.push(Box::new(cb));
    }

    /// Adds an exit listener (Node's `process.on('exit')`): called once when the loop ends,
    /// or synchronously from [`EventLoop::exit`]. On a natural exit, microtasks it queues
    /// still run, nextTick is a no-op, and timers and immediates never run ([rule 19](#ordering-rules)).
    pub fn on_exit<F>(&mut self, cb: F)
    where
        F: FnMut(&mut EventLoop, i32) + 'static,
    {
        self.exit_listeners.push(Box::new(cb));
    }

    /// The code [`EventLoop::run`] will return (Node's `process.exitCode`).
    pub fn exit_code(&self) -> i32 {
        self.exit_code
    }

    /// Sets the code a natural exit returns.
    pub fn set_exit_code(&mut self, code: i32) {
        self.exit_code = code;
    }

    /// Node's `process.exit(code)` ([rule 20](#ordering-rules)): calls the exit listeners now and stops the
    /// loop. Nothing already queued runs afterwards, not even the rest of the current batch
    /// or pending nextTicks; `run` returns `code` (the caller decides whether to end the
    /// process). The rest of the calling Rust function still runs, so return from it.
    pub fn exit(&mut self, code: i32) {
        if self.forced.is_some() {
            return;
        }
        self.exit_code = code;
        self.exiting = true;
        self.tasks.ticks.clear();
        self.tasks.micro.clear();
        // Listeners run before `forced` is set so that they may still call `exit` (ignored)
        // and see a running loop; whatever they queue is dropped.
        let mut listeners = std::mem::take(&mut self.exit_listeners);
        self.forced = Some(code);
        for l in &mut listeners {
            l(self, code);
        }
        self.forced = Some(self.exit_code);
        self.run_flushers();
    }

    /// Adds a crate-internal flusher: output a component holds back within an iteration
    /// (to write it in one system call) is written by `f` right before the loop polls and
    /// when it exits, so nothing waits while the loop sleeps and nothing is lost at exit.
    pub(crate) fn add_flusher<F>(&mut self, f: F)
    where
        F: FnMut(&mut EventLoop) + 'static,
    {
        self.flushers.push(Box::new(f));
    }

    fn run_flushers(&mut self) {
        if self.flushers.is_empty() {
            return;
        }
        let mut flushers = std::mem::take(&mut self.flushers);
        for f in &mut flushers {
            f(self);
        }
        flushers.append(&mut self.flushers);
        self.flushers = flushers;
    }

    /// Whether [`EventLoop::exit`] was called.
    pub fn exited(&self) -> bool {
        self.forced.is_some()
    }

    fn emit_before_exit(&mut self) {
        let mut listeners = std::mem::take(&mut self.before_exit);
        let code = self.exit_code;
        for l in &mut listeners {
            self.invoke(|lp| l(lp, code));
            if self.halted() {
                break;
            }
        }
        listeners.append(&mut self.before_exit);
        self.before_exit = listeners;
    }

    fn emit_exit(&mut self) {
        self.exiting = true;
        self.tasks.ticks.clear();
        let mut listeners = std::mem::take(&mut self.exit_listeners);
        for l in &mut listeners {
            let code = self.exit_code;
            self.invoke(|lp| l(lp, code));
            if self.halted() {
                break;
            }
        }
        listeners.append(&mut self.exit_listeners);
        self.exit_listeners = listeners;
        self.run_flushers();
    }

    /// Sets whether a timer, immediate, handle, watcher or signal listener keeps the loop
    /// alive (Node's `ref()` / `unref()`). Stale ids are ignored.
    pub fn set_ref(&mut self, handle: impl Into<Handle>, on: bool) {
        match handle.into() {
            Handle::Timer(id) => self.set_timer_ref(id, on),
            Handle::Immediate(id) => self.set_immediate_ref(id, on),
            Handle::Io(id) => self.set_io_ref(id, on),
            Handle::Watcher(id) => self.set_watcher_ref(id, on),
            Handle::Signal(id) => self.set_signal_ref(id, on),
        }
    }

    /// Shorthand for `set_ref(handle, false)`.
    pub fn unref(&mut self, handle: impl Into<Handle>) {
        self.set_ref(handle, false);
    }

    /// Whether the handle is live and ref'd (Node's `hasRef()`).
    pub fn has_ref(&self, handle: impl Into<Handle>) -> bool {
        match handle.into() {
            Handle::Timer(id) => self.timer_has_ref(id),
            Handle::Immediate(id) => self.immediate_has_ref(id),
            Handle::Io(id) => self.io_has_ref(id),
            Handle::Watcher(id) => self.watcher_has_ref(id),
            Handle::Signal(id) => self.signal_has_ref(id),
        }
    }
}
