//! The supervisor's state machine: slots, the workers in them, generations, the reload
//! cursor and each slot's restart budget and breaker. It does no I/O: every input
//! ([`Table::start`], [`Table::ready`], [`Table::exit`], …) changes the table and appends
//! the [`Action`]s the supervisor must carry out (drain, kill, arm a timer, emit an event);
//! forking is the one effect it asks for directly, through [`Host::spawn`], because the
//! new worker's id is needed at once.
//!
//! # Places
//!
//! Every worker the table knows is in exactly one place:
//!
//! * **owner** of a slot: it serves the slot (or boots to serve it);
//! * **pending** in a slot: the replacement of that slot's owner, booting beside it (the
//!   owner is then *retiring*, with a [`Cause`]);
//! * **leaving**: out of every slot, draining or being killed; its exit changes nothing.
//!
//! A slot is *filled* when it has an owner. An empty slot always has a timer armed (a
//! restart delay or the breaker's cool-down), so no slot stays empty for good.
//!
//! # Results of every input
//!
//! | input | owner | pending | leaving |
//! |---|---|---|---|
//! | ready | slot served (closes a half-open breaker) | takes the slot; the old owner drains | nothing |
//! | exit | its replacement (if any) takes the slot; otherwise the restart policy | replacement failed: the owner serves on | nothing |
//! | going down | as exit, but it drains first | replacement failed | nothing |
//! | ready deadline passed | killed (its exit is a boot failure) | replacement failed, killed | nothing |
//! | retire (recycle, unresponsive) | a replacement boots beside it | ignored | ignored |
//!
//! Scaling down removes the highest slots: their owners drain, their pending replacements
//! are killed, and the reload forgets them. Scaling (up or down) and a reload refill empty
//! slots at once (a tripped breaker goes half-open for it). Shutting down ends a reload
//! with an error and stops every restart; exits then only remove workers.
//!
//! The restart budget and the reload rules it implements are stated in the module docs of
//! [`supervise`](super).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::time::{Duration, Instant};

use super::{Cause, ReloadError, RestartPolicy, SupervisorEvent};

/// Forks workers for the table.
pub(super) trait Host {
    /// Starts a worker; its id.
    fn spawn(&mut self) -> io::Result<u32>;
}

/// What the supervisor must do after an input.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Report this.
    Emit(SupervisorEvent),
    /// Unroute, disconnect, and `SIGKILL` after the drain deadline.
    Drain(u32),
    /// An unresponsive worker: unroute, `SIGTERM` now, `SIGKILL` after the grace period.
    Stop(u32),
    /// `SIGKILL` now.
    Kill(u32),
    /// Route new connections to it again (its replacement failed).
    Route(u32),
    /// Arm the ready deadline of this new worker ([`Table::ready_deadline`]).
    ReadyDeadline(u32),
    /// Arm a slot timer: [`Table::timer`] with these after `delay`.
    Timer {
        /// The slot.
        slot: usize,
        /// Identifies this arming (a later one replaces it).
        epoch: u64,
        /// When.
        delay: Duration,
    },
    /// The reload ended; run its callbacks.
    ReloadFinished(Result<(), ReloadError>),
}

/// Where a worker is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Owner(usize),
    Pending(usize),
    Leaving,
}

/// One worker the table tracks.
#[derive(Debug, Clone)]
pub(super) struct Member {
    /// The slot it was started for.
    pub(super) home: usize,
    pub(super) generation: u64,
    pub(super) started: Instant,
    pub(super) ready: bool,
    pub(super) place: Place,
    /// An owner being replaced, and why.
    pub(super) retiring: Option<Cause>,
    /// Health bookkeeping (kept here so one map holds each worker).
    pub(super) last_pong: Instant,
    pub(super) lag: Option<Duration>,
    pub(super) quarantined: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Breaker {
    Closed,
    /// Tripped; retries after `cooldown`.
    Open {
        cooldown: Duration,
    },
    /// One worker is trying; `cooldown` is what a failure would wait next.
    HalfOpen {
        cooldown: Duration,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) owner: Option<u32>,
    pub(super) pending: Option<u32>,
    pub(super) restarts: u32,
    consecutive: u32,
    unstable: VecDeque<Instant>,
    breaker: Breaker,
    /// The epoch of the armed timer, if one is armed.
    timer: Option<u64>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            owner: None,
            pending: None,
            restarts: 0,
            consecutive: 0,
            unstable: VecDeque::new(),
            breaker: Breaker::Closed,
            timer: None,
        }
    }
}

#[derive(Debug, Default)]
struct Reload {
    /// Slots whose step has not started.
    queue: VecDeque<usize>,
    /// Slots whose step is under way.
    active: BTreeSet<usize>,
    /// The worker a step replaced, while it drains: the step ends when it is gone, so
    /// no more than `concurrency` workers are on their way out at once.
    outgoing: BTreeMap<usize, u32>,
    failed: Option<ReloadError>,
}

/// The state machine (see the module docs).
#[derive(Debug)]
pub(super) struct Table {
    policy: RestartPolicy,
    concurrency: usize,
    pub(super) generation: u64,
    pub(super) slots: Vec<Slot>,
    pub(super) members: BTreeMap<u32, Member>,
    reload: Option<Reload>,
    /// Shutting down: no more spawns.
    pub(super) down: bool,
    /// Every owner is of the current generation unless a reload failed or runs.
    consistent: bool,
    epochs: u64,
}

type Out = Vec<Action>;

impl Table {
    pub(super) fn new(policy: RestartPolicy, concurrency: usize) -> Table {
        Table {
            policy,
            concurrency: concurrency.max(1),
            generation: 1,
            slots: Vec::new(),
            members: BTreeMap::new(),
            reload: None,
            down: false,
            consistent: true,
            epochs: 0,
        }
    }

    /// The target number of workers.
    pub(super) fn size(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn reloading(&self) -> bool {
        self.reload.is_some()
    }

    /// Workers retiring for memory or connections (recycling).
    pub(super) fn recycling(&self) -> usize {
        self.members
            .values()
            .filter(|m| matches!(m.retiring, Some(Cause::Memory | Cause::Connections)))
            .count()
    }

    /// Every slot has a ready owner.
    pub(super) fn all_ready(&self) -> bool {
        self.slots.iter().all(|s| {
            s.owner
                .and_then(|w| self.members.get(&w))
                .is_some_and(|m| m.ready)
        })
    }

    /// Whether `worker` is leaving or retiring (no health actions for it).
    pub(super) fn leaving(&self, worker: u32) -> bool {
        self.members
            .get(&worker)
            .is_none_or(|m| m.place == Place::Leaving || m.retiring.is_some())
    }

    /// Adds `n` slots and fills them.
    pub(super) fn start(&mut self, host: &mut dyn Host, n: usize, now: Instant, out: &mut Out) {
        for _ in 0..n {
            self.slots.push(Slot::new());
            self.fill(host, self.slots.len() - 1, now, out);
        }
    }

    fn next_epoch(&mut self) -> u64 {
        self.epochs += 1;
        self.epochs
    }

    fn arm(&mut self, slot: usize, delay: Duration, out: &mut Out) {
        let epoch = self.next_epoch();
        if let Some(s) = self.slots.get_mut(slot) {
            s.timer = Some(epoch);
            out.push(Action::Timer { slot, epoch, delay });
        }
    }

    fn add(&mut self, worker: u32, place: Place, now: Instant) {
        let home = match place {
            Place::Owner(s) | Place::Pending(s) => s,
            Place::Leaving => usize::MAX,
        };
        self.members.insert(
            worker,
            Member {
                home,
                generation: self.generation,
                started: now,
                ready: false,
                place,
                retiring: None,
                last_pong: now,
                lag: None,
                quarantined: false,
            },
        );
    }

    /// Starts an owner in empty `slot`; a failed spawn is a boot failure.
    fn fill(&mut self, host: &mut dyn Host, slot: usize, now: Instant, out: &mut Out) {
        if self.down || self.slots.get(slot).is_none_or(|s| s.owner.is_some()) {
            return;
        }
        match self.spawn_into(host, slot, Place::Owner(slot), now, out) {
            Ok(_) => {}
            Err(e) => {
                log::error!("slot {slot}: cannot spawn a worker: {e}");
                out.push(Action::Emit(SupervisorEvent::SpawnFailed {
                    slot,
                    reason: e.to_string(),
                }));
                self.vacated(host, slot, None, false, now, out);
            }
        }
    }

    /// Forks a worker into `place` (`slot`'s owner or pending replacement) with its ready
    /// deadline. Any spawn into a tripped slot is its half-open try.
    fn spawn_into(
        &mut self,
        host: &mut dyn Host,
        slot: usize,
        place: Place,
        now: Instant,
        out: &mut Out,
    ) -> io::Result<u32> {
        self.half_open(slot, out);
        self.slots[slot].timer = None;
        let w = host.spawn()?;
        self.add(w, place, now);
        match place {
            Place::Pending(_) => self.slots[slot].pending = Some(w),
            _ => self.slots[slot].owner = Some(w),
        }
        out.push(Action::ReadyDeadline(w));
        Ok(w)
    }

    /// Counts an unstable end in `slot`'s budget; trips (or re-opens) the breaker when
    /// it is over. Returns whether the breaker is now open.
    fn count_unstable(&mut self, slot: usize, now: Instant, out: &mut Out) -> bool {
        let policy = self.policy;
        let Some(s) = self.slots.get_mut(slot) else {
            return false;
        };
        s.consecutive += 1;
        s.unstable.push_back(now);
        while s
            .unstable
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.breaker_window)
        {
            s.unstable.pop_front();
        }
        let cooldown = match s.breaker {
            Breaker::Open { .. } => return true,
            Breaker::HalfOpen { cooldown } => (cooldown * 2).min(policy.breaker_cooldown_cap),
            Breaker::Closed if s.unstable.len() > policy.breaker_max as usize => {
                policy.breaker_cooldown
            }
            Breaker::Closed => return false,
        };
        s.breaker = Breaker::Open { cooldown };
        let restarts = s.unstable.len() as u32;
        log::error!(
            "slot {slot}: {restarts} unstable restarts in the breaker window; next try in {cooldown:?}"
        );
        out.push(Action::Emit(SupervisorEvent::BreakerTripped {
            slot,
            restarts,
        }));
        // With an owner still serving, the cool-down only gates automatic replacements.
        self.arm(slot, cooldown, out);
        self.reload_breaker(slot);
        true
    }

    /// `slot` lost its owner without a replacement: the restart policy. `ended` is the
    /// worker that ended and whether it ended before ready (`None`: a spawn failed).
    fn vacated(
        &mut self,
        host: &mut dyn Host,
        slot: usize,
        ended: Option<(u32, bool)>,
        stable: bool,
        now: Instant,
        out: &mut Out,
    ) {
        if self.down || slot >= self.slots.len() {
            return;
        }
        if stable {
            self.slots[slot].consecutive = 0;
        } else if self.count_unstable(slot, now, out) {
            return;
        }
        let s = &mut self.slots[slot];
        s.restarts += 1;
        let delay = if stable {
            Duration::ZERO
        } else {
            self.policy.delay(s.consecutive)
        };
        if let Some((worker, boot_failure)) = ended {
            out.push(Action::Emit(SupervisorEvent::Restarting {
                slot,
                worker,
                delay,
                boot_failure,
            }));
        }
        if delay.is_zero() && ended.is_some() {
            self.fill(host, slot, now, out);
        } else {
            // A failed spawn always waits (at least a millisecond) so it cannot spin.
            self.arm(slot, delay.max(Duration::from_millis(1)), out);
        }
    }

    /// A slot timer fired.
    pub(super) fn timer(
        &mut self,
        host: &mut dyn Host,
        slot: usize,
        epoch: u64,
        now: Instant,
        out: &mut Out,
    ) {
        if self.down {
            return;
        }
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.timer != Some(epoch) {
            return; // replaced or cancelled
        }
        s.timer = None;
        if s.owner.is_none() {
            self.fill(host, slot, now, out);
        } else {
            // The owner serves on: the next automatic replacement is the try.
            self.half_open(slot, out);
        }
        self.reload_progress(host, now, out);
    }

    /// `worker` is ready (listening, or said so).
    pub(super) fn ready(&mut self, host: &mut dyn Host, worker: u32, now: Instant, out: &mut Out) {
        let Some(m) = self.members.get_mut(&worker) else {
            return;
        };
        if m.ready {
            return;
        }
        m.ready = true;
        match m.place {
            Place::Leaving => {}
            Place::Owner(slot) => {
                out.push(Action::Emit(SupervisorEvent::Ready { slot, worker }));
                self.close_breaker(slot, out);
            }
            Place::Pending(slot) => {
                out.push(Action::Emit(SupervisorEvent::Ready { slot, worker }));
                m.place = Place::Owner(slot);
                let s = &mut self.slots[slot];
                s.pending = None;
                let old = s.owner.replace(worker);
                if let Some(old) = old {
                    let cause = self.members.get(&old).and_then(|m| m.retiring);
                    self.leave(old);
                    out.push(Action::Drain(old));
                    if cause == Some(Cause::Reload)
                        && let Some(r) = self.reload.as_mut()
                        && r.active.contains(&slot)
                    {
                        r.outgoing.insert(slot, old);
                    }
                }
                self.close_breaker(slot, out);
            }
        }
        self.reload_progress(host, now, out);
    }

    fn close_breaker(&mut self, slot: usize, out: &mut Out) {
        let s = &mut self.slots[slot];
        if let Breaker::HalfOpen { .. } = s.breaker {
            s.breaker = Breaker::Closed;
            s.unstable.clear();
            log::info!("slot {slot}: breaker closed");
            out.push(Action::Emit(SupervisorEvent::BreakerClosed { slot }));
        }
    }

    /// `worker`'s process ended.
    pub(super) fn exit(&mut self, host: &mut dyn Host, worker: u32, now: Instant, out: &mut Out) {
        let Some(m) = self.members.remove(&worker) else {
            return;
        };
        if self.down {
            // No restarts: only forget it (a pending replacement takes its slot).
            match m.place {
                Place::Owner(i) => {
                    let pending = self.slots[i].pending.take();
                    self.slots[i].owner = pending;
                    if let Some(nm) = pending.and_then(|p| self.members.get_mut(&p)) {
                        nm.place = Place::Owner(i);
                    }
                }
                Place::Pending(i) => {
                    self.slots[i].pending = None;
                    if let Some(om) = self.slots[i].owner.and_then(|o| self.members.get_mut(&o)) {
                        om.retiring = None;
                    }
                }
                Place::Leaving => {}
            }
            return;
        }
        match m.place {
            Place::Leaving => {}
            Place::Pending(slot) => {
                self.slots[slot].pending = None;
                self.replacement_failed(
                    host,
                    slot,
                    format!("replacement worker {worker} exited before ready"),
                    now,
                    out,
                );
            }
            Place::Owner(slot) => self.owner_left(host, slot, worker, &m, now, out),
        }
        self.reload_progress(host, now, out);
    }

    /// The owner of `slot` left (exited, or went down): its replacement takes the slot,
    /// or the restart policy runs.
    fn owner_left(
        &mut self,
        host: &mut dyn Host,
        slot: usize,
        worker: u32,
        m: &Member,
        now: Instant,
        out: &mut Out,
    ) {
        let s = &mut self.slots[slot];
        s.owner = None;
        if let Some(new) = s.pending.take() {
            s.owner = Some(new);
            if let Some(nm) = self.members.get_mut(&new) {
                nm.place = Place::Owner(slot);
            }
            return;
        }
        let stable = m.ready && now.duration_since(m.started) >= self.policy.min_uptime;
        self.vacated(host, slot, Some((worker, !m.ready)), stable, now, out);
    }

    /// `worker` said it is going down: it drains, and its slot is handled as if it had
    /// exited (the restart budget counts it the same way).
    pub(super) fn going_down(
        &mut self,
        host: &mut dyn Host,
        worker: u32,
        now: Instant,
        out: &mut Out,
    ) {
        if self.down {
            return;
        }
        let Some(m) = self.members.get(&worker).cloned() else {
            return;
        };
        match m.place {
            Place::Leaving => return,
            Place::Pending(slot) => {
                self.slots[slot].pending = None;
                self.leave(worker);
                out.push(Action::Kill(worker));
                self.replacement_failed(
                    host,
                    slot,
                    format!("replacement worker {worker} went down before ready"),
                    now,
                    out,
                );
            }
            Place::Owner(slot) => {
                log::info!("replacing worker {worker}: GoingDown");
                out.push(Action::Emit(SupervisorEvent::Retiring {
                    worker,
                    cause: Cause::GoingDown,
                }));
                self.leave(worker);
                out.push(Action::Drain(worker));
                self.owner_left(host, slot, worker, &m, now, out);
            }
        }
        self.reload_progress(host, now, out);
    }

    fn leave(&mut self, worker: u32) {
        if let Some(m) = self.members.get_mut(&worker) {
            m.place = Place::Leaving;
            m.retiring = None;
        }
    }

    /// Starts replacing `worker` (recycling, unresponsive); the retire path.
    pub(super) fn retire(
        &mut self,
        host: &mut dyn Host,
        worker: u32,
        cause: Cause,
        now: Instant,
        out: &mut Out,
    ) {
        if self.down {
            return;
        }
        if cause == Cause::GoingDown {
            self.going_down(host, worker, now, out);
            return;
        }
        let Some(m) = self.members.get(&worker) else {
            return;
        };
        let Place::Owner(slot) = m.place else {
            return;
        };
        if m.retiring.is_some() || self.slots[slot].pending.is_some() {
            return;
        }
        let automatic = matches!(cause, Cause::Memory | Cause::Connections);
        if automatic && matches!(self.slots[slot].breaker, Breaker::Open { .. }) {
            log::warn!("worker {worker}: not recycled ({cause:?}): slot {slot}'s breaker is open");
            return;
        }
        if !m.ready && cause != Cause::Unresponsive {
            return; // nothing to replace yet
        }
        self.start_replacement(host, slot, worker, cause, now, out);
    }

    fn start_replacement(
        &mut self,
        host: &mut dyn Host,
        slot: usize,
        worker: u32,
        cause: Cause,
        now: Instant,
        out: &mut Out,
    ) {
        if let Some(m) = self.members.get_mut(&worker) {
            m.retiring = Some(cause);
        }
        log::info!("replacing worker {worker}: {cause:?}");
        out.push(Action::Emit(SupervisorEvent::Retiring { worker, cause }));
        if cause == Cause::Unresponsive {
            out.push(Action::Stop(worker));
        }
        if let Err(e) = self.spawn_into(host, slot, Place::Pending(slot), now, out) {
            self.replacement_failed(host, slot, format!("cannot spawn: {e}"), now, out);
        }
    }

    /// The replacement in `slot` failed (its pending worker is already gone or leaving):
    /// the owner serves on (unless it was unresponsive), the failure counts in the budget
    /// and fails the reload step.
    fn replacement_failed(
        &mut self,
        host: &mut dyn Host,
        slot: usize,
        reason: String,
        now: Instant,
        out: &mut Out,
    ) {
        let owner = self.slots[slot].owner;
        let cause = owner
            .and_then(|o| self.members.get_mut(&o))
            .and_then(|m| m.retiring.take());
        log::error!("slot {slot}: {reason}");
        if let Some(o) = owner {
            if cause != Some(Cause::Unresponsive) {
                out.push(Action::Route(o));
            }
            out.push(Action::Emit(SupervisorEvent::ReplacementFailed {
                worker: o,
                reason: reason.clone(),
            }));
        }
        self.fail_step(slot, &reason);
        self.count_unstable(slot, now, out);
        if owner.is_none() {
            // No one serves the slot (cannot happen for a pending replacement, whose
            // owner leaves only by handing it the slot): restart it.
            self.vacated(host, slot, None, false, now, out);
        }
    }

    /// The ready deadline of `worker` passed.
    pub(super) fn ready_deadline(
        &mut self,
        host: &mut dyn Host,
        worker: u32,
        now: Instant,
        out: &mut Out,
    ) {
        let Some(m) = self.members.get(&worker) else {
            return;
        };
        if m.ready || self.down {
            return;
        }
        match m.place {
            Place::Leaving => {}
            Place::Owner(_) => {
                // Its exit will count as a boot failure.
                log::error!("worker {worker} missed its ready deadline; killing it");
                out.push(Action::Kill(worker));
            }
            Place::Pending(slot) => {
                self.slots[slot].pending = None;
                self.leave(worker);
                out.push(Action::Kill(worker));
                self.replacement_failed(
                    host,
                    slot,
                    format!("replacement worker {worker} missed its ready deadline"),
                    now,
                    out,
                );
                self.reload_progress(host, now, out);
            }
        }
    }

    /// Sets the number of slots: removes the highest ones (owners drain, pending
    /// replacements are killed) or adds new ones; then refills every empty slot.
    pub(super) fn scale(&mut self, host: &mut dyn Host, n: usize, now: Instant, out: &mut Out) {
        if self.down {
            return;
        }
        while self.slots.len() > n {
            let slot = self.slots.len() - 1;
            let s = self.slots.remove(slot);
            if let Some(p) = s.pending {
                self.leave(p);
                out.push(Action::Kill(p));
            }
            if let Some(o) = s.owner {
                self.leave(o);
                out.push(Action::Drain(o));
            }
            if let Some(r) = self.reload.as_mut() {
                r.queue.retain(|&q| q != slot);
                r.active.remove(&slot);
                r.outgoing.remove(&slot);
            }
        }
        while self.slots.len() < n {
            self.slots.push(Slot::new());
        }
        self.refill(host, now, out);
        self.reload_progress(host, now, out);
    }

    /// Fills every empty slot now (an open breaker goes half-open for it).
    fn refill(&mut self, host: &mut dyn Host, now: Instant, out: &mut Out) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].owner.is_some() {
                continue;
            }
            self.fill(host, slot, now, out);
        }
    }

    fn half_open(&mut self, slot: usize, out: &mut Out) {
        let s = &mut self.slots[slot];
        if let Breaker::Open { cooldown } = s.breaker {
            s.breaker = Breaker::HalfOpen { cooldown };
            log::info!("slot {slot}: breaker half-open, trying one worker");
            out.push(Action::Emit(SupervisorEvent::BreakerHalfOpen { slot }));
        }
    }

    /// Starts a reload; `false` if one is already under way (the caller joins it).
    pub(super) fn reload(&mut self, host: &mut dyn Host, now: Instant, out: &mut Out) -> bool {
        if self.reload.is_some() {
            return false;
        }
        if self.down {
            out.push(Action::ReloadFinished(Err(ReloadError::ShuttingDown)));
            return true;
        }
        self.generation += 1;
        self.consistent = false;
        self.reload = Some(Reload {
            queue: (0..self.slots.len()).collect(),
            ..Reload::default()
        });
        log::info!("rolling reload started (generation {})", self.generation);
        self.reload_progress(host, now, out);
        true
    }

    /// Starts the reload step of `slot`.
    fn begin_step(&mut self, host: &mut dyn Host, slot: usize, now: Instant, out: &mut Out) {
        let generation = self.generation;
        // A replacement of an older generation (recycling under way) is of no use now.
        if let Some(p) = self.slots[slot].pending
            && self
                .members
                .get(&p)
                .is_some_and(|m| m.generation < generation)
        {
            self.slots[slot].pending = None;
            self.leave(p);
            out.push(Action::Kill(p));
            if let Some(o) = self.slots[slot].owner {
                let cause = self.members.get_mut(&o).and_then(|m| m.retiring.take());
                if cause != Some(Cause::Unresponsive) {
                    out.push(Action::Route(o));
                }
            }
        }
        let s = &self.slots[slot];
        match s
            .owner
            .and_then(|o| self.members.get(&o).map(|m| (o, m.clone())))
        {
            None => self.fill(host, slot, now, out),
            Some((_, m)) if m.generation >= generation => {}
            // Its replacement (of this generation) is booting already.
            Some(_) if s.pending.is_some() => {}
            Some((o, m)) if !m.ready || m.retiring == Some(Cause::Unresponsive) => {
                // Booting on the old code, or being stopped: start afresh.
                self.slots[slot].owner = None;
                self.leave(o);
                out.push(Action::Kill(o));
                if let Some(r) = self.reload.as_mut() {
                    r.outgoing.insert(slot, o);
                }
                self.fill(host, slot, now, out);
            }
            Some((o, _)) => self.start_replacement(host, slot, o, Cause::Reload, now, out),
        }
    }

    fn fail_step(&mut self, slot: usize, reason: &str) {
        if let Some(r) = self.reload.as_mut()
            && r.active.remove(&slot)
        {
            r.failed.get_or_insert_with(|| ReloadError::Replacement {
                slot,
                reason: reason.to_string(),
            });
            r.queue.clear();
        }
    }

    fn reload_breaker(&mut self, slot: usize) {
        let no_owner = self.slots.get(slot).is_some_and(|s| s.owner.is_none());
        if no_owner {
            self.fail_step(slot, &format!("slot {slot}: the breaker tripped"));
        }
    }

    /// Ends the steps that are done, starts the next ones, and finishes the reload.
    fn reload_progress(&mut self, host: &mut dyn Host, now: Instant, out: &mut Out) {
        loop {
            let Some(r) = self.reload.as_ref() else {
                return;
            };
            let generation = self.generation;
            let done: Vec<usize> = r
                .active
                .iter()
                .copied()
                .filter(|&slot| {
                    let drained = r
                        .outgoing
                        .get(&slot)
                        .is_none_or(|w| !self.members.contains_key(w));
                    self.slots.get(slot).is_none_or(|s| {
                        drained
                            && s.pending.is_none()
                            && s.owner
                                .and_then(|o| self.members.get(&o))
                                .is_some_and(|m| m.ready && m.generation == generation)
                    })
                })
                .collect();
            let Some(r) = self.reload.as_mut() else {
                return;
            };
            for slot in done {
                r.active.remove(&slot);
                r.outgoing.remove(&slot);
            }
            if r.active.len() < self.concurrency
                && let Some(slot) = r.queue.pop_front()
            {
                r.active.insert(slot);
                self.begin_step(host, slot, now, out);
                continue;
            }
            if !r.active.is_empty() || !r.queue.is_empty() {
                return;
            }
            let Some(r) = self.reload.take() else {
                return;
            };
            let result = match r.failed {
                Some(e) => Err(e),
                None if self.slots.is_empty() => Err(ReloadError::NoWorkers),
                None => Ok(()),
            };
            self.consistent = result.is_ok();
            match &result {
                Ok(()) => log::info!("rolling reload finished"),
                Err(e) => log::error!("rolling reload failed: {e}"),
            }
            out.push(Action::Emit(SupervisorEvent::ReloadFinished(
                result.clone(),
            )));
            out.push(Action::ReloadFinished(result));
            return;
        }
    }

    /// Shutting down: no more restarts or spawns; a reload under way fails.
    pub(super) fn shut_down(&mut self, out: &mut Out) {
        if self.down {
            return;
        }
        self.down = true;
        for s in &mut self.slots {
            s.timer = None;
        }
        if self.reload.take().is_some() {
            let result = Err(ReloadError::ShuttingDown);
            out.push(Action::Emit(SupervisorEvent::ReloadFinished(
                result.clone(),
            )));
            out.push(Action::ReloadFinished(result));
        }
    }

    /// Checks the table's invariants (see the module docs); the first one broken.
    pub(super) fn check(&self) -> Result<(), String> {
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(o) = s.owner
                && self.members.get(&o).map(|m| m.place) != Some(Place::Owner(i))
            {
                return Err(format!("slot {i}: owner {o} is not placed as its owner"));
            }
            if let Some(p) = s.pending {
                if self.members.get(&p).map(|m| m.place) != Some(Place::Pending(i)) {
                    return Err(format!("slot {i}: pending {p} is not placed as pending"));
                }
                let retiring = s
                    .owner
                    .and_then(|o| self.members.get(&o))
                    .is_some_and(|m| m.retiring.is_some());
                if !retiring {
                    return Err(format!("slot {i}: pending {p} but no retiring owner"));
                }
            }
            if !self.down && s.owner.is_none() && s.timer.is_none() {
                return Err(format!("slot {i}: empty with no timer armed"));
            }
            if s.owner.is_some() && s.timer.is_some() && s.breaker == Breaker::Closed {
                return Err(format!("slot {i}: filled with a restart timer armed"));
            }
        }
        for (&w, m) in &self.members {
            let ok = match m.place {
                Place::Owner(i) => self.slots.get(i).is_some_and(|s| s.owner == Some(w)),
                Place::Pending(i) => self.slots.get(i).is_some_and(|s| s.pending == Some(w)),
                Place::Leaving => m.retiring.is_none(),
            };
            if !ok {
                return Err(format!("worker {w}: in no slot it claims ({:?})", m.place));
            }
            if m.generation > self.generation {
                return Err(format!("worker {w}: generation from the future"));
            }
            if m.retiring.is_some() && !matches!(m.place, Place::Owner(_)) {
                return Err(format!("worker {w}: retiring but not an owner"));
            }
        }
        if let Some(r) = &self.reload {
            if r.active.len() > self.concurrency {
                return Err("reload: more steps under way than allowed".into());
            }
            if r.active
                .iter()
                .chain(&r.queue)
                .any(|&s| s >= self.slots.len())
            {
                return Err("reload: a step for a slot that is gone".into());
            }
            if r.queue.iter().any(|s| r.active.contains(s)) {
                return Err("reload: a slot both queued and under way".into());
            }
        } else if self.consistent && !self.down {
            for s in &self.slots {
                if let Some(m) = s.owner.and_then(|o| self.members.get(&o))
                    && m.generation != self.generation
                {
                    return Err(format!(
                        "generation {} serves after a reload to {}",
                        m.generation, self.generation
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The table without processes: fixed scenarios (the reload and scale races among
    //! them) and random interleavings of every input, with the invariants checked after
    //! each one.

    use super::*;

    /// Hands out ids; fails a spawn when told to.
    #[derive(Default)]
    struct Fake {
        next: u32,
        fail: bool,
    }

    impl Host for Fake {
        fn spawn(&mut self) -> io::Result<u32> {
            if self.fail {
                return Err(io::Error::other("no more processes"));
            }
            self.next += 1;
            Ok(self.next)
        }
    }

    /// A table, its fake host, a clock and what it asked for.
    struct Rig {
        t: Table,
        host: Fake,
        now: Instant,
        timers: Vec<(usize, u64, Instant)>,
        reloads: Vec<Result<(), ReloadError>>,
        events: Vec<SupervisorEvent>,
        killed: Vec<u32>,
    }

    impl Rig {
        fn new(n: usize, policy: RestartPolicy) -> Rig {
            let mut r = Rig {
                t: Table::new(policy, 1),
                host: Fake::default(),
                now: Instant::now(),
                timers: Vec::new(),
                reloads: Vec::new(),
                events: Vec::new(),
                killed: Vec::new(),
            };
            r.run(|t, h, now, out| t.start(h, n, now, out));
            r
        }

        fn run(&mut self, f: impl FnOnce(&mut Table, &mut dyn Host, Instant, &mut Out)) {
            let mut out = Vec::new();
            f(&mut self.t, &mut self.host, self.now, &mut out);
            for a in out {
                match a {
                    Action::Timer { slot, epoch, delay } => {
                        self.timers.push((slot, epoch, self.now + delay))
                    }
                    Action::ReloadFinished(r) => self.reloads.push(r),
                    Action::Emit(e) => self.events.push(e),
                    Action::Kill(w) | Action::Stop(w) => self.killed.push(w),
                    _ => {}
                }
            }
            if let Err(e) = self.t.check() {
                panic!("invariant broken: {e}\n{:#?}", self.t);
            }
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
        }

        fn ready(&mut self, w: u32) {
            self.run(|t, h, now, out| t.ready(h, w, now, out));
        }
        fn exit(&mut self, w: u32) {
            self.run(|t, h, now, out| t.exit(h, w, now, out));
        }

        /// Workers `ids` exit in turn, `apart` from each other (due timers fire between).
        fn boot_failures(&mut self, ids: std::ops::RangeInclusive<u32>, apart: Duration) {
            for w in ids {
                self.exit(w);
                self.advance(apart);
                self.fire_due();
            }
        }

        /// Fires every timer that is due.
        fn fire_due(&mut self) {
            let now = self.now;
            let due: Vec<_> = self.timers.iter().filter(|t| t.2 <= now).copied().collect();
            self.timers.retain(|t| t.2 > now);
            for (slot, epoch, _) in due {
                self.run(|t, h, now, out| t.timer(h, slot, epoch, now, out));
            }
        }

        fn owners(&self) -> Vec<u32> {
            self.t.slots.iter().filter_map(|s| s.owner).collect()
        }

        fn in_place(&self, place: fn(Place) -> bool) -> Vec<u32> {
            let m = &self.t.members;
            m.iter()
                .filter(|(_, m)| place(m.place))
                .map(|(w, _)| *w)
                .collect()
        }

        /// Lets everything settle: booting workers get ready, leaving ones exit, due
        /// timers fire; until nothing changes.
        fn settle(&mut self) {
            for _ in 0..1000 {
                let booting: Vec<u32> = self
                    .t
                    .members
                    .iter()
                    .filter(|(_, m)| !m.ready && m.place != Place::Leaving)
                    .map(|(w, _)| *w)
                    .collect();
                let leaving = self.in_place(|p| p == Place::Leaving);
                if booting.is_empty() && leaving.is_empty() && self.timers.is_empty() {
                    return;
                }
                for w in booting {
                    self.ready(w);
                }
                for w in leaving {
                    self.exit(w);
                }
                self.advance(Duration::from_secs(1));
                self.fire_due();
                if self.timers.iter().all(|t| t.2 > self.now) && !self.timers.is_empty() {
                    let next = self.timers.iter().map(|t| t.2).min().unwrap_or(self.now);
                    self.now = self.now.max(next);
                    self.fire_due();
                }
            }
            panic!("the table never settled: {:#?}", self.t);
        }
    }

    fn quick() -> RestartPolicy {
        RestartPolicy {
            base: Duration::from_millis(10),
            min_uptime: Duration::from_millis(500),
            breaker_max: 3,
            breaker_window: Duration::from_secs(10),
            breaker_cooldown: Duration::from_secs(5),
            ..RestartPolicy::default()
        }
    }

    #[test]
    fn reload_then_the_oldest_worker_killed_leaves_one_worker_per_slot() {
        let mut r = Rig::new(2, quick());
        r.ready(1);
        r.ready(2);
        r.advance(Duration::from_secs(2));
        r.run(|t, h, now, out| {
            t.reload(h, now, out);
        });
        // Slot 0's replacement (3) boots; the old owner is SIGKILLed meanwhile.
        assert_eq!(r.t.slots[0].pending, Some(3));
        r.exit(1);
        assert_eq!(
            r.owners(),
            [3, 2],
            "the replacement takes the slot, no restart"
        );
        r.settle();
        assert_eq!(r.reloads, [Ok(())]);
        assert_eq!(r.owners().len(), 2);
        assert_eq!(r.t.members.len(), 2, "two workers for two slots");
        assert!(r.t.members.values().all(|m| m.generation == 2));
    }

    #[test]
    fn scale_down_during_a_reload_does_not_hang_it() {
        let mut r = Rig::new(2, quick());
        r.ready(1);
        r.ready(2);
        r.run(|t, h, now, out| {
            t.reload(h, now, out);
        });
        // TTOU while slot 0 is being replaced: slot 1's worker drains (and takes long).
        r.run(|t, h, now, out| t.scale(h, 1, now, out));
        assert_eq!(r.in_place(|p| p == Place::Leaving), [2]);
        r.ready(3);
        r.exit(1);
        assert_eq!(
            r.reloads,
            [Ok(())],
            "the reload ends while worker 2 still drains"
        );
        // A following reload replaces every worker.
        r.run(|t, h, now, out| {
            t.reload(h, now, out);
        });
        r.settle();
        assert_eq!(r.reloads, [Ok(()), Ok(())]);
        assert_eq!(r.owners(), [4]);
        assert_eq!(r.t.members.len(), 1);
    }

    #[test]
    fn a_tripped_breaker_tries_again_after_its_cool_down() {
        let mut r = Rig::new(1, quick());
        // Four boot failures in a row: three restarts, then the breaker trips.
        r.boot_failures(1..=4, Duration::from_millis(100));
        assert!(
            r.events
                .iter()
                .any(|e| matches!(e, SupervisorEvent::BreakerTripped { slot: 0, .. }))
        );
        assert_eq!(
            r.owners(),
            [] as [u32; 0],
            "the slot is empty for the cool-down"
        );
        r.advance(Duration::from_secs(5));
        r.fire_due();
        assert_eq!(r.owners(), [5], "half-open: one worker");
        // It fails too: open again for twice as long.
        r.exit(5);
        r.advance(Duration::from_secs(5));
        r.fire_due();
        assert_eq!(r.owners(), [] as [u32; 0]);
        r.advance(Duration::from_secs(5));
        r.fire_due();
        assert_eq!(r.owners(), [6]);
        r.ready(6);
        assert!(
            r.events
                .iter()
                .any(|e| matches!(e, SupervisorEvent::BreakerClosed { slot: 0 }))
        );
    }

    #[test]
    fn reload_and_scale_refill_a_tripped_slot() {
        let mut r = Rig::new(1, quick());
        r.boot_failures(1..=4, Duration::from_millis(100));
        assert!(r.owners().is_empty());
        r.run(|t, h, now, out| {
            t.reload(h, now, out);
        });
        assert_eq!(r.owners(), [5], "the reload refills the slot at once");
        r.ready(5);
        assert_eq!(r.reloads, [Ok(())]);
        // Trip it again; scaling refills it.
        r.boot_failures(5..=8, Duration::from_secs(1));
        assert!(r.owners().is_empty());
        r.run(|t, h, now, out| t.scale(h, 2, now, out));
        assert_eq!(r.owners().len(), 2);
    }

    #[test]
    fn a_reload_with_no_slot_is_an_error() {
        let mut r = Rig::new(1, quick());
        r.run(|t, h, now, out| t.scale(h, 0, now, out));
        r.run(|t, h, now, out| {
            t.reload(h, now, out);
        });
        assert_eq!(r.reloads.len(), 1);
        assert!(r.reloads[0].is_err());
    }

    #[test]
    fn going_down_counts_in_the_restart_budget() {
        let mut r = Rig::new(1, quick());
        let mut w = 1;
        for _ in 0..4 {
            r.ready(w);
            r.run(|t, h, now, out| t.going_down(h, w, now, out));
            r.advance(Duration::from_millis(100));
            r.fire_due();
            w = r.owners().first().copied().unwrap_or(0);
        }
        assert!(
            r.events
                .iter()
                .any(|e| matches!(e, SupervisorEvent::BreakerTripped { slot: 0, .. })),
            "{:?}",
            r.events
        );
        // Stable ones do not count: restarted at once, every time.
        let mut r = Rig::new(1, quick());
        for w in 1..=10 {
            r.ready(w);
            r.advance(Duration::from_secs(1));
            r.run(|t, h, now, out| t.going_down(h, w, now, out));
            assert_eq!(r.owners(), [w + 1]);
        }
    }

    #[test]
    fn spawn_failures_are_retried_not_lost() {
        let mut r = Rig::new(1, quick());
        r.host.fail = true;
        r.ready(1);
        r.advance(Duration::from_secs(2));
        r.exit(1);
        assert!(r.owners().is_empty());
        r.host.fail = false;
        r.advance(Duration::from_secs(1));
        r.fire_due();
        assert_eq!(r.owners(), [2]);
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
        fn pick(&mut self, v: &[u32]) -> Option<u32> {
            (!v.is_empty()).then(|| v[self.below(v.len())])
        }
    }

    fn random_run(seed: u64, steps: usize) {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut r = Rig::new(1 + rng.below(3), quick());
        for _ in 0..steps {
            r.host.fail = rng.below(10) == 0;
            let all: Vec<u32> = r.t.members.keys().copied().collect();
            match rng.below(11) {
                0 | 1 => {
                    if let Some(w) = rng.pick(&all) {
                        r.ready(w);
                    }
                }
                2 | 3 => {
                    if let Some(w) = rng.pick(&all) {
                        r.exit(w);
                    }
                }
                4 => {
                    if let Some(w) = rng.pick(&all) {
                        r.run(|t, h, now, out| t.going_down(h, w, now, out));
                    }
                }
                5 => {
                    let cause =
                        [Cause::Memory, Cause::Unresponsive, Cause::Connections][rng.below(3)];
                    if let Some(w) = rng.pick(&all) {
                        r.run(|t, h, now, out| t.retire(h, w, cause, now, out));
                    }
                }
                6 => {
                    if let Some(w) = rng.pick(&all) {
                        r.run(|t, h, now, out| t.ready_deadline(h, w, now, out));
                    }
                }
                7 => {
                    let n = rng.below(5);
                    r.run(|t, h, now, out| t.scale(h, n, now, out));
                }
                8 => r.run(|t, h, now, out| {
                    t.reload(h, now, out);
                }),
                9 => {
                    // A stale or due timer.
                    if !r.timers.is_empty() {
                        let i = rng.below(r.timers.len());
                        let (slot, epoch, _) = r.timers.swap_remove(i);
                        r.run(|t, h, now, out| t.timer(h, slot, epoch, now, out));
                    }
                }
                _ => {
                    // Killed workers exit.
                    if let Some(w) = r.killed.pop() {
                        r.exit(w);
                    }
                }
            }
            r.advance(Duration::from_millis(rng.below(1500) as u64));
            r.fire_due();
        }
        // Quiet: no more failures; everything settles, then a reload replaces everyone.
        r.host.fail = false;
        let target = r.t.size().max(1);
        r.run(|t, h, now, out| t.scale(h, target, now, out));
        r.settle();
        let before = r.reloads.len();
        r.run(|t, h, now, out| {
            t.reload(h, now, out);
        });
        r.settle();
        assert_eq!(
            r.reloads.len(),
            before + 1,
            "seed {seed}: the final reload ended"
        );
        assert_eq!(r.reloads[before], Ok(()), "seed {seed}");
        let g = r.t.generation;
        assert_eq!(r.owners().len(), target, "seed {seed}");
        assert_eq!(r.t.members.len(), target, "seed {seed}: workers = slots");
        assert!(
            r.t.members.values().all(|m| m.generation == g),
            "seed {seed}"
        );
        // Shutting down mid-reload: the reload fails, exits only remove workers.
        r.run(|t, h, now, out| {
            t.reload(h, now, out);
        });
        r.run(|t, _, _, out| t.shut_down(out));
        assert!(r.reloads.last().is_some_and(Result::is_err), "seed {seed}");
        let all: Vec<u32> = r.t.members.keys().copied().collect();
        for w in all {
            r.exit(w);
        }
        assert!(r.t.members.is_empty(), "seed {seed}");
    }

    #[test]
    fn random_interleavings_keep_the_invariants() {
        let seeds: u64 = std::env::var("FORKLOOP_TABLE_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        for seed in 0..seeds {
            let run = std::panic::catch_unwind(|| random_run(seed, 300));
            if run.is_err() {
                panic!("random interleaving failed with seed {seed}");
            }
        }
    }
}
