//! [`Control`]: driving a supervisor from other threads.

use std::io;
use std::rc::Weak;
use std::time::Duration;

use super::{REGISTRY, ReloadError, Supervisor, WorkerStats};
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

    /// Starts a rolling reload (or joins the one under way); its result arrives in the
    /// returned [`PendingReload`].
    pub fn reload(&self) -> PendingReload {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let fallback = tx.clone();
        if !self.post(move |s, lp| {
            s.reload(lp, move |_, r| {
                let _ = tx.send(r);
            })
        }) {
            let _ = fallback.send(Err(ReloadError::Gone));
        }
        PendingReload(rx)
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

/// The result of a reload asked for with [`Control::reload`], to wait for from any thread.
#[derive(Debug)]
#[must_use = "the result says whether every worker was replaced or the old generation kept"]
pub struct PendingReload(crossbeam_channel::Receiver<Result<(), ReloadError>>);

impl PendingReload {
    /// Blocks until the reload ends.
    ///
    /// # Errors
    ///
    /// Why the reload did not replace every worker; [`ReloadError::Gone`] if the supervisor
    /// went away before it finished.
    pub fn wait(&self) -> Result<(), ReloadError> {
        self.0.recv().unwrap_or(Err(ReloadError::Gone))
    }

    /// Blocks until the reload ends or `timeout` passes; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Result<(), ReloadError>> {
        match self.0.recv_timeout(timeout) {
            Ok(r) => Some(r),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Some(Err(ReloadError::Gone)),
        }
    }
}
