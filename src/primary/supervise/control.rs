//! [`Control`]: driving a supervisor from other threads.

use std::io;
use std::rc::Weak;
use std::time::Duration;

use super::{REGISTRY, Supervisor, WorkerStats};
use crate::rt::{EventLoop, LoopHandle};

/// A `Send + Clone` handle to a [`Supervisor`] for other threads: each call is posted to
/// the supervisor's loop (crossbeam channel + waker) and runs there.
#[derive(Debug, Clone)]
pub struct Control {
    pub(super) lp: LoopHandle,
    pub(super) id: u64,
}

fn with_sup(id: u64, lp: &mut EventLoop, f: impl FnOnce(&Supervisor, &mut EventLoop)) {
    let sup = REGISTRY.with(|r| r.borrow().get(&id).and_then(Weak::upgrade));
    if let Some(inner) = sup {
        f(&Supervisor(inner), lp);
    }
}

impl Control {
    fn post(&self, f: impl FnOnce(&Supervisor, &mut EventLoop) + Send + 'static) -> bool {
        let id = self.id;
        self.lp.post(move |lp| with_sup(id, lp, f))
    }

    /// Starts a rolling reload; the receiver gets its result.
    pub fn reload(&self) -> crossbeam_channel::Receiver<Result<(), String>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let fallback = tx.clone();
        if !self.post(move |s, lp| {
            s.reload(lp, move |_, r| {
                let _ = tx.send(r);
            })
        }) {
            let _ = fallback.send(Err("the supervisor's loop is gone".into()));
        }
        rx
    }

    /// Sets the number of workers.
    pub fn scale(&self, n: usize) -> bool {
        self.post(move |s, lp| s.scale(lp, n))
    }

    /// Sends user bytes to every worker.
    pub fn broadcast(&self, data: Vec<u8>) -> bool {
        self.post(move |s, lp| {
            s.primary().broadcast(lp, &data);
        })
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&self) -> bool {
        self.post(|s, lp| s.shutdown(lp))
    }

    /// Statistics of every worker, waiting at most `timeout` for the loop to answer.
    ///
    /// # Errors
    ///
    /// The loop is gone or did not answer in time.
    pub fn stats(&self, timeout: Duration) -> io::Result<Vec<WorkerStats>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !self.post(move |s, _| {
            let _ = tx.send(s.stats());
        }) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the supervisor's loop is gone",
            ));
        }
        rx.recv_timeout(timeout).map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer from the supervisor's loop",
            )
        })
    }
}
