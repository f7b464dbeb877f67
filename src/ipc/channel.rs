//! A non-blocking framed channel over a Unix stream socket, carrying descriptors.
//!
//! * **Sending** queues frames in a [`SendQueue`]; [`Channel::flush`] writes them with as
//!   few `sendmsg` calls as possible (many small frames share one call through iovecs; a
//!   frame with descriptors starts its own call, so `SCM_RIGHTS` rides with its first
//!   byte). The queue is bounded in bytes: when full, [`Channel::send`] fails with
//!   [`SendErrorKind::QueueFull`] and hands the descriptors back.
//! * **Receiving** reads with `MSG_CMSG_CLOEXEC` and a control buffer sized for the maximum
//!   descriptor count, and pairs descriptors with frames by the header's count through a
//!   FIFO ([`RecvBuffer`]). Descriptors no frame claims are closed and counted.
//! * **A truncated receive** (`MSG_CTRUNC`) is one of two things. With the control buffer
//!   full, the peer sent more descriptors in one message than any frame may carry: a
//!   protocol violation, which fails the channel. With fewer, this process's descriptor
//!   table was full (`RLIMIT_NOFILE`, or the system's file limit) and the kernel closed
//!   the descriptors it could not install: the channel logs it, and delivers the frame
//!   they belonged to with the ones that did arrive and [`InFrame::lost_fds`] set, so the
//!   receiver can account for what was lost; the channel stays open
//!   ([`Channel::lost_fds`] counts them).
//! * **Failure** of any kind (malformed frame, descriptor mismatch, EOF in the middle of a
//!   frame, an I/O error) closes the channel: the reason is logged once, both directions
//!   are shut down, queued descriptors are closed, and the error is returned. Nothing
//!   panics.
//!
//! The channel is a mio [`Source`]: register it for `READABLE | WRITABLE` once (events are
//! edge-triggered), call [`Channel::recv`] until it returns [`Recv::WouldBlock`] on
//! readable, and [`Channel::flush`] on writable or after queueing. Where a short read
//! proves the socket empty (Linux: fewer bytes than asked and no descriptors),
//! `WouldBlock` comes without another `recvmsg`: data arriving later raises a new event.
//!
//! A reader that serves several channels (the primary) must not let one flooding peer
//! hold it: it reads at most [`READ_BUDGET`] bytes per wake-up and, where
//! [`Channel::needs_read`] says the next frame needs another read, stops there and comes
//! back on a later loop turn by itself (no new readable edge comes for data already
//! waiting). Stopping only where no whole frame is buffered means every frame read from
//! the socket has been handed to the reader, with its descriptors.

use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use mio::event::Source;
use mio::net::UnixStream;
use mio::{Interest, Registry, Token};

use super::buf::{InFrame, READ_CHUNK, RecvBuffer, SendFd, SendQueue};
use super::frame::{FrameError, HEADER_LEN, Kind, Limits};
use super::ledger::FdLedger;
use crate::sys;

/// Bytes the loop's channel reader takes from one channel per loop turn before it moves
/// on to other handles (the primary: other workers' channels and its listeners); it comes
/// back to the channel on the next turn. It reads at least once, and stops before a read
/// that could go past the budget, unless the frame at hand is unfinished: that frame is
/// read whole, so a turn reads at most this plus one frame
/// ([`Limits::max_payload`](super::Limits)). 64 KiB is one default read: for 16-byte
/// messages, about 2 700 frames.
pub const READ_BUDGET: usize = 64 << 10;

/// Limits and sizes of one channel. Every bound is explicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Frame limits: payload size (default 16 MiB) and descriptors per frame (default 32).
    pub limits: Limits,
    /// Most bytes the outgoing queue holds (default 32 MiB + 16 bytes: two largest frames).
    /// Must hold at least one largest frame.
    pub max_queued_bytes: usize,
    /// Most bytes one read asks for (default 64 KiB). Tests set 1 to force 1-byte reads.
    pub read_size: usize,
    /// Once this many bytes are queued, `send` tries to write at once instead of waiting
    /// for [`Channel::flush`] (default 64 KiB).
    pub flush_threshold: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        let limits = Limits::default();
        ChannelConfig {
            limits,
            max_queued_bytes: 2 * (HEADER_LEN + limits.max_payload as usize),
            read_size: READ_CHUNK,
            flush_threshold: READ_CHUNK,
        }
    }
}

impl ChannelConfig {
    /// Checks the settings against each other and against what is supported.
    ///
    /// # Errors
    ///
    /// `InvalidInput` naming the setting that is out of range.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |s: String| Err(io::Error::new(io::ErrorKind::InvalidInput, s));
        if let Err(e) = self.limits.validate() {
            return bad(e.to_string());
        }
        let frame = HEADER_LEN + self.limits.max_payload as usize;
        if self.max_queued_bytes < frame {
            return bad(format!(
                "max_queued_bytes {} cannot hold one frame of {frame} bytes",
                self.max_queued_bytes
            ));
        }
        if self.read_size == 0 {
            return bad("read_size must be at least 1".into());
        }
        Ok(())
    }
}

/// What [`Channel::recv`] got.
#[derive(Debug)]
pub enum Recv<'a> {
    /// A whole frame with its descriptors.
    Frame(InFrame<'a>),
    /// Nothing more to read now; wait for the next readable event.
    WouldBlock,
    /// The peer closed its end cleanly, at a frame boundary.
    Eof,
}

/// What [`Channel::flush`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Done,
    /// The socket is full; the rest goes on the next writable event.
    Pending,
}

/// Why a channel failed. Any of these closes the channel.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelError {
    /// A socket call failed.
    Io(io::Error),
    /// A frame header was invalid.
    Frame(FrameError),
    /// A frame declared more descriptors than arrived with it.
    FdMismatch {
        /// Descriptors the header declared.
        declared: u8,
        /// Descriptors waiting in the FIFO.
        available: usize,
    },
    /// The peer closed its end in the middle of a frame.
    EofMidFrame {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// The channel was closed earlier (by an error or by [`Channel::close`]).
    Closed,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Io(e) => write!(f, "socket error: {e}"),
            ChannelError::Frame(e) => write!(f, "malformed frame: {e}"),
            ChannelError::FdMismatch {
                declared,
                available,
            } => write!(
                f,
                "frame declares {declared} fds but only {available} arrived with it"
            ),
            ChannelError::EofMidFrame { buffered } => {
                write!(
                    f,
                    "peer closed mid-frame ({buffered} bytes of a frame buffered)"
                )
            }
            ChannelError::Closed => write!(f, "channel is closed"),
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // `Display` already printed the wrapped error: go on from its source.
        match self {
            ChannelError::Io(e) => e.source(),
            ChannelError::Frame(e) => e.source(),
            _ => None,
        }
    }
}

impl From<FrameError> for ChannelError {
    fn from(e: FrameError) -> Self {
        ChannelError::Frame(e)
    }
}

impl From<ChannelError> for io::Error {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::Io(e) => e,
            ChannelError::Closed => io::Error::new(io::ErrorKind::NotConnected, e),
            ChannelError::EofMidFrame { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

impl From<SendError> for io::Error {
    fn from(e: SendError) -> Self {
        let kind = match e.kind {
            SendErrorKind::QueueFull { .. } => io::ErrorKind::WouldBlock,
            SendErrorKind::Closed => io::ErrorKind::NotConnected,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e.to_string())
    }
}

impl From<io::Error> for ChannelError {
    fn from(e: io::Error) -> Self {
        ChannelError::Io(e)
    }
}

/// Why a send was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// The outgoing queue would exceed its byte bound: back-pressure. Flush and retry.
    QueueFull {
        /// Bytes this frame needs.
        needed: usize,
        /// Bytes already queued.
        queued: usize,
        /// The bound.
        max: usize,
    },
    /// The frame breaks the frame limits.
    Frame(FrameError),
    /// The message may not carry that many descriptors.
    Proto(super::proto::ProtoError),
    /// The channel is closed.
    Closed,
}

/// A refused send. The descriptors that were to go with the frame come back, so the caller
/// can send them elsewhere (nothing is lost).
#[derive(Debug)]
pub struct SendError {
    /// Why.
    pub kind: SendErrorKind,
    /// The descriptors of the refused frame.
    pub fds: Vec<SendFd>,
}

impl SendError {
    pub(crate) fn new(kind: SendErrorKind, fds: Vec<SendFd>) -> Self {
        SendError { kind, fds }
    }

    /// Whether this is back-pressure (the queue is full) rather than a permanent failure.
    pub fn is_queue_full(&self) -> bool {
        matches!(self.kind, SendErrorKind::QueueFull { .. })
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SendErrorKind::QueueFull {
                needed,
                queued,
                max,
            } => write!(
                f,
                "send queue full: {needed} more bytes on top of {queued} would exceed {max}"
            ),
            SendErrorKind::Frame(e) => write!(f, "cannot send: {e}"),
            SendErrorKind::Proto(e) => write!(f, "cannot send: {e}"),
            SendErrorKind::Closed => write!(f, "cannot send: channel is closed"),
        }
    }
}

impl std::error::Error for SendError {}

/// A framed, descriptor-carrying channel over a non-blocking Unix stream socket.
#[derive(Debug)]
pub struct Channel {
    sock: UnixStream,
    rx: RecvBuffer,
    tx: SendQueue,
    config: ChannelConfig,
    closed: bool,
    /// The last read found the socket empty (see [`Channel::recv`]).
    drained: bool,
    /// Bytes read from the socket so far.
    received: u64,
    /// The loop's reader stopped at its budget and has queued its return (at most one).
    pub(crate) resume_queued: bool,
    /// Where the frames with descriptors are in the outgoing stream, if tracked (see
    /// [`Channel::track_fds`]).
    ledger: Option<FdLedger>,
}

impl Channel {
    /// Wraps a connected Unix stream socket (made non-blocking here).
    ///
    /// # Errors
    ///
    /// The configuration is invalid, or the socket cannot be made non-blocking.
    pub fn new(fd: OwnedFd, config: ChannelConfig) -> io::Result<Channel> {
        config.validate()?;
        sys::set_nonblocking(fd.as_fd(), true)?;
        let sock = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd));
        Ok(Channel {
            sock,
            rx: RecvBuffer::new(config.limits),
            tx: SendQueue::new(config.limits, config.max_queued_bytes),
            config,
            closed: false,
            drained: false,
            received: 0,
            resume_queued: false,
            ledger: None,
        })
    }

    /// Two connected channels (over a fresh socketpair).
    ///
    /// # Errors
    ///
    /// `socketpair` fails or the configuration is invalid.
    pub fn pair(config: ChannelConfig) -> io::Result<(Channel, Channel)> {
        let (a, b) = sys::socketpair()?;
        Ok((Channel::new(a, config)?, Channel::new(b, config)?))
    }

    /// The configuration in force.
    pub fn config(&self) -> &ChannelConfig {
        &self.config
    }

    /// Keeps an [`FdLedger`] from now on: the channel records where its frames with
    /// descriptors start, so that a sender holding a duplicate of the peer's end of the
    /// socket can tell which of its descriptors the peer has read
    /// ([`Channel::unread_fds`]) and get back the ones it never read
    /// ([`Channel::take_ledger`], [`FdLedger::read_back`]). Call it before the first send.
    pub fn track_fds(&mut self) {
        self.ledger.get_or_insert_with(FdLedger::default);
    }

    /// How many descriptors sent on this channel the peer has not read yet (0 without a
    /// ledger); `peer` is a duplicate of the peer's end of the socket.
    ///
    /// # Errors
    ///
    /// The `FIONREAD` on `peer` failed.
    pub fn unread_fds(&mut self, peer: BorrowedFd<'_>) -> io::Result<u32> {
        match &mut self.ledger {
            Some(l) => l.unread_fds(peer),
            None => Ok(0),
        }
    }

    /// Closes the channel, keeping what is still queued in the ledger, and returns the
    /// ledger (if the channel kept one).
    pub fn take_ledger(&mut self) -> Option<FdLedger> {
        self.close();
        self.ledger.take()
    }

    /// Queues a frame. It is written by [`Channel::flush`], or at once if more than
    /// `flush_threshold` bytes are queued.
    ///
    /// # Errors
    ///
    /// See [`SendErrorKind`]; a write error met while flushing early closes the channel
    /// and is reported as [`SendErrorKind::Closed`] on the next send (and by `flush`).
    pub fn send(&mut self, kind: Kind, payload: &[u8]) -> Result<(), SendError> {
        self.send_with_fds(kind, payload, Vec::new())
    }

    /// Queues a frame carrying descriptors (see [`SendFd`]).
    ///
    /// # Errors
    ///
    /// As [`Channel::send`]; the descriptors come back in the error.
    pub fn send_with_fds(
        &mut self,
        kind: Kind,
        payload: &[u8],
        fds: Vec<SendFd>,
    ) -> Result<(), SendError> {
        self.send_with(kind, payload.len(), fds, |b| b.extend_from_slice(payload))
    }

    /// Queues a frame whose payload (`len` bytes) `write` appends to the queue directly,
    /// without an intermediate buffer.
    ///
    /// # Errors
    ///
    /// As [`Channel::send_with_fds`].
    pub fn send_with<W: FnOnce(&mut Vec<u8>)>(
        &mut self,
        kind: Kind,
        len: usize,
        fds: Vec<SendFd>,
        write: W,
    ) -> Result<(), SendError> {
        if self.closed {
            return Err(SendError::new(SendErrorKind::Closed, fds));
        }
        let nfds = fds.len();
        self.tx.push_with(kind, len, fds, write)?;
        if let Some(l) = &mut self.ledger {
            l.queued(HEADER_LEN + len, nfds);
        }
        if self.tx.queued_bytes() >= self.config.flush_threshold {
            // Errors close the channel; the caller learns on its next send or flush.
            let _ = self.flush();
        }
        Ok(())
    }

    /// Writes as much of the queue as the socket takes.
    ///
    /// # Errors
    ///
    /// A socket error (the channel is then closed), or [`ChannelError::Closed`].
    pub fn flush(&mut self) -> Result<Flush, ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        let sock = self.sock.as_fd();
        let mut sent = 0;
        let flushed = self.tx.flush_with(|iovs, fds| {
            let r = sys::scm::send_with_fds(sock, iovs, fds);
            if let Ok(n) = r {
                sent += n;
            }
            r
        });
        if let Some(l) = &mut self.ledger {
            l.written(sent);
        }
        match flushed {
            Ok(true) => Ok(Flush::Done),
            Ok(false) => Ok(Flush::Pending),
            Err(e) => Err(self.fail(e.into())),
        }
    }

    /// Receives the next frame, reading from the socket as needed.
    ///
    /// The frame's payload borrows the channel until the next call. [`Recv::WouldBlock`]
    /// means "wait for the next readable event": it comes from a `recvmsg` that found
    /// nothing, or, on Linux, without one when the previous read was short and carried no
    /// descriptors (the socket was empty then, so whatever arrives since raises an event).
    /// So, with edge-triggered events, call it until `WouldBlock` on every readable event:
    /// a caller that stops earlier and waits for the next event may miss what came.
    ///
    /// # Errors
    ///
    /// Any [`ChannelError`]; the channel is then closed and the reason logged.
    pub fn recv(&mut self) -> Result<Recv<'_>, ChannelError> {
        if self.closed {
            return Err(ChannelError::Closed);
        }
        loop {
            match self.rx.frame_ready() {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return Err(self.fail(e)),
            }
            if std::mem::take(&mut self.drained) {
                return Ok(Recv::WouldBlock);
            }
            let sock = self.sock.as_fd();
            let max_fds = self.config.limits.max_fds as usize;
            let mut drained = false;
            let mut cut = None;
            let read = self.rx.fill_with(self.config.read_size, |buf, fds| {
                let asked = buf.len();
                let r = sys::scm::recv_with_fds(sock, buf, max_fds, fds)?;
                if r.truncated {
                    if r.fds >= max_fds {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "control data truncated (MSG_CTRUNC): peer sent more \
                                 than {max_fds} fds in one message"
                            ),
                        ));
                    }
                    cut = Some(r.fds);
                }
                // A read stops early at a message with descriptors, so only a short read
                // without any shows that nothing was left.
                drained = sys::SHORT_READ_DRAINS && r.bytes < asked && r.fds == 0 && !r.truncated;
                Ok(r.bytes)
            });
            if let (Ok(_), Some(got)) = (&read, cut) {
                self.rx.truncated(got);
                log::warn!(
                    "ipc channel fd {}: descriptor table full ({}): only {got} descriptor(s) \
                     of a message could be received, the kernel closed the rest",
                    self.sock.as_raw_fd(),
                    sys::fd_limit_summary(),
                );
            }
            match read {
                Ok(0) => return self.on_eof(),
                Ok(n) => {
                    self.drained = drained;
                    self.received += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Recv::WouldBlock),
                Err(e) => return Err(self.fail(e.into())),
            }
        }
        match self.rx.next_frame() {
            Ok(Some(frame)) => Ok(Recv::Frame(frame)),
            // Not reached: frame_ready checked everything next_frame checks.
            _ => Ok(Recv::WouldBlock),
        }
    }

    fn on_eof(&mut self) -> Result<Recv<'static>, ChannelError> {
        let buffered = self.rx.buffered();
        if buffered > 0 {
            return Err(self.fail(ChannelError::EofMidFrame { buffered }));
        }
        self.rx.close_strays();
        Ok(Recv::Eof)
    }

    /// Bytes read from the socket so far (for read budgets: see the module docs).
    pub fn received_bytes(&self) -> u64 {
        self.received
    }

    /// Whether the next [`Channel::recv`] would read the socket: the channel is open, no
    /// whole frame is buffered, and the last read did not prove the socket empty. A reader
    /// that stops here instead of at [`Recv::WouldBlock`] must come back by itself.
    pub fn needs_read(&self) -> bool {
        !self.closed && !self.drained && matches!(self.rx.frame_ready(), Ok(false))
    }

    /// Bytes queued for sending.
    pub fn queued_bytes(&self) -> usize {
        self.tx.queued_bytes()
    }

    /// Descriptors received that no frame claimed (each was closed).
    pub fn stray_fds(&self) -> u64 {
        self.rx.stray_fds()
    }

    /// Descriptors frames declared that never arrived because this process's descriptor
    /// table was full when they came (see [`InFrame::lost_fds`]).
    pub fn lost_fds(&self) -> u64 {
        self.rx.lost_fds()
    }

    /// Whether the channel has been closed (by an error or by [`Channel::close`]).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closes the channel: shuts both directions down (the peer reads EOF) and drops
    /// everything queued, closing queued descriptors (with a ledger, they are kept in it
    /// for [`FdLedger::read_back`]). Idempotent.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.sock.shutdown(Shutdown::Both);
            match &mut self.ledger {
                Some(l) => {
                    let (bytes, fds) = self.tx.take_unsent();
                    l.keep_unsent(bytes, fds);
                }
                None => {
                    self.tx.clear();
                }
            }
            self.rx.clear();
        }
    }

    fn fail(&mut self, err: ChannelError) -> ChannelError {
        log::warn!("ipc channel fd {}: closing: {err}", self.sock.as_raw_fd());
        self.close();
        err
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Source for Channel {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.sock.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.sock.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.sock.deregister(registry)
    }
}
