//! Node's timers: one list per duration, lists ordered by `(expiry, list id)`.
//!
//! This mirrors Node's `lib/internal/timers.js` and [rules 6–9 and
//! 12–14](crate::rt#ordering-rules):
//!
//! * a delay outside `[1, 2^31−1]` ms (or NaN) becomes 1 ms; the list key is the delay
//!   truncated to whole milliseconds;
//! * each duration has one list in creation order (an intrusive doubly linked list through
//!   the timer slots, so clearing is O(1)); start times in a list never decrease;
//! * the lists are kept in a `BTreeSet` of `(expiry, list id, duration)`; a list gets a fresh
//!   id whenever its expiry changes, which is how Node breaks ties;
//! * [`EventLoop::run_timers`] compares against one `now` for the whole phase and runs a due
//!   list until it reaches a timer that is not due, before looking at the next list;
//! * an interval is re-appended with the time taken just before its callback as its start.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use super::EventLoop;
use super::id::{Key, Slots, define_id};

define_id! {
    /// A timer created by [`EventLoop::set_timeout`] or [`EventLoop::set_interval`].
    TimerId
}

/// The largest delay Node accepts (`TIMEOUT_MAX`, 2^31−1 ms); anything above becomes 1 ms.
pub const TIMEOUT_MAX: u64 = 2_147_483_647;

/// A timer delay, coerced like Node's `after *= 1` (rule 6).
///
/// Implemented for the integer types, `f64`/`f32` (fractions are truncated when the list is
/// chosen; NaN becomes 1) and [`Duration`].
pub trait Delay {
    /// The delay in milliseconds, before coercion.
    fn into_ms(self) -> f64;
}

macro_rules! delay_int {
    ($($t:ty),*) => {$(
        impl Delay for $t {
            fn into_ms(self) -> f64 {
                self as f64
            }
        }
    )*};
}
delay_int!(i32, i64, u32, u64, usize, isize, f32, f64);

impl Delay for Duration {
    fn into_ms(self) -> f64 {
        self.as_secs_f64() * 1000.0
    }
}

/// Node's delay coercion: anything not in `[1, TIMEOUT_MAX]` becomes 1; then truncate.
pub fn coerce_delay(ms: f64) -> u64 {
    if (1.0..=TIMEOUT_MAX as f64).contains(&ms) {
        ms as u64
    } else {
        1
    }
}

type OnceCb = Box<dyn FnOnce(&mut EventLoop)>;
type RepeatCb = Box<dyn FnMut(&mut EventLoop)>;

enum Cb {
    Once(OnceCb),
    Repeat(RepeatCb),
    /// The interval's callback is out of its slot while it runs.
    Running,
}

const NIL: u32 = u32::MAX;

struct Timer {
    cb: Cb,
    duration: u64,
    start: u64,
    refed: bool,
    linked: bool,
    prev: u32,
    next: u32,
}

struct List {
    head: u32,
    tail: u32,
    expiry: u64,
    id: u64,
}

/// Multiplicative hasher for the `u64` duration keys (SipHash is wasted on them).
#[derive(Default)]
pub(crate) struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// All timers of one loop.
#[derive(Default)]
pub(crate) struct Timers {
    slots: Slots<Timer>,
    lists: HashMap<u64, List, BuildHasherDefault<U64Hasher>>,
    queue: BTreeSet<(u64, u64, u64)>,
    next_list_id: u64,
    /// Number of ref'd live timers (Node's `refCount` toggling the timer handle's ref).
    pub(crate) refed: usize,
}

impl Timers {
    fn add(&mut self, cb: Cb, duration: u64, start: u64) -> Key {
        let key = self.slots.insert(Timer {
            cb,
            duration,
            start,
            refed: true,
            linked: false,
            prev: NIL,
            next: NIL,
        });
        self.refed += 1;
        self.link(key.idx, start);
        key
    }

    fn fresh_list_id(&mut self) -> u64 {
        self.next_list_id += 1;
        self.next_list_id
    }

    /// Appends the timer at `idx` to its duration's list with start time `start`.
    fn link(&mut self, idx: u32, start: u64) {
        let Some(t) = self.slots.at_mut(idx) else {
            return;
        };
        let duration = t.duration;
        t.start = start;
        t.linked = true;
        t.next = NIL;
        let tail = match self.lists.get_mut(&duration) {
            Some(list) => {
                let tail = list.tail;
                list.tail = idx;
                tail
            }
            None => {
                let id = self.fresh_list_id();
                let expiry = start + duration;
                self.lists.insert(
                    duration,
                    List {
                        head: idx,
                        tail: idx,
                        expiry,
                        id,
                    },
                );
                self.queue.insert((expiry, id, duration));
                NIL
            }
        };
        if let Some(t) = self.slots.at_mut(idx) {
            t.prev = tail;
        }
        if tail != NIL
            && let Some(p) = self.slots.at_mut(tail)
        {
            p.next = idx;
        }
    }

    /// Removes the timer at `idx` from its list; drops the list if it became empty.
    fn unlink(&mut self, idx: u32) {
        let Some(t) = self.slots.at_mut(idx) else {
            return;
        };
        if !t.linked {
            return;
        }
        t.linked = false;
        let (prev, next, duration) = (t.prev, t.next, t.duration);
        t.prev = NIL;
        t.next = NIL;
        if let Some(p) = self.slots.at_mut(prev) {
            p.next = next;
        }
        if let Some(n) = self.slots.at_mut(next) {
            n.prev = prev;
        }
        let Some(list) = self.lists.get_mut(&duration) else {
            return;
        };
        if list.head == idx {
            list.head = next;
        }
        if list.tail == idx {
            list.tail = prev;
        }
        if list.head == NIL {
            let key = (list.expiry, list.id, duration);
            self.queue.remove(&key);
            self.lists.remove(&duration);
        }
    }

    /// Clears a timer: unlinks it and forgets it. Returns whether the id was live.
    fn clear(&mut self, key: Key) -> bool {
        let Some(t) = self.slots.get(key) else {
            return false;
        };
        let refed = t.refed;
        self.unlink(key.idx);
        self.slots.remove(key);
        if refed {
            self.refed -= 1;
        }
        true
    }

    fn set_ref(&mut self, key: Key, on: bool) {
        if let Some(t) = self.slots.get_mut(key)
            && t.refed != on
        {
            t.refed = on;
            if on {
                self.refed += 1;
            } else {
                self.refed -= 1;
            }
        }
    }

    /// The earliest list expiry, ref'd timers or not (libuv's heap holds every timer).
    pub(crate) fn next_expiry(&self) -> Option<u64> {
        self.queue.first().map(|e| e.0)
    }

    /// Number of live timers.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Gives the list a new expiry and id (Node's `listOnTimeout` when the head is not due).
    fn reschedule(&mut self, duration: u64, expiry: u64) {
        let id = self.fresh_list_id();
        if let Some(list) = self.lists.get_mut(&duration) {
            self.queue.remove(&(list.expiry, list.id, duration));
            list.expiry = expiry;
            list.id = id;
            self.queue.insert((expiry, id, duration));
        }
    }
}

impl EventLoop {
    /// Runs `cb` once after `delay` ms (Node's `setTimeout`; delay coercion per [rule 6](crate::rt#ordering-rules)).
    ///
    /// The start time is a fresh clock reading, as in Node.
    pub fn set_timeout<F>(&mut self, delay: impl Delay, cb: F) -> TimerId
    where
        F: FnOnce(&mut EventLoop) + 'static,
    {
        let ms = coerce_delay(delay.into_ms());
        self.update_time();
        TimerId(self.timers.add(Cb::Once(Box::new(cb)), ms, self.now))
    }

    /// Runs `cb` every `delay` ms until cleared (Node's `setInterval`; [rule 12](crate::rt#ordering-rules)).
    pub fn set_interval<F>(&mut self, delay: impl Delay, cb: F) -> TimerId
    where
        F: FnMut(&mut EventLoop) + 'static,
    {
        let ms = coerce_delay(delay.into_ms());
        self.update_time();
        TimerId(self.timers.add(Cb::Repeat(Box::new(cb)), ms, self.now))
    }

    /// Cancels a timeout or interval at once, even one already due in the running timers
    /// phase or the interval currently running ([rule 13](crate::rt#ordering-rules)). Returns whether the id was live.
    pub fn clear_timeout(&mut self, id: TimerId) -> bool {
        self.timers.clear(id.0)
    }

    /// Same as [`EventLoop::clear_timeout`] (Node's `clearInterval`).
    pub fn clear_interval(&mut self, id: TimerId) -> bool {
        self.timers.clear(id.0)
    }

    /// Restarts a pending timer from a fresh "now", keeping its id, duration and callback
    /// (Node's `timeout.refresh()`); it moves to the end of its duration list. Returns
    /// whether the id was live. Unlike Node, a timeout that already fired cannot be re-armed.
    pub fn refresh_timer(&mut self, id: TimerId) -> bool {
        if self.timers.slots.get(id.0).is_none() {
            return false;
        }
        self.update_time();
        self.timers.unlink(id.0.idx);
        self.timers.link(id.0.idx, self.now);
        true
    }

    /// Whether the timer is still pending (or is the interval currently running).
    pub fn timer_active(&self, id: TimerId) -> bool {
        self.timers.slots.get(id.0).is_some()
    }

    pub(crate) fn set_timer_ref(&mut self, id: TimerId, on: bool) {
        self.timers.set_ref(id.0, on);
    }

    pub(crate) fn timer_has_ref(&self, id: TimerId) -> bool {
        self.timers.slots.get(id.0).is_some_and(|t| t.refed)
    }

    /// The timers phase (Node's `processTimers(now)`): runs every due list against one `now`.
    pub(super) fn run_timers(&mut self) {
        let now = self.now;
        while let Some(&(expiry, list_id, duration)) = self.timers.queue.first() {
            if expiry > now || self.halted() {
                return;
            }
            self.run_timer_list(duration, list_id, now);
        }
    }

    /// Node's `listOnTimeout`: runs the list's due timers in order; stops at the first timer
    /// that is not due and moves the list to `max(start + duration, now + 1)`.
    fn run_timer_list(&mut self, duration: u64, list_id: u64, now: u64) {
        while !self.halted() {
            let Some(list) = self.timers.lists.get(&duration) else {
                return;
            };
            if list.id != list_id {
                return;
            }
            let head = list.head;
            let Some(key) = self.timers.slots.key_at(head) else {
                return;
            };
            let start = self.timers.slots.get(key).map_or(0, |t| t.start);
            if now.saturating_sub(start) < duration || start > now {
                let expiry = (start + duration).max(now + 1);
                self.timers.reschedule(duration, expiry);
                return;
            }
            self.timers.unlink(head);
            self.fire_timer(key);
        }
    }

    fn fire_timer(&mut self, key: Key) {
        let Some(t) = self.timers.slots.get_mut(key) else {
            return;
        };
        match std::mem::replace(&mut t.cb, Cb::Running) {
            Cb::Once(cb) => {
                self.timers.clear(key);
                self.invoke(cb);
            }
            Cb::Repeat(mut cb) => {
                self.update_time();
                let start = self.now;
                self.invoke(|lp| cb(lp));
                if let Some(t) = self.timers.slots.get_mut(key) {
                    t.cb = Cb::Repeat(cb);
                    self.timers.unlink(key.idx);
                    self.timers.link(key.idx, start);
                }
            }
            Cb::Running => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coercion_matches_node() {
        assert_eq!(coerce_delay(0.0), 1);
        assert_eq!(coerce_delay(-5.0), 1);
        assert_eq!(coerce_delay(f64::NAN), 1);
        assert_eq!(coerce_delay(1.9), 1);
        assert_eq!(coerce_delay(2.5), 2);
        assert_eq!(coerce_delay(TIMEOUT_MAX as f64), TIMEOUT_MAX);
        assert_eq!(coerce_delay(TIMEOUT_MAX as f64 + 1.0), 1);
        assert_eq!(coerce_delay(Duration::from_millis(20).into_ms()), 20);
    }

    #[test]
    fn lists_are_created_and_dropped() {
        let mut t = Timers::default();
        let a = t.add(Cb::Running, 5, 10);
        let b = t.add(Cb::Running, 5, 11);
        let c = t.add(Cb::Running, 7, 11);
        assert_eq!(t.lists.len(), 2);
        assert_eq!(t.next_expiry(), Some(15));
        assert!(t.clear(a));
        assert!(!t.clear(a));
        assert_eq!(t.lists[&5].head, b.idx);
        assert!(t.clear(b));
        assert_eq!(t.next_expiry(), Some(18));
        assert!(t.clear(c));
        assert!(t.queue.is_empty() && t.lists.is_empty() && t.refed == 0);
    }
}
