//! A connected byte stream (TCP or Unix) driven by the loop; see [`Stream`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::rt::{EventLoop, IoId, Readiness};

/// Node's default `highWaterMark` for sockets.
pub const DEFAULT_HIGH_WATER_MARK: usize = 16 * 1024;

/// Bytes read per `read` call (shared buffer of the loop).
const READ_BUF: usize = 64 * 1024;

/// Reads per readiness event before yielding to other handles (libuv reads 32 times).
const READS_PER_EVENT: usize = 32;

/// Most bytes a stream without a data callback reads and holds for the data callback set
/// later; once this much is held, it stops reading until one is set.
pub const HELD_READ_LIMIT: usize = 64 * 1024;

/// Once fully flushed, an output buffer whose capacity grew past this is given back.
const KEEP_OUT_CAPACITY: usize = 1024 * 1024;

/// When a stream stops reading because its peer does not read what it is sent: reading
/// stops once `high` bytes of output are queued and resumes once the queue is down to
/// `low` (see [`Stream`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backpressure {
    /// Queued output at which reading stops.
    pub high: usize,
    /// Queued output at which reading resumes (at most `high`).
    pub low: usize,
}

/// The back-pressure of accepted and handed-off streams: reading stops at 256 KiB of
/// queued output and resumes at 64 KiB.
pub const DEFAULT_BACKPRESSURE: Backpressure = Backpressure {
    high: 256 * 1024,
    low: 64 * 1024,
};

/// Settings a listener (or a worker's server) gives each stream it accepts or adopts.
/// The default, used unless changed, is what a server wants: `TCP_NODELAY` on and
/// [`DEFAULT_BACKPRESSURE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Set `TCP_NODELAY` (Nagle's algorithm off) on TCP streams. On by default, as in
    /// Node's HTTP server: with Nagle on, a response written in two parts waits for the
    /// client's delayed acknowledgement (up to 40 ms on Linux). No effect on Unix streams.
    pub no_delay: bool,
    /// Stop reading while the peer does not read (see [`Backpressure`]); `None`: never.
    pub backpressure: Option<Backpressure>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            no_delay: true,
            backpressure: Some(DEFAULT_BACKPRESSURE),
        }
    }
}

/// A connected TCP or Unix stream on a loop. `Copy`: it is an id; a stale one does nothing.
///
/// Reads are delivered to a data callback; writes are buffered, with a high-water mark and
/// a drain callback; [`Stream::end`] half-closes; close callbacks run in the closing phase.
///
/// Like a Node `net.Socket`:
/// * [`Stream::write`] writes at once when nothing is queued (libuv's `uv_try_write`) and
///   queues the rest; it returns `false` once the queue reaches the high-water mark
///   (16 KiB by default), and the drain callback runs when the queue has been flushed;
/// * writes made while the stream's own data callback runs (and the nextTicks and
///   microtasks after it) are corked: they are queued and leave together, in one `write`,
///   when the callback returns, so a response written as head then body goes out in one
///   segment. [`Stream::cork`] and [`Stream::uncork`] do the same anywhere else;
/// * when the peer ends its side, the end callback runs and the stream ends its own side
///   too (Node's default `allowHalfOpen: false`); once both sides are done, it closes;
/// * a write error found inside `write` is delivered in the pending phase (libuv defers it
///   with `uv__io_feed`); errors found in the poll phase are delivered there. After the
///   error callback the stream is destroyed;
/// * a stream reads from the start, with or without a data callback. Without one, up to
///   [`HELD_READ_LIMIT`] bytes are held for the data callback set later (then reading
///   stops until one is set); the peer's FIN is seen all the same: the end callback runs
///   at once if nothing is held, or after the held bytes were delivered. A stream with
///   nothing to read or write (paused, held buffer full, read side ended, nothing queued)
///   is inactive and does not keep the loop alive.
///
/// # Back-pressure from a peer that does not read
///
/// With a [`Backpressure`] set, a stream whose queued output reaches `high` bytes stops
/// reading (it no longer watches for input and its data callback is not called) until the
/// queue drains to `low` bytes; then reading resumes by itself. A client that sends
/// requests without ever reading the answers thus costs the server at most about `high`
/// bytes plus one read's worth of answers, not memory without bound: the client is
/// stalled by its own full socket buffers instead. Streams accepted by a [`Listener`] or
/// handed to a worker's server get [`StreamOptions::default`], which turns this on with
/// [`DEFAULT_BACKPRESSURE`] (and `TCP_NODELAY`); streams made by `connect` and `open_std`
/// have it off. [`Stream::set_backpressure`] changes it per stream,
/// [`Listener::set_stream_options`] per listener.
///
/// [`Listener`]: super::Listener
/// [`Listener::set_stream_options`]: super::Listener::set_stream_options
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stream(pub(crate) IoId);

/// The socket behind a [`Stream`].
#[derive(Debug)]
pub(crate) enum Sock {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

impl Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.shutdown(Shutdown::Write),
            Sock::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    /// `Ok(true)` once a non-blocking connect has finished, `Ok(false)` while it is running.
    fn connect_done(&self) -> io::Result<bool> {
        let (err, peer) = match self {
            Sock::Tcp(s) => (s.take_error()?, s.peer_addr().map(|_| ())),
            Sock::Unix(s) => (s.take_error()?, s.peer_addr().map(|_| ())),
        };
        if let Some(e) = err {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn source(&mut self) -> &mut dyn Source {
        match self {
            Sock::Tcp(s) => s,
            Sock::Unix(s) => s,
        }
    }
}

type ConnectCb = Box<dyn FnOnce(&mut EventLoop, Stream, io::Result<()>)>;
type DataCb = Box<dyn FnMut(&mut EventLoop, Stream, &[u8])>;
type EventCb = Box<dyn FnMut(&mut EventLoop, Stream)>;
type ErrorCb = Box<dyn FnMut(&mut EventLoop, Stream, io::Error)>;
type CloseCb = Box<dyn FnOnce(&mut EventLoop, Stream)>;

#[derive(Default)]
struct Callbacks {
    connect: Option<ConnectCb>,
    data: Option<DataCb>,
    end: Option<EventCb>,
    drain: Option<EventCb>,
    error: Option<ErrorCb>,
    close: Option<CloseCb>,
}

/// The loop-owned state of a stream (registered as the handle's source).
pub(crate) struct StreamState {
    sock: Sock,
    out: Vec<u8>,
    out_pos: usize,
    hwm: usize,
    need_drain: bool,
    connecting: bool,
    ending: bool,
    /// Set by [`Stream::close_when_written`]: close (not half-close) once the queue is out.
    close_when_written: bool,
    write_shut: bool,
    read_eof: bool,
    paused: bool,
    /// Reading stopped by back-pressure until the queue drains to `backpressure.low`.
    stalled: bool,
    backpressure: Option<Backpressure>,
    /// Writes are queued, not written, while this is above zero.
    corked: u32,
    /// Bytes read while no data callback was set.
    held: Vec<u8>,
    /// The peer's FIN came after the held bytes; reported once they are delivered.
    held_eof: bool,
    /// `TCP_NODELAY` as last set through this stream (`None`: not set here, unknown).
    no_delay: Option<bool>,
    cbs: Callbacks,
}

impl fmt::Debug for StreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamState")
            .field("sock", &self.sock)
            .field("queued", &(self.out.len() - self.out_pos))
            .finish_non_exhaustive()
    }
}

impl Source for StreamState {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.sock.source().register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.sock.source().reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.sock.source().deregister(r)
    }
}

impl StreamState {
    fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Whether reading stops for want of a data callback.
    fn held_full(&self) -> bool {
        self.cbs.data.is_none() && self.held.len() >= HELD_READ_LIMIT
    }

    fn wanted(&self) -> Option<Interest> {
        let read = !self.paused && !self.read_eof && !self.stalled && !self.held_full();
        let write = self.connecting || (self.queued() > 0 && self.corked == 0);
        match (read, write) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

fn state(lp: &mut EventLoop, s: Stream) -> Option<&mut StreamState> {
    lp.io_mut::<StreamState>(s.0)
}

impl Stream {
    /// Registers a connected (or connecting) socket on the loop.
    pub(crate) fn open(lp: &mut EventLoop, sock: Sock, connecting: bool) -> io::Result<Stream> {
        let st = StreamState {
            sock,
            out: Vec::new(),
            out_pos: 0,
            hwm: DEFAULT_HIGH_WATER_MARK,
            need_drain: false,
            connecting,
            ending: false,
            close_when_written: false,
            write_shut: false,
            read_eof: false,
            paused: false,
            stalled: false,
            backpressure: None,
            corked: 0,
            held: Vec::new(),
            held_eof: false,
            no_delay: None,
            cbs: Callbacks::default(),
        };
        let interest = if connecting {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let kind = match st.sock {
            Sock::Tcp(_) => "TcpStream",
            Sock::Unix(_) => "UnixStream",
        };
        let id = lp.register(st, interest, |lp, id, r| on_ready(lp, Stream(id), r))?;
        lp.set_io_kind(id, kind);
        Ok(Stream(id))
    }

    /// Registers a socket a server accepted (or was handed) with `opts` applied. A failure
    /// to set `TCP_NODELAY` is logged and the stream served anyway (the socket's own error,
    /// if it has one, reaches the stream's callbacks).
    pub(crate) fn accepted(
        lp: &mut EventLoop,
        sock: Sock,
        opts: &StreamOptions,
    ) -> io::Result<Stream> {
        let s = Stream::open(lp, sock, false)?;
        if let Err(e) = s.configure(lp, opts) {
            log::debug!("forkloop: accepted stream: cannot set TCP_NODELAY: {e}");
        }
        Ok(s)
    }

    pub(crate) fn set_connect_cb(self, lp: &mut EventLoop, cb: ConnectCb) {
        if let Some(st) = state(lp, self) {
            st.cbs.connect = Some(cb);
        }
    }

    /// The loop handle id (for [`EventLoop::set_ref`] and friends).
    pub fn id(self) -> IoId {
        self.0
    }

    /// Whether the stream is still open (not destroyed or closed).
    pub fn is_open(self, lp: &EventLoop) -> bool {
        lp.io_ref::<StreamState>(self.0).is_some()
    }

    /// Sets the data callback and starts reading. Each call gets the bytes of one read.
    pub fn on_data<F>(self, lp: &mut EventLoop, cb: F)
    where
        F: FnMut(&mut EventLoop, Stream, &[u8]) + 'static,
    {
        let Some(st) = state(lp, self) else {
            return;
        };
        st.cbs.data = Some(Box::new(cb));
        if !st.held.is_empty() || st.held_eof {
            lp.queue_pending(move |lp| read_some(lp, self, false));
        }
        update_interest(lp, self);
    }

    /// Sets the callback for the peer ending its side (read EOF).
    pub fn on_end<F: FnMut(&mut EventLoop, Stream) + 'static>(self, lp: &mut EventLoop, cb: F) {
        if let Some(st) = state(lp, self) {
            st.cbs.end = Some(Box::new(cb));
        }
    }

    /// Sets the callback run when the write queue empties after `write` returned `false`.
    pub fn on_drain<F: FnMut(&mut EventLoop, Stream) + 'static>(self, lp: &mut EventLoop, cb: F) {
        if let Some(st) = state(lp, self) {
            st.cbs.drain = Some(Box::new(cb));
        }
    }

    /// Sets the error callback; the stream is destroyed right after it runs.
    pub fn on_error<F>(self, lp: &mut EventLoop, cb: F)
    where
        F: FnMut(&mut EventLoop, Stream, io::Error) + 'static,
    {
        if let Some(st) = state(lp, self) {
            st.cbs.error = Some(Box::new(cb));
        }
    }

    /// Sets the close callback, run in the closing phase once the stream is closed (by
    /// [`Stream::destroy`], after an error, or when both sides have ended).
    pub fn on_close<F: FnOnce(&mut EventLoop, Stream) + 'static>(self, lp: &mut EventLoop, cb: F) {
        if let Some(st) = state(lp, self) {
            st.cbs.close = Some(Box::new(cb));
        }
    }

    /// Queues `data` for writing (writing at once what the socket takes). Returns `false`
    /// when the queue is at or above the high-water mark: wait for the drain callback.
    /// Writing after [`Stream::end`] fails with `BrokenPipe`, delivered in the pending phase.
    pub fn write(self, lp: &mut EventLoop, data: &[u8]) -> bool {
        let Some(st) = state(lp, self) else {
            return false;
        };
        if st.ending {
            let e = io::Error::new(io::ErrorKind::BrokenPipe, "write after end");
            lp.queue_pending(move |lp| fail(lp, self, e));
            return false;
        }
        let mut data = data;
        let (corked, was_stalled) = (st.corked > 0, st.stalled);
        if st.queued() == 0 && !st.connecting && !corked {
            match write_now(&mut st.sock, data) {
                Ok(n) => data = &data[n..],
                Err(e) => {
                    lp.queue_pending(move |lp| fail(lp, self, e));
                    return false;
                }
            }
        }
        st.out.extend_from_slice(data);
        let queued = st.queued();
        let below = queued < st.hwm;
        if !below {
            st.need_drain = true;
        }
        if let Some(bp) = st.backpressure
            && queued >= bp.high
        {
            st.stalled = true;
        }
        // While corked the write interest waits for the uncork, which brings it up to
        // date: only a stall changes the interest now.
        if !corked || st.stalled != was_stalled {
            update_interest(lp, self);
        }
        below
    }

    /// Holds writes back: they are queued and leave together at the matching
    /// [`Stream::uncork`] (Node's `socket.cork()`). Calls nest. The stream's own data
    /// callback runs corked already.
    pub fn cork(self, lp: &mut EventLoop) {
        if let Some(st) = state(lp, self) {
            st.corked += 1;
        }
    }

    /// Undoes one [`Stream::cork`]; the last one writes what was queued meanwhile, in one
    /// `write` as far as the socket takes it. Extra calls do nothing.
    pub fn uncork(self, lp: &mut EventLoop) {
        let Some(st) = state(lp, self) else {
            return;
        };
        st.corked = st.corked.saturating_sub(1);
        if st.corked == 0 && !st.connecting {
            flush(lp, self);
            update_interest(lp, self);
        }
    }

    /// Applies `opts`: `TCP_NODELAY` (a system call only when it changes) and the
    /// back-pressure setting.
    ///
    /// # Errors
    ///
    /// The stream is closed, or `TCP_NODELAY` cannot be set (the back-pressure setting is
    /// applied all the same).
    pub fn configure(self, lp: &mut EventLoop, opts: &StreamOptions) -> io::Result<()> {
        self.set_backpressure(lp, opts.backpressure);
        if state(lp, self).is_none() {
            return Err(closed());
        }
        self.set_nodelay(lp, opts.no_delay)
    }

    /// Sets (or, with `None`, turns off) back-pressure on this stream: see [`Stream`].
    /// A `low` above `high` is taken as `high`.
    pub fn set_backpressure(self, lp: &mut EventLoop, bp: Option<Backpressure>) {
        let Some(st) = state(lp, self) else {
            return;
        };
        st.backpressure = bp.map(|b| Backpressure {
            high: b.high,
            low: b.low.min(b.high),
        });
        let queued = st.queued();
        let stall = st.backpressure.is_some_and(|b| queued >= b.high);
        let resume = st.stalled && !stall;
        st.stalled = stall;
        if resume {
            lp.queue_pending(move |lp| read_some(lp, self, false));
        }
        update_interest(lp, self);
    }

    /// The back-pressure setting of this stream.
    pub fn backpressure(self, lp: &EventLoop) -> Option<Backpressure> {
        lp.io_ref::<StreamState>(self.0)
            .and_then(|st| st.backpressure)
    }

    /// Whether reading is stopped by back-pressure (the peer has not read enough of what
    /// it was sent).
    pub fn is_stalled(self, lp: &EventLoop) -> bool {
        lp.io_ref::<StreamState>(self.0)
            .is_some_and(|st| st.stalled)
    }

    /// Bytes queued and not yet written.
    pub fn buffered(self, lp: &EventLoop) -> usize {
        lp.io_ref::<StreamState>(self.0)
            .map_or(0, StreamState::queued)
    }

    /// Sets the high-water mark used by [`Stream::write`].
    pub fn set_high_water_mark(self, lp: &mut EventLoop, bytes: usize) {
        if let Some(st) = state(lp, self) {
            st.hwm = bytes;
        }
    }

    /// Half-closes: shuts down the write side once the queue has been flushed. Reading goes
    /// on until the peer ends too; then the stream closes.
    pub fn end(self, lp: &mut EventLoop) {
        let Some(st) = state(lp, self) else {
            return;
        };
        st.ending = true;
        if st.queued() == 0 && !st.connecting {
            shut_write(lp, self);
        }
    }

    /// Closes once every queued write is out (Node's `socket.destroySoon()`): the peer gets
    /// the data, then the FIN of the close. Unlike [`Stream::end`] it does not wait for the
    /// peer to end too, and reads nothing more; anything the peer still sends makes the
    /// kernel answer with a reset. For when the protocol says no more input comes, e.g. an
    /// HTTP response to a request that asked for `Connection: close`. Writing afterwards
    /// fails as after [`Stream::end`].
    pub fn close_when_written(self, lp: &mut EventLoop) {
        let Some(st) = state(lp, self) else {
            return;
        };
        st.ending = true;
        st.close_when_written = true;
        if st.queued() == 0 && !st.connecting {
            self.destroy(lp);
        }
    }

    /// Stops reading (the stream no longer keeps the loop alive unless writes are queued).
    pub fn pause(self, lp: &mut EventLoop) {
        if let Some(st) = state(lp, self) {
            st.paused = true;
        }
        update_interest(lp, self);
    }

    /// Resumes reading after [`Stream::pause`].
    pub fn resume(self, lp: &mut EventLoop) {
        let Some(st) = state(lp, self) else {
            return;
        };
        if std::mem::take(&mut st.paused) {
            lp.queue_pending(move |lp| read_some(lp, self, false));
        }
        update_interest(lp, self);
    }

    /// Closes at once, dropping queued writes (Node's `socket.destroy()`); the close
    /// callback runs in the closing phase. Writes held back by a cork are first written
    /// as far as the socket takes them without waiting, as they would have been uncorked.
    pub fn destroy(self, lp: &mut EventLoop) {
        if let Some(st) = state(lp, self)
            && st.corked > 0
            && st.queued() > 0
            && !st.connecting
        {
            let pos = st.out_pos;
            let _ = write_now(&mut st.sock, &st.out[pos..]);
        }
        let cb = state(lp, self).and_then(|st| st.cbs.close.take());
        lp.close(self.0, move |lp| {
            if let Some(cb) = cb {
                cb(lp, self);
            }
        });
    }

    /// Sets `TCP_NODELAY` (no-op for Unix streams).
    ///
    /// # Errors
    ///
    /// Fails if the stream is closed or the option cannot be set.
    pub fn set_nodelay(self, lp: &mut EventLoop, on: bool) -> io::Result<()> {
        let Some(st) = state(lp, self) else {
            return Err(closed());
        };
        if st.no_delay == Some(on) {
            // Already so (a server's streams get it when taken): no system call.
            return Ok(());
        }
        if let Sock::Tcp(s) = &st.sock {
            s.set_nodelay(on)?;
        }
        st.no_delay = Some(on);
        Ok(())
    }

    /// Whether `TCP_NODELAY` is set on the socket (as the kernel reports it); `false` for
    /// Unix streams.
    ///
    /// # Errors
    ///
    /// Fails if the stream is closed or the option cannot be read.
    pub fn nodelay(self, lp: &EventLoop) -> io::Result<bool> {
        match lp.io_ref::<StreamState>(self.0).map(|st| &st.sock) {
            Some(Sock::Tcp(s)) => s.nodelay(),
            Some(Sock::Unix(_)) => Ok(false),
            None => Err(closed()),
        }
    }

    /// The peer's address of a TCP stream.
    ///
    /// # Errors
    ///
    /// Fails for closed or Unix streams, or if the socket is not connected.
    pub fn peer_addr(self, lp: &EventLoop) -> io::Result<std::net::SocketAddr> {
        match lp.io_ref::<StreamState>(self.0).map(|st| &st.sock) {
            Some(Sock::Tcp(s)) => s.peer_addr(),
            Some(Sock::Unix(_)) => Err(io::Error::other("not a TCP stream")),
            None => Err(closed()),
        }
    }

    /// The local address of a TCP stream.
    ///
    /// # Errors
    ///
    /// Fails for closed or Unix streams.
    pub fn local_addr(self, lp: &EventLoop) -> io::Result<std::net::SocketAddr> {
        match lp.io_ref::<StreamState>(self.0).map(|st| &st.sock) {
            Some(Sock::Tcp(s)) => s.local_addr(),
            Some(Sock::Unix(_)) => Err(io::Error::other("not a TCP stream")),
            None => Err(closed()),
        }
    }
}

pub(crate) fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream is closed")
}

/// Writes as much as the socket takes without blocking.
fn write_now(sock: &mut Sock, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match sock.write(&data[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn update_interest(lp: &mut EventLoop, s: Stream) {
    let Some(want) = lp.io_ref::<StreamState>(s.0).map(StreamState::wanted) else {
        return;
    };
    if let Err(e) = lp.set_interest(s.0, want) {
        fail(lp, s, e);
    }
}

fn on_ready(lp: &mut EventLoop, s: Stream, r: Readiness) {
    let connecting = lp
        .io_ref::<StreamState>(s.0)
        .is_some_and(|st| st.connecting);
    if connecting && !finish_connect(lp, s) {
        return;
    }
    if r.writable || r.error {
        flush(lp, s);
    }
    if r.readable || r.read_closed || r.error {
        // Without a hang-up or error in this event, a short TCP read proves the socket
        // drained (see `read_some`).
        read_loop(lp, s, !(r.read_closed || r.error));
    }
    update_interest(lp, s);
}

/// Returns whether the stream is connected and open.
fn finish_connect(lp: &mut EventLoop, s: Stream) -> bool {
    let Some(st) = state(lp, s) else {
        return false;
    };
    let result = match st.sock.connect_done() {
        Ok(false) => return false,
        Ok(true) => Ok(()),
        Err(e) => Err(e),
    };
    st.connecting = false;
    let cb = st.cbs.connect.take();
    connected(lp, s, result, cb)
}

/// Reports a connect result; on failure the stream is destroyed.
pub(crate) fn connected(
    lp: &mut EventLoop,
    s: Stream,
    result: io::Result<()>,
    cb: Option<ConnectCb>,
) -> bool {
    match (result, cb) {
        (Ok(()), Some(cb)) => lp.invoke(|lp| cb(lp, s, Ok(()))),
        (Ok(()), None) => {}
        (Err(e), Some(cb)) => {
            lp.invoke(|lp| cb(lp, s, Err(e)));
            s.destroy(lp);
            return false;
        }
        (Err(e), None) => {
            fail(lp, s, e);
            return false;
        }
    }
    if let Some(st) = state(lp, s) {
        st.connecting = false;
    }
    update_interest(lp, s);
    s.is_open(lp)
}

fn flush(lp: &mut EventLoop, s: Stream) {
    let Some(st) = state(lp, s) else {
        return;
    };
    if st.queued() == 0 || st.corked > 0 {
        return;
    }
    let pos = st.out_pos;
    let (sock, out) = (&mut st.sock, &st.out);
    match write_now(sock, &out[pos..]) {
        Ok(n) => st.out_pos += n,
        Err(e) => return fail(lp, s, e),
    }
    let queued = st.queued();
    if st.stalled && st.backpressure.is_none_or(|b| queued <= b.low) {
        st.stalled = false;
        // No readable edge comes for what arrived while reading was stopped.
        lp.queue_pending(move |lp| read_some(lp, s, false));
        update_interest(lp, s);
    }
    let Some(st) = state(lp, s) else {
        return;
    };
    if queued > 0 {
        if st.out_pos >= queued {
            // Keep the buffer from growing while it never empties: drop what was written
            // once that is more than what is left (amortised: each byte moves once).
            st.out.drain(..st.out_pos);
            st.out_pos = 0;
        }
        return;
    }
    st.out.clear();
    st.out_pos = 0;
    if st.out.capacity() > KEEP_OUT_CAPACITY {
        st.out = Vec::new();
    }
    let drain = std::mem::take(&mut st.need_drain);
    let (ending, close) = (st.ending, st.close_when_written);
    update_interest(lp, s);
    if drain {
        emit(lp, s, |c| &mut c.drain);
    }
    if close {
        s.destroy(lp);
    } else if ending {
        shut_write(lp, s);
    }
}

fn shut_write(lp: &mut EventLoop, s: Stream) {
    let Some(st) = state(lp, s) else {
        return;
    };
    if st.write_shut {
        return;
    }
    st.write_shut = true;
    let r = st.sock.shutdown_write();
    let eof = st.read_eof;
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => fail(lp, s, e),
        _ if eof => s.destroy(lp),
        _ => {}
    }
}

/// Reads what the socket has (up to `READS_PER_EVENT` buffers) and delivers it, or holds
/// it while no data callback is set; then brings the interest up to date.
///
/// `short_read_drains`: a TCP read that returns less than the buffer has emptied the
/// receive queue (TCP stops a read early only when no data is left, or at urgent data,
/// which we do not use), and with edge-triggered polling any later data — or a FIN —
/// raises a new event; so the confirming read, which would only return `EAGAIN`, is
/// skipped (one system call per request saved on keep-alive connections). Only when the
/// event itself carried no hang-up or error: a FIN already seen by that event would
/// otherwise wait for an event that never comes. Unix streams always read to `EAGAIN`.
fn read_some(lp: &mut EventLoop, s: Stream, short_read_drains: bool) {
    read_loop(lp, s, short_read_drains);
    update_interest(lp, s);
}

fn read_loop(lp: &mut EventLoop, s: Stream, short_read_drains: bool) {
    if !deliver_held(lp, s) {
        return;
    }
    for _ in 0..READS_PER_EVENT {
        let Some(st) = state(lp, s) else {
            return;
        };
        if st.paused || st.stalled || st.read_eof || st.connecting || st.held_full() {
            return;
        }
        let holding = st.cbs.data.is_none();
        let room = if holding {
            HELD_READ_LIMIT - st.held.len()
        } else {
            READ_BUF
        };
        let mut buf = std::mem::take(&mut lp.read_buf);
        if buf.len() < READ_BUF {
            buf.resize(READ_BUF, 0);
        }
        let Some(st) = state(lp, s) else {
            return;
        };
        let r = st.sock.read(&mut buf[..room]);
        match r {
            Ok(0) => {
                let eof_after_held = holding && !st.held.is_empty();
                if eof_after_held {
                    st.read_eof = true;
                    st.held_eof = true;
                }
                lp.read_buf = buf;
                if !eof_after_held {
                    on_eof(lp, s);
                }
                return;
            }
            Ok(n) => {
                let drained = short_read_drains && n < room && matches!(st.sock, Sock::Tcp(_));
                if holding {
                    st.held.extend_from_slice(&buf[..n]);
                } else {
                    deliver(lp, s, &buf[..n]);
                }
                lp.read_buf = buf;
                if drained {
                    return;
                }
            }
            Err(e) => {
                lp.read_buf = buf;
                match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted => {}
                    _ => return fail(lp, s, e),
                }
            }
        }
    }
    // More may be waiting and no new edge will come: continue after other handles.
    lp.queue_pending(move |lp| read_some(lp, s, false));
}

/// Delivers what was read before the data callback was set (and the FIN that followed
/// it). Returns whether reading may go on.
fn deliver_held(lp: &mut EventLoop, s: Stream) -> bool {
    let Some(st) = state(lp, s) else {
        return false;
    };
    if st.cbs.data.is_none() || st.paused || (st.held.is_empty() && !st.held_eof) {
        return true;
    }
    let held = std::mem::take(&mut st.held);
    let eof = std::mem::take(&mut st.held_eof);
    if !held.is_empty() {
        deliver(lp, s, &held);
    }
    if eof {
        on_eof(lp, s);
        return false;
    }
    true
}

/// Runs the data callback, corked: what it writes leaves in one go when it returns.
fn deliver(lp: &mut EventLoop, s: Stream, data: &[u8]) {
    let Some(st) = state(lp, s) else {
        return;
    };
    let Some(mut cb) = st.cbs.data.take() else {
        return;
    };
    st.corked += 1;
    lp.invoke(|lp| cb(lp, s, data));
    if let Some(st) = state(lp, s)
        && st.cbs.data.is_none()
    {
        st.cbs.data = Some(cb);
    }
    s.uncork(lp);
}

fn on_eof(lp: &mut EventLoop, s: Stream) {
    if let Some(st) = state(lp, s) {
        st.read_eof = true;
    }
    emit(lp, s, |c| &mut c.end);
    let Some(st) = state(lp, s) else {
        return;
    };
    if st.write_shut {
        s.destroy(lp);
    } else {
        update_interest(lp, s);
        s.end(lp);
    }
}

/// Runs one of the `FnMut(lp, s)` callbacks, putting it back afterwards.
fn emit(lp: &mut EventLoop, s: Stream, slot: fn(&mut Callbacks) -> &mut Option<EventCb>) {
    let Some(mut cb) = state(lp, s).and_then(|st| slot(&mut st.cbs).take()) else {
        return;
    };
    lp.invoke(|lp| cb(lp, s));
    if let Some(st) = state(lp, s) {
        let place = slot(&mut st.cbs);
        if place.is_none() {
            *place = Some(cb);
        }
    }
}

/// Delivers an error to the error callback, then destroys the stream.
pub(crate) fn fail(lp: &mut EventLoop, s: Stream, e: io::Error) {
    let Some(st) = state(lp, s) else {
        return;
    };
    match st.cbs.error.take() {
        Some(mut cb) => lp.invoke(|lp| cb(lp, s, e)),
        None => log::debug!("forkloop: stream error without an error callback: {e}"),
    }
    s.destroy(lp);
}
