//! A listening socket (TCP or Unix) that accepts connections as [`Stream`]s.
//!
//! The poll callback accepts until the socket reports `WouldBlock` (mio is edge-triggered),
//! but at most [`ACCEPTS_PER_EVENT`] connections per event; the rest are accepted from the
//! pending phase so one busy listener cannot starve the other handles.
//!
//! A listener shared by several processes (the `none` policy) can wait exclusively
//! ([`Listener::wait_exclusive`], Linux): see the `sys` contract for what changes.
//!
//! Each accepted stream gets the listener's [`StreamOptions`] (by default `TCP_NODELAY`
//! and back-pressure on; see [`Listener::set_stream_options`]).
//!
//! When accepting fails because the descriptor table is full (`EMFILE`, or `ENFILE` for
//! the system's), the listener stops accepting and tries again after
//! [`ACCEPT_RETRY_MS`], until it works: the clients wait in the backlog meanwhile (or are
//! taken by other processes accepting on the same socket). Retrying at once would spin,
//! and waiting for the next readiness event could wait forever, since an edge-triggered
//! poller does not report connections that were already waiting. The error handler (or
//! the log) hears once per episode.

use std::fmt;
use std::io;

use mio::event::Source;
use mio::{Interest, Registry, Token};
use std::os::fd::{AsRawFd, RawFd};

use super::stream::{Sock, Stream, StreamOptions};
use crate::rt::{EventLoop, IoId};
use crate::sys;

/// Connections accepted per readiness event before yielding to other handles.
pub const ACCEPTS_PER_EVENT: usize = 128;

/// How long (ms) a listener that could not accept for want of descriptors waits before it
/// tries again: long enough that retrying costs nothing, short enough that clients barely
/// notice once descriptors are free again.
pub const ACCEPT_RETRY_MS: u64 = 250;

/// A listening TCP or Unix socket on a loop. `Copy`: it is an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Listener(pub(crate) IoId);

#[derive(Debug)]
pub(crate) enum ListenSock {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

type ConnCb = Box<dyn FnMut(&mut EventLoop, Stream)>;
type ErrCb = Box<dyn FnMut(&mut EventLoop, Listener, io::Error)>;

pub(crate) struct ListenerState {
    sock: ListenSock,
    on_conn: Option<ConnCb>,
    on_error: Option<ErrCb>,
    opts: StreamOptions,
    /// Registered with the loop's poller through `sys::wait_exclusive`, not mio.
    exclusive: bool,
    counts: AcceptCounts,
    /// A readiness event came and nothing was accepted since.
    woken: bool,
    /// Accepting is off for want of descriptors; the timer that retries.
    retry: Option<crate::rt::TimerId>,
    /// An episode of failing accepts for want of descriptors is under way (it was
    /// reported; it ends once the backlog is empty).
    episode: bool,
}

/// What a listener's readiness events brought: how many there were and how many found no
/// connection to accept (another process took it first: the thundering herd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptCounts {
    /// Readiness events handled.
    pub wakeups: u64,
    /// Readiness events whose first `accept` found nothing.
    pub empty: u64,
}

impl fmt::Debug for ListenerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerState")
            .field("sock", &self.sock)
            .finish_non_exhaustive()
    }
}

impl ListenSock {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            ListenSock::Tcp(s) => s,
            ListenSock::Unix(s) => s,
        }
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            ListenSock::Tcp(s) => s.as_raw_fd(),
            ListenSock::Unix(s) => s.as_raw_fd(),
        }
    }

    fn accept(&self) -> io::Result<Sock> {
        match self {
            ListenSock::Tcp(l) => l.accept().map(|(s, _)| Sock::Tcp(s)),
            ListenSock::Unix(l) => l.accept().map(|(s, _)| Sock::Unix(s)),
        }
    }
}

impl Source for ListenerState {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        if self.exclusive {
            // Readable is all a listener waits for.
            return sys::wait_exclusive(r.as_raw_fd(), self.sock.raw_fd(), t.0);
        }
        self.sock.source().register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        if self.exclusive {
            // EPOLLEXCLUSIVE cannot be modified, only removed and added again.
            self.deregister(r)?;
            return self.register(r, t, i);
        }
        self.sock.source().reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        if self.exclusive {
            return sys::stop_waiting_exclusive(r.as_raw_fd(), self.sock.raw_fd());
        }
        self.sock.source().deregister(r)
    }
}

impl Listener {
    /// Registers a listening socket; `on_conn` runs for every accepted connection.
    pub(crate) fn open(lp: &mut EventLoop, sock: ListenSock, on_conn: ConnCb) -> io::Result<Self> {
        let kind = match sock {
            ListenSock::Tcp(_) => "TcpListener",
            ListenSock::Unix(_) => "UnixListener",
        };
        let st = ListenerState {
            sock,
            on_conn: Some(on_conn),
            on_error: None,
            opts: StreamOptions::default(),
            exclusive: false,
            counts: AcceptCounts::default(),
            woken: false,
            retry: None,
            episode: false,
        };
        let id = lp.register(st, Interest::READABLE, |lp, id, _| {
            count_wakeup(lp, Listener(id));
            accept_some(lp, Listener(id))
        })?;
        lp.set_io_kind(id, kind);
        Ok(Listener(id))
    }

    /// The loop handle id (for [`EventLoop::set_ref`] and friends).
    pub fn id(self) -> IoId {
        self.0
    }

    /// Replaces the connection callback.
    pub fn on_connection<F>(self, lp: &mut EventLoop, cb: F)
    where
        F: FnMut(&mut EventLoop, Stream) + 'static,
    {
        if let Some(st) = lp.io_mut::<ListenerState>(self.0) {
            st.on_conn = Some(Box::new(cb));
        }
    }

    /// Sets the callback for accept errors other than `WouldBlock` (e.g. `EMFILE`, once per
    /// episode: see the module docs); without one they are logged. The listener stays
    /// open.
    pub fn on_error<F>(self, lp: &mut EventLoop, cb: F)
    where
        F: FnMut(&mut EventLoop, Listener, io::Error) + 'static,
    {
        if let Some(st) = lp.io_mut::<ListenerState>(self.0) {
            st.on_error = Some(Box::new(cb));
        }
    }

    /// Sets what each stream accepted from now on gets (default [`StreamOptions::default`]:
    /// `TCP_NODELAY` on, back-pressure on).
    pub fn set_stream_options(self, lp: &mut EventLoop, opts: StreamOptions) {
        if let Some(st) = lp.io_mut::<ListenerState>(self.0) {
            st.opts = opts;
        }
    }

    /// From now on, waits so that of the processes waiting on this socket (a listener shared
    /// by several workers) one is woken per connection, not all (Linux `EPOLLEXCLUSIVE`).
    /// Returns whether it does: `false` where the OS cannot (then nothing changed).
    ///
    /// Why no connection is left behind: a readiness event of a listener is produced per
    /// arriving connection and, edge-triggered, reaches every process not blocked in its
    /// poll at that moment (queued for its next poll) and wakes one that is blocked. The
    /// woken process accepts until `WouldBlock`; when it stops early, either after
    /// [`ACCEPTS_PER_EVENT`] (it goes on from its pending phase) or because it stops
    /// waiting ([`Listener::set_waiting`], at its connection limit), every connection that
    /// arrived after its wake-up was also reported to another process, and the one that
    /// woke it it accepted first. A process that starts waiting again is told at once of
    /// connections already queued. The exception: a process that cannot accept at all
    /// (out of descriptors) stops waiting, so it takes no further wake-ups, but the
    /// connection whose wake-up it took waits for the next arrival, which wakes another
    /// process that accepts both (or for this one to accept again). A process whose loop is busy or stuck is not blocked
    /// in its poll, so it never takes a wake-up from the others.
    pub(crate) fn wait_exclusive(self, lp: &mut EventLoop) -> io::Result<bool> {
        if !sys::EXCLUSIVE_WAIT {
            return Ok(false);
        }
        let Some(interest) = lp.interest(self.0) else {
            return Err(super::stream::closed());
        };
        lp.set_interest(self.0, None)?;
        self.set_exclusive(lp, true);
        match lp.set_interest(self.0, Some(interest)) {
            Ok(()) => Ok(true),
            Err(e) => {
                // E.g. a kernel older than 4.5: wait the ordinary way.
                log::debug!("forkloop: no exclusive wait on a shared listener: {e}");
                self.set_exclusive(lp, false);
                lp.set_interest(self.0, Some(interest))?;
                Ok(false)
            }
        }
    }

    fn set_exclusive(self, lp: &mut EventLoop, on: bool) {
        if let Some(st) = lp.io_mut::<ListenerState>(self.0) {
            st.exclusive = on;
        }
    }

    /// Stops (`false`) or resumes (`true`) waiting for connections: a paused listener
    /// accepts nothing and leaves the connections to the other processes sharing the
    /// socket; it does not keep the loop alive while paused.
    ///
    /// # Errors
    ///
    /// The listener is closed, or the OS poller failed.
    pub fn set_waiting(self, lp: &mut EventLoop, on: bool) -> io::Result<()> {
        if !lp.is_open(self.0) {
            return Err(super::stream::closed());
        }
        lp.set_interest(self.0, on.then_some(Interest::READABLE))
    }

    /// Whether the listener waits for connections (see [`Listener::set_waiting`]).
    pub fn is_waiting(self, lp: &EventLoop) -> bool {
        lp.interest(self.0).is_some()
    }

    /// How many readiness events this listener had, and how many of them found nothing to
    /// accept.
    #[doc(hidden)]
    pub fn accept_counts(self, lp: &EventLoop) -> AcceptCounts {
        lp.io_ref::<ListenerState>(self.0)
            .map(|st| st.counts)
            .unwrap_or_default()
    }

    /// The bound address of a TCP listener.
    ///
    /// # Errors
    ///
    /// Fails for closed or Unix listeners.
    pub fn local_addr(self, lp: &EventLoop) -> io::Result<std::net::SocketAddr> {
        match lp.io_ref::<ListenerState>(self.0).map(|st| &st.sock) {
            Some(ListenSock::Tcp(l)) => l.local_addr(),
            Some(ListenSock::Unix(_)) => Err(io::Error::other("not a TCP listener")),
            None => Err(super::stream::closed()),
        }
    }

    /// Stops listening and closes the socket; `on_close` runs in the closing phase.
    pub fn close<F: FnOnce(&mut EventLoop) + 'static>(self, lp: &mut EventLoop, on_close: F) {
        let retry = lp
            .io_mut::<ListenerState>(self.0)
            .and_then(|st| st.retry.take());
        if let Some(t) = retry {
            lp.clear_timeout(t);
        }
        lp.close(self.0, on_close);
    }

    /// Stops listening on the loop and gives the socket back, still bound and listening
    /// and non-blocking (e.g. to send it to a worker process). `None` for a Unix
    /// listener or one already closed.
    pub fn take_tcp(self, lp: &mut EventLoop) -> Option<std::net::TcpListener> {
        match lp.take_source::<ListenerState>(self.0)?.sock {
            ListenSock::Tcp(l) => Some(std::net::TcpListener::from(std::os::fd::OwnedFd::from(l))),
            ListenSock::Unix(_) => None,
        }
    }
}

/// Counts a readiness event; the first accept after it tells whether it was empty.
fn count_wakeup(lp: &mut EventLoop, l: Listener) {
    if let Some(st) = lp.io_mut::<ListenerState>(l.0) {
        st.counts.wakeups += 1;
        st.woken = true;
    }
}

fn accept_some(lp: &mut EventLoop, l: Listener) {
    let mut accepted = false;
    for _ in 0..ACCEPTS_PER_EVENT {
        if !l.is_waiting(lp) {
            return; // paused (set_waiting): the connections are left to others
        }
        let Some(st) = lp.io_mut::<ListenerState>(l.0) else {
            return;
        };
        if st.retry.is_some() {
            return; // out of descriptors: the retry timer accepts
        }
        let opts = st.opts;
        let first_since_wakeup = std::mem::take(&mut st.woken);
        match st.sock.accept() {
            Ok(sock) => match Stream::accepted(lp, sock, &opts) {
                Ok(s) => {
                    accepted = true;
                    emit_conn(lp, l, s);
                }
                Err(e) => emit_error(lp, l, e),
            },
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => {
                    st.counts.empty += u64::from(first_since_wakeup);
                    // The backlog is empty: an episode of want of descriptors is over.
                    st.episode = false;
                    let exclusive = st.exclusive;
                    if accepted && exclusive {
                        go_to_the_back(lp, l);
                    }
                    return;
                }
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                _ if crate::sys::is_fd_exhaustion(&e) => return out_of_fds(lp, l, e),
                _ => return emit_error(lp, l, e),
            },
        }
    }
    lp.queue_pending(move |lp| accept_some(lp, l));
}

/// An exclusively waiting listener that took connections waits again behind the other
/// processes: the kernel wakes the first idle waiter in the socket's wait queue, so a
/// process that stayed first would take nearly every connection while it keeps up (a
/// burst of new keep-alive connections all to one worker). Removing and adding the wait
/// (two `epoll_ctl` calls per wake-up that accepted, not per connection) moves it to the
/// back of the queue, so idle workers take turns.
fn go_to_the_back(lp: &mut EventLoop, l: Listener) {
    let again = lp
        .set_interest(l.0, None)
        .and_then(|()| lp.set_interest(l.0, Some(Interest::READABLE)));
    if let Err(e) = again {
        emit_error(lp, l, e);
    }
}

/// Accepting on `l` failed for want of descriptors: retry after [`ACCEPT_RETRY_MS`];
/// report the error if this starts an episode. A listener waiting exclusively stops
/// waiting meanwhile: it would take every wake-up, each for a connection it cannot accept,
/// from the other processes that could.
fn out_of_fds(lp: &mut EventLoop, l: Listener, e: io::Error) {
    let exclusive = lp
        .io_ref::<ListenerState>(l.0)
        .is_some_and(|st| st.exclusive);
    let paused = exclusive && l.set_waiting(lp, false).is_ok();
    let t = lp.set_timeout(ACCEPT_RETRY_MS, move |lp| {
        if let Some(st) = lp.io_mut::<ListenerState>(l.0) {
            st.retry = None;
            // Waiting again, the listener is reported at once if connections are queued.
            if paused && let Err(e) = l.set_waiting(lp, true) {
                log::warn!("forkloop: cannot wait on a listener again: {e}");
            }
            accept_some(lp, l);
        }
    });
    if !paused || !lp.io_has_ref(l.0) {
        lp.unref(t); // the listener keeps the loop alive, not its retry (unless paused)
    }
    let Some(st) = lp.io_mut::<ListenerState>(l.0) else {
        lp.clear_timeout(t);
        return;
    };
    st.retry = Some(t);
    if !std::mem::replace(&mut st.episode, true) {
        emit_error(lp, l, e);
    }
}
fn emit_conn(lp: &mut EventLoop, l: Listener, s: Stream) {
    let Some(mut cb) = lp
        .io_mut::<ListenerState>(l.0)
        .and_then(|st| st.on_conn.take())
    else {
        return;
    };
    lp.invoke(|lp| cb(lp, s));
    if let Some(st) = lp.io_mut::<ListenerState>(l.0)
        && st.on_conn.is_none()
    {
        st.on_conn = Some(cb);
    }
}

fn emit_error(lp: &mut EventLoop, l: Listener, e: io::Error) {
    let Some(mut cb) = lp
        .io_mut::<ListenerState>(l.0)
        .and_then(|st| st.on_error.take())
    else {
        log::warn!("forkloop: accept failed: {e}");
        return;
    };
    lp.invoke(|lp| cb(lp, l, e));
    if let Some(st) = lp.io_mut::<ListenerState>(l.0)
        && st.on_error.is_none()
    {
        st.on_error = Some(cb);
    }
}
