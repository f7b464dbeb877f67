//! Event-loop lag: a sampling timer fires every [`SAMPLE`]; how late it fires is the lag.
//! A blocked loop shows no lag here (its timer never runs) but misses heartbeats, which the
//! primary notices; a loop that is merely slow reports its lag with every heartbeat.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::rt::EventLoop;

/// How often the lag is sampled.
pub const SAMPLE: Duration = Duration::from_millis(100);

/// The last measured lag, decaying: each sample keeps the larger of the new lateness and
/// half the previous value, so one slow callback is visible for a few samples.
#[derive(Debug, Default)]
pub struct LagMeter {
    lag: Cell<Duration>,
    last: Cell<Option<Instant>>,
}

impl LagMeter {
    /// The current lag.
    pub fn get(&self) -> Duration {
        self.lag.get()
    }

    fn sample(&self, now: Instant) {
        if let Some(prev) = self.last.get() {
            let late = now.saturating_duration_since(prev).saturating_sub(SAMPLE);
            self.lag.set(late.max(self.lag.get() / 2));
        }
        self.last.set(Some(now));
    }
}

/// Starts sampling on `lp` (the timer does not keep the loop alive).
pub(crate) fn start(lp: &mut EventLoop, meter: std::rc::Rc<LagMeter>) {
    meter.sample(Instant::now());
    let t = lp.set_interval(SAMPLE, move |_| meter.sample(Instant::now()));
    lp.unref(t);
}
