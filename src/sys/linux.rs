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
