//! Typed protocol messages on top of frames.
//!
//! One [`Message`] per frame; the frame's [`Kind`] says which variant, the payload holds its
//! fields (little endian, strings and byte strings prefixed with a `u32` length). Decoding
//! is total: any payload either decodes or gives a [`ProtoError`], and a message must come
//! with exactly the descriptors its kind allows ([`Message::fd_rule`]).
//!
//! | kind | direction | fields | fds |
//! |---|---|---|---|
//! | `Online` | W→P | — | 0 |
//! | `QueryServer` | W→P | seq, [`ListenRequest`] | 0 |
//! | `QueryReply` | P→W | seq, errno, key id, [`ListenMode`], bound address | 0 or 1 (the listener, shared policy) |
//! | `Listening` | W→P | key id, bound address | 0 |
//! | `NewConn` | P→W | key id, first connection's seq, whether to answer with `Credit` | 1 or more (connections `seq`, `seq + 1`, …) |
//! | `Rejected` | W→P | key id, connection seq | 1 (the connection, given back) |
//! | `Disconnect` | P→W | — | 0 |
//! | `Ping` / `Pong` | both | seq (Pong: and loop lag in µs) | 0 |
//! | `Ready` | W→P | — | 0 |
//! | `Relay` | both | peer worker id, bytes | 0 |
//! | `Close` | W→P | key id | 0 |
//! | `ExitedAfterDisconnect` | W→P | seq | 0 |
//! | `Ack` | P→W | seq | 0 |
//! | `GoingDown` | W→P | reason | 0 |
//! | `Credit` | W→P | free credit (when full, when room again, when a `NewConn` asked) | 0 |
//! | `RelayFailed` | P→W | the peer worker id a `Relay` could not reach | 0 |
//! | `HttpStats` | W→P | [`HttpReport`]: requests, accepted, open, then (name, count) per error kind | 0 |
//! | `User` | both | bytes | 0 to the frame limit |

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::frame::Kind;

/// Where a listener is (or is wanted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A TCP address (port 0: any free port).
    Tcp(SocketAddr),
    /// A UDP address.
    Udp(SocketAddr),
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

/// An address as a person reads it: `127.0.0.1:8000` or `[::1]:8000` for TCP, `udp
/// 127.0.0.1:53` for UDP, the path for a Unix-domain socket.
///
/// ```
/// use forkloop::ipc::Endpoint;
///
/// assert_eq!(Endpoint::Tcp("[::1]:8000".parse().unwrap()).to_string(), "[::1]:8000");
/// assert_eq!(Endpoint::Udp("127.0.0.1:53".parse().unwrap()).to_string(), "udp 127.0.0.1:53");
/// assert_eq!(Endpoint::Unix("/run/app.sock".into()).to_string(), "/run/app.sock");
/// ```
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Udp(a) => write!(f, "udp {a}"),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A worker's request for a listening socket (Node's `queryServer`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenRequest {
    /// The requested endpoint (port 0 stays 0: it is part of the key).
    pub endpoint: Endpoint,
    /// How many servers this worker already has on the same endpoint (so the n-th
    /// `listen(0)` of every worker shares one port).
    pub index: u32,
    /// The backlog the worker asks for.
    pub backlog: u32,
    /// Listen flags: [`LISTEN_IPV6_ONLY`]; the other bits are reserved (0).
    pub flags: u32,
}

/// [`ListenRequest::flags`] bit: an IPv6 socket accepts IPv6 only (`IPV6_V6ONLY`).
pub const LISTEN_IPV6_ONLY: u32 = 1;
/// How a worker serves a listener the primary granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenMode {
    /// The primary accepts and sends connections (`NewConn`).
    HandOff,
    /// The listening socket comes with the reply; accept on it.
    Shared,
    /// Bind your own `SO_REUSEPORT` socket to the bound address.
    ReusePort,
}

impl ListenMode {
    fn code(self) -> u8 {
        match self {
            ListenMode::HandOff => 0,
            ListenMode::Shared => 1,
            ListenMode::ReusePort => 2,
        }
    }

    fn from_code(c: u8) -> Option<ListenMode> {
        Some(match c {
            0 => ListenMode::HandOff,
            1 => ListenMode::Shared,
            2 => ListenMode::ReusePort,
            _ => return None,
        })
    }
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// W→P: the worker is up.
    Online,
    /// W→P: asks for a listener; answered by a `QueryReply` with the same `seq`.
    QueryServer {
        /// Request number, echoed in the reply.
        seq: u32,
        /// What to listen on.
        request: ListenRequest,
    },
    /// P→W: the answer to a `QueryServer`.
    QueryReply {
        /// The request's number.
        seq: u32,
        /// 0 on success, otherwise the (positive) OS error number of the failed bind.
        errno: i32,
        /// The primary's id for this listener (echoed in `Listening` and `Close`).
        key: u32,
        /// How to serve it.
        mode: ListenMode,
        /// The address actually bound, if any.
        bound: Option<Endpoint>,
    },
    /// W→P: a server is listening.
    Listening {
        /// The listener's id.
        key: u32,
        /// The address it listens on.
        bound: Endpoint,
    },
    /// P→W: new connections for listener `key`, one per descriptor travelling with the
    /// frame (a burst of accepts leaves in one `sendmsg` and wakes the worker once).
    /// Taking them needs no answer: the primary learns what the worker has read from the
    /// channel itself.
    NewConn {
        /// The listener's id.
        key: u32,
        /// The first connection's number; the i-th descriptor's is `seq + i`. A refused
        /// connection goes back with its number in `Rejected`.
        seq: u64,
        /// The worker's credit is used up by these: answer with `Credit` once they are
        /// taken, so that the primary hands off again without waiting to look.
        reply: bool,
    },
    /// W→P: the worker refused connection `seq` of listener `key` (closing, at its limit)
    /// and gives it back: its descriptor travels with the frame.
    Rejected {
        /// The listener's id.
        key: u32,
        /// The connection's number (from `NewConn`).
        seq: u64,
    },
    /// P→W: close your servers, drain, close the channel.
    Disconnect,
    /// A heartbeat.
    Ping {
        /// Heartbeat number.
        seq: u64,
    },
    /// Answer to a heartbeat.
    Pong {
        /// The ping's number.
        seq: u64,
        /// The responder's event-loop lag, in microseconds.
        lag_us: u64,
    },
    /// W→P: ready for traffic.
    Ready,
    /// User bytes to (W→P) or from (P→W) another worker.
    Relay {
        /// W→P: the destination worker id; P→W: the sender, stamped by the primary.
        peer: u32,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// W→P: a server closed.
    Close {
        /// The listener's id.
        key: u32,
    },
    /// W→P: leaving on purpose; the primary answers with `Ack { seq }`.
    ExitedAfterDisconnect {
        /// Request number.
        seq: u32,
    },
    /// P→W: acknowledges request `seq`.
    Ack {
        /// The request's number.
        seq: u32,
    },
    /// W→P: fatal error; stop routing to me and start my replacement.
    GoingDown {
        /// Why, for the log.
        reason: String,
    },
    /// W→P: the worker has room for `credit` more hand-offs: sent when a hand-off leaves
    /// it full (`0`), when it has room again after that or after refusing one, and in
    /// answer to a `NewConn` that asked.
    Credit {
        /// Free credit now.
        credit: u32,
    },
    /// P→W: the worker's `Relay` to `peer` was not delivered: no such worker, or it is
    /// not connected (or its queue is full).
    RelayFailed {
        /// The destination the relay named.
        peer: u32,
    },
    /// W→P: the counters of the worker's HTTP servers, summed; sent after a `Pong` when
    /// they changed since the last report.
    HttpStats(HttpReport),
    /// Application bytes.
    User(Vec<u8>),
}

/// What a worker's HTTP servers (`forkloop::http::Server`) have counted, summed over its
/// servers: the worker reports it to the primary with its heartbeat answers when it
/// changed, and the primary keeps the latest ([`crate::primary::Primary::http_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpReport {
    /// Requests handed to the handlers.
    pub requests: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open when the report was made.
    pub open: u64,
    /// Requests refused or connections ended early, by kind name (`malformed`,
    /// `timeout`, …), kinds with a count of 0 left out.
    pub errors: Vec<(String, u64)>,
}

impl HttpReport {
    /// Most error kinds a report may carry (more is a malformed message).
    pub const MAX_ERROR_KINDS: usize = 64;

    /// Every error, of any kind.
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }

    /// Adds `other`'s counts to this report's.
    pub fn add(&mut self, other: &HttpReport) {
        self.requests += other.requests;
        self.accepted += other.accepted;
        self.open += other.open;
        for (name, n) in &other.errors {
            match self.errors.iter_mut().find(|(k, _)| k == name) {
                Some((_, m)) => *m += n,
                None => self.errors.push((name.clone(), *n)),
            }
        }
    }
}

/// How many descriptors a message kind may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdRule {
    /// None.
    None,
    /// Exactly one.
    One,
    /// One or more, up to the frame limit.
    Some,
    /// Zero or one.
    Optional,
    /// Any number up to the frame limit.
    Any,
}

impl FdRule {
    /// Whether `n` descriptors satisfy the rule.
    pub fn allows(self, n: usize) -> bool {
        match self {
            FdRule::None => n == 0,
            FdRule::One => n == 1,
            FdRule::Some => n >= 1,
            FdRule::Optional => n <= 1,
            FdRule::Any => true,
        }
    }
}

/// Why a payload did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// The payload ended before field `field`.
    Truncated {
        /// The message kind.
        kind: Kind,
        /// The field being read.
        field: &'static str,
    },
    /// Bytes were left after the last field.
    TrailingBytes {
        /// The message kind.
        kind: Kind,
        /// How many.
        extra: usize,
    },
    /// A field had a value outside its range.
    BadValue {
        /// The message kind.
        kind: Kind,
        /// The field.
        field: &'static str,
    },
    /// The frame carried a number of descriptors its kind does not allow.
    WrongFdCount {
        /// The message kind.
        kind: Kind,
        /// Descriptors that came.
        got: usize,
    },
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Truncated { kind, field } => {
                write!(f, "{kind:?} payload ends before field `{field}`")
            }
            ProtoError::TrailingBytes { kind, extra } => {
                write!(f, "{kind:?} payload has {extra} bytes after its last field")
            }
            ProtoError::BadValue { kind, field } => {
                write!(f, "{kind:?} field `{field}` is out of range")
            }
            ProtoError::WrongFdCount { kind, got } => {
                write!(f, "{kind:?} may not carry {got} fds")
            }
        }
    }
}

impl std::error::Error for ProtoError {}

impl Message {
    /// The frame kind for this message.
    pub fn kind(&self) -> Kind {
        match self {
            Message::Online => Kind::Online,
            Message::QueryServer { .. } => Kind::QueryServer,
            Message::QueryReply { .. } => Kind::QueryReply,
            Message::Listening { .. } => Kind::Listening,
            Message::NewConn { .. } => Kind::NewConn,
            Message::Rejected { .. } => Kind::Rejected,
            Message::Disconnect => Kind::Disconnect,
            Message::Ping { .. } => Kind::Ping,
            Message::Pong { .. } => Kind::Pong,
            Message::Ready => Kind::Ready,
            Message::Relay { .. } => Kind::Relay,
            Message::Close { .. } => Kind::Close,
            Message::ExitedAfterDisconnect { .. } => Kind::ExitedAfterDisconnect,
            Message::Ack { .. } => Kind::Ack,
            Message::GoingDown { .. } => Kind::GoingDown,
            Message::Credit { .. } => Kind::Credit,
            Message::RelayFailed { .. } => Kind::RelayFailed,
            Message::HttpStats(_) => Kind::HttpStats,
            Message::User(_) => Kind::User,
        }
    }

    /// How many descriptors messages of `kind` may carry.
    pub fn fd_rule(kind: Kind) -> FdRule {
        match kind {
            Kind::NewConn => FdRule::Some,
            Kind::Rejected => FdRule::One,
            Kind::QueryReply => FdRule::Optional,
            Kind::User => FdRule::Any,
            _ => FdRule::None,
        }
    }

    /// Appends this message's payload to `out`.
    pub fn encode_payload(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            Message::Online | Message::Disconnect | Message::Ready => {}
            Message::QueryServer { seq, request } => {
                w.u32(*seq);
                w.endpoint(&request.endpoint);
                w.u32(request.index);
                w.u32(request.backlog);
                w.u32(request.flags);
            }
            Message::QueryReply {
                seq,
                errno,
                key,
                mode,
                bound,
            } => {
                w.u32(*seq);
                w.u32(*errno as u32);
                w.u32(*key);
                w.u8(mode.code());
                match bound {
                    None => w.u8(0),
                    Some(ep) => {
                        w.u8(1);
                        w.endpoint(ep);
                    }
                }
            }
            Message::Listening { key, bound } => {
                w.u32(*key);
                w.endpoint(bound);
            }
            Message::NewConn { key, seq, reply } => {
                w.u32(*key);
                w.u64(*seq);
                w.u8(u8::from(*reply));
            }
            Message::Rejected { key, seq } => {
                w.u32(*key);
                w.u64(*seq);
            }
            Message::ExitedAfterDisconnect { seq } | Message::Ack { seq } => w.u32(*seq),
            Message::Close { key } => w.u32(*key),
            Message::Ping { seq } => w.u64(*seq),
            Message::Pong { seq, lag_us } => {
                w.u64(*seq);
                w.u64(*lag_us);
            }
            Message::Relay { peer, payload } => {
                w.u32(*peer);
                w.0.extend_from_slice(payload);
            }
            Message::GoingDown { reason } => w.0.extend_from_slice(reason.as_bytes()),
            Message::Credit { credit } => w.u32(*credit),
            Message::RelayFailed { peer } => w.u32(*peer),
            Message::HttpStats(r) => {
                w.u64(r.requests);
                w.u64(r.accepted);
                w.u64(r.open);
                w.u32(r.errors.len() as u32);
                for (name, n) in &r.errors {
                    w.bytes(name.as_bytes());
                    w.u64(*n);
                }
            }
            Message::User(bytes) => w.0.extend_from_slice(bytes),
        }
    }

    /// Decodes a message from a frame's kind, payload and descriptor count.
    ///
    /// # Errors
    ///
    /// A [`ProtoError`] saying which field was wrong.
    pub fn decode(kind: Kind, payload: &[u8], fds: usize) -> Result<Message, ProtoError> {
        if !Message::fd_rule(kind).allows(fds) {
            return Err(ProtoError::WrongFdCount { kind, got: fds });
        }
        let mut r = Reader { kind, buf: payload };
        let msg = match kind {
            Kind::Online => Message::Online,
            Kind::Disconnect => Message::Disconnect,
            Kind::Ready => Message::Ready,
            Kind::QueryServer => Message::QueryServer {
                seq: r.u32("seq")?,
                request: ListenRequest {
                    endpoint: r.endpoint()?,
                    index: r.u32("index")?,
                    backlog: r.u32("backlog")?,
                    flags: r.u32("flags")?,
                },
            },
            Kind::QueryReply => Message::QueryReply {
                seq: r.u32("seq")?,
                errno: r.u32("errno")? as i32,
                key: r.u32("key")?,
                mode: ListenMode::from_code(r.u8("mode")?).ok_or(r.bad("mode"))?,
                bound: match r.u8("bound")? {
                    0 => None,
                    1 => Some(r.endpoint()?),
                    _ => return Err(r.bad("bound")),
                },
            },
            Kind::Listening => Message::Listening {
                key: r.u32("key")?,
                bound: r.endpoint()?,
            },
            Kind::NewConn => Message::NewConn {
                key: r.u32("key")?,
                seq: r.u64("seq")?,
                reply: match r.u8("reply")? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.bad("reply")),
                },
            },
            Kind::Rejected => Message::Rejected {
                key: r.u32("key")?,
                seq: r.u64("seq")?,
            },
            Kind::ExitedAfterDisconnect => Message::ExitedAfterDisconnect { seq: r.u32("seq")? },
            Kind::Ack => Message::Ack { seq: r.u32("seq")? },
            Kind::Close => Message::Close { key: r.u32("key")? },
            Kind::Ping => Message::Ping { seq: r.u64("seq")? },
            Kind::Pong => Message::Pong {
                seq: r.u64("seq")?,
                lag_us: r.u64("lag_us")?,
            },
            Kind::Relay => Message::Relay {
                peer: r.u32("peer")?,
                payload: r.rest().to_vec(),
            },
            Kind::GoingDown => Message::GoingDown {
                reason: String::from_utf8_lossy(r.rest()).into_owned(),
            },
            Kind::Credit => Message::Credit {
                credit: r.u32("credit")?,
            },
            Kind::RelayFailed => Message::RelayFailed {
                peer: r.u32("peer")?,
            },
            Kind::HttpStats => Message::HttpStats(r.http_report()?),
            Kind::User => Message::User(r.rest().to_vec()),
        };
        r.finish()?;
        Ok(msg)
    }

    /// A user message holding `value` as JSON.
    ///
    /// # Errors
    ///
    /// `value` cannot be serialised.
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn user_json<T: serde::Serialize>(value: &T) -> Result<Message, crate::error::JsonError> {
        crate::error::to_json(value).map(Message::User)
    }

    /// Reads a user (or relayed) message as JSON into `T`; `None` for other kinds.
    ///
    /// # Errors
    ///
    /// The bytes are not valid JSON for `T`.
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
    ) -> Option<Result<T, crate::error::JsonError>> {
        match self {
            Message::User(b) | Message::Relay { payload: b, .. } => {
                Some(crate::error::from_json(b))
            }
            _ => None,
        }
    }
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn endpoint(&mut self, ep: &Endpoint) {
        match ep {
            Endpoint::Tcp(a) => {
                self.u8(1);
                self.bytes(a.to_string().as_bytes());
            }
            Endpoint::Udp(a) => {
                self.u8(2);
                self.bytes(a.to_string().as_bytes());
            }
            Endpoint::Unix(p) => {
                self.u8(3);
                self.bytes(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()));
            }
        }
    }
}

struct Reader<'a> {
    kind: Kind,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated {
                kind: self.kind,
                field,
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn bad(&self, field: &'static str) -> ProtoError {
        ProtoError::BadValue {
            kind: self.kind,
            field,
        }
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        Ok(self.take(1, field)?[0])
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], ProtoError> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }
    fn endpoint(&mut self) -> Result<Endpoint, ProtoError> {
        let tag = self.u8("endpoint")?;
        let raw = self.bytes("endpoint")?;
        let addr = || -> Result<SocketAddr, ProtoError> {
            std::str::from_utf8(raw)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(self.bad("endpoint"))
        };
        Ok(match tag {
            1 => Endpoint::Tcp(addr()?),
            2 => Endpoint::Udp(addr()?),
            3 => Endpoint::Unix(PathBuf::from(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(raw),
            )),
            _ => return Err(self.bad("endpoint")),
        })
    }
    fn http_report(&mut self) -> Result<HttpReport, ProtoError> {
        let mut report = HttpReport {
            requests: self.u64("requests")?,
            accepted: self.u64("accepted")?,
            open: self.u64("open")?,
            errors: Vec::new(),
        };
        let kinds = self.u32("errors")? as usize;
        if kinds > HttpReport::MAX_ERROR_KINDS {
            return Err(self.bad("errors"));
        }
        for _ in 0..kinds {
            let name = std::str::from_utf8(self.bytes("error kind")?)
                .map_err(|_| self.bad("error kind"))?
                .to_owned();
            report.errors.push((name, self.u64("error count")?));
        }
        Ok(report)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn finish(self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes {
                kind: self.kind,
                extra: self.buf.len(),
            })
        }
    }
}
