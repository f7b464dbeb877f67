//! macOS / BSD backend: no `SOCK_CLOEXEC` on macOS and no `MSG_CMSG_CLOEXEC`, so flags
//! are set with `fcntl` right after the descriptors appear; `SO_NOSIGPIPE` replaces
//! `MSG_NOSIGNAL`.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::libc;

use super::{cvt, set_cloexec, set_nonblocking};

pub(crate) const RECV_FLAGS: libc::c_int = 0;
pub(crate) const SEND_FLAGS: libc::c_int = 0;
/// Not relied on here: a short read is always followed by another until `EAGAIN`.
pub(crate) const SHORT_READ_DRAINS: bool = false;
pub(crate) const RECV_SETS_CLOEXEC: bool = false;

/// A connected `AF_UNIX` stream socketpair; both ends close-on-exec and non-blocking.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the array we own.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&pair.0, &pair.1] {
        set_cloexec(fd.as_fd(), true)?;
        set_nonblocking(fd.as_fd(), true)?;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a live local.
        cvt(unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    Ok(pair)
}

/// How many descriptors this process has open (entries of `/dev/fd`, less the one used to
/// read the directory).
pub fn open_fd_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/dev/fd")?.count().saturating_sub(1))
}

/// No parent-death signal here: orphans are found by the worker watchdog's parent check.
pub const PARENT_DEATH_SIGNAL: bool = false;

/// No `POLLRDHUP`; a hang-up shows only as `POLLHUP`, where the OS reports it at all.
pub(crate) const HANGUP_EVENTS: libc::c_short = 0;

/// A no-op: this OS has no `PR_SET_PDEATHSIG` (FreeBSD's `procctl` is not used yet).
pub(crate) fn set_parent_death_signal() -> io::Result<()> {
    Ok(())
}

/// Abstract `AF_UNIX` addresses exist on Linux only.
pub(crate) fn abstract_unix_addr(_name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix socket addresses are Linux-only",
    ))
}

/// Pinning to a CPU is not offered here (macOS has no such call; the BSDs differ):
/// always `Unsupported`.
pub fn pin_to_cpu(_cpu: usize) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "pinning to a CPU is supported on Linux only",
    ))
}

/// There is no batch scheduling class here: nothing changes (returns `false`).
pub(crate) fn enter_batch() -> io::Result<bool> {
    Ok(false)
}

/// Nothing to undo here (see [`enter_batch`]).
pub(crate) fn leave_batch() -> io::Result<()> {
    Ok(())
}

/// A one-shot timer whose descriptor becomes readable when it fires, for waits finer than
/// the loop's millisecond timers: a private kqueue holding one `EVFILT_TIMER` (the loop's
/// poller watches that kqueue's descriptor like any other).
#[derive(Debug)]
pub(crate) struct OneShotTimer(OwnedFd);

/// The ident of the one timer in a [`OneShotTimer`]'s kqueue.
const TIMER_IDENT: libc::uintptr_t = 1;

impl OneShotTimer {
    /// An unarmed timer (close-on-exec).
    pub(crate) fn new() -> io::Result<OneShotTimer> {
        // SAFETY: kqueue takes no arguments.
        let fd = cvt(unsafe { libc::kqueue() })?;
        // SAFETY: the descriptor was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(fd.as_fd(), true)?;
        Ok(OneShotTimer(fd))
    }

    /// Fires once, `after` from now (at least 1 µs); re-arming replaces the previous
    /// deadline.
    pub(crate) fn arm(&self, after: std::time::Duration) -> io::Result<()> {
        let us = after.as_micros().max(1);
        // SAFETY: kevent is plain data; all-zero is a valid value of it.
        let mut ev: libc::kevent = unsafe { std::mem::zeroed() };
        ev.ident = TIMER_IDENT;
        ev.filter = libc::EVFILT_TIMER;
        ev.flags = libc::EV_ADD | libc::EV_ONESHOT;
        ev.fflags = libc::NOTE_USECONDS;
        ev.data = i64::try_from(us).unwrap_or(i64::MAX) as _;
        // Forget a firing not yet taken, as re-arming a timerfd does.
        self.take()?;
        // SAFETY: one change read from a live kevent; no event list is written.
        cvt(unsafe {
            libc::kevent(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                &ev,
                1,
                std::ptr::null_mut(),
                0,
                std::ptr::null(),
            )
        })?;
        Ok(())
    }

    /// Takes a firing: `true` if the timer fired since it was armed, `false` if not.
    pub(crate) fn take(&self) -> io::Result<bool> {
        // SAFETY: kevent is plain data; all-zero is a valid value of it.
        let mut out: libc::kevent = unsafe { std::mem::zeroed() };
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: no changes; at most one event written into `out`; zero timeout.
        let n = cvt(unsafe {
            libc::kevent(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                std::ptr::null(),
                0,
                &mut out,
                1,
                &now,
            )
        })?;
        Ok(n > 0)
    }
}

impl std::os::fd::AsRawFd for OneShotTimer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// No `EPOLLEXCLUSIVE` here: every process waiting on a shared listener is woken.
pub(crate) const EXCLUSIVE_WAIT: bool = false;

/// Unsupported here (see [`EXCLUSIVE_WAIT`]).
pub(crate) fn wait_exclusive(
    _poller: std::os::fd::RawFd,
    _fd: std::os::fd::RawFd,
    _token: usize,
) -> io::Result<()> {
    Err(no_exclusive_wait())
}

/// Unsupported here (see [`EXCLUSIVE_WAIT`]).
pub(crate) fn stop_waiting_exclusive(
    _poller: std::os::fd::RawFd,
    _fd: std::os::fd::RawFd,
) -> io::Result<()> {
    Err(no_exclusive_wait())
}

fn no_exclusive_wait() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "exclusive wake-ups need Linux's EPOLLEXCLUSIVE",
    )
}
