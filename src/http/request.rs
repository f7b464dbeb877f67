//! A parsed request: head fields by position in a copy of the head, and the whole body.
//! The buffers are kept from one request to the next on a connection, so serving a
//! keep-alive stream allocates nothing once they have grown.

use std::fmt;
use std::ops::Range;

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: the connection closes after the response unless the request asks for
    /// `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: the connection stays open unless a side says `Connection: close`.
    Http11,
}

/// What the decoder learnt from the head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
    pub(crate) expect_other: bool,
    pub(crate) chunked: bool,
    pub(crate) length: Option<u64>,
}

/// One request, as the handler sees it.
#[derive(Clone)]
pub struct Request {
    head: Vec<u8>,
    method: Range<u32>,
    target: Range<u32>,
    version: Version,
    headers: Vec<(Range<u32>, Range<u32>)>,
    pub(crate) body: Vec<u8>,
    pub(crate) flags: Flags,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            head: Vec::new(),
            method: 0..0,
            target: 0..0,
            version: Version::Http11,
            headers: Vec::new(),
            body: Vec::new(),
            flags: Flags::default(),
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method())
            .field("target", &self.target())
            .field("version", &self.version)
            .field("headers", &self.headers.len())
            .field("body", &self.body.len())
            .finish()
    }
}

impl Request {
    /// Starts a new request from `head` (copied), keeping the buffers' capacity.
    pub(crate) fn reset(&mut self, head: &[u8], version: Version) {
        self.head.clear();
        self.head.extend_from_slice(head);
        self.headers.clear();
        self.body.clear();
        if self.body.capacity() > super::conn::KEEP_CAPACITY {
            self.body = Vec::new(); // one large upload does not stay allocated
        }
        self.version = version;
        self.flags = Flags::default();
    }

    /// The largest of its buffers' capacities (bytes, headers counted by their size).
    pub(crate) fn capacity(&self) -> usize {
        let headers = self.headers.capacity() * std::mem::size_of::<(Range<u32>, Range<u32>)>();
        self.head.capacity().max(headers).max(self.body.capacity())
    }

    /// Empties it for another connection, keeping its buffers.
    pub(crate) fn clear(&mut self) {
        self.head.clear();
        self.headers.clear();
        self.body.clear();
        self.method = 0..0;
        self.target = 0..0;
        self.version = Version::Http11;
        self.flags = Flags::default();
    }

    pub(crate) fn set_line(&mut self, method: Range<u32>, target: Range<u32>) {
        self.method = method;
        self.target = target;
    }

    pub(crate) fn push_header(&mut self, name: Range<u32>, value: Range<u32>) {
        self.headers.push((name, value));
    }

    fn slice(&self, r: &Range<u32>) -> &[u8] {
        &self.head[r.start as usize..r.end as usize]
    }

    /// The method (`GET`, `POST`, …), as sent (methods are case-sensitive).
    pub fn method(&self) -> &str {
        // The decoder accepted only token characters (ASCII).
        std::str::from_utf8(self.slice(&self.method)).unwrap_or_default()
    }

    /// The request target (`/path?query`, or an absolute URI, `*`, `host:port`).
    pub fn target(&self) -> &str {
        // The decoder refuses targets that are not UTF-8.
        std::str::from_utf8(self.slice(&self.target)).unwrap_or_default()
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The first header field named `name` (case-insensitive), as bytes.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every header field in order, as (name, value); repeated fields appear repeatedly.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter().map(|(n, v)| {
            // Field names are tokens (ASCII), checked by the decoder.
            (
                std::str::from_utf8(self.slice(n)).unwrap_or_default(),
                self.slice(v),
            )
        })
    }

    /// The whole body (empty when there was none).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether the body came with the chunked transfer coding.
    pub fn is_chunked(&self) -> bool {
        self.flags.chunked
    }

    /// The declared `Content-Length`, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.flags.length
    }

    /// Whether the client wants the connection kept open after this request
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub fn keep_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.flags.close,
            Version::Http10 => self.flags.keep_alive && !self.flags.close,
        }
    }
}
