//! UDP sockets on the loop.
//!
//! Datagrams are received in the poll phase, one callback per datagram (until the socket
//! reports `WouldBlock`, at most 32 per event). [`UdpSocket::send_to`] sends at once and
//! reports `WouldBlock` rather than queueing: datagrams may be dropped anyway.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::rt::{EventLoop, IoId};

/// Largest UDP payload (and the receive buffer size).
const MAX_DATAGRAM: usize = 65_536;

/// A UDP socket on a loop. `Copy`: it is an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpSocket(pub(crate) IoId);

type MsgCb = Box<dyn FnMut(&mut EventLoop, UdpSocket, &[u8], SocketAddr)>;
type ErrCb = Box<dyn FnMut(&mut EventLoop, UdpSocket, io::Error)>;

pub(crate) struct UdpState {
    sock: mio::net::UdpSocket,
    on_msg: Option<MsgCb>,
    on_error: Option<ErrCb>,
}

impl fmt::Debug for UdpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpState")
            .field("sock", &self.sock)
            .finish_non_exhaustive()
    }
}

impl Source for UdpState {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.sock.register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.sock.reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.sock.deregister(r)
    }
}

/// Binds a UDP socket on `addr`; `on_message(lp, sock, data, from)` runs per datagram.
///
/// # Errors
///
/// Fails if the address cannot be bound or the socket cannot be registered.
pub fn bind<F>(lp: &mut EventLoop, addr: SocketAddr, on_message: F) -> io::Result<UdpSocket>
where
    F: FnMut(&mut EventLoop, UdpSocket, &[u8], SocketAddr) + 'static,
{
    open(lp, mio::net::UdpSocket::bind(addr)?, Box::new(on_message))
}

/// Puts an existing, bound UDP socket (e.g. one received from the primary) on the loop. The
/// socket is switched to non-blocking mode.
///
/// # Errors
///
/// Fails if the socket cannot be made non-blocking or registered.
pub fn open_std<F>(
    lp: &mut EventLoop,
    sock: std::net::UdpSocket,
    on_message: F,
) -> io::Result<UdpSocket>
where
    F: FnMut(&mut EventLoop, UdpSocket, &[u8], SocketAddr) + 'static,
{
    sock.set_nonblocking(true)?;
    open(
        lp,
        mio::net::UdpSocket::from_std(sock),
        Box::new(on_message),
    )
}

fn open(lp: &mut EventLoop, sock: mio::net::UdpSocket, on_msg: MsgCb) -> io::Result<UdpSocket> {
    let st = UdpState {
        sock,
        on_msg: Some(on_msg),
        on_error: None,
    };
    let id = lp.register(st, Interest::READABLE, |lp, id, _| {
        recv_some(lp, UdpSocket(id))
    })?;
    lp.set_io_kind(id, "UdpSocket");
    Ok(UdpSocket(id))
}

impl UdpSocket {
    /// The loop handle id (for [`EventLoop::set_ref`] and friends).
    pub fn id(self) -> IoId {
        self.0
    }

    /// Sends one datagram now.
    ///
    /// # Errors
    ///
    /// Fails with `WouldBlock` if the socket buffer is full, or with the OS error.
    pub fn send_to(self, lp: &mut EventLoop, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        match lp.io_mut::<UdpState>(self.0) {
            Some(st) => st.sock.send_to(data, to),
            None => Err(super::stream::closed()),
        }
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// Fails if the socket is closed.
    pub fn local_addr(self, lp: &EventLoop) -> io::Result<SocketAddr> {
        match lp.io_ref::<UdpState>(self.0) {
            Some(st) => st.sock.local_addr(),
            None => Err(super::stream::closed()),
        }
    }

    /// Sets the callback for receive errors (the socket stays open).
    pub fn on_error<F>(self, lp: &mut EventLoop, cb: F)
    where
        F: FnMut(&mut EventLoop, UdpSocket, io::Error) + 'static,
    {
        if let Some(st) = lp.io_mut::<UdpState>(self.0) {
            st.on_error = Some(Box::new(cb));
        }
    }

    /// Closes the socket; `on_close` runs in the closing phase.
    pub fn close<F: FnOnce(&mut EventLoop) + 'static>(self, lp: &mut EventLoop, on_close: F) {
        lp.close(self.0, on_close);
    }
}

fn recv_some(lp: &mut EventLoop, u: UdpSocket) {
    let mut buf = std::mem::take(&mut lp.read_buf);
    if buf.len() < MAX_DATAGRAM {
        buf.resize(MAX_DATAGRAM, 0);
    }
    for _ in 0..32 {
        let Some(st) = lp.io_mut::<UdpState>(u.0) else {
            break;
        };
        match st.sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let Some(mut cb) = st.on_msg.take() else {
                    break;
                };
                lp.invoke(|lp| cb(lp, u, &buf[..n], from));
                if let Some(st) = lp.io_mut::<UdpState>(u.0) {
                    st.on_msg.get_or_insert(cb);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                lp.read_buf = buf;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if let Some(mut cb) = st.on_error.take() {
                    lp.invoke(|lp| cb(lp, u, e));
                    if let Some(st) = lp.io_mut::<UdpState>(u.0) {
                        st.on_error.get_or_insert(cb);
                    }
                }
                break;
            }
        }
    }
    lp.read_buf = buf;
    if lp.is_open(u.0) {
        lp.queue_pending(move |lp| recv_some(lp, u));
    }
}
