//! Linux backend: `SOCK_CLOEXEC | SOCK_NONBLOCK`, `MSG_CMSG_CLOEXEC`, `MSG_NOSIGNAL`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::libc;

use super::cvt;

pub(crate) const RECV_FLAGS: libc::c_int = libc::MSG_CMSG_CLOEXEC;
pub(crate) const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
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
