//! The loop's millisecond clock.
//!
//! The loop caches "now" in whole milliseconds and refreshes it only where libuv and Node do:
//! on entry to a run, right after every poll, before
//! the timers phase, and when a timer is created or refreshed. [`Clock`] hides the source so
//! tests can use [`FakeClock`], which only moves when told to (or, in auto-advance mode, when
//! the loop would otherwise sleep until a timer).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A monotonic millisecond time source for an [`EventLoop`](crate::rt::EventLoop).
pub trait Clock: fmt::Debug {
    /// Milliseconds since an arbitrary fixed origin; never decreases.
    fn now_ms(&self) -> u64;

    /// Called when the loop is about to block for `timeout_ms` waiting for a timer. A virtual
    /// clock may jump forward by that much and return `true`, and the loop then polls without
    /// blocking. Real clocks return `false` (the default).
    fn skip(&self, timeout_ms: u64) -> bool {
        let _ = timeout_ms;
        false
    }
}

/// The real monotonic clock (`CLOCK_MONOTONIC` through [`Instant`]), truncated to whole
/// milliseconds like libuv's loop time.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose zero is now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // Starts at 1 so that a timer created at loop start never has start time 0 ambiguity.
        let d = self.origin.elapsed();
        d.as_secs() * 1000 + u64::from(d.subsec_millis()) + 1
    }
}

/// A clock moved by hand, for deterministic tests. Clones share the same time.
///
/// With [`FakeClock::auto_advance`] on, the loop jumps the clock to the next timer instead
/// of sleeping, so timer-heavy tests run instantly and in a fixed order.
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    inner: Arc<FakeInner>,
}

#[derive(Debug, Default)]
struct FakeInner {
    now: AtomicU64,
    auto: AtomicBool,
}

impl FakeClock {
    /// A fake clock at `start_ms`, not auto-advancing.
    pub fn new(start_ms: u64) -> FakeClock {
        let c = FakeClock::default();
        c.inner.now.store(start_ms, Ordering::Relaxed);
        c
    }

    /// Moves the clock forward by `ms`. Models a callback that takes `ms` to run.
    pub fn advance(&self, ms: u64) {
        self.inner.now.fetch_add(ms, Ordering::Relaxed);
    }

    /// Sets whether the loop may jump the clock to its next timer instead of sleeping.
    pub fn auto_advance(&self, on: bool) {
        self.inner.auto.store(on, Ordering::Relaxed);
    }

    /// The current fake time in milliseconds.
    pub fn get(&self) -> u64 {
        self.inner.now.load(Ordering::Relaxed)
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.get()
    }

    fn skip(&self, timeout_ms: u64) -> bool {
        if self.inner.auto.load(Ordering::Relaxed) {
            self.advance(timeout_ms);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let c = FakeClock::new(5);
        assert_eq!(c.now_ms(), 5);
        assert!(!c.skip(10));
        c.advance(3);
        assert_eq!(c.now_ms(), 8);
        c.auto_advance(true);
        assert!(c.skip(10));
        assert_eq!(c.clone().now_ms(), 18);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock::new();
        let a = c.now_ms();
        assert!(c.now_ms() >= a);
    }
}
