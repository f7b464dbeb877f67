//! A TCP server that knows its connections, so it can close the way Node's `net.Server`
//! does: stop accepting at once, report "closed" once every connection has ended.
//!
//! Connections come from a listener on this worker's loop, or are handed in with
//! [`Server::adopt`] (how round-robin hand-offs from the primary arrive). Either way each
//! connection gets the server's [`StreamOptions`]: by default `TCP_NODELAY` on and reading
//! stopped while the client does not read its answers ([`Server::set_stream_options`]).

use std::cell::RefCell;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use crate::ipc::Endpoint;
use crate::net::{Listener, Stream, StreamOptions, tcp};
use crate::rt::{EventLoop, Phase, TimerId, WatcherId};

use super::Worker;

/// Default of [`Server::set_idle_grace`], in milliseconds.
pub const DEFAULT_IDLE_GRACE_MS: u64 = 100;

type ConnCb = Box<dyn FnMut(&mut EventLoop, &Server, Stream)>;
type CloseCb = Box<dyn FnOnce(&mut EventLoop)>;
type ListeningCb = Box<dyn FnOnce(&mut EventLoop, &Server)>;
type ErrorCb = Box<dyn FnMut(&mut EventLoop, &Server, &io::Error)>;
type DatagramCb = Box<dyn FnOnce(&mut EventLoop, std::os::fd::OwnedFd, u32) -> io::Result<()>>;

pub(super) struct Inner {
    listener: Option<Listener>,
    endpoint: Option<Endpoint>,
    address: Option<SocketAddr>,
    on_listening: Vec<ListeningCb>,
    on_error: Vec<ErrorCb>,
    listening: bool,
    /// Hand-off servers have no socket on this loop; this timer keeps the loop alive while
    /// they listen (as Node's round-robin handle does).
    keepalive: Option<TimerId>,
    refed: bool,
    /// The primary's listener id, when served through the primary.
    pub(super) key: Option<u32>,
    max_connections: Option<usize>,
    /// UDP bindings: what to do with the shared socket when it arrives.
    pub(super) datagram: Option<DatagramCb>,
    /// How long a connection must have been idle before a closing server ends it.
    idle_grace_ms: u64,
    /// While closing: the timer that ends idle connections as their grace runs out.
    idle_sweep: Option<TimerId>,
    /// Connections handed to the server (closed ones are pruned now and then), with the
    /// loop time (ms) each became idle if the application marked it so (between requests).
    conns: crate::rt::id::IdMap<Stream, Option<u64>>,
    /// Prune closed connections when `conns` grows past this.
    prune_at: usize,
    on_connection: Option<ConnCb>,
    /// What each connection gets when the server takes it.
    stream_options: StreamOptions,
    closing: bool,
    on_close: Vec<CloseCb>,
    watcher: Option<WatcherId>,
    tracked: Option<(Worker, u64)>,
    /// The listener is shared with other workers: stop waiting on it while full.
    pause_when_full: bool,
    /// While the listener is paused: the timer that checks for room again.
    room_watch: Option<TimerId>,
}

impl Inner {
    /// Forgets closed connections.
    fn prune(&mut self, lp: &EventLoop) {
        self.conns.retain(|c, _| c.is_open(lp));
        self.prune_at = (2 * self.conns.len()).max(64);
    }
}

/// A server whose connections are tracked; clone the handle freely.
///
/// Its connection callback gets the loop, the server itself and the new connection
/// (`|lp, server, conn|`), so a callback that needs its server (to mark a connection idle,
/// to close it, to read its count) has it without a handle captured beforehand.
#[derive(Clone)]
pub struct Server(pub(super) Rc<RefCell<Inner>>);

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.0.borrow();
        f.debug_struct("Server")
            .field("address", &inner.address)
            .field("closing", &inner.closing)
            .finish()
    }
}

impl Server {
    /// A server with no listener yet: connections arrive through [`Server::adopt`].
    pub fn new<F>(on_connection: F) -> Server
    where
        F: FnMut(&mut EventLoop, &Server, Stream) + 'static,
    {
        Server(Rc::new(RefCell::new(Inner {
            listener: None,
            endpoint: None,
            address: None,
            on_listening: Vec::new(),
            on_error: Vec::new(),
            listening: false,
            keepalive: None,
            refed: true,
            key: None,
            max_connections: None,
            datagram: None,
            idle_grace_ms: DEFAULT_IDLE_GRACE_MS,
            idle_sweep: None,
            conns: Default::default(),
            prune_at: 64,
            on_connection: Some(Box::new(on_connection)),
            stream_options: StreamOptions::default(),
            closing: false,
            on_close: Vec::new(),
            watcher: None,
            tracked: None,
            pause_when_full: false,
            room_watch: None,
        })))
    }

    /// Binds `addr` on this loop and serves connections with `on_connection`.
    ///
    /// # Errors
    ///
    /// The address cannot be bound.
    pub fn bind<F>(lp: &mut EventLoop, addr: SocketAddr, on_connection: F) -> io::Result<Server>
    where
        F: FnMut(&mut EventLoop, &Server, Stream) + 'static,
    {
        let server = Server::new(on_connection);
        let s = server.clone();
        let l = tcp::listen(lp, addr, move |lp, conn| {
            s.adopt(lp, conn);
        })?;
        server.set_listener(lp, l)?;
        Ok(server)
    }

    /// Serves connections accepted from an already-bound listening socket (one the primary
    /// sent, under the shared policy).
    ///
    /// # Errors
    ///
    /// The socket cannot be registered.
    pub fn from_std<F>(
        lp: &mut EventLoop,
        l: std::net::TcpListener,
        on_connection: F,
    ) -> io::Result<Server>
    where
        F: FnMut(&mut EventLoop, &Server, Stream) + 'static,
    {
        let server = Server::new(on_connection);
        let s = server.clone();
        let l = tcp::listen_std(lp, l, move |lp, conn| {
            s.adopt(lp, conn);
        })?;
        server.set_listener(lp, l)?;
        Ok(server)
    }

    pub(super) fn set_listener(&self, lp: &mut EventLoop, l: Listener) -> io::Result<()> {
        let addr = l.local_addr(lp).ok();
        let mut inner = self.0.borrow_mut();
        if !inner.refed {
            lp.unref(l.id());
        }
        l.set_stream_options(lp, inner.stream_options);
        inner.listener = Some(l);
        if addr.is_some() {
            inner.address = addr;
            inner.endpoint = addr.map(Endpoint::Tcp);
        }
        Ok(())
    }

    /// The listener is shared with other workers, who can take the connections this server
    /// has no room for: at its connection limit the server stops waiting on it instead of
    /// accepting and closing them, and waits again once it has room.
    pub(super) fn pause_when_full(&self) {
        self.0.borrow_mut().pause_when_full = true;
    }

    /// Stops waiting on a shared listener while the server is full; checks every
    /// [`CREDIT_POLL_MS`](super::listen::CREDIT_POLL_MS) for room, then waits again.
    fn pause_if_full(&self, lp: &mut EventLoop) {
        let (l, refed) = {
            let inner = self.0.borrow();
            match inner.listener {
                Some(l) if inner.pause_when_full && inner.room_watch.is_none() => (l, inner.refed),
                _ => return,
            }
        };
        if self.capacity(lp) > 0 || !l.is_waiting(lp) {
            return;
        }
        if let Err(e) = l.set_waiting(lp, false) {
            log::warn!("forkloop: cannot stop waiting on a full server's listener: {e}");
            return;
        }
        let s = self.clone();
        let t = lp.set_interval(super::listen::CREDIT_POLL_MS, move |lp| s.check_room(lp));
        // The paused listener no longer keeps the loop alive: its watch does, as it did.
        lp.set_ref(t, refed);
        self.0.borrow_mut().room_watch = Some(t);
    }

    fn check_room(&self, lp: &mut EventLoop) {
        if self.capacity(lp) == 0 {
            return;
        }
        let (l, t) = {
            let mut inner = self.0.borrow_mut();
            (inner.listener, inner.room_watch.take())
        };
        if let Some(t) = t {
            lp.clear_interval(t);
        }
        // Added again, the listener is reported at once if connections are queued.
        if let Some(l) = l
            && let Err(e) = l.set_waiting(lp, true)
        {
            log::warn!("forkloop: cannot wait on a server's listener again: {e}");
        }
    }

    /// How many readiness events the server's listener had and how many found nothing to
    /// accept (another worker took the connection first); `None` without a listener here.
    #[doc(hidden)]
    pub fn accept_counts(&self, lp: &EventLoop) -> Option<crate::net::AcceptCounts> {
        let l = self.0.borrow().listener?;
        Some(l.accept_counts(lp))
    }

    /// Whether the server waits for connections on a listener of its own (not paused at
    /// its limit; `false` without a listener here).
    #[doc(hidden)]
    pub fn is_accepting(&self, lp: &EventLoop) -> bool {
        let l = self.0.borrow().listener;
        l.is_some_and(|l| l.is_waiting(lp))
    }

    /// UDP: hands the shared socket to the binding's handler.
    pub(super) fn attach_datagram(
        &self,
        lp: &mut EventLoop,
        fd: std::os::fd::OwnedFd,
        key: u32,
    ) -> io::Result<()> {
        let cb = self.0.borrow_mut().datagram.take();
        match cb {
            Some(cb) => cb(lp, fd, key),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a datagram binding",
            )),
        }
    }

    /// Records where the server is reachable (for servers fed by the primary).
    pub fn set_endpoint(&self, ep: Endpoint) {
        let mut inner = self.0.borrow_mut();
        if let Endpoint::Tcp(a) = &ep {
            inner.address = Some(*a);
        }
        inner.endpoint = Some(ep);
    }

    /// The TCP address the server listens on, once known.
    pub fn address(&self) -> Option<SocketAddr> {
        self.0.borrow().address
    }

    /// Where the server listens, once known.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.0.borrow().endpoint.clone()
    }

    /// Whether the server is listening (and not closing).
    pub fn is_listening(&self) -> bool {
        let inner = self.0.borrow();
        inner.listening && !inner.closing
    }

    /// Runs `cb` once the server listens (at once, on the next tick, if it already does).
    pub fn on_listening<F: FnOnce(&mut EventLoop, &Server) + 'static>(
        &self,
        lp: &mut EventLoop,
        cb: F,
    ) {
        let now = self.0.borrow().listening;
        if now {
            let s = self.clone();
            lp.next_tick(move |lp| cb(lp, &s));
        } else {
            self.0.borrow_mut().on_listening.push(Box::new(cb));
        }
    }

    /// Adds a handler for errors: a failed bind (`EADDRINUSE`, `EACCES`…) ends the server.
    /// With no handler an error is not lost (as an unhandled `'error'` ends a Node
    /// process): it is logged at error level (printed to stderr when no logger is
    /// installed) and the loop's exit code becomes 1 if it was 0.
    pub fn on_error<F: FnMut(&mut EventLoop, &Server, &io::Error) + 'static>(&self, cb: F) {
        self.0.borrow_mut().on_error.push(Box::new(cb));
    }

    /// Marks the server listening and runs the listening callbacks.
    pub(super) fn now_listening(&self, lp: &mut EventLoop, hand_off: bool) {
        let cbs = {
            let mut inner = self.0.borrow_mut();
            inner.listening = true;
            std::mem::take(&mut inner.on_listening)
        };
        if hand_off {
            let t = lp.set_interval(crate::rt::TIMEOUT_MAX, |_| {});
            if !self.0.borrow().refed {
                lp.unref(t);
            }
            self.0.borrow_mut().keepalive = Some(t);
        }
        for cb in cbs {
            cb(lp, self);
        }
    }

    /// Reports an error to the error handlers (logged if there are none).
    pub(super) fn fail(&self, lp: &mut EventLoop, err: io::Error) {
        let mut cbs = std::mem::take(&mut self.0.borrow_mut().on_error);
        if cbs.is_empty() {
            let at = self
                .endpoint()
                .map_or_else(|| "(not bound)".to_owned(), |e| e.to_string());
            let line = format!("server {at}: {err} (no error handler)");
            if log::log_enabled!(log::Level::Error) {
                log::error!("{line}");
            } else {
                eprintln!("forkloop: {line}");
            }
            if lp.exit_code() == 0 {
                lp.set_exit_code(1);
            }
        }
        for cb in cbs.iter_mut() {
            cb(lp, self, &err);
        }
        let mut inner = self.0.borrow_mut();
        cbs.append(&mut inner.on_error);
        inner.on_error = cbs;
    }

    /// Lets the loop end while the server listens (Node's `server.unref()`).
    pub fn unref(&self, lp: &mut EventLoop) {
        self.set_ref(lp, false);
    }

    /// Makes the server keep the loop alive again (the default).
    pub fn ref_(&self, lp: &mut EventLoop) {
        self.set_ref(lp, true);
    }

    fn set_ref(&self, lp: &mut EventLoop, on: bool) {
        let (l, timers) = {
            let mut inner = self.0.borrow_mut();
            inner.refed = on;
            (inner.listener, [inner.keepalive, inner.room_watch])
        };
        if let Some(l) = l {
            lp.set_ref(l.id(), on);
        }
        for t in timers.into_iter().flatten() {
            lp.set_ref(t, on);
        }
    }

    /// Sets what each connection the server takes from now on gets: `TCP_NODELAY` and
    /// back-pressure, both on by default ([`StreamOptions::default`]). Opt out of either
    /// per server, e.g. `StreamOptions { no_delay: false, ..Default::default() }`.
    pub fn set_stream_options(&self, lp: &mut EventLoop, opts: StreamOptions) {
        let l = {
            let mut inner = self.0.borrow_mut();
            inner.stream_options = opts;
            inner.listener
        };
        if let Some(l) = l {
            l.set_stream_options(lp, opts);
        }
    }

    /// Hands a connection to the server, applying the server's [`StreamOptions`]. Returns
    /// `false` (and destroys the stream) if the server is closing or at its connection cap.
    pub fn adopt(&self, lp: &mut EventLoop, conn: Stream) -> bool {
        let room = self.capacity(lp);
        let full = room == 0;
        let opts;
        let cb = {
            let mut inner = self.0.borrow_mut();
            if inner.closing || full {
                let closing = inner.closing;
                drop(inner);
                conn.destroy(lp);
                if !closing {
                    // The cap was lowered under it: stop taking what others could serve.
                    self.pause_if_full(lp);
                }
                return false;
            }
            if inner.conns.len() >= inner.prune_at {
                // Amortised: prune only when the set doubled since the last prune.
                inner.prune(lp);
            }
            inner.conns.insert(conn, None);
            opts = inner.stream_options;
            inner.on_connection.take()
        };
        if let Err(e) = conn.configure(lp, &opts) {
            log::debug!("forkloop: server connection: cannot set TCP_NODELAY: {e}");
        }
        if let Some(mut cb) = cb {
            cb(lp, self, conn);
            let mut inner = self.0.borrow_mut();
            if inner.on_connection.is_none() {
                inner.on_connection = Some(cb);
            }
        }
        if room == 1 {
            // That was the last one it had room for.
            self.pause_if_full(lp);
        }
        true
    }

    /// Caps the connections this server holds (Node's `server.maxConnections`): beyond it,
    /// connections handed off by the primary are refused and go to another worker; ones
    /// accepted locally are closed. `None` (the default): no cap.
    pub fn set_max_connections(&self, max: Option<usize>) {
        self.0.borrow_mut().max_connections = max;
    }

    /// How many more connections the server takes before its cap (`u32::MAX`: no cap).
    pub fn capacity(&self, lp: &EventLoop) -> u32 {
        let max = self.0.borrow().max_connections;
        match max {
            None => u32::MAX,
            Some(m) => m
                .saturating_sub(self.connections(lp))
                .min(u32::MAX as usize) as u32,
        }
    }

    /// Marks `conn` idle (`true`: between requests, nothing in flight) or busy. When the
    /// server closes, idle connections are ended instead of holding a retiring worker until
    /// its drain deadline (Node ≥ 19's `closeIdleConnections`) — but only once they have
    /// been idle for the grace period ([`Server::set_idle_grace`]): a client that just got
    /// its response may already have the next request on the wire, and closing under it
    /// would reset that request. A connection that turns busy again is left to the
    /// application (which answers with `Connection: close` while its worker leaves).
    /// `conn` must be one of this server's connections (others are ignored, with a
    /// warning if they are open).
    pub fn set_idle(&self, lp: &mut EventLoop, conn: Stream, idle: bool) {
        let sweep = {
            let mut inner = self.0.borrow_mut();
            let now = lp.now();
            match inner.conns.get_mut(&conn) {
                Some(since) => *since = idle.then_some(now),
                // A closed one was forgotten already: nothing to end.
                None if !conn.is_open(lp) => return,
                None => {
                    log::warn!(
                        "forkloop: set_idle on a stream that is not this server's connection: ignored"
                    );
                    return;
                }
            }
            idle && inner.closing && inner.idle_sweep.is_none()
        };
        if sweep {
            let grace = self.0.borrow().idle_grace_ms;
            self.arm_idle_sweep(lp, grace.max(1));
        }
    }

    /// How long (default [`DEFAULT_IDLE_GRACE_MS`]) a connection must have been idle
    /// before a closing server ends it (see [`Server::set_idle`]); 0 ends idle
    /// connections at once.
    pub fn set_idle_grace(&self, grace: std::time::Duration) {
        self.0.borrow_mut().idle_grace_ms = grace.as_millis().min(u64::MAX as u128) as u64;
    }

    /// Ends the idle connections whose grace has run out; re-arms itself for the rest.
    fn sweep_idle(&self, lp: &mut EventLoop) {
        let now = lp.now();
        let (due, next) = {
            let mut inner = self.0.borrow_mut();
            inner.idle_sweep = None;
            let grace = inner.idle_grace_ms;
            let mut due = Vec::new();
            let mut next = None::<u64>;
            for (&c, since) in inner.conns.iter_mut() {
                let Some(t) = *since else { continue };
                if now.saturating_sub(t) >= grace {
                    *since = None;
                    due.push(c);
                } else {
                    let wait = t.saturating_add(grace).saturating_sub(now).max(1);
                    next = Some(next.map_or(wait, |n| n.min(wait)));
                }
            }
            (due, next)
        };
        for conn in due {
            conn.destroy(lp);
        }
        if let Some(ms) = next {
            self.arm_idle_sweep(lp, ms);
        }
    }

    fn arm_idle_sweep(&self, lp: &mut EventLoop, ms: u64) {
        let s = self.clone();
        let t = lp.set_timeout(ms, move |lp| s.sweep_idle(lp));
        lp.unref(t); // the connections keep the loop alive, not the wait
        self.0.borrow_mut().idle_sweep = Some(t);
    }

    /// Open connections.
    pub fn connections(&self, lp: &EventLoop) -> usize {
        let mut inner = self.0.borrow_mut();
        inner.prune(lp);
        inner.conns.len()
    }

    /// Whether [`Server::close`] has been called.
    pub fn is_closing(&self) -> bool {
        self.0.borrow().closing
    }

    /// Makes this server part of `worker`'s graceful disconnect and tells the primary it
    /// listens (`key` 0: bound by the worker itself). The primary emits `Listening`.
    pub fn announce(&self, lp: &mut EventLoop, worker: &Worker, key: u32) {
        let s = self.clone();
        let token = worker.track_server((key != 0).then_some(key), move |lp, closed| {
            s.close(lp, move |lp| closed.done(lp))
        });
        self.0.borrow_mut().tracked = Some((worker.clone(), token));
        if let Some(ep) = self.endpoint() {
            let _ = worker.notify_listening(lp, key, ep);
        }
    }

    /// Stops accepting at once; `cb` runs once every connection has ended.
    pub fn close<F: FnOnce(&mut EventLoop) + 'static>(&self, lp: &mut EventLoop, cb: F) {
        let (listener, first, keepalive, room_watch, tracked) = {
            let mut inner = self.0.borrow_mut();
            inner.on_close.push(Box::new(cb));
            let first = !inner.closing;
            inner.closing = true;
            let tracked = inner.tracked.as_ref().map(|(w, t)| (w.clone(), *t));
            (
                inner.listener.take(),
                first,
                inner.keepalive.take(),
                inner.room_watch.take(),
                tracked,
            )
        };
        if let Some(l) = listener {
            l.close(lp, |_| {});
        }
        for t in [keepalive, room_watch].into_iter().flatten() {
            lp.clear_interval(t);
        }
        // Nothing is in flight on a connection idle past its grace: close it outright (a
        // half-close would wait for a client that may never hang up); the others follow as
        // their grace runs out.
        if first {
            self.sweep_idle(lp);
        }
        if let (true, Some((worker, token))) = (first, tracked) {
            // Stop routing new connections here at once; the ones we have still drain.
            worker.stop_routing(lp, token);
        }
        if first {
            let s = self.clone();
            let w = lp.add_watcher(Phase::Check, move |lp| s.check_closed(lp));
            lp.unref(w); // the connections keep the loop alive, not the wait
            self.0.borrow_mut().watcher = Some(w);
            // Covers a server with no connections: closed in this iteration's check phase.
        }
    }

    fn check_closed(&self, lp: &mut EventLoop) {
        if self.connections(lp) > 0 {
            return;
        }
        let (cbs, watcher, tracked) = {
            let mut inner = self.0.borrow_mut();
            (
                std::mem::take(&mut inner.on_close),
                inner.watcher.take(),
                inner.tracked.take(),
            )
        };
        if let Some(w) = watcher {
            lp.remove_watcher(w);
        }
        if let Some((worker, token)) = tracked {
            worker.untrack_server(lp, token);
        }
        for cb in cbs {
            cb(lp);
        }
    }
}
