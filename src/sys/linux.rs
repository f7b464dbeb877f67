//! Linux backend: `SOCK_CLOEXEC | SOCK_NONBLOCK`, `MSG_CMSG_CLOEXEC`, `MSG_NOSIGNAL`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::libc;

use super::cvt;

pub(crate) const RECV_FLAGS: libc::c_int = libc::MSG_CMSG_CLOEXEC;
pub(crate) const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
/// A short `recvmsg` on a Unix stream socket without descriptors means the queue was empty.
pub(crate) const SHORT_READ_DRAINS: bool = true;
pub(crate) const RECV_SETS_CLOEXEC: bool = true;

/// A connected `AF_UNIX` stream socketpair; both ends close-on-exec and non-blocking.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: socketpair writes two descriptors into the array we own.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// How many descriptors this process has open (entries of `/proc/self/fd`, less the one
/// used to read the directory).
pub fn open_fd_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1))
}

/// `SIGKILL` on parent death is available (`PR_SET_PDEATHSIG`).
pub const PARENT_DEATH_SIGNAL: bool = true;

/// `poll` events reporting that a stream socket's peer hung up, without reading.
pub(crate) const HANGUP_EVENTS: libc::c_short = libc::POLLRDHUP;

/// Asks for `SIGKILL` when the parent dies. Only for a forked child before `exec`: it is
/// async-signal-safe (one syscall, no allocation).
///
/// The kernel sends the signal when the *thread* that forked this process exits, not when
/// the parent process does; it survives `exec`, except of a set-user-ID or set-group-ID
/// program or one with file capabilities, and is cleared by a later change of credentials.
pub(crate) fn set_parent_death_signal() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integers only and touches no memory.
    cvt(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;
    Ok(())
}

/// The abstract `AF_UNIX` address `name` (no leading NUL).
pub(crate) fn abstract_unix_addr(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

/// Pins the calling process to CPU `cpu` (`sched_setaffinity`), for benchmarks that
/// compare placements.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// Moves the calling thread from `SCHED_OTHER` to `SCHED_BATCH` (same nice value, so the
/// same share of CPU; it only gives up preempting other tasks when it wakes). Returns
/// whether it moved: a thread under any other policy is left as it is.
pub(crate) fn enter_batch() -> io::Result<bool> {
    if sched_policy()? != libc::SCHED_OTHER {
        return Ok(false);
    }
    set_policy(libc::SCHED_BATCH)?;
    Ok(true)
}

/// Moves the calling thread from `SCHED_BATCH` back to `SCHED_OTHER` (any other policy is
/// left alone). Allowed without privileges; only raw system calls, so it may run in a
/// forked child before `exec`.
pub(crate) fn leave_batch() -> io::Result<()> {
    if sched_policy()? == libc::SCHED_BATCH {
        set_policy(libc::SCHED_OTHER)?;
    }
    Ok(())
}

/// The calling thread's scheduling policy (`sched_getscheduler`: `SCHED_OTHER` 0,
/// `SCHED_BATCH` 3, …). Only a raw system call, so it may run in a forked child.
pub fn sched_policy() -> io::Result<libc::c_int> {
    // SAFETY: sched_getscheduler takes no pointers; 0 is the calling thread.
    cvt(unsafe { libc::sched_getscheduler(0) })
}

fn set_policy(policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call; 0 is the calling thread.
    cvt(unsafe { libc::sched_setscheduler(0, policy, &param) })?;
    Ok(())
}

/// A one-shot timer on the monotonic clock whose descriptor becomes readable when it
/// fires (`timerfd`), for waits finer than the loop's millisecond timers.
#[derive(Debug)]
pub(crate) struct OneShotTimer(OwnedFd);

impl OneShotTimer {
    /// An unarmed timer (close-on-exec, non-blocking).
    pub(crate) fn new() -> io::Result<OneShotTimer> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        // SAFETY: timerfd_create takes no pointers.
        let fd = cvt(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) })?;
        // SAFETY: the descriptor was just created and is owned by nobody else.
        Ok(OneShotTimer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Fires once, `after` from now (at least 1 µs); re-arming replaces the previous
    /// deadline and forgets a firing not yet taken.
    pub(crate) fn arm(&self, after: std::time::Duration) -> io::Result<()> {
        let after = after.max(std::time::Duration::from_micros(1));
        let value = libc::timespec {
            tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: after.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `spec` is a live itimerspec; the old value is not asked for (null).
        cvt(unsafe {
            libc::timerfd_settime(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                0,
                &spec,
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Takes a firing: `true` if the timer fired since it was armed (it must be armed
    /// again to fire again), `false` if not.
    pub(crate) fn take(&self) -> io::Result<bool> {
        let mut ticks = [0u8; 8];
        // SAFETY: reads at most 8 bytes into the 8-byte buffer we own.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                ticks.as_mut_ptr().cast(),
                ticks.len(),
            )
        };
        match n {
            8 => Ok(true),
            0.. => Err(io::Error::other("short read from a timerfd")),
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                e => Err(e),
            },
        }
    }
}

impl std::os::fd::AsRawFd for OneShotTimer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Shared listeners are waited on with `EPOLLEXCLUSIVE` (see [`wait_exclusive`]).
pub(crate) const EXCLUSIVE_WAIT: bool = true;

/// Adds `fd` to the epoll instance `poller` for readability with `EPOLLEXCLUSIVE`, edge
/// triggered, reporting `token` (the event data mio reads back as its token): of the
/// processes waiting on `fd` this way, the kernel wakes one that is blocked in
/// `epoll_wait` per event instead of all of them. Events still reach, without waking
/// them, instances nobody is waiting on at that moment.
///
/// `EPOLLEXCLUSIVE` is refused by `EPOLL_CTL_MOD`: to change anything, remove the
/// descriptor ([`stop_waiting_exclusive`]) and add it again.
pub(crate) fn wait_exclusive(
    poller: std::os::fd::RawFd,
    fd: std::os::fd::RawFd,
    token: usize,
) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32,
        u64: token as u64,
    };
    // SAFETY: epoll_ctl reads one epoll_event from a live local; both descriptors are
    // borrowed by the caller for the duration of the call.
    cvt(unsafe { libc::epoll_ctl(poller, libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

/// Removes `fd`, added by [`wait_exclusive`], from the epoll instance `poller`.
pub(crate) fn stop_waiting_exclusive(
    poller: std::os::fd::RawFd,
    fd: std::os::fd::RawFd,
) -> io::Result<()> {
    // SAFETY: EPOLL_CTL_DEL ignores the event argument (null is allowed since Linux
    // 2.6.9); both descriptors are borrowed by the caller for the duration of the call.
    cvt(unsafe { libc::epoll_ctl(poller, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) })?;
    Ok(())
}
