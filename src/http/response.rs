//! The response writer handed to the handler.

use std::cell::RefCell;
use std::fmt;
use std::ops::ControlFlow;
use std::rc::Rc;

use super::conn::{self, Conn, Shared};
use super::date::DATE_LEN;
use super::request::Version;
use crate::net::Stream;
use crate::rt::EventLoop;

/// Bodies up to this size leave in the same write as their head (copied behind it); larger
/// ones are written on their own rather than copied.
const INLINE_BODY: usize = 16 * 1024;

/// Why a [`Response`] call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Status codes must be final ones, 200 to 599.
    InvalidStatus(u16),
    /// The field name is not a token, or the value holds CR, LF or other control bytes.
    InvalidHeader,
    /// The server writes this field itself (`Content-Length`, `Transfer-Encoding`,
    /// `Date`; `Connection` only takes `close`).
    ManagedHeader,
    /// The head was sent already (a streamed body started).
    HeadSent,
    /// The connection is closed; nothing more can be sent.
    Closed,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::InvalidStatus(c) => write!(f, "invalid status code {c}"),
            ResponseError::InvalidHeader => f.write_str("invalid header field"),
            ResponseError::ManagedHeader => f.write_str("header field managed by the server"),
            ResponseError::HeadSent => f.write_str("response head already sent"),
            ResponseError::Closed => f.write_str("connection closed"),
        }
    }
}

impl std::error::Error for ResponseError {}

/// The response to one request. End it with [`Response::end`] (whole body) or stream the
/// body with [`Response::write`] and end with [`Response::finish`]. It may be kept and
/// ended later (after a timer, a message, a database reply): later requests on the
/// connection wait for it. Dropping it without ending it is a bug in the handler: the
/// client gets a 500 (or, if a streamed body had started, a cut connection) and an error
/// is logged.
#[must_use = "a response must be ended with `end` or `finish`; dropped, the client gets a 500"]
pub struct Response {
    sh: Rc<RefCell<Shared>>,
    abandoned: Rc<RefCell<Vec<(usize, u64)>>>,
    key: usize,
    stream: Stream,
    serial: u64,
    done: bool,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("stream", &self.stream)
            .field("request", &self.serial)
            .finish()
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        if !self.done {
            self.abandoned.borrow_mut().push((self.key, self.serial));
        }
    }
}

/// Whether `status` has no body (nor `Content-Length`).
fn bodiless(status: u16) -> bool {
    status == 204 || status == 304
}

impl Response {
    pub(crate) fn new(
        sh: Rc<RefCell<Shared>>,
        key: usize,
        stream: Stream,
        serial: u64,
    ) -> Response {
        let abandoned = sh.borrow().abandoned.clone();
        Response {
            sh,
            abandoned,
            key,
            stream,
            serial,
            done: false,
        }
    }

    /// Runs `f` on this response's connection state (with the server's state), if the
    /// connection is open and this response is still the pending one.
    fn with<R>(
        &self,
        now: u64,
        f: impl FnOnce(&mut Conn, bool, &[u8; DATE_LEN]) -> R,
    ) -> Option<R> {
        let mut guard = self.sh.borrow_mut();
        let s = &mut *guard;
        let leaving = s.leaving();
        let date = *s.date.get(now);
        let c = s
            .conns
            .get_mut(self.key)
            .filter(|c| c.stream == self.stream && c.serial == self.serial && c.in_flight)?;
        Some(f(c, leaving, &date))
    }

    /// The server this response belongs to (Node's `res.socket.server`): its stats, its
    /// address or `close`, from inside the handler, with no handle captured beforehand.
    pub fn server(&self) -> super::Server {
        let net = self.sh.borrow().net.clone();
        super::Server {
            shared: self.sh.clone(),
            // Set by `Server::listen` before it returns, so before any request is read.
            net: net.expect("an HTTP server's listener is set when it is created"),
        }
    }

    /// The connection (a stream on the loop): peer address, and so on.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Whether the connection is still open (a client that went away makes later writes
    /// no-ops).
    pub fn is_open(&self, lp: &EventLoop) -> bool {
        self.stream.is_open(lp)
    }

    /// Sets the status code (default 200).
    ///
    /// # Errors
    ///
    /// The code is not 200–599, the head was sent, or the connection is closed.
    pub fn set_status(&mut self, code: u16) -> Result<(), ResponseError> {
        if !(200..=599).contains(&code) {
            return Err(ResponseError::InvalidStatus(code));
        }
        let mut s = self.sh.borrow_mut();
        let c = s.conn(self.key, self.stream).ok_or(ResponseError::Closed)?;
        if c.resp.streaming {
            return Err(ResponseError::HeadSent);
        }
        c.resp.status = code;
        Ok(())
    }

    /// Adds a header field. `Connection: close` closes the connection after the response;
    /// `Content-Length`, `Transfer-Encoding` and `Date` are the server's.
    ///
    /// # Errors
    ///
    /// See [`ResponseError`].
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), ResponseError> {
        let valid_name = !name.is_empty() && name.bytes().all(is_tchar);
        let valid_value = value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if !valid_name || !valid_value {
            return Err(ResponseError::InvalidHeader);
        }
        let managed = ["content-length", "transfer-encoding", "date"]
            .iter()
            .any(|m| name.eq_ignore_ascii_case(m));
        let connection = name.eq_ignore_ascii_case("connection");
        if managed || (connection && !value.trim().eq_ignore_ascii_case("close")) {
            return Err(ResponseError::ManagedHeader);
        }
        let mut s = self.sh.borrow_mut();
        let c = s.conn(self.key, self.stream).ok_or(ResponseError::Closed)?;
        if c.resp.streaming {
            return Err(ResponseError::HeadSent);
        }
        if connection {
            c.resp.close = true;
        } else {
            let h = &mut c.resp.headers;
            h.extend_from_slice(name.as_bytes());
            h.extend_from_slice(b": ");
            h.extend_from_slice(value.as_bytes());
            h.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    /// Sends the response with `body` as its whole body (head and body leave in one
    /// write). After a streamed body ([`Response::write`]), sends `body` as its last part.
    pub fn end(mut self, lp: &mut EventLoop, body: &[u8]) {
        self.done = true;
        let queued = self.with(lp.now(), |c, leaving, date| {
            if c.resp.streaming {
                body_part(c, body);
                last_part(c);
            } else {
                c.resp.close |= leaving || c.body_never_asked();
                write_head(&mut c.out, &c.resp, date, Some(body.len() as u64));
                if c.resp.head_only || bodiless(c.resp.status) {
                    // No body bytes.
                } else if body.len() <= INLINE_BODY {
                    c.out.extend_from_slice(body);
                } else {
                    // A large body is not copied behind the head: the head (and the
                    // responses batched before it) go first, the body straight after.
                    conn::flush(c, lp);
                    if !c.stream.write(lp, body) {
                        c.blocked = true;
                    }
                }
            }
        });
        if queued.is_some() {
            conn::response_done(&self.sh, lp, self.key, self.stream);
        }
    }

    /// Streams `chunk` as part of the body (the head goes first, without a length: the body
    /// is chunked on HTTP/1.1, delimited by the close on HTTP/1.0). Returns `false` when
    /// the connection's write queue is full: stop writing and continue in
    /// [`Response::on_drain`]. Also `false` once the connection is closed.
    pub fn write(&mut self, lp: &mut EventLoop, chunk: &[u8]) -> bool {
        self.with(lp.now(), |c, leaving, date| {
            if !c.resp.streaming {
                c.resp.streaming = true;
                c.resp.close |= leaving || c.resp.version == Version::Http10;
                if let conn::BodyRead::Held { waits_continue } = &mut c.body
                    && std::mem::take(waits_continue)
                {
                    // A handler streaming its answer has not refused the body: let the
                    // client send it (read or dropped, it keeps the connection framed).
                    c.out.extend_from_slice(conn::CONTINUE);
                }

                write_head(&mut c.out, &c.resp, date, None);
            }
            body_part(c, chunk);
            conn::flush(c, lp);
            !c.blocked
        })
        .unwrap_or(false)
    }

    /// Gives the response back to `cb` once the connection's write queue has drained (at
    /// once, on the next tick, if it is not full). If the connection closes first, `cb` is
    /// dropped without running.
    pub fn on_drain<F: FnOnce(&mut EventLoop, Response) + 'static>(
        mut self,
        lp: &mut EventLoop,
        cb: F,
    ) {
        self.done = true;
        let blocked = self.with(lp.now(), |c, _, _| {
            c.drain = Some(Box::new(cb));
            c.blocked
        });
        if blocked == Some(false) {
            let (sh, key, stream) = (self.sh.clone(), self.key, self.stream);
            lp.next_tick(move |lp| conn::on_drain(&sh, lp, key, stream));
        }
    }

    /// Reads the request's body: `on_data` gets each part as it arrives, then `on_end`
    /// gets this response back once the body is complete. `on_data` returns
    /// [`ControlFlow::Continue`] for more, or [`ControlFlow::Break`] to stop reading:
    /// `on_end` then gets the response at once (to answer a body it refuses, say with
    /// 413 or 400), and the rest of the body is read and dropped as it arrives, within
    /// the same limit and timeout, so the connection goes on. With [`Config::stream_bodies`]
    /// the parts come as the client sends them; until this is called the body waits in
    /// the connection, and a response ended without calling it drops the body. Without
    /// it the body is already whole ([`Request::body`]): `on_data` gets it in one part,
    /// on the next tick, then `on_end`.
    ///
    /// If the body fails (too large, malformed chunks, too slow: the client gets its
    /// error status, or a closed connection if a streamed response body had started) or
    /// the connection closes first, neither runs again and the response is dropped
    /// without a 500.
    ///
    /// [`Config::stream_bodies`]: super::Config::stream_bodies
    /// [`Request::body`]: super::Request::body
    pub fn read_body<D, E>(mut self, lp: &mut EventLoop, on_data: D, on_end: E)
    where
        D: FnMut(&mut EventLoop, &[u8]) -> ControlFlow<()> + 'static,
        E: FnOnce(&mut EventLoop, Response) + 'static,
    {
        self.done = true;
        let on_data: conn::BodyDataCb = Box::new(on_data);
        let on_end: conn::DrainCb = Box::new(on_end);
        let streamed = self.with(lp.now(), |c, _, _| {
            if let conn::BodyRead::Held { waits_continue } = c.body {
                c.body = conn::BodyRead::Sink {
                    data: Some(on_data),
                    end: Some(on_end),
                };
                if waits_continue {
                    c.out.extend_from_slice(conn::CONTINUE);
                    conn::flush(c, lp);
                }
                return None;
            }
            Some((on_data, on_end))
        });
        let (sh, key, stream, serial) = (self.sh.clone(), self.key, self.stream, self.serial);
        match streamed {
            // The connection is gone (or the response no longer pending): nothing to read.
            None => {}
            // Streamed: decoding goes on (by itself if the handler is still running).
            Some(None) => lp.next_tick(move |lp| conn::resume(&sh, lp, key, stream)),
            Some(Some((mut data, end))) => {
                lp.next_tick(move |lp| {
                    let body = sh.borrow_mut().conn(key, stream).and_then(|c| {
                        (c.serial == serial && c.in_flight).then(|| std::mem::take(&mut c.req.body))
                    });
                    let Some(body) = body else {
                        return;
                    };
                    if !body.is_empty() {
                        // The only part: stopping changes nothing.
                        let _ = data(lp, &body);
                    }
                    if let Some(c) = sh.borrow_mut().conn(key, stream) {
                        c.req.body = body; // its buffer is kept for the next request
                    }
                    end(lp, Response::new(sh.clone(), key, stream, serial));
                });
            }
        }
    }

    /// Ends a streamed body (or, if nothing was written, sends an empty one).
    pub fn finish(self, lp: &mut EventLoop) {
        self.end(lp, b"");
    }

    /// Answers 500 and closes (for a response dropped without being ended).
    pub(crate) fn fail_internal(mut self, lp: &mut EventLoop) {
        let _ = self.with(lp.now(), |c, _, _| {
            c.resp.status = 500;
            c.resp.headers.clear();
            c.resp.close = true;
        });
        let _ = self.set_header("Content-Type", "text/plain");
        self.end(lp, b"internal server error\n");
    }
}

/// Queues one part of a streamed body.
fn body_part(c: &mut Conn, data: &[u8]) {
    if data.is_empty() || c.resp.head_only || bodiless(c.resp.status) {
        return;
    }
    if c.resp.version == Version::Http11 {
        let mut hex = [0u8; 16];
        let mut i = hex.len();
        let mut n = data.len();
        loop {
            i -= 1;
            hex[i] = b"0123456789abcdef"[n & 15];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        c.out.extend_from_slice(&hex[i..]);
        c.out.extend_from_slice(b"\r\n");
        c.out.extend_from_slice(data);
        c.out.extend_from_slice(b"\r\n");
    } else {
        c.out.extend_from_slice(data);
    }
}

/// Queues the end of a streamed body.
fn last_part(c: &mut Conn) {
    if c.resp.version == Version::Http11 && !c.resp.head_only && !bodiless(c.resp.status) {
        c.out.extend_from_slice(b"0\r\n\r\n");
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Appends `n` in decimal.
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends a response head: `length` is the body length, `None` for a streamed body.
fn write_head(out: &mut Vec<u8>, r: &conn::Resp, date: &[u8; DATE_LEN], length: Option<u64>) {
    status_line(out, r.status);
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    if !bodiless(r.status) {
        match length {
            Some(n) => {
                out.extend_from_slice(b"Content-Length: ");
                decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            None if r.version == Version::Http11 => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
            None => {}
        }
    }
    if r.close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if r.keep_alive_10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(&r.headers);
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The head of an error response that closes the connection.
pub(crate) fn error_response(out: &mut Vec<u8>, status: u16, date: &[u8; DATE_LEN]) {
    status_line(out, status);
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// The reason phrase of `status` (empty for codes without a registered one).
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}
