//! nextTick and microtask queues, and futures polled on the loop (`spawn_local`).
//!
//! The drain follows Node's `processTicksAndRejections` ([rules 1–4](crate::rt#ordering-rules)): run nextTicks until that queue is empty, including ticks queued meanwhile; then run
//! microtasks until that queue is empty, including microtasks queued meanwhile; repeat until
//! both are empty.
//!
//! Futures are forkloop's promises. Polling a spawned future is a microtask: the first poll is
//! queued when the future is spawned, and every wake-up queues another one. A wake-up from the
//! loop thread lands in the microtask queue right after the callback (or microtask) that
//! caused it returns; a wake-up from another thread wakes the loop's poll and is queued there.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use super::EventLoop;
use super::id::{Key, Slots};
use super::remote::Notify;

/// A one-shot loop callback.
pub(crate) type Job = Box<dyn FnOnce(&mut EventLoop)>;

pub(crate) enum Micro {
    Job(Job),
    Poll(Key),
}

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

struct TaskSlot {
    fut: Option<LocalFuture>,
    waker: Arc<TaskWaker>,
    queued: bool,
}

/// Wake-ups shared with every task waker (possibly on other threads).
#[derive(Debug)]
pub(crate) struct Wakes {
    woken: AtomicBool,
    keys: Mutex<Vec<usize>>,
    notify: Arc<Notify>,
}

struct TaskWaker {
    key: usize,
    wakes: Arc<Wakes>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let w = &self.wakes;
        w.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.key);
        w.woken.store(true, Ordering::SeqCst);
        w.notify.nudge();
    }
}

/// The loop's task queues.
pub(crate) struct Tasks {
    pub(crate) ticks: VecDeque<Job>,
    pub(crate) micro: VecDeque<Micro>,
    futures: Slots<TaskSlot>,
    wakes: Arc<Wakes>,
    woken_scratch: Vec<usize>,
    /// Wakers of finished tasks that nobody else holds, reused for new tasks.
    spare_wakers: Vec<Arc<TaskWaker>>,
}

impl Tasks {
    pub(crate) fn new(notify: Arc<Notify>) -> Tasks {
        Tasks {
            ticks: VecDeque::new(),
            micro: VecDeque::new(),
            futures: Slots::default(),
            wakes: Arc::new(Wakes {
                woken: AtomicBool::new(false),
                keys: Mutex::new(Vec::new()),
                notify,
            }),
            woken_scratch: Vec::new(),
            spare_wakers: Vec::new(),
        }
    }

    /// Nothing to drain (the fast path after every callback).
    #[inline]
    pub(crate) fn idle(&self) -> bool {
        self.ticks.is_empty() && self.micro.is_empty() && !self.wakes.woken.load(Ordering::Relaxed)
    }

    /// Whether a wake-up arrived that has not been queued yet.
    pub(crate) fn has_wakes(&self) -> bool {
        self.wakes.woken.load(Ordering::SeqCst)
    }

    /// Number of futures spawned and not finished.
    pub(crate) fn live_futures(&self) -> usize {
        self.futures.len()
    }

    /// Moves wake-ups into the microtask queue (one poll per woken task).
    pub(crate) fn collect_wakes(&mut self) {
        if !self.wakes.woken.swap(false, Ordering::SeqCst) {
            return;
        }
        {
            let mut keys = self.wakes.keys.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *keys, &mut self.woken_scratch);
        }
        for raw in self.woken_scratch.drain(..) {
            let key = Key::from_usize(raw);
            if let Some(slot) = self.futures.get_mut(key)
                && !slot.queued
            {
                slot.queued = true;
                self.micro.push_back(Micro::Poll(key));
            }
        }
    }

    fn spawn(&mut self, fut: LocalFuture) -> Key {
        let waker = match self.spare_wakers.pop() {
            Some(w) => w,
            None => Arc::new(TaskWaker {
                key: 0,
                wakes: self.wakes.clone(),
            }),
        };
        let key = self.futures.insert(TaskSlot {
            fut: Some(fut),
            waker,
            queued: true,
        });
        if let Some(slot) = self.futures.get_mut(key) {
            match Arc::get_mut(&mut slot.waker) {
                Some(w) => w.key = key.to_usize(),
                None => {
                    slot.waker = Arc::new(TaskWaker {
                        key: key.to_usize(),
                        wakes: self.wakes.clone(),
                    })
                }
            }
        }
        self.micro.push_back(Micro::Poll(key));
        key
    }

    /// Forgets a finished task, keeping its waker for reuse if no clone of it survives.
    fn finish(&mut self, key: Key) {
        if let Some(mut slot) = self.futures.remove(key)
            && Arc::get_mut(&mut slot.waker).is_some()
            && self.spare_wakers.len() < 1024
        {
            self.spare_wakers.push(slot.waker);
        }
    }
}

impl EventLoop {
    /// Queues `cb` on the nextTick queue (Node's `process.nextTick`). It runs at the next
    /// drain, before any microtask. A no-op once the loop is exiting ([rule 19](crate::rt#ordering-rules)).
    pub fn next_tick<F>(&mut self, cb: F)
    where
        F: FnOnce(&mut EventLoop) + 'static,
    {
        if !self.exiting {
            self.tasks.ticks.push_back(Box::new(cb));
        }
    }

    /// Queues `cb` on the microtask queue (Node's `queueMicrotask`).
    pub fn queue_microtask<F>(&mut self, cb: F)
    where
        F: FnOnce(&mut EventLoop) + 'static,
    {
        self.tasks.micro.push_back(Micro::Job(Box::new(cb)));
    }

    /// Spawns a future on this loop, forkloop's analogue of a promise chain.
    ///
    /// Its first poll is queued as a microtask; each wake-up queues another poll as a
    /// microtask (a wake-up from another thread wakes the loop first). Like a pending
    /// promise, a pending future does not keep the loop alive: the timers, handles or
    /// requests it waits on do. A future that needs the loop inside `poll` can use
    /// [`with_loop`](crate::rt::with_loop).
    pub fn spawn_local<F>(&mut self, fut: F)
    where
        F: Future<Output = ()> + 'static,
    {
        self.tasks.spawn(Box::pin(fut));
    }

    /// Number of spawned futures that have not completed.
    pub fn pending_futures(&self) -> usize {
        self.tasks.live_futures()
    }

    /// Runs nextTicks, then microtasks, until both queues are empty (rules 1–3).
    pub(crate) fn drain(&mut self) {
        loop {
            while let Some(tick) = self.tasks.ticks.pop_front() {
                tick(self);
                if self.halted() {
                    return;
                }
            }
            self.tasks.collect_wakes();
            while let Some(m) = self.tasks.micro.pop_front() {
                match m {
                    Micro::Job(job) => job(self),
                    Micro::Poll(key) => self.poll_task(key),
                }
                if self.halted() {
                    return;
                }
                self.tasks.collect_wakes();
            }
            if self.tasks.ticks.is_empty() {
                return;
            }
        }
    }

    fn poll_task(&mut self, key: Key) {
        let Some(slot) = self.tasks.futures.get_mut(key) else {
            return;
        };
        slot.queued = false;
        let Some(mut fut) = slot.fut.take() else {
            return;
        };
        let waker = Waker::from(slot.waker.clone());
        let mut cx = Context::from_waker(&waker);
        let done = super::local::polling(|| fut.as_mut().poll(&mut cx).is_ready());
        drop(waker);
        if done {
            drop(fut);
            self.tasks.finish(key);
        } else if let Some(slot) = self.tasks.futures.get_mut(key) {
            slot.fut = Some(fut);
        }
        let micro = &mut self.tasks.micro;
        super::local::drain_jobs(|job| micro.push_back(Micro::Job(job)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn ticks_before_microtasks_and_futures_interleave() {
        let mut lp = EventLoop::new().unwrap();
        let log = Rc::new(RefCell::new(Vec::new()));
        let l = log.clone();
        lp.queue_microtask(move |_| l.borrow_mut().push("m1"));
        let l = log.clone();
        lp.spawn_local(async move { l.borrow_mut().push("f1") });
        let l = log.clone();
        lp.next_tick(move |_| l.borrow_mut().push("t1"));
        lp.drain();
        assert_eq!(*log.borrow(), ["t1", "m1", "f1"]);
        assert_eq!(lp.pending_futures(), 0);
    }
}
