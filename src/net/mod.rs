//! Loop-driven sockets: TCP and Unix listeners and streams, UDP sockets.
//!
//! Every type here is a `Copy` id into the [`EventLoop`](crate::rt::EventLoop) that owns the
//! socket; methods take the loop as their first argument, and callbacks receive it, so
//! handlers can write, close and schedule freely. The loop's general I/O registration
//! ([`EventLoop::register`](crate::rt::EventLoop::register)) is what these build on; other
//! sources (IPC channels, child-exit descriptors) use it directly.
//!
//! | type | made by | callbacks |
//! |---|---|---|
//! | [`Listener`] | [`tcp::listen`], [`unix::listen`] | connection, error |
//! | [`Stream`] | accepted, [`tcp::connect`], [`unix::connect`], `open_std` | data, end, drain, error, close |
//! | [`UdpSocket`] | [`udp::bind`] | message, error |
//!
//! Streams a listener accepts get its [`StreamOptions`] (by default `TCP_NODELAY` and
//! back-pressure from a peer that does not read; see [`Stream`] and
//! [`Listener::set_stream_options`]).

mod listener;
mod stream;
pub mod tcp;
pub mod udp;
pub mod unix;

pub use listener::{ACCEPT_RETRY_MS, ACCEPTS_PER_EVENT, AcceptCounts, Listener};

/// Node's default `listen()` backlog (mio and std use 128).
pub const DEFAULT_BACKLOG: i32 = 511;

/// Re-issues `listen()` with [`DEFAULT_BACKLOG`] on an already listening socket.
fn set_backlog<F: std::os::fd::AsFd>(sock: &F) -> std::io::Result<()> {
    let backlog = nix::sys::socket::Backlog::new(DEFAULT_BACKLOG)?;
    nix::sys::socket::listen(sock, backlog)?;
    Ok(())
}
pub use stream::{
    Backpressure, DEFAULT_BACKPRESSURE, DEFAULT_HIGH_WATER_MARK, HELD_READ_LIMIT, Stream,
    StreamOptions,
};
pub use udp::UdpSocket;
