//! An HTTP/1.1 server on the loop (feature `http`): Node's `http.createServer(handler)
//! .listen(port)` for forkloop, in a worker of a cluster (any listening policy) or alone.
//!
//! ```no_run
//! use forkloop::http::{Config, Server};
//! use forkloop::rt::EventLoop;
//!
//! let mut lp = EventLoop::new().unwrap();
//! let worker = forkloop::worker::Worker::attach(&mut lp).unwrap(); // None outside a cluster
//! let addr = "127.0.0.1:8000".parse().unwrap();
//! let server = Server::listen(&mut lp, worker.as_ref(), addr, Config::default(), |lp, req, mut res| {
//!     if req.path() == "/" {
//!         res.set_header("Content-Type", "text/plain").unwrap();
//!         res.end(lp, b"hello world\n");
//!     } else {
//!         res.set_status(404).unwrap();
//!         res.end(lp, b"");
//!     }
//! });
//! server.net().on_error(|lp, _, e| {
//!     eprintln!("cannot listen: {e}");
//!     lp.exit(1);
//! });
//! lp.run().unwrap();
//! ```
//!
//! # What the server does for the handler
//!
//! * **Framing.** The handler gets each request whole: head and body (`Content-Length` or
//!   chunked, trailers dropped) up to [`Limits::max_body`]. Or, with
//!   [`Config::stream_bodies`], as soon as the head is in, reading the body part by part
//!   with [`Response::read_body`], which can stop part-way to answer at once (a body
//!   never read, or the rest of one, is dropped once the response ends).
//!   Heads are parsed by `httparse`; framing, limits and the request-smuggling rules are
//!   in [`Decoder`], which does no I/O.
//!
//!   ```no_run
//!   use std::cell::Cell;
//!   use std::ops::ControlFlow;
//!   use std::rc::Rc;
//!
//!   use forkloop::http::{Config, Server};
//!   use forkloop::rt::EventLoop;
//!
//!   let mut lp = EventLoop::new().unwrap();
//!   let config = Config { stream_bodies: true, ..Config::default() };
//!   let addr = "127.0.0.1:8000".parse().unwrap();
//!   // Counts an upload's bytes as they come, without holding the body; refuses one
//!   // over 1 MiB as soon as it gets there.
//!   Server::listen(&mut lp, None, addr, config, |lp, req, mut res| {
//!       if req.method() != "POST" {
//!           res.set_status(405).unwrap();
//!           return res.end(lp, b""); // a waiting client is spared the upload
//!       }
//!       let n = Rc::new(Cell::new(0usize));
//!       let seen = n.clone();
//!       res.read_body(
//!           lp,
//!           move |_, part| {
//!               seen.set(seen.get() + part.len());
//!               if seen.get() > 1 << 20 {
//!                   ControlFlow::Break(())
//!               } else {
//!                   ControlFlow::Continue(())
//!               }
//!           },
//!           move |lp, mut res| {
//!               if n.get() > 1 << 20 {
//!                   res.set_status(413).unwrap();
//!                   return res.end(lp, b"too large\n");
//!               }
//!               res.end(lp, format!("{} bytes\n", n.get()).as_bytes())
//!           },
//!       );
//!   });
//!   lp.run().unwrap();
//!   ```
//! * **Responses.** [`Response::end`] sends the head and the whole body in one write; or
//!   [`Response::write`] streams the body (chunked on HTTP/1.1, until close on HTTP/1.0),
//!   returning `false` when the connection's write queue is full — [`Response::on_drain`]
//!   hands the response back once it has room. `HEAD` responses carry the length of the
//!   body they would have had, without the body. `Date` is added to every response; its
//!   text is recomputed at most once per loop iteration (and formatted once per second).
//! * **Connections.** HTTP/1.1 keep-alive and HTTP/1.0 (closes unless the request says
//!   `Connection: keep-alive`); `Connection: close` from either side ends the connection
//!   after the response. Pipelined requests are answered strictly in order: the next
//!   request is decoded only once the response to the previous one is complete, and while a
//!   response is pending at most [`Config::max_read_ahead`] bytes are buffered before the
//!   connection stops being read. Responses finished in one batch of pipelined requests
//!   leave in one write. `Expect: 100-continue` is answered with `100 Continue` before the
//!   body is read (unless the declared length is over the limit: then 413). `TCP_NODELAY`
//!   is set on every connection ([`Config::nodelay`]).
//! * **Errors and timeouts.** Each answered with its status and the connection closed (see
//!   [`ErrorKind`]): a head over the limit or too many fields 431, a body over the limit
//!   413, a malformed or ambiguous request 400, an unsupported transfer coding 501, an
//!   unknown expectation 417, a head not complete within [`Config::header_timeout`] (or a
//!   body within [`Config::body_timeout`]) 408. An idle keep-alive connection is closed
//!   after [`Config::keep_alive_timeout`]. After an error response the server keeps reading
//!   (and dropping) what the client still sends for up to [`Config::linger`], so that the
//!   client reads the response rather than a reset.
//! * **Leaving a cluster.** When the worker leaves (disconnect, going down, reload,
//!   recycling — every way ends in its servers closing), every response says
//!   `Connection: close` and ends its connection, connections idle between requests are
//!   closed (once idle for the network server's grace, see
//!   [`crate::worker::Server::set_idle_grace`]), and requests in flight finish. The handler
//!   does nothing for it.
//! * **Stats.** [`Server::stats`]: requests, connections, errors by kind. In a cluster
//!   worker they also reach the primary with each heartbeat answer, summed over the
//!   worker's servers: [`crate::primary::Primary::http_stats`], the supervisor's
//!   [`WorkerStats::http`](crate::primary::supervise::WorkerStats::http) and `forkloop ctl status`.
//!
//! Each connection keeps its buffers from one request to the next: serving a keep-alive
//! stream allocates nothing per request once they have grown (buffers over 64 KiB are
//! released once empty).
//!
//! # Memory per connection
//!
//! A connection holds its state (a few hundred bytes), the unconsumed bytes of the request
//! being read (less than twice [`Limits::max_head`] while a head arrives; at most
//! [`Config::max_read_ahead`] plus one read while a response is pending), the current
//! request (its head and a body of at most [`Limits::max_body`]) and the response bytes not
//! yet taken by the socket. A client trickling a head one byte per second holds about
//! [`Config::header_timeout`] × 1 B/s of it before its 408: with the defaults, 10 000 such
//! clients cost well under 20 MiB of server state.
//!
//! # Limits of this version
//!
//! * A streamed request body's parts are handed over as they arrive: the handler cannot
//!   pause the client (it can hold the body back by calling [`Response::read_body`]
//!   later: then at most [`Config::max_read_ahead`] bytes wait before the connection
//!   stops being read).
//! * A client that half-closes its side (`shutdown(SHUT_WR)`) right after a request gets
//!   the responses written before its end-of-stream is read; a response still pending then
//!   is lost, as the stream ends its own side when the peer ends.

mod conn;
mod date;
mod decode;
mod request;
mod response;

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

pub use decode::{Decoded, Decoder, ErrorKind, Limits, MAX_CHUNK_EXT, MAX_HEADERS};
pub use request::{Request, Version};
pub use response::{Response, ResponseError};

use crate::rt::EventLoop;
use crate::worker::{self, Worker};

/// How a [`Server`] treats its connections. Every limit and timeout has a default; see
/// each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Size limits of a request (head, fields, body).
    pub limits: Limits,
    /// How long a request head may take to arrive, from its first byte (for a new
    /// connection: from the accept). Then 408. Default 20 s.
    pub header_timeout: Duration,
    /// How long a request body may take to arrive, from the end of its head. Then 408.
    /// Default 60 s.
    pub body_timeout: Duration,
    /// How long a connection may stay idle between requests. Then it is closed. Default
    /// 5 s (Node's `keepAliveTimeout`).
    pub keep_alive_timeout: Duration,
    /// After a response that closes the connection, how long the server goes on reading
    /// (and dropping) what the client sends before closing outright. Default 2 s.
    pub linger: Duration,
    /// Bytes of later requests buffered while a response is pending (pipelining) before
    /// the connection stops being read. Default 64 KiB.
    pub max_read_ahead: usize,
    /// Set `TCP_NODELAY` on every connection (responses are written whole, so Nagle's
    /// algorithm only adds latency). Default `true`.
    pub nodelay: bool,
    /// Stream request bodies: the handler runs as soon as a request's head is in (its
    /// [`Request::body`] empty), and reads the body as it arrives with
    /// [`Response::read_body`]. [`Limits::max_body`] still bounds a body's total size
    /// (raise it for uploads); [`Config::body_timeout`] still bounds its arrival. A body
    /// the handler does not read is read and dropped once the response ends (up to
    /// `max_body`), so the connection goes on. A client that sent `Expect:
    /// 100-continue` gets its `100 Continue` when the handler calls `read_body` (or
    /// starts streaming its answer); a handler that answers first (a 401, a 413 of its
    /// own) spares it the upload, and that response closes the connection. Default
    /// `false`: bodies are delivered whole, and `100 Continue` is sent as soon as the
    /// head is read.
    pub stream_bodies: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            header_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(60),
            keep_alive_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(2),
            max_read_ahead: 64 * 1024,
            nodelay: true,
            stream_bodies: false,
        }
    }
}

/// Counters of a [`Server`] (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests handed to the handler.
    pub requests: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Requests refused or connections ended early, by kind ([`ErrorKind::index`]).
    pub errors: [u64; ErrorKind::ALL.len()],
}

impl Stats {
    /// Errors of `kind` so far.
    pub fn errors_of(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()]
    }

    /// These counters as the worker reports them to the primary.
    pub fn report(&self) -> crate::ipc::HttpReport {
        crate::ipc::HttpReport {
            requests: self.requests,
            accepted: self.accepted,
            open: self.open,
            errors: ErrorKind::ALL
                .iter()
                .filter(|k| self.errors_of(**k) > 0)
                .map(|k| (k.name().to_owned(), self.errors_of(*k)))
                .collect(),
        }
    }
}

/// The handler: runs once per request, with the request and its response writer.
pub(crate) type Handler = Box<dyn FnMut(&mut EventLoop, &Request, Response)>;

/// An HTTP server; clone the handle freely.
#[derive(Clone)]
pub struct Server {
    shared: Rc<RefCell<conn::Shared>>,
    net: worker::Server,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("net", &self.net)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Server {
    /// Listens on `addr` — through the primary when `worker` is given (the primary's
    /// policy decides how: round-robin hand-offs, a shared socket or `SO_REUSEPORT`), by
    /// binding here otherwise — and serves every request with `handler`. Whether it
    /// listens is reported through [`Server::net`]'s `on_listening` / `on_error`, after
    /// this call returns.
    pub fn listen<H>(
        lp: &mut EventLoop,
        worker: Option<&Worker>,
        addr: SocketAddr,
        config: Config,
        handler: H,
    ) -> Server
    where
        H: FnMut(&mut EventLoop, &Request, Response) + 'static,
    {
        let shared = conn::Shared::new(config, Box::new(handler));
        // The listener keeps the server alive (as Node's does): dropping this handle does
        // not stop it; closing does.
        let sh = shared.clone();
        let net = worker::listen_tcp(lp, worker, addr, move |lp, _, stream| {
            conn::accept(&sh, lp, stream);
        });
        shared.borrow_mut().net = Some(net.clone());
        if let Some(w) = worker {
            let stats = shared.borrow().stats.clone();
            w.add_http_reporter(Box::new(move || stats.borrow().report()));
        }
        conn::start_sweep(&shared, lp);
        Server { shared, net }
    }

    /// The network server underneath: address, `on_listening`, `on_error`, connection
    /// cap, `close`.
    pub fn net(&self) -> &worker::Server {
        &self.net
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        *self.shared.borrow().stats.borrow()
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.shared.borrow().config
    }

    /// Stops accepting; connections finish their requests (each response then says
    /// `Connection: close`) and `cb` runs once every connection has ended.
    pub fn close<F: FnOnce(&mut EventLoop) + 'static>(&self, lp: &mut EventLoop, cb: F) {
        self.net.close(lp, cb);
    }
}
