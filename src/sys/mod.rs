//! Platform glue. Everything that names `libc` or needs `unsafe` lives here.
//!
//! # Contract
//!
//! Every platform backend (`linux.rs`, `bsd.rs`, picked below as `imp`) provides:
//!
//! | item | what it does |
//! |---|---|
//! | `socketpair()` | a connected `AF_UNIX` stream pair, both ends close-on-exec and non-blocking |
//! | `RECV_FLAGS` | flags for `recvmsg` (`MSG_CMSG_CLOEXEC` where the OS has it) |
//! | `SEND_FLAGS` | flags for `sendmsg` (`MSG_NOSIGNAL` where the OS has it) |
//! | `SHORT_READ_DRAINS` | whether a Unix stream `recvmsg` that returned fewer bytes than asked, and no descriptors, proves the socket was empty (Linux: with no `SO_PASSCRED`, the kernel stops a read early only after a message with descriptors or at out-of-band data, which a peer may send only to stall its own channel; elsewhere `false`, so channels read on until `EAGAIN`) |
//! | `RECV_SETS_CLOEXEC` | whether `RECV_FLAGS` already marks received fds close-on-exec |
//! | `open_fd_count()` | how many descriptors this process has open |
//! | `PARENT_DEATH_SIGNAL` | whether `set_parent_death_signal` does anything here |
//! | `set_parent_death_signal()` | in a forked child before `exec`: ask for `SIGKILL` when the parent dies (Linux `PR_SET_PDEATHSIG`; a no-op elsewhere) |
//! | `HANGUP_EVENTS` | `poll` events that report a stream peer's hang-up without reading (`POLLRDHUP` on Linux; none elsewhere, where only `POLLHUP` may come) |
//! | `abstract_unix_addr()` | an abstract `AF_UNIX` address (Linux; `Unsupported` elsewhere) |
//! | `pin_to_cpu()` | pin the calling process to one CPU (Linux `sched_setaffinity`; `Unsupported` elsewhere) |
//! | `sched_policy()` | the calling thread's scheduling policy (Linux only: `sched_getscheduler`) |
//! | `enter_batch()` / `leave_batch()` | move the calling thread from the normal scheduling class to the batch class and back (Linux `SCHED_OTHER` ⇄ `SCHED_BATCH`; `enter_batch` says whether it moved; no-ops elsewhere, which have no such class); `leave_batch` may run in a forked child before `exec` |
//! | `EXCLUSIVE_WAIT`, `wait_exclusive()` / `stop_waiting_exclusive()` | whether a shared listener can be waited on so that one waiting process is woken per connection, not all; add it to / remove it from the loop's poller that way (Linux `EPOLLEXCLUSIVE`, edge-triggered, added with the token mio reads back; `Unsupported` elsewhere, where listeners are registered through mio as usual) |
//! | `OneShotTimer` | a one-shot timer finer than the loop's milliseconds whose descriptor turns readable when it fires: `new`, `arm(after)`, `take()` (Linux `timerfd`; a private kqueue with an `EVFILT_TIMER` elsewhere) |
//!
//! The portable code on top ([`scm`], [`process`], [`watch`], the descriptor limit:
//! [`fd_limit`], [`set_fd_limit`]) uses only those items and POSIX calls.
//! `cfg(target_os)` appears in this file only.

pub mod cputime;
mod fdlimit;
pub mod net;
pub mod process;
pub mod rss;
pub mod scm;
pub mod watch;

#[cfg(any(target_os = "linux", target_os = "android"))]
#[path = "linux.rs"]
mod imp;

#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[path = "bsd.rs"]
mod imp;

pub(crate) use fdlimit::fd_limit_summary;
pub use fdlimit::{fd_limit, is_fd_exhaustion, set_fd_limit};
/// The calling thread's scheduling policy (Linux only; see
/// [`PrimaryOptions::yield_to_workers`](crate::primary::PrimaryOptions::yield_to_workers)).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub use imp::sched_policy;
pub(crate) use imp::{
    EXCLUSIVE_WAIT, OneShotTimer, SHORT_READ_DRAINS, stop_waiting_exclusive, wait_exclusive,
};
pub use imp::{PARENT_DEATH_SIGNAL, open_fd_count, pin_to_cpu, socketpair};
use imp::{enter_batch, leave_batch};

use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::libc;

/// Turns a `-1` return into the last OS error.
pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we borrow; F_GETFD/F_SETFD touch no memory.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFD))?;
        let new = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if new != flags {
            cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, new))?;
        }
    }
    Ok(())
}

/// Sets or clears `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we borrow; F_GETFL/F_SETFL touch no memory.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        let new = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        if new != flags {
            cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, new))?;
        }
    }
    Ok(())
}

/// Bytes waiting to be read on socket `fd` (`FIONREAD`). On a Unix stream socket these
/// are the bytes its peer wrote that nobody has read yet.
pub fn unread_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into a local we own; the descriptor is borrowed.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Whether `fd` has `FD_CLOEXEC` set.
pub fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: fcntl F_GETFD on a borrowed descriptor touches no memory.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    Ok(flags & libc::FD_CLOEXEC != 0)
}

/// `CLOCK_MONOTONIC` now, in microseconds (the clock systemd's `MONOTONIC_USEC=` uses).
pub fn monotonic_usec() -> u64 {
    // SAFETY: an all-zero timespec is a valid value (plain integers).
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes one timespec into a local we own; CLOCK_MONOTONIC
    // always exists, so it cannot fail.
    let _ = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

thread_local! {
    /// Live [`BatchScheduling`] guards of this thread.
    static BATCH_GUARDS: Cell<u32> = const { Cell::new(0) };
}

/// While alive, the calling thread is in the batch scheduling class (Linux `SCHED_BATCH`):
/// when it wakes it does not preempt the task running on its CPU, it runs on an idle CPU
/// or once that task's slice ends. Its share of CPU is unchanged. Guards nest within a
/// thread; the last one to drop puts the thread back in the normal class. Threads under
/// any other policy (real-time, idle, batch chosen by the user) are left alone, and so is
/// every thread on systems without the class (macOS, BSD).
#[derive(Debug)]
pub(crate) struct BatchScheduling {
    /// Scheduling classes are per thread: the guard must drop where it was made.
    _thread_bound: PhantomData<*const ()>,
}

impl BatchScheduling {
    /// Enters the batch class; `None` if the thread was not in the normal class (then
    /// nothing changed) or the system refused.
    pub(crate) fn enter() -> Option<BatchScheduling> {
        let held = BATCH_GUARDS.with(Cell::get);
        if held == 0 {
            match enter_batch() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    log::debug!("batch scheduling unavailable: {e}");
                    return None;
                }
            }
        }
        BATCH_GUARDS.with(|g| g.set(held + 1));
        Some(BatchScheduling {
            _thread_bound: PhantomData,
        })
    }
}

impl Drop for BatchScheduling {
    fn drop(&mut self) {
        let left = BATCH_GUARDS.with(|g| {
            let n = g.get().saturating_sub(1);
            g.set(n);
            n
        });
        if left == 0
            && let Err(e) = leave_batch()
        {
            log::warn!("cannot leave batch scheduling: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};

    use super::OneShotTimer;

    /// Whether the poller reports anything within `within`.
    fn reported(poll: &mut Poll, within: Duration) -> bool {
        let mut events = Events::with_capacity(4);
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            poll.poll(&mut events, Some(left)).unwrap();
            if !events.is_empty() {
                return true;
            }
            if left.is_zero() {
                return false;
            }
        }
    }

    #[test]
    fn a_one_shot_timer_fires_once_per_arming_and_never_early() {
        let t = OneShotTimer::new().unwrap();
        let mut poll = Poll::new().unwrap();
        let fd = t.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
            .unwrap();
        assert!(!t.take().unwrap(), "not armed, not fired");
        assert!(!reported(&mut poll, Duration::from_millis(20)));

        let start = Instant::now();
        t.arm(Duration::from_micros(1_500)).unwrap();
        assert!(reported(&mut poll, Duration::from_secs(5)), "fired");
        assert!(start.elapsed() >= Duration::from_micros(1_500), "not early");
        assert!(t.take().unwrap());
        assert!(!t.take().unwrap(), "a firing is taken once");
        assert!(!reported(&mut poll, Duration::from_millis(20)), "one shot");

        // Armed again, it reports again (the registration is edge-triggered).
        t.arm(Duration::from_micros(200)).unwrap();
        assert!(reported(&mut poll, Duration::from_secs(5)));
        assert!(t.take().unwrap());

        // Re-arming replaces the deadline.
        t.arm(Duration::from_secs(60)).unwrap();
        t.arm(Duration::from_millis(1)).unwrap();
        assert!(
            reported(&mut poll, Duration::from_secs(5)),
            "the later arming counts"
        );
        assert!(t.take().unwrap());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn batch_scheduling_guards_nest_and_the_last_one_leaves_the_class() {
        use super::BatchScheduling;
        let policy = || super::sched_policy().unwrap();
        assert_eq!(policy(), 0, "test threads start in the normal class");
        let a = BatchScheduling::enter().expect("normal → batch");
        assert_eq!(policy(), 3);
        let b = BatchScheduling::enter().expect("a nested guard");
        drop(a);
        assert_eq!(policy(), 3, "one guard is still held");
        drop(b);
        assert_eq!(policy(), 0, "the last guard leaves the class");

        // A thread put in the batch class by someone else is left as it is.
        assert!(super::enter_batch().unwrap());
        assert!(BatchScheduling::enter().is_none());
        assert_eq!(policy(), 3);
        super::leave_batch().unwrap();
        assert_eq!(policy(), 0);
    }
}
