//! Blocking work on a small process-wide thread pool (libuv's threadpool).
//!
//! The pool starts on first use with `FORKLOOP_THREADPOOL_SIZE` threads (default 4, clamped
//! to 1..=1024, like `UV_THREADPOOL_SIZE`). A job's result travels back through the loop's
//! [`LoopHandle`](crate::rt::LoopHandle); its `done` callback runs on the loop thread in the
//! poll phase. An in-flight job is an active request: it keeps the loop alive.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::thread;

use crossbeam_channel::{Sender, unbounded};

use super::EventLoop;
use super::id::{Key, define_id};

define_id! {
    /// A blocking job submitted with [`EventLoop::spawn_blocking`].
    RequestId
}

/// Environment variable that sets the pool size (read once, at first use).
pub const POOL_SIZE_ENV: &str = "FORKLOOP_THREADPOOL_SIZE";

type PoolJob = Box<dyn FnOnce() + Send>;
type AnyResult = Box<dyn Any + Send>;

/// A finished job's `done` callback, waiting for its type-erased result.
pub(crate) type Done = Box<dyn FnOnce(&mut EventLoop, AnyResult)>;

struct Pool {
    tx: Option<Sender<PoolJob>>,
}

fn pool_size() -> usize {
    std::env::var(POOL_SIZE_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(4)
        .clamp(1, 1024)
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = unbounded::<PoolJob>();
        let mut started = 0;
        for i in 0..pool_size() {
            let rx = rx.clone();
            let spawned = thread::Builder::new()
                .name(format!("forkloop-pool-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => log::error!("forkloop: cannot start pool thread: {e}"),
            }
        }
        Pool {
            tx: (started > 0).then_some(tx),
        }
    })
}

/// Runs `job` on the pool, or on the calling thread if no pool thread could be started.
fn submit(job: PoolJob) {
    match &pool().tx {
        Some(tx) => {
            if let Err(e) = tx.send(job) {
                (e.into_inner())();
            }
        }
        None => job(),
    }
}

impl EventLoop {
    /// Runs `work` on the blocking pool and then `done(lp, result)` on this loop (in the poll
    /// phase, followed by a drain). `result` is `Err` with the panic payload if `work`
    /// panicked. The job keeps the loop alive until `done` has run.
    pub fn spawn_blocking<T, W, D>(&mut self, work: W, done: D) -> RequestId
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
        D: FnOnce(&mut EventLoop, thread::Result<T>) + 'static,
    {
        let done: Done = Box::new(move |lp, any| {
            if let Ok(r) = any.downcast::<thread::Result<T>>() {
                done(lp, *r);
            }
        });
        let key = self.requests.insert(done);
        let handle = self.handle();
        let raw = key.to_usize();
        submit(Box::new(move || {
            let r: thread::Result<T> = catch_unwind(AssertUnwindSafe(work));
            let any: AnyResult = Box::new(r);
            handle.post(move |lp| lp.finish_request(Key::from_usize(raw), any));
        }));
        RequestId(key)
    }

    /// The blocking jobs whose `done` has not run yet.
    pub(crate) fn request_ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.requests.iter().map(|(k, _)| RequestId(k))
    }

    /// Number of blocking jobs submitted whose `done` has not run yet.
    pub fn active_requests(&self) -> usize {
        self.requests.len()
    }

    fn finish_request(&mut self, key: Key, result: AnyResult) {
        if let Some(done) = self.requests.remove(key) {
            done(self, result);
        }
    }
}
