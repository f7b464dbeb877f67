//! `sendmsg` / `recvmsg` with `SCM_RIGHTS`.
//!
//! Received descriptors are wrapped in [`OwnedFd`] before anything else can happen, so none
//! can leak. A truncated receive (`MSG_CTRUNC`) is reported, not hidden: see
//! [`Received::truncated`].

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;

use super::imp;

/// The most descriptors one `sendmsg`/`recvmsg` carries here. The control buffer is sized
/// for exactly this many.
pub const MAX_FDS_PER_MSG: usize = 32;

/// Control buffer: `u64` words keep it aligned for `cmsghdr`. 16 bytes of header plus 32
/// descriptors of 4 bytes, rounded up, fit in 20 words on every supported platform.
type CmsgBuf = [u64; 20];

fn cmsg_space(nfds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE((nfds * std::mem::size_of::<RawFd>()) as libc::c_uint) as usize }
}

/// Sends the bytes of `bufs` (gathered, in order) with `fds` attached to the first byte.
///
/// Returns how many bytes the kernel took; the descriptors went with them if that is more
/// than zero. Retries on `EINTR`; `EAGAIN` comes back as [`io::ErrorKind::WouldBlock`].
///
/// # Errors
///
/// Any `sendmsg` error; `InvalidInput` if more than [`MAX_FDS_PER_MSG`] fds are given.
pub fn send_with_fds<F: AsFd>(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[F],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MSG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds in one message (max {MAX_FDS_PER_MSG})", fds.len()),
        ));
    }
    let mut cbuf: CmsgBuf = [0; 20];
    // SAFETY: an all-zero msghdr is a valid "no name, no data" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec; // IoSlice is ABI-compatible with iovec
    msg.msg_iovlen = bufs.len() as _;
    if !fds.is_empty() {
        let space = cmsg_space(fds.len());
        debug_assert!(space <= std::mem::size_of::<CmsgBuf>());
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes we own, enough for one
        // cmsghdr and `fds.len()` descriptors; CMSG_FIRSTHDR is therefore non-null.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len =
                libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as libc::c_uint) as _;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_fd().as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: msg points at iovecs and a control buffer that outlive the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, imp::SEND_FLAGS) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What one [`recv_with_fds`] call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes read; 0 means the peer closed its end.
    pub bytes: usize,
    /// Descriptors that came with them (already appended to the caller's queue).
    pub fds: usize,
    /// The kernel could not deliver every descriptor that came with these bytes
    /// (`MSG_CTRUNC`): either the control buffer was full (then `fds` is the `max_fds`
    /// asked for, and the peer sent more than that in one message), or this process could
    /// not install them (its descriptor table is full: `RLIMIT_NOFILE`, or the system's
    /// file limit), in which case `fds` is fewer than that. The kernel closed the rest;
    /// the ones in `fds` are the first of the message's, in order.
    pub truncated: bool,
}

/// Reads into `buf`, appending any descriptors that came with the bytes to `fds`.
///
/// The control buffer has room for `max_fds` descriptors (at most [`MAX_FDS_PER_MSG`]).
/// Received descriptors are close-on-exec. Retries on `EINTR`. A truncated receive keeps
/// the descriptors that did arrive and says so ([`Received::truncated`]); what it means is
/// the caller's to judge.
///
/// # Errors
///
/// Any `recvmsg` error (`WouldBlock` when nothing is ready).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<Received> {
    let max_fds = max_fds.min(MAX_FDS_PER_MSG);
    let mut cbuf: CmsgBuf = [0; 20];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "no name, no data" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(max_fds) as _;
    let n = loop {
        // SAFETY: msg points at a live iovec over `buf` and at our control buffer.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, imp::RECV_FLAGS) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let before = fds.len();
    // SAFETY: the kernel filled msg_control with well-formed cmsghdrs up to msg_controllen;
    // every SCM_RIGHTS descriptor is new to this process and owned by nobody else, so it is
    // wrapped in an OwnedFd at once.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push_back(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if !imp::RECV_SETS_CLOEXEC {
        for fd in fds.iter().skip(before) {
            super::set_cloexec(std::os::fd::AsFd::as_fd(fd), true)?;
        }
    }
    Ok(Received {
        bytes: n,
        fds: fds.len() - before,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}
