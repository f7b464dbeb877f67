//! Request framing: an I/O-free state machine that turns the bytes of one connection into
//! request heads, body bytes and request ends, or a typed error.
//!
//! The head (request line and header fields) is parsed by `httparse`; this module decides
//! the framing around it: which header fields say how long the body is, whether their
//! combination is unambiguous, the chunked transfer coding, and every limit. It never
//! allocates beyond the [`Request`] it fills (whose buffers are reused request after
//! request), and its decisions depend only on the bytes, never on how they were split into
//! reads: a prefix either asks for more bytes or gets the same answer the whole input gets.
//!
//! Rules that close request smuggling (a request whose framing two parsers could read
//! differently is refused, never handed to a handler):
//!
//! * `Transfer-Encoding` together with `Content-Length`, `Transfer-Encoding` in an
//!   HTTP/1.0 request, more than one `Transfer-Encoding` field, `chunked` applied twice or
//!   not last: refused (400); other codings before a final `chunked`: 501, not
//!   implemented (only `chunked` alone is decoded);
//! * `Content-Length` values (repeated fields or comma lists) that differ, or that are not
//!   plain decimal digits: refused;
//! * line folding (obs-fold), a bare CR anywhere, or a bare LF (a line feed not preceded
//!   by a carriage return) in the head, in a chunk-size line, after chunk data or in the
//!   trailer section: refused;
//! * chunk sizes that are empty, not hexadecimal, or longer than 16 digits: refused;
//! * an HTTP/1.1 request without exactly one `Host` field: refused.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::request::{Request, Version};

/// The most header fields a request may have that [`Limits::max_headers`] can allow.
pub const MAX_HEADERS: usize = 256;

/// Longest chunk extension (`;name=value` after a chunk size) accepted, in bytes.
pub const MAX_CHUNK_EXT: usize = 1024;

/// Size limits of one request. Every one is explicit; see the field docs for defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and header fields, with their line ends), in
    /// bytes; also the largest trailer section of a chunked body. Beyond: 431. Default
    /// 16 KiB (Node's `maxHeaderSize`).
    pub max_head: usize,
    /// Most header fields in a request (at most [`MAX_HEADERS`]). Beyond: 431. Default 100.
    pub max_headers: usize,
    /// Largest request body, in bytes (a `Content-Length` above it is refused before any
    /// of the body is read). Beyond: 413. Default 1 MiB.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_headers: 100,
            max_body: 1024 * 1024,
        }
    }
}

/// Why a request was refused (or a connection ended early). Each has the status code the
/// client is answered with before its connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request head is larger than [`Limits::max_head`] (or the trailer section is):
    /// 431.
    HeadTooLarge,
    /// More header fields than [`Limits::max_headers`]: 431.
    TooManyHeaders,
    /// The body is larger than [`Limits::max_body`]: 413.
    BodyTooLarge,
    /// The head is not valid HTTP/1.x (request line, field syntax, line ends, `Host`):
    /// 400.
    Malformed,
    /// The body's length is ambiguous (the smuggling rules in this module's docs): 400.
    AmbiguousLength,
    /// A chunked body is not valid chunked coding: 400.
    BadChunk,
    /// A transfer coding other than `chunked` is applied: 501.
    UnsupportedCoding,
    /// An `Expect` value other than `100-continue`: 417.
    UnsupportedExpect,
    /// The head (or the body) did not arrive within its timeout: 408. Found by the
    /// connection, not by the decoder.
    Timeout,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`].
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::HeadTooLarge,
        ErrorKind::TooManyHeaders,
        ErrorKind::BodyTooLarge,
        ErrorKind::Malformed,
        ErrorKind::AmbiguousLength,
        ErrorKind::BadChunk,
        ErrorKind::UnsupportedCoding,
        ErrorKind::UnsupportedExpect,
        ErrorKind::Timeout,
    ];

    /// The status code the client gets.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::HeadTooLarge | ErrorKind::TooManyHeaders => 431,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::Malformed | ErrorKind::AmbiguousLength | ErrorKind::BadChunk => 400,
            ErrorKind::UnsupportedCoding => 501,
            ErrorKind::UnsupportedExpect => 417,
            ErrorKind::Timeout => 408,
        }
    }

    /// Position in [`ErrorKind::ALL`] (and in [`super::Stats::errors`]).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short name for logs and stats.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::HeadTooLarge => "head_too_large",
            ErrorKind::TooManyHeaders => "too_many_headers",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::Malformed => "malformed",
            ErrorKind::AmbiguousLength => "ambiguous_length",
            ErrorKind::BadChunk => "bad_chunk",
            ErrorKind::UnsupportedCoding => "unsupported_coding",
            ErrorKind::UnsupportedExpect => "unsupported_expect",
            ErrorKind::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of [`Decoder::decode`]. `used` bytes at the start of the input were consumed:
/// the caller drops them before the next call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Nothing can be decided until more bytes arrive (nothing was consumed).
    NeedMore,
    /// A request head: the [`Request`] passed in now holds it (its body emptied). Its body,
    /// if any, follows as [`Decoded::Body`] steps, then [`Decoded::End`].
    Head {
        /// Bytes consumed.
        used: usize,
    },
    /// Body bytes: `data` is their range in the input (it may be empty when only framing
    /// bytes were consumed).
    Body {
        /// Bytes consumed.
        used: usize,
        /// Where the body bytes are in the input.
        data: Range<usize>,
    },
    /// The request (head and body) is complete; the next bytes start a new request.
    End {
        /// Bytes consumed.
        used: usize,
    },
    /// The request is refused; the decoder stays in this state (the connection must
    /// answer with the kind's status and close).
    Error(ErrorKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size (value so far, digits so far).
    Size(u64, u32),
    /// Skipping an extension (its length so far); the size is kept.
    Ext(u64, usize),
    /// After the size line's CR.
    SizeLf(u64),
    /// Chunk data left.
    Data(u64),
    DataCr,
    DataLf,
    /// A trailer line (its length so far).
    Trailer(usize),
    /// After a trailer line's CR; `true` if the line was empty (the end).
    TrailerLf(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    /// The head had no body: the next step is `End`.
    EndNext,
    Failed(ErrorKind),
}

/// The framing state of one connection's request stream (see the module docs). Feed it
/// the unconsumed bytes, act on the step, drop the consumed bytes, repeat.
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    state: State,
    /// Body bytes of the current chunked request so far.
    body_total: u64,
    /// Trailer bytes of the current chunked request so far.
    trailer_total: usize,
}

impl Decoder {
    /// A decoder at the start of a request stream. `limits.max_headers` is capped at
    /// [`MAX_HEADERS`].
    pub fn new(mut limits: Limits) -> Decoder {
        limits.max_headers = limits.max_headers.min(MAX_HEADERS);
        Decoder {
            limits,
            state: State::Head,
            body_total: 0,
            trailer_total: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the decoder is between requests (no byte of the next one consumed yet).
    pub fn at_boundary(&self) -> bool {
        self.state == State::Head
    }

    /// Decodes the next step from `buf` (the bytes not consumed yet). A head is stored in
    /// `req`.
    pub fn decode(&mut self, buf: &[u8], req: &mut Request) -> Decoded {
        match self.state {
            State::Failed(kind) => Decoded::Error(kind),
            State::EndNext => {
                self.state = State::Head;
                Decoded::End { used: 0 }
            }
            State::Head => match self.head(buf, req) {
                Ok(step) => step,
                Err(kind) => self.fail(kind),
            },
            State::Length(left) => {
                let take = left.min(buf.len() as u64) as usize;
                if take == 0 {
                    return Decoded::NeedMore;
                }
                self.state = if left == take as u64 {
                    State::EndNext
                } else {
                    State::Length(left - take as u64)
                };
                Decoded::Body {
                    used: take,
                    data: 0..take,
                }
            }
            State::Chunked(c) => match self.chunked(c, buf) {
                Ok(step) => step,
                Err(kind) => self.fail(kind),
            },
        }
    }

    fn fail(&mut self, kind: ErrorKind) -> Decoded {
        self.state = State::Failed(kind);
        Decoded::Error(kind)
    }

    fn head(&mut self, buf: &[u8], req: &mut Request) -> Result<Decoded, ErrorKind> {
        let window = &buf[..buf.len().min(self.limits.max_head)];
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut []);
        let status =
            parsed.parse_with_uninit_headers(window, &mut slots[..self.limits.max_headers]);
        let len = match status {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= self.limits.max_head => {
                return Err(ErrorKind::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
            Err(httparse::Error::TooManyHeaders) => return Err(ErrorKind::TooManyHeaders),
            Err(_) => return Err(ErrorKind::Malformed),
        };
        let head = &window[..len];
        if has_bare_lf(head) {
            return Err(ErrorKind::Malformed);
        }
        let version = match parsed.version {
            Some(0) => Version::Http10,
            Some(1) => Version::Http11,
            _ => return Err(ErrorKind::Malformed),
        };
        let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
            return Err(ErrorKind::Malformed);
        };
        if std::str::from_utf8(target.as_bytes()).is_err() {
            return Err(ErrorKind::Malformed);
        }
        req.reset(head, version);
        let base = head.as_ptr() as usize;
        let span = |s: &[u8]| -> Range<u32> {
            let start = s.as_ptr() as usize - base;
            start as u32..(start + s.len()) as u32
        };
        req.set_line(span(method.as_bytes()), span(target.as_bytes()));
        let mut length: Option<u64> = None;
        let mut codings = 0;
        let mut chunked = false;
        let mut hosts = 0;
        for h in parsed.headers.iter() {
            req.push_header(span(h.name.as_bytes()), span(h.value));
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                for v in h.value.split(|&b| b == b',') {
                    let n = parse_length(trim(v)).ok_or(ErrorKind::AmbiguousLength)?;
                    if length.is_some_and(|l| l != n) {
                        return Err(ErrorKind::AmbiguousLength);
                    }
                    length = Some(n);
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                codings += 1;
                chunked = trim(h.value).eq_ignore_ascii_case(b"chunked");
                if !chunked {
                    // `chunked` must be the last coding and applied once; other codings
                    // before it are valid HTTP that this server does not decode (501).
                    let mut codes = h.value.split(|&b| b == b',').map(trim).rev();
                    let last_chunked = codes
                        .next()
                        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
                    let chunked_again = codes.any(|c| c.eq_ignore_ascii_case(b"chunked"));
                    return Err(if last_chunked && !chunked_again {
                        ErrorKind::UnsupportedCoding
                    } else {
                        ErrorKind::AmbiguousLength
                    });
                }
            } else if name.eq_ignore_ascii_case(b"host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in h.value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        req.flags.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        req.flags.keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case(b"expect") && version == Version::Http11 {
                if h.value.eq_ignore_ascii_case(b"100-continue") {
                    req.flags.expect_continue = true;
                } else {
                    req.flags.expect_other = true;
                }
            }
        }
        if codings > 1 || (codings == 1 && (length.is_some() || version == Version::Http10)) {
            return Err(ErrorKind::AmbiguousLength);
        }
        if version == Version::Http11 && hosts != 1 {
            return Err(ErrorKind::Malformed);
        }
        if length.is_some_and(|l| l > self.limits.max_body) {
            return Err(ErrorKind::BodyTooLarge);
        }
        req.flags.chunked = chunked;
        req.flags.length = length;
        self.body_total = 0;
        self.trailer_total = 0;
        self.state = match length {
            _ if chunked => State::Chunked(Chunk::Size(0, 0)),
            Some(n) if n > 0 => State::Length(n),
            _ => State::EndNext,
        };
        Ok(Decoded::Head { used: len })
    }

    fn chunked(&mut self, mut c: Chunk, buf: &[u8]) -> Result<Decoded, ErrorKind> {
        let mut i = 0;
        while i < buf.len() {
            if let Chunk::Data(left) = c {
                let take = left.min((buf.len() - i) as u64) as usize;
                c = if left == take as u64 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - take as u64)
                };
                self.state = State::Chunked(c);
                return Ok(Decoded::Body {
                    used: i + take,
                    data: i..i + take,
                });
            }
            let b = buf[i];
            i += 1;
            c = match (c, b) {
                (Chunk::Size(n, d), _) if b.is_ascii_hexdigit() => {
                    if d == 16 {
                        return Err(ErrorKind::BadChunk);
                    }
                    Chunk::Size(n << 4 | u64::from(hex(b)), d + 1)
                }
                (Chunk::Size(_, 0), _) => return Err(ErrorKind::BadChunk),
                (Chunk::Size(n, _), b';') => Chunk::Ext(n, 0),
                (Chunk::Size(n, _), b'\r') | (Chunk::Ext(n, _), b'\r') => Chunk::SizeLf(n),
                (Chunk::Ext(n, len), _) if (b >= 0x20 && b != 0x7f) || b == b'\t' => {
                    if len == MAX_CHUNK_EXT {
                        return Err(ErrorKind::BadChunk);
                    }
                    Chunk::Ext(n, len + 1)
                }
                (Chunk::SizeLf(0), b'\n') => Chunk::Trailer(0),
                (Chunk::SizeLf(n), b'\n') => {
                    self.body_total = self.body_total.saturating_add(n);
                    if self.body_total > self.limits.max_body {
                        return Err(ErrorKind::BodyTooLarge);
                    }
                    Chunk::Data(n)
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size(0, 0),
                (Chunk::Trailer(len), b'\r') => Chunk::TrailerLf(len == 0),
                (Chunk::Trailer(len), _) if b != b'\n' => {
                    self.trailer_total += 1;
                    if self.trailer_total > self.limits.max_head {
                        return Err(ErrorKind::HeadTooLarge);
                    }
                    Chunk::Trailer(len + 1)
                }
                (Chunk::TrailerLf(true), b'\n') => {
                    self.state = State::Head;
                    return Ok(Decoded::End { used: i });
                }
                (Chunk::TrailerLf(false), b'\n') => Chunk::Trailer(0),
                _ => return Err(ErrorKind::BadChunk),
            };
        }
        self.state = State::Chunked(c);
        Ok(if i == 0 {
            Decoded::NeedMore
        } else {
            Decoded::Body {
                used: i,
                data: i..i,
            }
        })
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Optional whitespace trimmed from both ends.
fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A `Content-Length` value: 1 to 19 decimal digits (no sign, no spaces).
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Whether a line feed in `head` is not preceded by a carriage return.
fn has_bare_lf(head: &[u8]) -> bool {
    let mut from = 0;
    while let Some(i) = next_lf(head, from) {
        if i == 0 || head[i - 1] != b'\r' {
            return true;
        }
        from = i + 1;
    }
    false
}

/// The index of the first line feed in `bytes[from..]`, looking at eight bytes at a time.
fn next_lf(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LFS: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word) ^ LFS;
        // Some byte of `x` is zero (a line feed in the chunk): find which.
        if x.wrapping_sub(ONES) & !x & HIGHS != 0 {
            break;
        }
        i += 8;
    }
    bytes
        .get(i..)?
        .iter()
        .position(|&b| b == b'\n')
        .map(|k| i + k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_feeds_are_found_wherever_they_are() {
        let naive = |h: &[u8]| (0..h.len()).any(|i| h[i] == b'\n' && (i == 0 || h[i - 1] != b'\r'));
        // Every length up to three words, a line feed (bare or after a CR) at every place.
        for len in 0..24 {
            let clean: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(!has_bare_lf(&clean));
            for at in 0..len {
                let mut bare = clean.clone();
                bare[at] = b'\n';
                assert_eq!(has_bare_lf(&bare), naive(&bare), "{bare:?}");
                assert!(has_bare_lf(&bare), "{bare:?}");
                if at > 0 {
                    bare[at - 1] = b'\r';
                    assert!(!has_bare_lf(&bare), "{bare:?}");
                    // A bare one after a proper one, in the same word or the next.
                    for later in at + 1..len {
                        let mut two = bare.clone();
                        two[later] = b'\n';
                        let want = two[later - 1] != b'\r';
                        assert_eq!(has_bare_lf(&two), want, "{two:?}");
                    }
                }
            }
        }
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long-Header: 0123456789abcdef\r\n\r\n";
        assert!(!has_bare_lf(head));
        assert!(has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n"));
    }

    /// Decodes `input` whole; returns the steps' summary and the body of each request.
    fn run(input: &[u8]) -> (Vec<String>, Vec<Vec<u8>>) {
        let mut d = Decoder::new(Limits {
            max_head: 256,
            max_headers: 8,
            max_body: 64,
        });
        let mut req = Request::default();
        let mut pos = 0;
        let mut steps = Vec::new();
        let mut bodies = Vec::new();
        let mut body = Vec::new();
        loop {
            match d.decode(&input[pos..], &mut req) {
                Decoded::NeedMore => break,
                Decoded::Head { used } => {
                    pos += used;
                    steps.push(format!("head {} {}", req.method(), req.target()));
                }
                Decoded::Body { used, data } => {
                    body.extend_from_slice(&input[pos..][data]);
                    pos += used;
                }
                Decoded::End { used } => {
                    pos += used;
                    bodies.push(std::mem::take(&mut body));
                    steps.push("end".into());
                }
                Decoded::Error(k) => {
                    steps.push(format!("error {k}"));
                    break;
                }
            }
        }
        (steps, bodies)
    }

    fn error_of(input: &[u8]) -> Option<String> {
        run(input).0.into_iter().find(|s| s.starts_with("error"))
    }

    #[test]
    fn pipelined_requests_with_both_body_framings() {
        let (steps, bodies) = run(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n");
        assert_eq!(
            steps,
            [
                "head GET /a",
                "end",
                "head POST /b",
                "end",
                "head POST /c",
                "end"
            ]
        );
        assert_eq!(bodies, [b"".to_vec(), b"hello".to_vec(), b"abcde".to_vec()]);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let cases: [(&[u8], &str); 14] = [
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                "ambiguous_length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "ambiguous_length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "ambiguous_length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "ambiguous_length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                "ambiguous_length",
            ),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\n", "ambiguous_length"),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n", "ambiguous_length"),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "ambiguous_length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "unsupported_coding",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
                "bad_chunk",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
                "bad_chunk",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
                "bad_chunk",
            ),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", "malformed"),
            (b"GET / HTTP/1.1\nHost: x\r\n\r\n", "malformed"),
        ];
        for (input, want) in cases {
            assert_eq!(
                error_of(input).as_deref(),
                Some(format!("error {want}").as_str()),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Same Content-Length twice is not ambiguous.
        let (steps, _) =
            run(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(steps, ["head POST /", "end"]);
    }

    #[test]
    fn limits_have_their_kinds() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(300));
        assert_eq!(
            error_of(long.as_bytes()).as_deref(),
            Some("error head_too_large")
        );
        // Partial and over the limit: refused without waiting for the rest.
        assert_eq!(
            error_of(&long.as_bytes()[..280]).as_deref(),
            Some("error head_too_large")
        );
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", "A: b\r\n".repeat(9));
        assert_eq!(
            error_of(many.as_bytes()).as_deref(),
            Some("error too_many_headers")
        );
        let big = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n";
        assert_eq!(error_of(big).as_deref(), Some("error body_too_large"));
        let chunks = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n";
        assert_eq!(error_of(chunks), None, "64 bytes are allowed");
        let chunks = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n";
        assert_eq!(error_of(chunks).as_deref(), Some("error body_too_large"));
        assert_eq!(
            error_of(b"GET / HTTP/1.1\r\n\r\n").as_deref(),
            Some("error malformed")
        );
    }

    #[test]
    fn chunking_does_not_change_decisions() {
        let input: &[u8] = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n0\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
        let whole = run(input);
        for split in 1..input.len() {
            // Feed the first `split` bytes, then the rest, as a connection would.
            let mut d = Decoder::new(Limits {
                max_head: 256,
                max_headers: 8,
                max_body: 64,
            });
            let mut req = Request::default();
            let mut buf = input[..split].to_vec();
            let mut fed = split;
            let mut steps = Vec::new();
            let mut bodies = Vec::new();
            let mut body = Vec::new();
            loop {
                match d.decode(&buf, &mut req) {
                    Decoded::NeedMore if fed < input.len() => {
                        buf.extend_from_slice(&input[fed..]);
                        fed = input.len();
                    }
                    Decoded::NeedMore => break,
                    Decoded::Head { used } => {
                        buf.drain(..used);
                        steps.push(format!("head {} {}", req.method(), req.target()));
                    }
                    Decoded::Body { used, data } => {
                        body.extend_from_slice(&buf[data]);
                        buf.drain(..used);
                    }
                    Decoded::End { used } => {
                        buf.drain(..used);
                        bodies.push(std::mem::take(&mut body));
                        steps.push("end".into());
                    }
                    Decoded::Error(k) => {
                        steps.push(format!("error {k}"));
                        break;
                    }
                }
            }
            assert_eq!((steps, bodies), whole, "split at {split}");
        }
    }
}
