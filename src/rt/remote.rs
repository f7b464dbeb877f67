//! Cross-thread access: [`LoopHandle`] posts closures into a loop through a crossbeam channel
//! and wakes its poll with a `mio::Waker`.
//!
//! The waker is only written when the loop is (about to be) asleep in poll: the loop sets
//! `sleeping` before it checks for posted work and blocks; a poster sets `posted` before it
//! checks `sleeping`. Both use sequentially consistent atomics, so at least one side sees the
//! other and no wake-up is lost, while a busy loop costs posters no syscall.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

use super::EventLoop;

/// A closure posted from another thread.
pub(crate) type Posted = Box<dyn FnOnce(&mut EventLoop) + Send>;

/// Shared between the loop and everything that can wake it.
pub(crate) struct Notify {
    sleeping: AtomicBool,
    posted: AtomicBool,
    waker: mio::Waker,
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notify")
            .field("sleeping", &self.sleeping)
            .field("posted", &self.posted)
            .finish_non_exhaustive()
    }
}

impl Notify {
    pub(crate) fn new(waker: mio::Waker) -> Notify {
        Notify {
            sleeping: AtomicBool::new(false),
            posted: AtomicBool::new(false),
            waker,
        }
    }

    /// Wakes the loop's poll if it is asleep. Call after publishing the work.
    pub(crate) fn nudge(&self) {
        if self.sleeping.load(Ordering::SeqCst)
            && let Err(e) = self.waker.wake()
        {
            log::error!("forkloop: cannot wake the loop: {e}");
        }
    }

    /// Marks the loop asleep; returns whether work was posted meanwhile (then don't block).
    pub(crate) fn enter_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        self.posted.load(Ordering::SeqCst)
    }

    pub(crate) fn leave_sleep(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Takes the "work was posted" flag.
    pub(crate) fn take_posted(&self) -> bool {
        self.posted.load(Ordering::Relaxed) && self.posted.swap(false, Ordering::SeqCst)
    }

    fn post(&self) {
        self.posted.store(true, Ordering::SeqCst);
        self.nudge();
    }
}

/// The loop's inbox for closures from other threads.
pub(crate) struct Remote {
    pub(crate) tx: Sender<Posted>,
    pub(crate) rx: Receiver<Posted>,
    pub(crate) notify: Arc<Notify>,
}

/// A `Send + Clone` handle that posts closures into an [`EventLoop`] from any thread.
///
/// A handle does not keep the loop alive (like an unref'd `uv_async_t`): if nothing else
/// does, the loop may end before a posted closure arrives, and [`LoopHandle::post`] then
/// returns `false` once the loop is dropped. Keep a ref'd timer or handle, or use
/// [`EventLoop::spawn_blocking`], while work from another thread is expected.
#[derive(Clone)]
pub struct LoopHandle {
    tx: Sender<Posted>,
    notify: Arc<Notify>,
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle").finish_non_exhaustive()
    }
}

impl LoopHandle {
    /// Queues `f` to run on the loop thread in the poll phase, as its own macrotask
    /// (nextTicks and microtasks are drained after it). Returns `false` if the loop is gone.
    pub fn post<F>(&self, f: F) -> bool
    where
        F: FnOnce(&mut EventLoop) + Send + 'static,
    {
        if self.tx.send(Box::new(f)).is_err() {
            return false;
        }
        self.notify.post();
        true
    }
}

impl EventLoop {
    /// A handle for posting closures into this loop from other threads.
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            tx: self.remote.tx.clone(),
            notify: self.remote.notify.clone(),
        }
    }

    /// Runs closures posted through [`LoopHandle`]s, each as a macrotask.
    pub(super) fn run_posted(&mut self) {
        if !self.remote.notify.take_posted() {
            return;
        }
        while let Ok(job) = self.remote.rx.try_recv() {
            self.invoke(job);
            if self.halted() {
                return;
            }
        }
    }
}
