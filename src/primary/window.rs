//! Accept windows (opt-in, round-robin only): under a heavy stream of new connections the
//! primary stops waking up for every one of them and accepts on a timer instead.
//!
//! Without a window, every connection that reaches an empty accept queue wakes the
//! primary, which accepts it, hands it off (waking a worker) and sleeps again: at tens of
//! thousands of connections per second most of the primary's CPU goes to those wake-ups
//! and the context switches around them, not to accepting. With windows of length `W`, once
//! connections come fast (at least [`ACCEPT_WINDOW_MIN_BATCH`] within `W`), the primary
//! stops watching the listener and accepts every `W` instead (on a timer of its own, finer
//! than the loop's milliseconds: a `timerfd` on Linux, a kqueue timer elsewhere), handing
//! each batch off in
//! as few messages as credit allows. Windows stay open while the recent windows brought at
//! least [`ACCEPT_WINDOW_MIN_BATCH`] connections per `W` on average (older windows weigh
//! less, so one quiet window between two waves of clients does not close them); below
//! that the primary goes back to waking for each connection, and waits
//! [`ACCEPT_WINDOW_HOLD_OFF_MS`] before it opens another window. While no worker has
//! credit there is no window timer either: accepting resumes, and the next window starts,
//! when a worker has room again.
//!
//! The price is latency: while windows are open, a new connection waits up to `W` in
//! the kernel's accept queue before the primary takes it (the client has connected and may
//! have sent its request; it is not refused). A closed-loop client with fewer connections
//! in flight than [`ACCEPT_WINDOW_MIN_BATCH`] never keeps windows open; one with a few more
//! can be slowed to about its concurrency per window. That is why windows are off unless
//! [`PrimaryOptions::accept_window`](super::PrimaryOptions::accept_window) asks for them —
//! the same trade as interrupt coalescing on a network card.
//!
//! Choose `W` so that a window at the rates you care about brings at least
//! [`ACCEPT_WINDOW_MIN_BATCH`] connections: at 17k connections per second 1 ms brings 17,
//! while 0.5 ms brings 8 or 9 and windows keep closing. The README has measurements.

use std::time::{Duration, Instant};

/// Connections per window length that open windows (counted while waking for each
/// connection) and keep them open (the recent windows' average).
pub const ACCEPT_WINDOW_MIN_BATCH: u32 = 8;

/// After a window brought too few connections, the primary wakes for each connection for
/// at least this long before it opens a window again.
pub const ACCEPT_WINDOW_HOLD_OFF_MS: u64 = 100;

/// The shortest accept window: shorter ones are made this long.
pub const ACCEPT_WINDOW_SHORTEST: Duration = Duration::from_micros(100);

/// The window length asked for, at least [`ACCEPT_WINDOW_SHORTEST`]; `None` (off) for
/// `None` or zero.
pub(crate) fn window_len(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
        .map(|d| d.max(ACCEPT_WINDOW_SHORTEST))
}

/// The state of one listener's accept windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AcceptWindow {
    len: Duration,
    /// When the open window started (`None`: closed; the listener is watched).
    opened: Option<Instant>,
    /// While waking for each connection: when the current count started, and the count.
    since: Option<Instant>,
    count: u32,
    /// No window opens before this time.
    hold_until: Option<Instant>,
    /// Connections and seconds of the recent windows, older ones weighing less (by
    /// [`DECAY`] per window): their ratio is the rate that keeps windows open.
    recent: (f64, f64),
    /// The open window ended while no worker had credit: no timer runs until accepting
    /// resumes.
    stalled: bool,
}

/// How much a window's count weighs one window later. Connections from clients that wait
/// for their answers come in waves, so one quiet window alone does not close them.
const DECAY: f64 = 0.75;

impl AcceptWindow {
    /// Windows of `len` (at least [`ACCEPT_WINDOW_SHORTEST`]).
    pub(crate) fn new(len: Duration) -> AcceptWindow {
        AcceptWindow {
            len: len.max(ACCEPT_WINDOW_SHORTEST),
            opened: None,
            since: None,
            count: 0,
            hold_until: None,
            recent: (0.0, 0.0),
            stalled: false,
        }
    }

    /// The window length.
    pub(crate) fn len(&self) -> Duration {
        self.len
    }

    /// Whether a window is open (the listener is not watched).
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.opened.is_some()
    }

    /// The listener woke the primary at `now` and `took` connections were handed off:
    /// whether to stop watching the listener and open a window.
    pub(crate) fn woke(&mut self, now: Instant, took: u32) -> bool {
        if self.opened.is_some() {
            return false;
        }
        if self
            .since
            .is_none_or(|t| now.saturating_duration_since(t) >= self.len)
        {
            self.since = Some(now);
            self.count = 0;
        }
        self.count = self.count.saturating_add(took);
        if self.count >= ACCEPT_WINDOW_MIN_BATCH && self.hold_until.is_none_or(|t| now >= t) {
            self.opened = Some(now);
            self.recent = (f64::from(self.count), self.len.as_secs_f64());
            return true;
        }
        false
    }

    /// Accepting resumed at `now`: whether the open window had stalled for want of credit
    /// (its next one starts now, and its timer must be armed again).
    pub(crate) fn resumed(&mut self, now: Instant) -> bool {
        if !self.stalled || self.opened.is_none() {
            return false;
        }
        self.stalled = false;
        self.opened = Some(now);
        true
    }

    /// The open window ended at `now` having handed off `took` connections; `paused`:
    /// accepting stopped because no worker had credit (the count then says nothing about
    /// demand; the window stalls until [`AcceptWindow::resumed`]). Returns whether the
    /// window stays open (`false`: watch the listener again).
    ///
    /// A busy loop may end a window late, so what counts is the rate over the recent
    /// windows (each one's weight falling by [`DECAY`] per window, the opening count
    /// counting as one full window): at least [`ACCEPT_WINDOW_MIN_BATCH`] per window
    /// length.
    pub(crate) fn ended(&mut self, now: Instant, took: u32, paused: bool) -> bool {
        let Some(opened) = self.opened else {
            return false;
        };
        if paused {
            // Not a sample of demand: leave the recent rate alone.
            self.stalled = true;
            return true;
        }
        let spent = now
            .saturating_duration_since(opened)
            .max(Duration::from_micros(1));
        let (n, t) = self.recent;
        self.recent = (n * DECAY + f64::from(took), t * DECAY + spent.as_secs_f64());
        let (n, t) = self.recent;
        let enough = n * self.len.as_secs_f64() >= f64::from(ACCEPT_WINDOW_MIN_BATCH) * t;
        if enough {
            self.opened = Some(now);
            return true;
        }
        self.opened = None;
        self.since = None;
        self.count = 0;
        self.hold_until = now.checked_add(Duration::from_millis(ACCEPT_WINDOW_HOLD_OFF_MS));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u32 = ACCEPT_WINDOW_MIN_BATCH;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn opens_only_once_enough_connections_come_within_one_window_length() {
        let t0 = Instant::now();
        let mut w = AcceptWindow::new(Duration::from_millis(2));
        // Spread out: never MIN within 2 ms.
        for t in 0..20 {
            assert!(!w.woke(at(t0, t * 2), MIN - 1), "opened at {t}");
        }
        // MIN - 1 then 1 more within the same 2 ms: open.
        let mut w = AcceptWindow::new(Duration::from_millis(2));
        assert!(!w.woke(at(t0, 100), MIN - 1));
        assert!(w.woke(at(t0, 101), 1));
        assert!(w.is_open());
        // Waking while open (should not happen) changes nothing.
        assert!(!w.woke(at(t0, 101), 100));
        assert!(w.is_open());
    }

    #[test]
    fn stays_open_while_windows_bring_enough_or_credit_ran_out() {
        let t0 = Instant::now();
        let mut w = AcceptWindow::new(Duration::from_millis(2));
        assert!(w.woke(t0, MIN));
        assert!(w.ended(at(t0, 2), MIN, false));
        assert!(w.ended(at(t0, 4), 40, false));
        // Waves: a quiet window between two full ones does not close them.
        assert!(w.ended(at(t0, 6), 0, false));
        assert!(w.ended(at(t0, 8), MIN * 2, false));
        // Too few, but only because no worker had credit: stay.
        for t in [10, 12, 14, 16] {
            assert!(w.ended(at(t0, t), 0, true));
        }
        assert!(w.is_open());
        // Credit came back long after: the next window is timed from then, so a long
        // pause does not read as a low rate.
        assert!(w.resumed(at(t0, 500)));
        assert!(w.ended(at(t0, 502), MIN, false));
        // A closed window does not resume.
        let mut closed = AcceptWindow::new(Duration::from_millis(2));
        assert!(!closed.resumed(t0));
    }

    #[test]
    fn closes_when_the_recent_rate_falls_and_holds_off_before_opening_again() {
        let t0 = Instant::now();
        let mut w = AcceptWindow::new(Duration::from_millis(1));
        assert!(w.woke(t0, MIN));
        // One connection per window: the rate falls below MIN per window within a few.
        let mut t = 0;
        while w.ended(at(t0, t + 1), 1, false) {
            t += 1;
            assert!(t < 8, "still open after {t} sparse windows");
        }
        assert!(!w.is_open());
        let closed = t + 1;
        // Plenty of connections, but inside the hold-off: keep waking for each.
        assert!(!w.woke(at(t0, closed + 1), MIN * 4));
        assert!(!w.woke(at(t0, closed + ACCEPT_WINDOW_HOLD_OFF_MS - 1), MIN * 4));
        // After it: opens again.
        assert!(w.woke(at(t0, closed + ACCEPT_WINDOW_HOLD_OFF_MS), MIN));
        // A window that was not open does not end.
        let mut idle = AcceptWindow::new(Duration::from_millis(5));
        assert!(!idle.ended(t0, 100, false));
    }

    #[test]
    fn a_late_window_is_judged_by_its_rate() {
        let t0 = Instant::now();
        let mut w = AcceptWindow::new(Duration::from_millis(1));
        assert!(w.woke(t0, MIN));
        // The loop ended the window 10 lengths late: MIN connections in it are a low rate.
        assert!(!w.ended(at(t0, 11), MIN, false));
        // Windows that end early need proportionally fewer.
        let mut w = AcceptWindow::new(Duration::from_millis(4));
        assert!(w.woke(t0, MIN));
        for t in 1..20 {
            assert!(w.ended(at(t0, t), MIN / 4 + 1, false), "closed at {t}");
        }
    }

    #[test]
    fn lengths_are_kept_down_to_the_shortest() {
        let shortest = ACCEPT_WINDOW_SHORTEST;
        assert_eq!(AcceptWindow::new(Duration::ZERO).len(), shortest);
        assert_eq!(window_len(None), None);
        assert_eq!(window_len(Some(Duration::ZERO)), None);
        assert_eq!(window_len(Some(Duration::from_nanos(1))), Some(shortest));
        let half = Duration::from_micros(500);
        assert_eq!(window_len(Some(half)), Some(half));
        assert_eq!(AcceptWindow::new(half).len(), half);
    }
}
