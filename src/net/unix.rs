//! Unix-domain stream listeners and connections on the loop.
//!
//! As in libuv, a Unix connect's result (success or failure) is delivered in the pending
//! phase: the OS usually completes a local connect inside the call, and the callback must
//! not run re-entrantly.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, UnixAddr};

use super::listener::{ListenSock, Listener};
use super::stream::{self, Sock, Stream, StreamOptions};
use crate::rt::EventLoop;
use crate::sys;

/// Binds a listener on `path` (the file must not exist); `on_connection` runs in the poll
/// phase for every accepted connection.
///
/// # Errors
///
/// Fails if the path cannot be bound or the socket cannot be registered.
pub fn listen<F, P>(lp: &mut EventLoop, path: P, on_connection: F) -> io::Result<Listener>
where
    F: FnMut(&mut EventLoop, Stream) + 'static,
    P: AsRef<Path>,
{
    let l = mio::net::UnixListener::bind(path)?;
    super::set_backlog(&l)?;
    Listener::open(lp, ListenSock::Unix(l), Box::new(on_connection))
}

/// Puts an existing listening Unix socket on the loop (switched to non-blocking mode).
///
/// # Errors
///
/// Fails if the socket cannot be made non-blocking or registered.
pub fn listen_std<F>(
    lp: &mut EventLoop,
    l: std::os::unix::net::UnixListener,
    on_connection: F,
) -> io::Result<Listener>
where
    F: FnMut(&mut EventLoop, Stream) + 'static,
{
    l.set_nonblocking(true)?;
    let l = mio::net::UnixListener::from_std(l);
    Listener::open(lp, ListenSock::Unix(l), Box::new(on_connection))
}

/// Connects to the socket at `path`; `on_connect` runs with the result in the pending phase
/// (or the poll phase if the connect has to wait). On failure the stream is destroyed after
/// `on_connect`.
///
/// # Errors
///
/// Fails if the socket cannot be created or registered; connect errors go to `on_connect`.
pub fn connect<F, P>(lp: &mut EventLoop, path: P, on_connect: F) -> io::Result<Stream>
where
    F: FnOnce(&mut EventLoop, Stream, io::Result<()>) + 'static,
    P: AsRef<Path>,
{
    let fd = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )?;
    sys::set_cloexec(fd.as_fd(), true)?;
    sys::set_nonblocking(fd.as_fd(), true)?;
    let result = UnixAddr::new(path.as_ref())
        .and_then(|addr| sock::connect(fd.as_raw_fd(), &addr))
        .map_err(io::Error::from);
    let in_progress = matches!(&result, Err(e) if e.raw_os_error() == Some(nix::libc::EINPROGRESS));
    let s = Stream::open(lp, Sock::Unix(unix_from(fd)), in_progress)?;
    if in_progress {
        s.set_connect_cb(lp, Box::new(on_connect));
    } else {
        lp.queue_pending(move |lp| {
            stream::connected(lp, s, result, Some(Box::new(on_connect)));
        });
    }
    Ok(s)
}

/// Puts an existing connected Unix stream on the loop (switched to non-blocking mode).
///
/// # Errors
///
/// Fails if the socket cannot be made non-blocking or registered.
pub fn open_std(lp: &mut EventLoop, s: std::os::unix::net::UnixStream) -> io::Result<Stream> {
    s.set_nonblocking(true)?;
    Stream::open(lp, Sock::Unix(mio::net::UnixStream::from_std(s)), false)
}

/// As [`open_std`] for a connection the primary handed off (see
/// [`tcp::open_handed_off`](super::tcp::open_handed_off)).
pub(crate) fn open_handed_off(
    lp: &mut EventLoop,
    s: std::os::unix::net::UnixStream,
) -> io::Result<Stream> {
    Stream::accepted(
        lp,
        Sock::Unix(mio::net::UnixStream::from_std(s)),
        &StreamOptions::default(),
    )
}

fn unix_from(fd: OwnedFd) -> mio::net::UnixStream {
    mio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
}
