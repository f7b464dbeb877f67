//! Loop access from inside a future: [`with_loop`] queues a closure that the loop runs as a
//! microtask right after the current poll returns.

use std::cell::{Cell, RefCell};

use super::EventLoop;
use super::tasks::Job;

thread_local! {
    static POLLING: Cell<bool> = const { Cell::new(false) };
    static JOBS: RefCell<Vec<Job>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` while marking this thread as polling a loop future.
pub(crate) fn polling<R>(f: impl FnOnce() -> R) -> R {
    let outer = POLLING.with(|p| p.replace(true));
    let r = f();
    POLLING.with(|p| p.set(outer));
    r
}

/// Hands the closures queued by [`with_loop`] during the last poll to `sink`, in order.
pub(crate) fn drain_jobs(mut sink: impl FnMut(Job)) {
    JOBS.with(|j| {
        let mut j = j.borrow_mut();
        for job in j.drain(..) {
            sink(job);
        }
    });
}

/// From inside a future being polled by [`EventLoop::spawn_local`], queues `f` to run with
/// the loop as a microtask right after this poll returns (before microtasks queued later).
///
/// Returns `false`, and drops `f`, when called anywhere else.
///
/// ```
/// use forkloop::rt::{EventLoop, with_loop};
///
/// let mut lp = EventLoop::new().unwrap();
/// lp.spawn_local(async {
///     with_loop(|lp| {
///         lp.set_timeout(1, |_| println!("timer set from a future"));
///     });
/// });
/// lp.run().unwrap();
/// ```
pub fn with_loop<F>(f: F) -> bool
where
    F: FnOnce(&mut EventLoop) + 'static,
{
    if !POLLING.with(|p| p.get()) {
        return false;
    }
    JOBS.with(|j| j.borrow_mut().push(Box::new(f)));
    true
}

/// A future that wakes itself and returns `Pending` once, so the rest of the `async` block
/// runs in a later microtask (like `await` on an already-resolved promise).
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// The future returned by [`yield_now`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    yielded: bool,
}

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.yielded {
            return std::task::Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
