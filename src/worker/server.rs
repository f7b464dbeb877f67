//! A TCP server that knows its connections, so it can close the way Node's `net.Server`
//! does: stop accepting at once, report "closed" once every connection has ended.
//!
//! Connections come from a listener on this worker's loop, or are handed in with
//! [`Server::adopt`] (how round-robin hand-offs from the primary arrive).

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use crate::ipc::Endpoint;
use crate::net::{Listener, Stream, tcp};
use crate::rt::{EventLoop, Phase, WatcherId};

use super::Worker;

type ConnCb = Box<dyn FnMut(&mut EventLoop, Stream)>;
type CloseCb = Box<dyn FnOnce(&mut EventLoop)>;

struct Inner {
    listener: Option<Listener>,
    address: Option<SocketAddr>,
    conns: Vec<Stream>,
    on_connection: Option<ConnCb>,
    closing: bool,
    on_close: Vec<CloseCb>,
    watcher: Option<WatcherId>,
    tracked: Option<(Worker, u64)>,
}

/// A server whose connections are tracked; clone the handle freely.
#[derive(Clone)]
pub struct Server(Rc<RefCell<Inner>>);

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
        F: FnMut(&mut EventLoop, Stream) + 'static,
    {
        Server(Rc::new(RefCell::new(Inner {
            listener: None,
            address: None,
            conns: Vec::new(),
            on_connection: Some(Box::new(on_connection)),
            closing: false,
            on_close: Vec::new(),
            watcher: None,
            tracked: None,
        })))
    }

    /// Binds `addr` on this loop and serves connections with `on_connection`.
    ///
    /// # Errors
    ///
    /// The address cannot be bound.
    pub fn bind<F>(lp: &mut EventLoop, addr: SocketAddr, on_connection: F) -> io::Result<Server>
    where
        F: FnMut(&mut EventLoop, Stream) + 'static,
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
        F: FnMut(&mut EventLoop, Stream) + 'static,
    {
        let server = Server::new(on_connection);
        let s = server.clone();
        let l = tcp::listen_std(lp, l, move |lp, conn| {
            s.adopt(lp, conn);
        })?;
        server.set_listener(lp, l)?;
        Ok(server)
    }

    fn set_listener(&self, lp: &EventLoop, l: Listener) -> io::Result<()> {
        let addr = l.local_addr(lp)?;
        let mut inner = self.0.borrow_mut();
        inner.listener = Some(l);
        inner.address = Some(addr);
        Ok(())
    }

    /// Records the address the server is reachable at (for servers fed by the primary).
    pub fn set_address(&self, addr: SocketAddr) {
        self.0.borrow_mut().address = Some(addr);
    }

    /// The address the server listens on, once known.
    pub fn address(&self) -> Option<SocketAddr> {
        self.0.borrow().address
    }

    /// Hands a connection to the server. Returns `false` (and destroys the stream) if the
    /// server is closing.
    pub fn adopt(&self, lp: &mut EventLoop, conn: Stream) -> bool {
        let cb = {
            let mut inner = self.0.borrow_mut();
            if inner.closing {
                drop(inner);
                conn.destroy(lp);
                return false;
            }
            inner.conns.retain(|c| c.is_open(lp));
            inner.conns.push(conn);
            inner.on_connection.take()
        };
        if let Some(mut cb) = cb {
            cb(lp, conn);
            let mut inner = self.0.borrow_mut();
            if inner.on_connection.is_none() {
                inner.on_connection = Some(cb);
            }
        }
        true
    }

    /// Open connections.
    pub fn connections(&self, lp: &EventLoop) -> usize {
        let mut inner = self.0.borrow_mut();
        inner.conns.retain(|c| c.is_open(lp));
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
        if let Some(addr) = self.address() {
            let _ = worker.notify_listening(lp, key, Endpoint::Tcp(addr));
        }
    }

    /// Stops accepting at once; `cb` runs once every connection has ended.
    pub fn close<F: FnOnce(&mut EventLoop) + 'static>(&self, lp: &mut EventLoop, cb: F) {
        let (listener, first) = {
            let mut inner = self.0.borrow_mut();
            inner.on_close.push(Box::new(cb));
            let first = !inner.closing;
            inner.closing = true;
            (inner.listener.take(), first)
        };
        if let Some(l) = listener {
            l.close(lp, |_| {});
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
