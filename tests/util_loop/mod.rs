//! Helpers for the event-loop tests: an order log and fake-clock loops.
#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;

use forkloop::rt::{EventLoop, FakeClock};

/// A shared log of labels, appended to by callbacks.
#[derive(Clone, Default)]
pub struct Log(Rc<RefCell<Vec<String>>>);

impl Log {
    pub fn new() -> Log {
        Log::default()
    }

    pub fn push(&self, s: impl Into<String>) {
        self.0.borrow_mut().push(s.into());
    }

    /// A one-shot callback that logs `s`.
    pub fn cb(&self, s: &str) -> impl FnOnce(&mut EventLoop) + 'static {
        let l = self.clone();
        let s = s.to_string();
        move |_| l.push(s)
    }

    pub fn get(&self) -> Vec<String> {
        self.0.borrow().clone()
    }

    /// Asserts the log equals `want`.
    #[track_caller]
    pub fn expect(&self, want: &[&str]) {
        assert_eq!(self.get(), want);
    }
}

/// A loop on a fake clock at 1000 ms.
pub fn fake_loop() -> (EventLoop, FakeClock) {
    let clock = FakeClock::new(1000);
    let lp = EventLoop::with_clock(Box::new(clock.clone())).expect("loop");
    (lp, clock)
}

/// A loop on a fake clock that jumps to the next timer instead of sleeping.
pub fn auto_loop() -> (EventLoop, FakeClock) {
    let (lp, clock) = fake_loop();
    clock.auto_advance(true);
    (lp, clock)
}

/// A connected pair of non-blocking Unix stream sockets for mio.
pub fn unix_pair() -> (mio::net::UnixStream, mio::net::UnixStream) {
    mio::net::UnixStream::pair().expect("socketpair")
}

/// Arms an unref'd timer that fails the test if the loop is still running after `ms`.
pub fn guard(lp: &mut EventLoop, ms: u64) {
    let t = lp.set_timeout(ms, move |_| panic!("test loop still running after {ms} ms"));
    lp.unref(t);
}

/// A fresh socket path in the temp directory.
pub fn sock_path(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("forkloop-{tag}-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Adapts a `FnOnce(&mut EventLoop)` to the `FnOnce(&mut EventLoop, T)` shape of close
/// callbacks.
pub trait MapArgs: FnOnce(&mut EventLoop) + Sized + 'static {
    fn map_args<T>(self) -> impl FnOnce(&mut EventLoop, T) + 'static {
        move |lp, _| self(lp)
    }
}

impl<F: FnOnce(&mut EventLoop) + 'static> MapArgs for F {}
