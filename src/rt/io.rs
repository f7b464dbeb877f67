//! The poll phase, the pending queue and the closing list.
//!
//! Any `mio::event::Source` can be registered with a callback
//! `FnMut(&mut EventLoop, IoId, Readiness)`; the loop owns the source, and callbacks reach
//! it with [`EventLoop::io_mut`]. The mio token is the handle's slot index and generation,
//! so an event for a closed handle never reaches a later one.
//!
//! * **Active**: a handle with an interest set is active; a ref'd active handle keeps the
//!   loop alive. [`EventLoop::set_interest`] with `None` stops watching (inactive).
//! * **Pending**: [`EventLoop::queue_pending`] defers a callback to the pending phase (libuv's
//!   `uv__io_feed`): it runs at the top of the next iteration, or right after poll (up to 8
//!   rounds) when queued during poll. A non-empty pending queue keeps the loop alive and
//!   makes poll non-blocking.
//! * **Closing**: [`EventLoop::close`] deregisters and drops the source at once and runs the
//!   close callback in the closing phase, after this iteration's check phase. Callbacks of
//!   one batch run in reverse order of the close calls ([rule 17](crate::rt#ordering-rules)).

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::{Events, Interest, Token};

use super::EventLoop;
use super::id::{Key, Slots, define_id};
use super::tasks::Job;

define_id! {
    /// A handle registered with [`EventLoop::register`] (also the id behind the `net` types).
    IoId
}

/// Token of the loop's own `mio::Waker`.
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX);

/// What an I/O event reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The source is readable (or has a pending accept / error to read).
    pub readable: bool,
    /// The source is writable (or a connect finished).
    pub writable: bool,
    /// The peer closed its write side (read EOF is due).
    pub read_closed: bool,
    /// The write side is closed.
    pub write_closed: bool,
    /// The source reported an error condition.
    pub error: bool,
}

impl Readiness {
    fn from_event(e: &mio::event::Event) -> Readiness {
        Readiness {
            readable: e.is_readable(),
            writable: e.is_writable(),
            read_closed: e.is_read_closed(),
            write_closed: e.is_write_closed(),
            error: e.is_error(),
        }
    }
}

/// An owned source the loop can downcast for callbacks.
trait AnySource: Source + Any {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Source + Any> AnySource for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// What a handle is, for [`EventLoop::active_handles`]: a name given, or its source's
/// type name (worked out only when asked for: registering stays cheap).
#[derive(Clone, Copy)]
enum Kind {
    Name(&'static str),
    TypeOf(fn() -> &'static str),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Name(n) => n,
            Kind::TypeOf(f) => f(),
        }
    }
}

/// The last path segment of a type's name, without generic arguments.
fn short_type_name<S>() -> &'static str {
    let full = std::any::type_name::<S>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// The callback of an I/O handle.
pub(crate) type IoCb = Box<dyn FnMut(&mut EventLoop, IoId, Readiness)>;

struct Entry {
    source: Option<Box<dyn AnySource>>,
    /// What the handle is, for [`EventLoop::active_handles`].
    kind: Kind,
    cb: Option<IoCb>,
    interest: Option<Interest>,
    refed: bool,
    closing: bool,
    close_cb: Option<Job>,
}

impl Entry {
    fn counts(&self) -> bool {
        self.refed && self.interest.is_some() && !self.closing
    }
}

/// The I/O side of the loop.
pub(crate) struct Io {
    pub(crate) poll: mio::Poll,
    events: Option<Events>,
    entries: Slots<Entry>,
    pub(crate) pending: VecDeque<Job>,
    pending_spare: VecDeque<Job>,
    /// Jobs for the pending phase of the next iteration ([`EventLoop::queue_next_turn`]).
    pub(crate) next_turn: Vec<Job>,
    pub(crate) closing: Vec<IoId>,
    /// Ref'd, active, not closing handles.
    pub(crate) refed_active: usize,
    /// Handles registered with the OS poller (the waker excluded).
    pub(crate) registered: usize,
    /// How long poll spins before it blocks ([`EventLoop::set_busy_poll`]).
    busy_poll: Duration,
}

impl Io {
    pub(crate) fn new(poll: mio::Poll) -> Io {
        Io {
            poll,
            events: Some(Events::with_capacity(1024)),
            entries: Slots::default(),
            pending: VecDeque::new(),
            pending_spare: VecDeque::new(),
            next_turn: Vec::new(),
            closing: Vec::new(),
            refed_active: 0,
            registered: 0,
            busy_poll: Duration::ZERO,
        }
    }

    /// Applies `f` to an entry, keeping `refed_active` in step.
    fn update<R>(&mut self, key: Key, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let e = self.entries.get_mut(key)?;
        let before = e.counts();
        let r = f(e);
        let after = e.counts();
        match (before, after) {
            (false, true) => self.refed_active += 1,
            (true, false) => self.refed_active -= 1,
            _ => {}
        }
        Some(r)
    }
}

/// Waits for events like [`mio::Poll::poll`], but first spins for up to `spin`: it polls
/// without waiting, again and again, and blocks (for what is left of `timeout`) only if
/// nothing arrived meanwhile. An event that arrives during the spin is seen at once,
/// without the scheduler's sleep and wake-up, at the price of a busy CPU while waiting.
/// `spin` of zero, or a `timeout` of zero, is a plain poll. This is what
/// [`EventLoop::set_busy_poll`] does in the poll phase.
///
/// # Errors
///
/// As [`mio::Poll::poll`] (an interrupted wait is returned as `Interrupted`).
pub fn poll_spinning(
    poll: &mut mio::Poll,
    events: &mut Events,
    timeout: Option<Duration>,
    spin: Duration,
) -> io::Result<()> {
    if spin.is_zero() || timeout == Some(Duration::ZERO) {
        return poll.poll(events, timeout);
    }
    let budget = timeout.map_or(spin, |t| t.min(spin));
    let start = Instant::now();
    loop {
        poll.poll(events, Some(Duration::ZERO))?;
        if !events.is_empty() {
            return Ok(());
        }
        let spent = start.elapsed();
        if spent >= budget {
            return poll.poll(events, timeout.map(|t| t.saturating_sub(spent)));
        }
        std::hint::spin_loop();
    }
}

impl EventLoop {
    /// Makes the poll phase spin for up to `spin` before it blocks (see
    /// [`poll_spinning`]); zero (the default, as in Node and libuv) turns it off.
    ///
    /// For latency-sensitive processes that have a CPU to spare: a message or connection
    /// that arrives while the loop spins is handled without a sleep and wake-up, which on
    /// virtual machines costs tens of microseconds per round trip. While the loop waits,
    /// it keeps a CPU busy for up to `spin` per iteration; timers still fire on time (the
    /// spin never outlasts the poll timeout).
    pub fn set_busy_poll(&mut self, spin: Duration) {
        self.io.busy_poll = spin;
    }

    /// How long the poll phase spins before it blocks (zero: it does not).
    pub fn busy_poll(&self) -> Duration {
        self.io.busy_poll
    }

    /// Registers `source` for `interest`; `cb` runs in the poll phase for each event (and
    /// nextTicks and microtasks are drained after it). The loop owns the source from now on:
    /// reach it with [`EventLoop::io_mut`], give it back with [`EventLoop::take_source`], or
    /// close it with [`EventLoop::close`]. The handle is ref'd.
    ///
    /// # Errors
    ///
    /// Fails if the OS poller rejects the source.
    pub fn register<S, F>(&mut self, source: S, interest: Interest, cb: F) -> io::Result<IoId>
    where
        S: Source + 'static,
        F: FnMut(&mut EventLoop, IoId, Readiness) + 'static,
    {
        let key = self.io.entries.insert(Entry {
            source: Some(Box::new(source)),
            kind: Kind::TypeOf(short_type_name::<S>),
            cb: Some(Box::new(cb)),
            interest: None,
            refed: true,
            closing: false,
            close_cb: None,
        });
        let id = IoId(key);
        if let Err(e) = self.set_interest(id, Some(interest)) {
            self.io.entries.remove(key);
            return Err(e);
        }
        Ok(id)
    }

    /// Changes what the handle waits for; `None` stops watching (the handle becomes
    /// inactive and no longer keeps the loop alive).
    ///
    /// # Errors
    ///
    /// Fails if the id is stale or closing (`NotFound`) or the OS poller fails.
    pub fn set_interest(&mut self, id: IoId, interest: Option<Interest>) -> io::Result<()> {
        let registry = self.io.poll.registry();
        let token = Token(id.0.to_usize());
        let gone = || io::Error::new(io::ErrorKind::NotFound, "stale or closing handle");
        let e = match self.io.entries.get_mut(id.0) {
            Some(e) if !e.closing => e,
            _ => return Err(gone()),
        };
        if e.interest == interest {
            return Ok(());
        }
        let src = e.source.as_mut().ok_or_else(gone)?;
        let delta: isize = match (e.interest, interest) {
            (None, Some(i)) => {
                src.register(registry, token, i)?;
                1
            }
            (Some(_), Some(i)) => {
                src.reregister(registry, token, i)?;
                0
            }
            (Some(_), None) => {
                src.deregister(registry)?;
                -1
            }
            (None, None) => 0,
        };
        self.io.update(id.0, |e| e.interest = interest);
        self.io.registered = self.io.registered.saturating_add_signed(delta);
        Ok(())
    }

    /// The interest the handle currently waits for (`None` if inactive or stale).
    pub fn interest(&self, id: IoId) -> Option<Interest> {
        self.io.entries.get(id.0).and_then(|e| e.interest)
    }

    /// The source of a live handle, if it is an `S`.
    pub fn io_ref<S: Source + 'static>(&self, id: IoId) -> Option<&S> {
        let e = self.io.entries.get(id.0)?;
        e.source.as_deref()?.as_any().downcast_ref()
    }

    /// The source of a live handle, if it is an `S`.
    pub fn io_mut<S: Source + 'static>(&mut self, id: IoId) -> Option<&mut S> {
        let e = self.io.entries.get_mut(id.0)?;
        e.source.as_deref_mut()?.as_any_mut().downcast_mut()
    }

    /// Replaces the handle's callback. Returns whether the id was live.
    pub fn set_io_callback<F>(&mut self, id: IoId, cb: F) -> bool
    where
        F: FnMut(&mut EventLoop, IoId, Readiness) + 'static,
    {
        match self.io.entries.get_mut(id.0) {
            Some(e) if !e.closing => {
                e.cb = Some(Box::new(cb));
                true
            }
            _ => false,
        }
    }

    /// I/O handles whose source is open (registered and not closed): nearly always one
    /// descriptor each, so the descriptors the loop holds, counted in O(1).
    pub fn open_handles(&self) -> usize {
        self.io.entries.len().saturating_sub(self.io.closing.len())
    }

    /// Whether the id names a live handle that is not closing.
    pub fn is_open(&self, id: IoId) -> bool {
        self.io.entries.get(id.0).is_some_and(|e| !e.closing)
    }

    /// Deregisters the handle and gives its source back (no close callback runs). Use this
    /// to hand a descriptor to another owner, e.g. to send it to a worker.
    pub fn take_source<S: Source + 'static>(&mut self, id: IoId) -> Option<S> {
        let is_s = self.io_ref::<S>(id).is_some();
        let closing = self.io.entries.get(id.0).is_some_and(|e| e.closing);
        if !is_s || closing {
            return None;
        }
        let _ = self.set_interest(id, None);
        let entry = self.io.entries.remove(id.0)?;
        entry.source?.into_any().downcast::<S>().ok().map(|b| *b)
    }

    /// Closes a handle: deregisters and drops its source at once (closing the descriptor)
    /// and runs `on_close` in this iteration's closing phase; a closing handle keeps the loop
    /// alive until then. Returns `false` if the id was stale or already closing.
    pub fn close<F>(&mut self, id: IoId, on_close: F) -> bool
    where
        F: FnOnce(&mut EventLoop) + 'static,
    {
        if !self.is_open(id) {
            return false;
        }
        let _ = self.set_interest(id, None);
        self.io.update(id.0, |e| {
            e.closing = true;
            e.source = None;
            e.cb = None;
            e.close_cb = Some(Box::new(on_close));
        });
        self.io.closing.push(id);
        true
    }

    /// Queues `cb` for the pending phase (libuv's deferred I/O callbacks).
    pub fn queue_pending<F>(&mut self, cb: F)
    where
        F: FnOnce(&mut EventLoop) + 'static,
    {
        self.io.pending.push_back(Box::new(cb));
    }

    /// Queues `cb` for the pending phase of the next iteration, after this one's poll
    /// phase: unlike [`EventLoop::queue_pending`], it never runs in the rounds right after
    /// poll, so a handle that yields after a budget and queues its return this way gets one
    /// budget per iteration, and every other handle is polled in between. Keeps the loop
    /// alive and the next poll non-blocking, as pending callbacks do.
    pub(crate) fn queue_next_turn<F>(&mut self, cb: F)
    where
        F: FnOnce(&mut EventLoop) + 'static,
    {
        self.io.next_turn.push(Box::new(cb));
    }

    /// Moves the jobs queued for this iteration into the pending queue.
    pub(super) fn start_turn(&mut self) {
        if !self.io.next_turn.is_empty() {
            let jobs = std::mem::take(&mut self.io.next_turn);
            self.io.pending.extend(jobs);
        }
    }

    /// Whether callbacks wait in the pending queue or for the next iteration.
    pub(super) fn has_pending(&self) -> bool {
        !self.io.pending.is_empty() || !self.io.next_turn.is_empty()
    }

    /// Names what the handle is in [`EventLoop::active_handles`] (the default is the
    /// source's type name).
    pub(crate) fn set_io_kind(&mut self, id: IoId, kind: &'static str) {
        if let Some(e) = self.io.entries.get_mut(id.0) {
            e.kind = Kind::Name(kind);
        }
    }

    /// The I/O handles that keep the loop alive, with their kinds, then the closing ones.
    pub(super) fn active_io(&self, out: &mut Vec<super::ActiveHandle>) {
        use super::ActiveHandle;
        for (key, e) in self.io.entries.iter() {
            if e.counts() {
                out.push(ActiveHandle::Io {
                    id: IoId(key),
                    kind: e.kind.name(),
                });
            }
        }
        out.extend(self.io.closing.iter().map(|&id| ActiveHandle::Closing(id)));
        let pending = self.io.pending.len() + self.io.next_turn.len();
        if pending > 0 {
            out.push(ActiveHandle::Pending(pending));
        }
    }

    pub(crate) fn set_io_ref(&mut self, id: IoId, on: bool) {
        self.io.update(id.0, |e| e.refed = on);
    }

    pub(crate) fn io_has_ref(&self, id: IoId) -> bool {
        self.io.entries.get(id.0).is_some_and(|e| e.refed)
    }

    /// The pending phase: runs the queue detached at its start.
    pub(super) fn run_pending(&mut self) {
        if self.io.pending.is_empty() || self.halted() {
            return;
        }
        std::mem::swap(&mut self.io.pending, &mut self.io.pending_spare);
        let mut batch = std::mem::take(&mut self.io.pending_spare);
        while let Some(job) = batch.pop_front() {
            self.invoke(job);
            if self.halted() {
                batch.clear();
            }
        }
        self.io.pending_spare = batch;
    }

    /// The closing phase: close callbacks of handles closed since the last one, newest first.
    pub(super) fn run_closing(&mut self) {
        if self.io.closing.is_empty() || self.halted() {
            return;
        }
        let batch = std::mem::take(&mut self.io.closing);
        for &id in batch.iter().rev() {
            let Some(entry) = self.io.entries.remove(id.0) else {
                continue;
            };
            if let Some(cb) = entry.close_cb {
                self.invoke(cb);
            }
            if self.halted() {
                return;
            }
        }
    }

    /// The poll phase: waits up to `timeout` ms (`None`: no limit), then runs the callback of
    /// every ready handle in kernel order, then closures posted from other threads.
    pub(super) fn poll_io(&mut self, timeout: Option<u64>) -> io::Result<()> {
        if self.halted() {
            return Ok(());
        }
        let mut timeout = timeout;
        let mut skipped = false;
        if let Some(t) = timeout
            && t > 0
            && self.clock.skip(t)
        {
            timeout = Some(0);
            skipped = true;
        }
        if timeout == Some(0) && self.io.registered == 0 {
            // Only the waker could be ready, and its flag says whether it is: skip the syscall
            // (and the clock read after it, unless a virtual clock just jumped).
            if skipped {
                self.update_time();
            }
            self.run_posted();
            self.run_remote_wakes();
            return Ok(());
        }
        let mut events = self
            .io
            .events
            .take()
            .unwrap_or_else(|| Events::with_capacity(1024));
        let result = self.wait(&mut events, timeout);
        self.update_time();
        if let Err(e) = result {
            self.io.events = Some(events);
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == WAKER_TOKEN {
                continue;
            }
            self.dispatch(
                IoId(Key::from_usize(event.token().0)),
                Readiness::from_event(event),
            );
            if self.halted() {
                break;
            }
        }
        self.io.events = Some(events);
        if !self.halted() {
            self.run_posted();
        }
        self.run_remote_wakes();
        Ok(())
    }

    /// Futures woken from other threads are polled in the poll phase, like a promise
    /// resolved by an I/O callback.
    fn run_remote_wakes(&mut self) {
        if !self.halted() && self.tasks.has_wakes() {
            self.drain();
        }
    }

    fn wait(&mut self, events: &mut Events, timeout: Option<u64>) -> io::Result<()> {
        let notify = self.remote.notify.clone();
        let mut timeout = timeout;
        if timeout != Some(0) && (notify.enter_sleep() || self.tasks.has_wakes()) {
            timeout = Some(0);
        }
        let spin = self.io.busy_poll;
        let r = loop {
            match poll_spinning(
                &mut self.io.poll,
                events,
                timeout.map(Duration::from_millis),
                spin,
            ) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    timeout = Some(0);
                }
                other => break other,
            }
        };
        notify.leave_sleep();
        r
    }

    fn dispatch(&mut self, id: IoId, ready: Readiness) {
        let Some(e) = self.io.entries.get_mut(id.0) else {
            return;
        };
        if e.closing {
            return;
        }
        let Some(mut cb) = e.cb.take() else {
            return;
        };
        self.invoke(|lp| cb(lp, id, ready));
        if let Some(e) = self.io.entries.get_mut(id.0)
            && !e.closing
            && e.cb.is_none()
        {
            e.cb = Some(cb);
        }
    }
}
