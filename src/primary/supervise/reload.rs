//! Rolling reload and scaling; the state machine in `table.rs` does the bookkeeping.

use super::{ReloadError, Supervisor};
use crate::rt::EventLoop;

impl Supervisor {
    /// Replaces every worker through the retire path, `concurrency` at a time; listeners
    /// stay open; empty slots (waiting for a restart, or with a tripped breaker) are
    /// filled at once. `done` gets `Ok(())` once every slot serves a ready worker of the
    /// new generation, or `Err` (the workers not yet replaced keep serving) if a
    /// replacement misses its deadline or dies, a slot's breaker trips, the supervisor
    /// shuts down, or there is no slot at all. A reload asked for while one runs joins it.
    pub fn reload<F>(&self, lp: &mut EventLoop, done: F)
    where
        F: FnOnce(&mut EventLoop, Result<(), ReloadError>) + 'static,
    {
        let fresh = {
            let mut inner = self.0.borrow_mut();
            inner.reload_done.push(Box::new(done));
            !inner.table.reloading() && !inner.table.down
        };
        if fresh && let Some(n) = &self.0.borrow().notifier {
            n.reloading();
            n.status("reloading");
        }
        self.apply(lp, |t, host, now, out| {
            t.reload(host, now, out);
        });
    }

    /// Sets the number of workers: forks new slots, or retires the highest slots without
    /// replacement (they drain first; a replacement booting in them is killed). Empty
    /// slots are filled at once (a tripped breaker goes half-open for it).
    pub fn scale(&self, lp: &mut EventLoop, n: usize) {
        self.apply(lp, |t, host, now, out| t.scale(host, n, now, out));
    }

    /// Active slots (the target number of workers).
    pub fn size(&self) -> usize {
        self.0.borrow().table.size()
    }
}
