//! TCP listeners and connections on the loop.
//!
//! ```
//! use forkloop::net::tcp;
//! use forkloop::rt::EventLoop;
//!
//! let mut lp = EventLoop::new().unwrap();
//! let server = tcp::listen(&mut lp, "127.0.0.1:0".parse().unwrap(), |lp, conn| {
//!     conn.on_data(lp, |lp, conn, data| {
//!         conn.write(lp, data); // echo
//!         conn.end(lp);
//!     });
//! })
//! .unwrap();
//! let addr = server.local_addr(&lp).unwrap();
//! let client = tcp::connect(&mut lp, addr, |lp, c, r| {
//!     r.unwrap();
//!     c.write(lp, b"ping");
//! })
//! .unwrap();
//! client.on_data(&mut lp, move |lp, _, data| {
//!     assert_eq!(data, b"ping");
//!     server.close(lp, |_| {});
//! });
//! lp.run().unwrap();
//! ```

use std::io;
use std::net::SocketAddr;

use super::listener::{ListenSock, Listener};
use super::stream::{Sock, Stream, StreamOptions};
use crate::rt::EventLoop;

/// Binds a listener on `addr` (port 0 picks a free port); `on_connection` runs in the poll
/// phase for every accepted connection.
///
/// # Errors
///
/// Fails if the address cannot be bound or the socket cannot be registered.
pub fn listen<F>(lp: &mut EventLoop, addr: SocketAddr, on_connection: F) -> io::Result<Listener>
where
    F: FnMut(&mut EventLoop, Stream) + 'static,
{
    let l = mio::net::TcpListener::bind(addr)?;
    super::set_backlog(&l)?;
    Listener::open(lp, ListenSock::Tcp(l), Box::new(on_connection))
}

/// Puts an existing listening socket (e.g. one received from the primary) on the loop. The
/// socket is switched to non-blocking mode.
///
/// # Errors
///
/// Fails if the socket cannot be made non-blocking or registered.
pub fn listen_std<F>(
    lp: &mut EventLoop,
    l: std::net::TcpListener,
    on_connection: F,
) -> io::Result<Listener>
where
    F: FnMut(&mut EventLoop, Stream) + 'static,
{
    l.set_nonblocking(true)?;
    let l = mio::net::TcpListener::from_std(l);
    Listener::open(lp, ListenSock::Tcp(l), Box::new(on_connection))
}

/// Starts connecting to `addr`. The stream can be written to at once (writes are queued
/// until connected); `on_connect` runs in the poll phase with the result. On failure the
/// stream is destroyed after `on_connect`.
///
/// # Errors
///
/// Fails if the socket cannot be created or the OS rejects the connect at once.
pub fn connect<F>(lp: &mut EventLoop, addr: SocketAddr, on_connect: F) -> io::Result<Stream>
where
    F: FnOnce(&mut EventLoop, Stream, io::Result<()>) + 'static,
{
    let s = mio::net::TcpStream::connect(addr)?;
    let stream = Stream::open(lp, Sock::Tcp(s), true)?;
    stream.set_connect_cb(lp, Box::new(on_connect));
    Ok(stream)
}

/// Puts an existing connected socket (e.g. one received from the primary) on the loop.
///
/// # Errors
///
/// Fails if the socket cannot be made non-blocking or registered.
pub fn open_std(lp: &mut EventLoop, s: std::net::TcpStream) -> io::Result<Stream> {
    s.set_nonblocking(true)?;
    Stream::open(lp, Sock::Tcp(mio::net::TcpStream::from_std(s)), false)
}

/// As [`open_std`] for a connection the primary handed off. It is non-blocking already
/// (the primary accepted it with `SOCK_NONBLOCK`, a flag of the open file the hand-off
/// shares), which saves a system call.
pub(crate) fn open_handed_off(lp: &mut EventLoop, s: std::net::TcpStream) -> io::Result<Stream> {
    Stream::accepted(
        lp,
        Sock::Tcp(mio::net::TcpStream::from_std(s)),
        &StreamOptions::default(),
    )
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::*;

    /// A connected (client, server) pair; the client's reads time out after `timeout`.
    fn pair(timeout: Duration) -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(timeout)).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, server)
    }

    #[test]
    fn closing_an_adopted_connection_leaves_other_copies_alone() {
        // Closing a stream only closes this process's descriptor: it does not shut down a
        // socket someone else still uses.
        let (mut client, server) = pair(Duration::from_millis(200));
        let other_copy = server.try_clone().unwrap();
        let mut lp = EventLoop::new().unwrap();
        let s = open_std(&mut lp, server).unwrap();
        s.destroy(&mut lp);
        lp.run().unwrap();
        let mut b = [0u8; 1];
        let e = client.read(&mut b).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        );
        drop(other_copy);
    }
}
