//! Waiting, without reading, for the peer of a stream socket to hang up.
//!
//! The worker's orphan watchdog sleeps here on a duplicate of its channel: `poll(2)` with
//! only the hang-up events requested (`POLLRDHUP` on Linux; elsewhere none, and `POLLHUP`
//! comes unasked where the OS reports it), so bytes arriving on the channel neither wake it
//! for good nor get consumed. A second descriptor (`wake`) lets its owner interrupt the
//! wait.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::libc;

/// Why [`wait_hangup`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The watched socket's peer hung up (or the socket failed).
    Hangup,
    /// `wake` became readable (a byte, or its peer closed).
    Wake,
    /// The timeout passed, or a signal interrupted the wait.
    Timeout,
}

/// Sleeps until `watched` (if any) reports a hang-up, `wake` is readable, or `timeout`
/// passes. `wake` wins when both happen. Reads nothing.
///
/// # Errors
///
/// `poll` fails for another reason than `EINTR` (e.g. `ENOMEM`).
pub fn wait_hangup(
    watched: Option<BorrowedFd<'_>>,
    wake: BorrowedFd<'_>,
    timeout: Duration,
) -> io::Result<Woke> {
    let entry = |fd: BorrowedFd<'_>, events| libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let mut fds = [entry(wake, libc::POLLIN), entry(wake, 0)];
    let mut n = 1;
    if let Some(w) = watched {
        fds[1] = entry(w, super::imp::HANGUP_EVENTS);
        n = 2;
    }
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll reads and writes `n` pollfd entries of an array we own; the descriptors
    // are borrowed for the whole call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, ms) };
    if r == -1 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted => Ok(Woke::Timeout),
            _ => Err(e),
        };
    }
    if fds[0].revents != 0 {
        return Ok(Woke::Wake);
    }
    let hangup = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL | super::imp::HANGUP_EVENTS;
    if n == 2 && fds[1].revents & hangup != 0 {
        return Ok(Woke::Hangup);
    }
    Ok(Woke::Timeout)
}
