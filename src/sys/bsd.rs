//! macOS / BSD backend: no `SOCK_CLOEXEC` on macOS and no `MSG_CMSG_CLOEXEC`, so flags
//! are set with `fcntl` right after the descriptors appear; `SO_NOSIGPIPE` replaces
//! `MSG_NOSIGNAL`.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};

use nix::libc;

use super::{cvt, set_cloexec, set_nonblocking};

pub(crate) const RECV_FLAGS: libc::c_int = 0;
pub(crate) const SEND_FLAGS: libc::c_int = 0;
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
