//! How many hand-offs this worker can hold: its descriptor headroom, as credit.
//!
//! Every connection the primary hands off is a descriptor the worker must install when it
//! reads the `NewConn`. With its descriptor table full, the kernel cannot, and closes the
//! connection (the channel survives that and accounts for it, but the client is lost). So
//! the worker's credit also reflects its headroom, and it never asks for more than it can
//! hold:
//!
//! * **headroom** `h` = soft `RLIMIT_NOFILE` − descriptors open − [`fd_margin`]. The margin
//!   keeps descriptors for the worker's own work (files, outgoing connections, a shared
//!   listener's accepts) and for one message's descriptors more than the credit allows.
//! * **reading**: the credit counts hand-offs the worker has not *read*; the primary sends
//!   more as soon as it sees them read. So one drain of the channel reads messages
//!   carrying at most the headroom less one message's worth, hands them to their
//!   servers, reports its credit, and only then reads on; otherwise a worker reading
//!   while the primary refills could read far past its headroom before handling any.
//!   With no more headroom than one message, the worker does not read its channel at
//!   all (so the primary, seeing nothing read, sends nothing more): it looks again every
//!   credit-watch period and reads once connections have closed, or after
//!   [`READ_STALL_MAX_MS`] at the latest (one message), so control messages still flow.
//! * **first**: a hand-off server tells the primary its credit as soon as it listens, so
//!   the first burst is already within the headroom (the primary's default credit could
//!   be more).
//! * **credit** `R`: what the primary was last told. The worker keeps `R ≤ h / 2`: when
//!   `h` falls below `2R` it reports `R = h / 4`, so even hand-offs the primary sent
//!   before hearing (at most the old `R`) still fit, and reports come only when the
//!   headroom halves (a handful per descent, not one per connection). When headroom grows
//!   back (connections closed) to `h / 4 ≥ 2R` it reports again. At `h = 0` it reports 0:
//!   the primary stops handing to it and clients wait in the kernel's backlog, and the
//!   worker's credit watch reports again once connections close.
//!
//! **Counting open descriptors cheaply.** Counting the process's descriptors costs a
//! directory read of the descriptor table (`/proc/self/fd`), far too much per connection.
//! Nearly every descriptor a worker holds is a handle on its loop, which the loop counts in
//! O(1) ([`EventLoop::open_handles`]). So the worker counts once, when it attaches (no
//! hand-off pending), how many descriptors it holds beyond its loop handles — the
//! baseline — and estimates `open = baseline + loop handles`. The baseline is counted
//! again only near the limit (estimated headroom under a quarter of the limit), at most
//! every [`RECOUNT_MS`], so a worker that opens descriptors outside its loop is caught up
//! with where it matters. A count runs in the loop's check phase, never while hand-offs
//! read from the channel are still being taken (they are open but not handles yet, and
//! would count as baseline). The limit itself is read again at each count (a process may
//! change it).
//!
//! A hand-off that arrives anyway when the estimate says no room (the primary had not
//! heard yet) is kept: its descriptor is already in the table, and giving it back would
//! only move it into the primary's.

use crate::rt::EventLoop;
use crate::sys;

/// Least time (ms) between two counts of the descriptor table while near the limit.
pub const RECOUNT_MS: u64 = 250;

/// How long (ms) after a credit report the worker allows for the primary to hear it
/// before it counts on the primary going by it (the margin covers a primary slower than
/// that).
pub const HEARD_MS: u64 = 20;

/// Longest time (ms) a worker out of headroom leaves its channel unread: then it reads one
/// message anyway, so the primary's control messages (heartbeats, disconnect) wait at
/// most this long. What the primary sent before it heard credit 0 is all there can be,
/// and the margin holds it.
pub const READ_STALL_MAX_MS: u64 = 1000;

/// Descriptors kept free beyond the hand-offs: a sixteenth of the limit, at least 16 (one
/// `NewConn` message's worth, [`HAND_OFF_BATCH`](crate::primary::HAND_OFF_BATCH)) and at
/// most 64 (16 up to a limit of 256, 64 from a limit of 1024 on).
pub fn fd_margin(limit: usize) -> usize {
    (limit / 16).clamp(16, 64)
}

/// A worker's descriptor headroom and the credit it stands for (see the module docs).
#[derive(Debug)]
pub(super) struct FdBudget {
    /// Soft `RLIMIT_NOFILE` at the last count (`None`: unlimited).
    limit: Option<usize>,
    /// Descriptors open beyond the loop's handles at the last count.
    baseline: usize,
    /// When the table was last counted (loop ms), if ever.
    counted_at: Option<u64>,
    /// A count is scheduled for the check phase.
    recount_scheduled: bool,
    /// Credit last reported to the primary on account of descriptors (`u32::MAX`: none).
    reported: u32,
    /// The report before that: the primary may not have heard the last one yet.
    previous: u32,
    /// When the last report was made (loop ms).
    reported_at: u64,
}

impl Default for FdBudget {
    fn default() -> Self {
        FdBudget {
            limit: None,
            baseline: 0,
            counted_at: None,
            recount_scheduled: false,
            reported: u32::MAX,
            previous: u32::MAX,
            reported_at: 0,
        }
    }
}

impl FdBudget {
    /// Counts the descriptor table and reads the limit again. Only where no descriptor
    /// received is waiting to become a loop handle (at attach; in the check phase).
    pub(super) fn count(&mut self, lp: &EventLoop) {
        self.counted_at = Some(lp.now());
        self.recount_scheduled = false;
        self.limit = match sys::fd_limit() {
            Ok(l) => l,
            Err(e) => {
                log::warn!("cannot read RLIMIT_NOFILE, descriptor headroom not tracked: {e}");
                None
            }
        };
        if self.limit.is_none() {
            return;
        }
        match sys::open_fd_count() {
            Ok(open) => self.baseline = open.saturating_sub(lp.open_handles()),
            Err(e) => log::warn!("cannot count open descriptors: {e}"),
        }
    }

    /// Whether a count is due (near the limit, none for [`RECOUNT_MS`]); if so it is
    /// taken as scheduled, and the caller runs [`FdBudget::count`] in the check phase.
    /// Far from the limit, the limit alone is read again every [`RECOUNT_MS`] (one
    /// `getrlimit`), so a lowered limit is noticed.
    pub(super) fn recount_due(&mut self, lp: &EventLoop) -> bool {
        let Some(at) = self.counted_at else {
            return false;
        };
        if self.recount_scheduled || lp.now().saturating_sub(at) < RECOUNT_MS {
            return false;
        }
        let near = |b: &FdBudget| {
            b.limit
                .is_some_and(|l| (b.estimate(lp) as usize).saturating_mul(4) < l)
        };
        if !near(self) {
            self.counted_at = Some(lp.now());
            self.limit = sys::fd_limit().unwrap_or(self.limit);
            if !near(self) {
                return false;
            }
        }
        self.recount_scheduled = true;
        true
    }

    /// How many descriptors one drain of the channel may bring in before the messages
    /// read are handled: the headroom less one message's worth (a drain stops after the
    /// message that reaches the budget); `None` when there is no more room than that: the
    /// channel is not read (the primary, seeing nothing read, sends nothing more) until
    /// connections close or [`READ_STALL_MAX_MS`] passed. A message brings at most the
    /// credit the primary knows (the last report, or for [`HEARD_MS`] after it, the one
    /// before, which the primary may still go by), and never more than [`HAND_OFF_BATCH`].
    ///
    /// [`HAND_OFF_BATCH`]: crate::primary::HAND_OFF_BATCH
    pub(super) fn read_budget(&self, lp: &EventLoop) -> Option<usize> {
        let heard = lp.now().saturating_sub(self.reported_at) >= HEARD_MS;
        let known = if heard {
            self.reported
        } else {
            self.reported.max(self.previous)
        };
        let message = known.min(crate::primary::HAND_OFF_BATCH) as usize;
        match self.estimate(lp) {
            u32::MAX => Some(usize::MAX),
            h if h as usize > message => Some(h as usize - message),
            _ => None,
        }
    }

    fn estimate(&self, lp: &EventLoop) -> u32 {
        let Some(limit) = self.limit else {
            return u32::MAX;
        };
        let open = self.baseline + lp.open_handles();
        let h = limit.saturating_sub(open + fd_margin(limit));
        u32::try_from(h).unwrap_or(u32::MAX)
    }

    /// The credit the descriptors allow now, and whether the primary must hear it (it
    /// fell below what it was told, or grew well beyond it).
    pub(super) fn credit(&mut self, lp: &EventLoop) -> (u32, bool) {
        let h = self.estimate(lp);
        if h == u32::MAX {
            let changed = self.reported != u32::MAX;
            self.reported = u32::MAX;
            return (u32::MAX, changed);
        }
        let r = self.reported;
        let shrank = r > 0 && h / 2 < r;
        let grew = h / 4 > 0 && h / 4 >= r.saturating_mul(2);
        if shrank || grew {
            self.previous = self.reported;
            self.reported_at = lp.now();
            self.reported = h / 4;
            return (self.reported, true);
        }
        (r, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_sixteenth_of_the_limit_within_bounds() {
        assert_eq!(fd_margin(64), 16);
        assert_eq!(fd_margin(512), 32);
        assert_eq!(fd_margin(1024), 64);
        assert_eq!(fd_margin(1 << 20), 64);
    }
}
