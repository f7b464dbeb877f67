//! The idle, prepare and check phases: immediates plus generic per-phase watchers
//! (libuv's `loop-watcher.c`).
//!
//! Immediates follow Node's `processImmediate` ([rules 10, 13 and
//! 16](crate::rt#ordering-rules)): the check phase detaches the queue and runs only that snapshot, FIFO; immediates
//! queued meanwhile run in the next iteration; a cleared immediate is skipped even if it is
//! in the running batch. A ref'd immediate keeps the loop alive and makes poll non-blocking
//! (Node's idle handle); an unref'd one does neither but still runs if the loop iterates.
//!
//! Watchers are libuv idle/prepare/check handles: called once per iteration in their phase,
//! the most recently started first. Check watchers run before the immediates (Node's own
//! immediate check handle is the first one started, so it runs last).

use std::collections::VecDeque;

use super::EventLoop;
use super::id::{Slots, define_id};
use super::tasks::Job;

define_id! {
    /// An immediate queued by [`EventLoop::set_immediate`].
    ImmediateId
}

define_id! {
    /// An idle, prepare or check watcher added by [`EventLoop::add_watcher`].
    WatcherId
}

/// The loop phase a watcher runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Every iteration, after pending callbacks. An active idle watcher makes poll
    /// non-blocking.
    Idle,
    /// Every iteration, right before poll.
    Prepare,
    /// Every iteration, right after poll (before the immediates).
    Check,
}

struct Immediate {
    cb: Option<Job>,
    refed: bool,
}

/// Immediates queued for the next check phase.
#[derive(Default)]
pub(crate) struct Immediates {
    slots: Slots<Immediate>,
    queue: VecDeque<ImmediateId>,
    spare: VecDeque<ImmediateId>,
    /// Number of queued ref'd immediates.
    pub(crate) refed: usize,
}

type WatchCb = Box<dyn FnMut(&mut EventLoop)>;

struct Watcher {
    phase: Phase,
    cb: Option<WatchCb>,
    refed: bool,
}

/// Idle, prepare and check watchers.
#[derive(Default)]
pub(crate) struct Watchers {
    slots: Slots<Watcher>,
    /// Per phase, in start order (run newest first).
    lists: [Vec<WatcherId>; 3],
    scratch: Vec<WatcherId>,
    /// Number of ref'd watchers (active handles for liveness).
    pub(crate) refed: usize,
}

impl Watchers {
    /// Whether an idle watcher is active (poll must not block).
    pub(crate) fn idle_active(&self) -> bool {
        !self.lists[0].is_empty()
    }
}

fn phase_index(p: Phase) -> usize {
    match p {
        Phase::Idle => 0,
        Phase::Prepare => 1,
        Phase::Check => 2,
    }
}

impl EventLoop {
    /// Queues `cb` for the check phase (Node's `setImmediate`; rules 10, 11).
    pub fn set_immediate<F>(&mut self, cb: F) -> ImmediateId
    where
        F: FnOnce(&mut EventLoop) + 'static,
    {
        let key = self.imm.slots.insert(Immediate {
            cb: Some(Box::new(cb)),
            refed: true,
        });
        self.imm.refed += 1;
        let id = ImmediateId(key);
        self.imm.queue.push_back(id);
        id
    }

    /// Cancels an immediate at once, even inside the running batch ([rule 13](crate::rt#ordering-rules)). Returns
    /// whether the id was still queued.
    pub fn clear_immediate(&mut self, id: ImmediateId) -> bool {
        match self.imm.slots.remove(id.0) {
            Some(imm) => {
                if imm.refed {
                    self.imm.refed -= 1;
                }
                true
            }
            None => false,
        }
    }

    pub(crate) fn set_immediate_ref(&mut self, id: ImmediateId, on: bool) {
        if let Some(imm) = self.imm.slots.get_mut(id.0)
            && imm.refed != on
        {
            imm.refed = on;
            if on {
                self.imm.refed += 1;
            } else {
                self.imm.refed -= 1;
            }
        }
    }

    pub(crate) fn immediate_has_ref(&self, id: ImmediateId) -> bool {
        self.imm.slots.get(id.0).is_some_and(|i| i.refed)
    }

    /// Node's `processImmediate`: runs the snapshot of immediates queued before the phase.
    pub(super) fn run_immediates(&mut self) {
        if self.imm.queue.is_empty() || self.halted() {
            return;
        }
        std::mem::swap(&mut self.imm.queue, &mut self.imm.spare);
        let mut batch = std::mem::take(&mut self.imm.spare);
        while let Some(id) = batch.pop_front() {
            let Some(imm) = self.imm.slots.remove(id.0) else {
                continue;
            };
            if imm.refed {
                self.imm.refed -= 1;
            }
            if let Some(cb) = imm.cb {
                self.invoke(cb);
            }
            if self.halted() {
                batch.clear();
            }
        }
        self.imm.spare = batch;
    }

    /// Adds a libuv-style idle, prepare or check watcher, called once per iteration in its
    /// phase until removed. It is ref'd (keeps the loop alive) until unref'd.
    pub fn add_watcher<F>(&mut self, phase: Phase, cb: F) -> WatcherId
    where
        F: FnMut(&mut EventLoop) + 'static,
    {
        let id = WatcherId(self.watchers.slots.insert(Watcher {
            phase,
            cb: Some(Box::new(cb)),
            refed: true,
        }));
        self.watchers.refed += 1;
        self.watchers.lists[phase_index(phase)].push(id);
        id
    }

    /// Stops and forgets a watcher. Returns whether the id was live.
    pub fn remove_watcher(&mut self, id: WatcherId) -> bool {
        let Some(w) = self.watchers.slots.remove(id.0) else {
            return false;
        };
        if w.refed {
            self.watchers.refed -= 1;
        }
        self.watchers.lists[phase_index(w.phase)].retain(|&x| x != id);
        true
    }

    pub(crate) fn set_watcher_ref(&mut self, id: WatcherId, on: bool) {
        if let Some(w) = self.watchers.slots.get_mut(id.0)
            && w.refed != on
        {
            w.refed = on;
            if on {
                self.watchers.refed += 1;
            } else {
                self.watchers.refed -= 1;
            }
        }
    }

    pub(crate) fn watcher_has_ref(&self, id: WatcherId) -> bool {
        self.watchers.slots.get(id.0).is_some_and(|w| w.refed)
    }

    /// Calls the watchers of `phase`, newest first; ones added meanwhile wait.
    pub(super) fn run_watchers(&mut self, phase: Phase) {
        let list = &self.watchers.lists[phase_index(phase)];
        if list.is_empty() || self.halted() {
            return;
        }
        let mut batch = std::mem::take(&mut self.watchers.scratch);
        batch.extend(list.iter().rev());
        for &id in &batch {
            let Some(mut cb) = self.watchers.slots.get_mut(id.0).and_then(|w| w.cb.take()) else {
                continue;
            };
            self.invoke(|lp| cb(lp));
            if let Some(w) = self.watchers.slots.get_mut(id.0) {
                w.cb = Some(cb);
            }
            if self.halted() {
                break;
            }
        }
        batch.clear();
        self.watchers.scratch = batch;
    }
}
