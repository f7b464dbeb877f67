//! Health: heartbeats, loop lag, quarantine and replacing stuck workers.

use std::time::{Duration, Instant};

use super::{Cause, Supervisor, SupervisorEvent};
use crate::rt::EventLoop;

impl Supervisor {
    pub(super) fn on_pong(&self, lp: &mut EventLoop, worker: u32, lag_us: u64) {
        let lag = Duration::from_micros(lag_us);
        let change = {
            let mut inner = self.0.borrow_mut();
            let q = inner
                .opts
                .health
                .map_or(Duration::MAX, |h| h.quarantine_lag);
            let Some(m) = inner.table.members.get_mut(&worker) else {
                return;
            };
            m.last_pong = Instant::now();
            m.lag = Some(lag);
            if !m.quarantined && lag > q && m.retiring.is_none() {
                m.quarantined = true;
                Some(true)
            } else if m.quarantined && lag <= q / 2 {
                m.quarantined = false;
                Some(false)
            } else {
                None
            }
        };
        let p = self.primary();
        match change {
            Some(true) => {
                p.set_routing(lp, worker, false);
                self.emit(lp, SupervisorEvent::Quarantined { worker, lag });
            }
            Some(false) => {
                p.set_routing(lp, worker, true);
                self.emit(lp, SupervisorEvent::Released { worker });
            }
            None => {}
        }
    }

    pub(super) fn health_tick(&self, lp: &mut EventLoop) {
        let now = Instant::now();
        let (p, opts, workers, seq) = {
            let mut inner = self.0.borrow_mut();
            inner.ping_seq += 1;
            let workers: Vec<(u32, bool, Instant, bool)> = inner
                .table
                .members
                .iter()
                .map(|(w, m)| (*w, m.ready, m.last_pong, inner.table.leaving(*w)))
                .collect();
            (inner.p.clone(), inner.opts.clone(), workers, inner.ping_seq)
        };
        if self.0.borrow().table.down {
            return;
        }
        let Some(h) = opts.health else { return };
        for (w, ready, last, leaving) in workers {
            if !ready || leaving {
                continue;
            }
            if now.duration_since(last) > h.timeout {
                log::warn!(
                    "worker {w} missed heartbeats for {:?}: replacing it",
                    h.timeout
                );
                self.retire(lp, w, Cause::Unresponsive);
                continue;
            }
            let _ = p.ping(lp, w, seq);
            let recycling = self.0.borrow().table.recycling();
            if recycling >= opts.concurrency {
                continue;
            }
            if let (Some(max), Some(info)) = (opts.max_rss, p.worker(w))
                && crate::sys::rss::rss_bytes(info.pid).is_some_and(|r| r > max)
            {
                self.retire(lp, w, Cause::Memory);
                continue;
            }
            if opts.max_connections.is_some_and(|max| p.handed(w) >= max) {
                self.retire(lp, w, Cause::Connections);
            }
        }
    }
}
