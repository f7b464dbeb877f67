//! The connections of one HTTP server: reading, decoding, dispatching to the handler in
//! order, writing, timeouts, and closing.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::rc::Rc;

use slab::Slab;

use super::date::DateCache;
use super::decode::{Decoded, Decoder, ErrorKind};
use super::request::{Request, Version};
use super::response::{self, Response};
use super::{Config, Handler, Stats};
use crate::net::{DEFAULT_HIGH_WATER_MARK, Stream};
use crate::rt::{EventLoop, TimerId};
use crate::worker;

/// Buffer capacity a connection keeps between requests; beyond it a buffer is released
/// once empty (so that one large request or response does not stay allocated).
pub(crate) const KEEP_CAPACITY: usize = 64 * 1024;

/// A drain callback left by [`Response::on_drain`].
pub(crate) type DrainCb = Box<dyn FnOnce(&mut EventLoop, Response)>;

/// The interim response a client that sent `Expect: 100-continue` waits for.
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A body-part callback left by [`Response::read_body`].
pub(crate) type BodyDataCb = Box<dyn FnMut(&mut EventLoop, &[u8]) -> ControlFlow<()>>;

/// Where a streamed request body ([`Config::stream_bodies`]) goes.
pub(crate) enum BodyRead {
    /// No body is being streamed (whole bodies, or between requests).
    No,
    /// The handler has the request; its body waits in the connection until
    /// [`Response::read_body`] (or is dropped once the response ends). `waits_continue`:
    /// the client waits for a `100 Continue`, not sent yet.
    Held { waits_continue: bool },
    /// Parts go to `data`; the response goes back to `end` with the last one.
    Sink {
        data: Option<BodyDataCb>,
        end: Option<DrainCb>,
    },
    /// The response ended before the body was read, or the reader stopped: the parts
    /// left are dropped.
    Dropped,
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Between requests, nothing of the next one yet (keep-alive timeout).
    Idle,
    /// Reading a request (header or body timeout).
    Reading,
    /// The handler has the request; no timeout (the response is the handler's).
    Busy,
    /// The last response is out (or going out) and the connection is closing; what the
    /// client still sends is dropped (linger timeout).
    Closing,
}

/// The response being written on a connection.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    /// User header lines, `name: value\r\n` each.
    pub(crate) headers: Vec<u8>,
    /// The connection closes after this response.
    pub(crate) close: bool,
    /// The request asked to close (so the client sends nothing more).
    pub(crate) client_closes: bool,
    /// The request wants a keep-alive connection on HTTP/1.0.
    pub(crate) keep_alive_10: bool,
    /// `HEAD`: no body bytes.
    pub(crate) head_only: bool,
    pub(crate) version: Version,
    /// The head went out with a streamed body.
    pub(crate) streaming: bool,
}

pub(crate) struct Conn {
    pub(crate) stream: Stream,
    /// Number of the current request on this connection (a [`Response`] names it).
    pub(crate) serial: u64,
    decoder: Decoder,
    pub(crate) req: Request,
    /// Received bytes not consumed yet.
    inbuf: Vec<u8>,
    /// Response bytes not handed to the stream yet (a batch of pipelined responses).
    pub(crate) out: Vec<u8>,
    pub(crate) phase: Phase,
    /// Loop time (ms) at which the phase's timeout runs out (0: none).
    deadline: u64,
    pub(crate) resp: Resp,
    /// A response is pending.
    pub(crate) in_flight: bool,
    /// The handler is running for this connection (responses ended now join the batch).
    pub(crate) dispatching: bool,
    /// The stream's write queue is full: later requests wait for the drain.
    pub(crate) blocked: bool,
    /// Reading is paused (read-ahead bound).
    paused: bool,
    /// Marked idle on the network server.
    idle_marked: bool,
    /// The stream was ended (or destroyed) by us.
    ended: bool,
    pub(crate) drain: Option<DrainCb>,
    /// The streamed body of the current request.
    pub(crate) body: BodyRead,
}

impl Conn {
    /// Whether the response must close the connection because a body the client was
    /// told to wait with (`Expect: 100-continue`) was never asked for: the client may
    /// send it or not, so what follows on the connection cannot be framed.
    pub(crate) fn body_never_asked(&self) -> bool {
        matches!(
            self.body,
            BodyRead::Held {
                waits_continue: true
            }
        )
    }
}

pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) net: Option<worker::Server>,
    pub(crate) conns: Slab<Conn>,
    /// `None` while it runs.
    handler: Option<Handler>,
    pub(crate) date: DateCache,
    /// Shared with the worker's heartbeat reports ([`super::Server::listen`]); `open`
    /// is kept current here.
    pub(crate) stats: Rc<RefCell<Stats>>,
    /// Connections whose response ended while the handler was running for another one:
    /// they go on once it returns.
    ready: Vec<usize>,
    /// Responses dropped without being ended: (connection key, serial).
    pub(crate) abandoned: Rc<RefCell<Vec<(usize, u64)>>>,
    /// Buffers of closed connections, for new ones (see [`Buffers`]).
    spare: Vec<Buffers>,
}

/// Most closed connections' buffers kept for new ones.
const SPARE_BUFFERS: usize = 64;
/// Buffers larger than this (bytes) are not kept: a large request or response does not
/// stay allocated for the next connection.
const SPARE_CAPACITY: usize = 4096;

/// A connection's buffers (request head and headers, input, output, response headers),
/// kept when it closes so that the next connection reuses them: a client opening a
/// connection per request costs no allocations for them once the server is warm. At most
/// [`SPARE_BUFFERS`] sets, each buffer at most [`SPARE_CAPACITY`].
#[derive(Default)]
struct Buffers {
    req: Request,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    headers: Vec<u8>,
}

impl Buffers {
    /// Takes `c`'s buffers, emptied, if none is too large to keep.
    fn salvage(c: &mut Conn) -> Option<Buffers> {
        let small = c.req.capacity() <= SPARE_CAPACITY
            && [&c.inbuf, &c.out, &c.resp.headers]
                .iter()
                .all(|b| b.capacity() <= SPARE_CAPACITY);
        if !small {
            return None;
        }
        let mut b = Buffers {
            req: std::mem::take(&mut c.req),
            inbuf: std::mem::take(&mut c.inbuf),
            out: std::mem::take(&mut c.out),
            headers: std::mem::take(&mut c.resp.headers),
        };
        b.req.clear();
        b.inbuf.clear();
        b.out.clear();
        b.headers.clear();
        Some(b)
    }
}

impl Shared {
    pub(crate) fn new(config: Config, handler: Handler) -> Rc<RefCell<Shared>> {
        Rc::new(RefCell::new(Shared {
            config,
            net: None,
            conns: Slab::new(),
            handler: Some(handler),
            date: DateCache::new(),
            stats: Rc::default(),
            ready: Vec::new(),
            abandoned: Rc::default(),
            spare: Vec::new(),
        }))
    }

    /// Whether the server is closing (its worker leaving, or closed by the user).
    pub(crate) fn leaving(&self) -> bool {
        self.net.as_ref().is_some_and(worker::Server::is_closing)
    }

    /// The connection `key` if it is still the one on `stream`.
    pub(crate) fn conn(&mut self, key: usize, stream: Stream) -> Option<&mut Conn> {
        self.conns.get_mut(key).filter(|c| c.stream == stream)
    }
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Takes a new connection.
pub(crate) fn accept(sh: &Rc<RefCell<Shared>>, lp: &mut EventLoop, stream: Stream) {
    let now = lp.now();
    let (key, nodelay, net) = {
        let mut s = sh.borrow_mut();
        let config = s.config;
        let b = s.spare.pop().unwrap_or_default();
        let key = s.conns.insert(Conn {
            stream,
            serial: 0,
            decoder: Decoder::new(config.limits),
            req: b.req,
            inbuf: b.inbuf,
            out: b.out,
            phase: Phase::Reading,
            deadline: now.saturating_add(ms(config.header_timeout)),
            resp: Resp {
                status: 200,
                headers: b.headers,
                close: false,
                client_closes: false,
                keep_alive_10: false,
                head_only: false,
                version: Version::Http11,
                streaming: false,
            },
            in_flight: false,
            dispatching: false,
            blocked: false,
            paused: false,
            idle_marked: true,
            ended: false,
            drain: None,
            body: BodyRead::No,
        });
        {
            let mut st = s.stats.borrow_mut();
            st.accepted += 1;
            st.open += 1;
        }
        (key, config.nodelay, s.net.clone())
    };
    if nodelay && let Err(e) = stream.set_nodelay(lp, true) {
        log::debug!("http: cannot set TCP_NODELAY: {e}");
    }
    // Nothing in flight yet: a server that closes may end it.
    if let Some(net) = &net {
        net.set_idle(lp, stream, true);
    }
    let s1 = sh.clone();
    stream.on_data(lp, move |lp, stream, data| {
        on_data(&s1, lp, key, stream, data)
    });
    let s2 = sh.clone();
    stream.on_drain(lp, move |lp, stream| on_drain(&s2, lp, key, stream));
    let s3 = sh.clone();
    stream.on_close(lp, move |_, stream| {
        let gone = {
            let mut s = s3.borrow_mut();
            match s.conns.get(key) {
                Some(c) if c.stream == stream => {
                    s.stats.borrow_mut().open -= 1;
                    let mut c = s.conns.remove(key);
                    if s.spare.len() < SPARE_BUFFERS
                        && let Some(b) = Buffers::salvage(&mut c)
                    {
                        s.spare.push(b);
                    }
                    Some(c)
                }
                _ => None,
            }
        };
        drop(gone); // user callbacks inside are dropped without the state borrowed
    });
}

fn on_data(sh: &Rc<RefCell<Shared>>, lp: &mut EventLoop, key: usize, stream: Stream, data: &[u8]) {
    let (mut input, unmark) = {
        let mut s = sh.borrow_mut();
        let now = lp.now();
        let timeout = ms(s.config.header_timeout);
        let Some(c) = s.conn(key, stream) else {
            return;
        };
        if c.phase == Phase::Closing {
            return; // lingering: dropped
        }
        if c.phase == Phase::Idle {
            c.phase = Phase::Reading;
            c.deadline = now.saturating_add(timeout);
        }
        let unmark = std::mem::take(&mut c.idle_marked);
        (std::mem::take(&mut c.inbuf), unmark)
    };
    if unmark {
        let net = sh.borrow().net.clone();
        if let Some(net) = net {
            net.set_idle(lp, stream, false);
        }
    }
    if input.is_empty() {
        let used = pump(sh, lp, key, stream, data);
        input.extend_from_slice(&data[used..]);
    } else {
        input.extend_from_slice(data);
        let used = pump(sh, lp, key, stream, &input);
        input.drain(..used);
    }
    settle(sh, lp, key, stream, input);
}

/// Puts the unconsumed bytes back, then flushes, closes, pauses or marks idle as the
/// connection's state says.
fn settle(
    sh: &Rc<RefCell<Shared>>,
    lp: &mut EventLoop,
    key: usize,
    stream: Stream,
    input: Vec<u8>,
) {
    let mut s = sh.borrow_mut();
    let max_ahead = s.config.max_read_ahead;
    let net = s.net.clone();
    let Some(c) = s.conn(key, stream) else {
        return;
    };
    c.inbuf = if input.is_empty() && input.capacity() > KEEP_CAPACITY {
        Vec::new()
    } else {
        input
    };
    flush(c, lp);
    if c.phase == Phase::Closing {
        if !c.ended {
            c.ended = true;
            c.inbuf = Vec::new();
            if c.resp.client_closes {
                // The client asked to close: nothing more will come, so close once its
                // response is out rather than half-close and wait for its FIN.
                stream.close_when_written(lp);
            } else {
                stream.end(lp);
            }
        }
        return;
    }
    let waiting = c.in_flight || c.blocked;
    if waiting && !c.paused && c.inbuf.len() > max_ahead {
        c.paused = true;
        stream.pause(lp);
    } else if c.paused && (!waiting || c.inbuf.len() <= max_ahead) {
        c.paused = false;
        stream.resume(lp);
    }
    if c.phase == Phase::Idle && c.inbuf.is_empty() && !c.idle_marked {
        c.idle_marked = true;
        drop(s);
        if let Some(net) = net {
            net.set_idle(lp, stream, true);
        }
    }
}

/// Hands the queued response bytes to the stream.
pub(crate) fn flush(c: &mut Conn, lp: &mut EventLoop) {
    if c.out.is_empty() {
        return;
    }
    if !c.stream.write(lp, &c.out) {
        c.blocked = true;
    }
    c.out.clear();
    if c.out.capacity() > KEEP_CAPACITY {
        c.out = Vec::new(); // a burst of large responses is not kept per connection
    }
}

/// Decodes and dispatches requests from `input` while the connection may go on; returns
/// the bytes consumed.
fn pump(
    sh: &Rc<RefCell<Shared>>,
    lp: &mut EventLoop,
    key: usize,
    stream: Stream,
    input: &[u8],
) -> usize {
    let mut pos = 0;
    loop {
        let mut guard = sh.borrow_mut();
        let s = &mut *guard;
        let now = lp.now();
        let config = s.config;
        let handler_busy = s.handler.is_none();
        let Some(c) = s.conns.get_mut(key).filter(|c| c.stream == stream) else {
            return input.len();
        };
        // While a response is pending only a streamed body being read goes on.
        let reading_body = matches!(c.body, BodyRead::Sink { .. });
        if (c.in_flight && !reading_body) || c.blocked || c.phase == Phase::Closing {
            return pos;
        }
        if handler_busy {
            // The handler is running for another connection: go on once it returns.
            s.ready.push(key);
            return pos;
        }
        match c.decoder.decode(&input[pos..], &mut c.req) {
            Decoded::NeedMore => {
                if pos < input.len() && c.phase == Phase::Idle {
                    c.phase = Phase::Reading;
                    c.deadline = now.saturating_add(ms(config.header_timeout));
                }
                return pos;
            }
            Decoded::Head { used } => {
                pos += used;
                if c.req.flags.expect_other {
                    drop(guard);
                    fail(sh, lp, key, stream, ErrorKind::UnsupportedExpect);
                    return input.len();
                }
                let body = c.req.flags.chunked || c.req.flags.length.is_some_and(|n| n > 0);
                if body {
                    c.phase = Phase::Reading;
                    c.deadline = now.saturating_add(ms(config.body_timeout));
                    // The client waits for `100 Continue` before sending the body.
                    let waits = c.req.flags.expect_continue && pos == input.len();
                    if config.stream_bodies {
                        // The handler runs now; the body follows through `read_body`,
                        // which sends the `100 Continue` (so a handler that answers at
                        // once, a 403 say, spares the client the upload).
                        c.body = BodyRead::Held {
                            waits_continue: waits,
                        };
                        drop(guard);
                        dispatch(sh, lp, key, stream, true);
                    } else if waits {
                        c.out.extend_from_slice(CONTINUE);
                        flush(c, lp);
                    }
                }
            }
            Decoded::Body { used, data } => {
                let part = &input[pos..][data];
                pos += used;
                match &mut c.body {
                    BodyRead::No => c.req.body.extend_from_slice(part),
                    BodyRead::Sink { data, .. } => {
                        let mut cb = data.take();
                        drop(guard);
                        let flow = match cb.as_mut() {
                            Some(cb) => cb(lp, part),
                            None => ControlFlow::Continue(()),
                        };
                        let mut s = sh.borrow_mut();
                        let Some(c) = s.conn(key, stream) else {
                            continue; // gone: the next turn says so
                        };
                        let BodyRead::Sink { data, end } = &mut c.body else {
                            continue;
                        };
                        if flow.is_continue() {
                            *data = cb;
                            continue;
                        }
                        // The reader stopped: the response goes back to it now, and the
                        // rest of the body is dropped as it comes (under the same limit
                        // and timeout), keeping the connection framed.
                        let end = end.take();
                        c.body = BodyRead::Dropped;
                        drop(s);
                        body_read(sh, lp, key, stream, end);
                    }
                    BodyRead::Held { .. } | BodyRead::Dropped => {}
                }
            }
            Decoded::End { used } => {
                pos += used;
                match std::mem::replace(&mut c.body, BodyRead::No) {
                    BodyRead::No => {
                        drop(guard);
                        dispatch(sh, lp, key, stream, false);
                    }
                    BodyRead::Sink { end, .. } => {
                        drop(guard);
                        body_read(sh, lp, key, stream, end);
                    }
                    BodyRead::Held { .. } | BodyRead::Dropped => {
                        // The response ended before its body did (`Held` cannot be seen
                        // here: decoding waits while it is): the connection is idle now.
                        if c.phase == Phase::Reading {
                            c.phase = Phase::Idle;
                            c.deadline = now.saturating_add(ms(config.keep_alive_timeout));
                        }
                    }
                }
            }
            Decoded::Error(kind) => {
                drop(guard);
                fail(sh, lp, key, stream, kind);
                return input.len();
            }
        }
    }
}

/// A streamed body was read to its end, or its reader stopped: the response goes back to
/// the reader's `end`. No timeout runs while the handler has it (what is left of a
/// stopped body is timed again once the response ends).
fn body_read(
    sh: &Rc<RefCell<Shared>>,
    lp: &mut EventLoop,
    key: usize,
    stream: Stream,
    end: Option<DrainCb>,
) {
    let serial = {
        let mut s = sh.borrow_mut();
        let Some(c) = s.conn(key, stream) else {
            return;
        };
        c.phase = Phase::Busy;
        c.deadline = 0;
        c.dispatching = true;
        c.serial
    };
    if let Some(end) = end {
        end(lp, Response::new(sh.clone(), key, stream, serial));
    }
    dispatched(sh, lp, key, stream, None);
}

/// Hands the decoded request to the handler with a new response: once its body is in, or
/// (`streamed`) once its head is, the body following through [`Response::read_body`].
fn dispatch(
    sh: &Rc<RefCell<Shared>>,
    lp: &mut EventLoop,
    key: usize,
    stream: Stream,
    streamed: bool,
) {
    let (req, serial, mut handler) = {
        let mut guard = sh.borrow_mut();
        let s = &mut *guard;
        let Some(c) = s.conns.get_mut(key).filter(|c| c.stream == stream) else {
            return;
        };
        s.stats.borrow_mut().requests += 1;
        c.serial += 1;
        c.in_flight = true;
        c.dispatching = true;
        if !streamed {
            // No timeout while the handler has the request (a streamed body keeps its own).
            c.phase = Phase::Busy;
            c.deadline = 0;
        }
        let keep = c.req.keep_alive();
        c.resp.status = 200;
        c.resp.headers.clear();
        c.resp.close = !keep;
        c.resp.client_closes = !keep;
        c.resp.keep_alive_10 = keep && c.req.version() == Version::Http10;
        c.resp.head_only = c.req.method() == "HEAD";
        c.resp.version = c.req.version();
        c.resp.streaming = false;
        (std::mem::take(&mut c.req), c.serial, s.handler.take())
    };
    let res = Response::new(sh.clone(), key, stream, serial);
    if let Some(h) = handler.as_mut() {
        h(lp, &req, res);
    }
    sh.borrow_mut().handler = handler;
    dispatched(sh, lp, key, stream, Some(req));
}

/// After user code had a response (the handler, or a streamed body's end): puts the
/// request back (its buffers are reused), flushes a large batch, runs what waited.
fn dispatched(
    sh: &Rc<RefCell<Shared>>,
    lp: &mut EventLoop,
    key: usize,
    stream: Stream,
    req: Option<Request>,
) {
    let mut s = sh.borrow_mut();
    if let Some(c) = s.conn(key, stream) {
        if let Some(req) = req {
            c.req = req;
        }
        c.dispatching = false;
        if c.out.len() >= DEFAULT_HIGH_WATER_MARK {
            flush(c, lp);
        }
    }
    drop(s);
    after_handler(sh, lp);
}

/// Runs what waited for the handler: abandoned responses, connections ready to go on.
fn after_handler(sh: &Rc<RefCell<Shared>>, lp: &mut EventLoop) {
    answer_abandoned(sh, lp);
    loop {
        let ready = std::mem::take(&mut sh.borrow_mut().ready);
        if ready.is_empty() {
            return;
        }
        for key in ready {
            let stream = sh.borrow().conns.get(key).map(|c| c.stream);
            if let Some(stream) = stream {
                resume(sh, lp, key, stream);
            }
        }
    }
}

/// Goes on with a connection whose response ended outside its handler call, or whose
/// write queue drained.
pub(crate) fn resume(sh: &Rc<RefCell<Shared>>, lp: &mut EventLoop, key: usize, stream: Stream) {
    let mut input = {
        let mut s = sh.borrow_mut();
        let Some(c) = s.conn(key, stream) else {
            return;
        };
        if c.dispatching {
            return; // the running dispatch goes on by itself
        }
        std::mem::take(&mut c.inbuf)
    };
    let used = pump(sh, lp, key, stream, &input);
    input.drain(..used);
    settle(sh, lp, key, stream, input);
}

pub(crate) fn on_drain(sh: &Rc<RefCell<Shared>>, lp: &mut EventLoop, key: usize, stream: Stream) {
    let cb = {
        let mut s = sh.borrow_mut();
        let Some(c) = s.conn(key, stream) else {
            return;
        };
        c.blocked = false;
        let serial = c.serial;
        let in_flight = c.in_flight;
        c.drain.take().filter(|_| in_flight).map(|cb| (cb, serial))
    };
    if let Some((cb, serial)) = cb {
        cb(lp, Response::new(sh.clone(), key, stream, serial));
        after_handler(sh, lp);
    }
    resume(sh, lp, key, stream);
}

/// Called by [`Response`] once its response is complete (head and body queued).
pub(crate) fn response_done(
    sh: &Rc<RefCell<Shared>>,
    lp: &mut EventLoop,
    key: usize,
    stream: Stream,
) {
    let dispatching = {
        let mut s = sh.borrow_mut();
        let now = lp.now();
        let keep_alive = ms(s.config.keep_alive_timeout);
        let linger = ms(s.config.linger);
        let body_timeout = ms(s.config.body_timeout);
        let Some(c) = s.conn(key, stream) else {
            return;
        };
        c.in_flight = false;
        c.drain = None;
        let body_left = matches!(c.body, BodyRead::Held { .. } | BodyRead::Dropped);
        if body_left {
            // Answered before its body was read (or once its reader stopped): the rest of
            // the body is dropped.
            c.body = BodyRead::Dropped;
            if c.phase == Phase::Busy {
                c.phase = Phase::Reading;
                c.deadline = now.saturating_add(body_timeout);
            }
        }
        if c.resp.close {
            c.phase = Phase::Closing;
            c.deadline = now.saturating_add(linger);
        } else if !body_left {
            c.phase = Phase::Idle;
            c.deadline = now.saturating_add(keep_alive);
        }
        c.dispatching
    };
    if !dispatching {
        resume(sh, lp, key, stream);
    }
}

/// Refuses the current request: the kind's status, then close.
fn fail(sh: &Rc<RefCell<Shared>>, lp: &mut EventLoop, key: usize, stream: Stream, kind: ErrorKind) {
    {
        let mut guard = sh.borrow_mut();
        let s = &mut *guard;
        let now = lp.now();
        let linger = ms(s.config.linger);
        s.stats.borrow_mut().errors[kind.index()] += 1;
        let date = *s.date.get(now);
        let Some(c) = s.conns.get_mut(key).filter(|c| c.stream == stream) else {
            return;
        };
        c.body = BodyRead::No;
        if c.resp.streaming && c.in_flight {
            // A streamed request body failed after the response head went out: no status
            // can be sent any more.
            log::debug!("http: a request body failed ({kind}) mid-response; closing");
            c.in_flight = false;
            c.phase = Phase::Closing;
            c.ended = true;
            drop(guard);
            stream.destroy(lp);
            return;
        }
        log::debug!(
            "http: refusing a request ({kind}, {}); closing the connection",
            kind.status()
        );
        response::error_response(&mut c.out, kind.status(), &date);
        c.phase = Phase::Closing;
        c.deadline = now.saturating_add(linger);
        c.resp.client_closes = false;
        c.in_flight = false;
        flush(c, lp);
        c.ended = true;
        c.inbuf = Vec::new();
    }
    stream.end(lp);
}

/// Answers the responses dropped without being ended: 500 if nothing was sent yet, a
/// cut connection if a streamed body had started.
pub(crate) fn answer_abandoned(sh: &Rc<RefCell<Shared>>, lp: &mut EventLoop) {
    let list = {
        let s = sh.borrow();
        let mut a = s.abandoned.borrow_mut();
        if a.is_empty() {
            return;
        }
        std::mem::take(&mut *a)
    };
    for (key, serial) in list {
        let stream = {
            let s = sh.borrow();
            match s.conns.get(key) {
                Some(c) if c.serial == serial && c.in_flight => c.stream,
                _ => continue,
            }
        };
        log::error!("http: a response was dropped without being ended; answering 500");
        let streaming = sh
            .borrow_mut()
            .conn(key, stream)
            .is_some_and(|c| c.resp.streaming);
        if streaming {
            stream.destroy(lp);
        } else {
            Response::new(sh.clone(), key, stream, serial).fail_internal(lp);
        }
    }
}

/// Starts the timer that enforces the timeouts of every connection (a sweep over the
/// connections, a few times per shortest timeout: one timer for the server instead of one
/// per connection re-armed on every request).
pub(crate) fn start_sweep(sh: &Rc<RefCell<Shared>>, lp: &mut EventLoop) {
    let c = sh.borrow().config;
    let shortest = [
        c.header_timeout,
        c.body_timeout,
        c.keep_alive_timeout,
        c.linger,
    ]
    .into_iter()
    .map(ms)
    .min()
    .unwrap_or(1000);
    let period = (shortest / 4).clamp(5, 1000);
    let weak = Rc::downgrade(sh);
    let id: Rc<Cell<Option<TimerId>>> = Rc::default();
    let own = id.clone();
    let t = lp.set_interval(period, move |lp| {
        let live = weak.upgrade().is_some_and(|sh| {
            sweep(&sh, lp);
            let s = sh.borrow();
            !(s.leaving() && s.conns.is_empty())
        });
        if !live {
            // Closed with every connection gone (or dropped): nothing left to time.
            if let Some(t) = own.take() {
                lp.clear_interval(t);
            }
        }
    });
    lp.unref(t); // the connections keep the loop alive, not the timer
    id.set(Some(t));
}

fn sweep(sh: &Rc<RefCell<Shared>>, lp: &mut EventLoop) {
    answer_abandoned(sh, lp);
    let now = lp.now();
    let due: Vec<(usize, Stream, Phase)> = {
        let s = sh.borrow();
        s.conns
            .iter()
            .filter(|(_, c)| c.deadline != 0 && now >= c.deadline)
            .map(|(k, c)| (k, c.stream, c.phase))
            .collect()
    };
    for (key, stream, phase) in due {
        match phase {
            // A request (or a new connection's first one) too slow to arrive.
            Phase::Reading => fail(sh, lp, key, stream, ErrorKind::Timeout),
            // Idle past the keep-alive timeout, or lingering past the linger time.
            Phase::Idle | Phase::Closing => stream.destroy(lp),
            Phase::Busy => {}
        }
    }
}
