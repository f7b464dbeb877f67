//! Node.js's own IPC protocol (`serialization: 'json'`), so unmodified Node.js cluster
//! workers can talk to a forkloop primary.
//!
//! # The wire
//!
//! * A message is one line of JSON, UTF-8, ended by `\n`. No length prefix, no header.
//!   JSON escaping keeps raw newlines out of a message, so `\n` is the only delimiter.
//! * A message is *internal* when it is an object whose `cmd` is a string starting with
//!   `NODE_` and longer than 5 characters; anything else is a user message
//!   (`process.send`).
//! * Cluster messages are `{"cmd":"NODE_CLUSTER","act":…,"seq":N,…}`; a reply carries
//!   `"ack":<seq of the request>` and no `act` ([`ClusterMsg`]).
//! * A message that carries a descriptor is wrapped:
//!   `{"cmd":"NODE_HANDLE","type":"net.Native","msg":<inner message>}`, sent in one
//!   `sendmsg` with one `SCM_RIGHTS` descriptor. The receiver keeps received descriptors in
//!   a FIFO and pairs one with each `NODE_HANDLE` line, whatever the read boundaries; it
//!   answers `{"cmd":"NODE_HANDLE_ACK"}` at once, or `{"cmd":"NODE_HANDLE_NACK"}` (and
//!   drops the inner message) when no descriptor came.
//! * **One handle at a time**: after a `NODE_HANDLE`, the sender queues everything else
//!   (except ACK/NACK replies) until the peer's ACK or NACK arrives.
//!
//! # Pieces
//!
//! * [`decode_line`] / [`encode_line`]: one line to and from a [`Line`]; pure, the fuzz
//!   target.
//! * [`NodeDecoder`]: bytes and descriptors in any chunking to [`Incoming`] messages, each
//!   `NODE_HANDLE` paired with its descriptor; I/O-free.
//! * [`NodeSendQueue`]: outgoing lines with the one-handle-at-a-time rule; I/O-free.
//! * [`NodeChannel`]: both over a non-blocking Unix socket (a mio [`Source`]); it answers
//!   ACK/NACK itself.
//!
//! # Limits and failures
//!
//! Every bound is in [`NodeLimits`]: a line longer than `max_line` bytes, more than
//! `max_pending_fds` descriptors waiting for their lines, or more than `max_queued_bytes`
//! queued for sending is an error. A line that is not JSON, a `NODE_CLUSTER` field of the
//! wrong type, or a `NODE_HANDLE` without an object `msg` is an error ([`NodeError`]).
//! Node itself dies on a bad line; here the error closes only that channel, with the
//! reason logged. Nothing panics.
//!
//! Only `json` serialization is spoken: Node's `advanced` mode (V8's serializer) is not.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use mio::event::Source;
use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use serde_json::{Map, Value};

use super::buf::{READ_CHUNK, SendFd};
use crate::sys;

/// Node's environment variable naming the worker's channel descriptor.
pub const NODE_CHANNEL_FD_ENV: &str = "NODE_CHANNEL_FD";
/// Node's environment variable holding the worker id (its presence makes a Node process a
/// cluster worker).
pub const NODE_UNIQUE_ID_ENV: &str = "NODE_UNIQUE_ID";
/// Node's environment variable choosing the channel's serialization (`json` here).
pub const NODE_SERIALIZATION_ENV: &str = "NODE_CHANNEL_SERIALIZATION_MODE";

/// The bounds of one Node channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeLimits {
    /// Longest line accepted, in bytes without the `\n` (default 16 MiB).
    pub max_line: usize,
    /// Most received descriptors waiting for their `NODE_HANDLE` line (default 32).
    pub max_pending_fds: usize,
    /// Most bytes queued for sending (default 32 MiB).
    pub max_queued_bytes: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            max_line: 16 << 20,
            max_pending_fds: 32,
            max_queued_bytes: 32 << 20,
        }
    }
}

/// Why a Node channel failed or a message was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum NodeError {
    /// A line grew past [`NodeLimits::max_line`] before its `\n`.
    LineTooLong {
        /// Bytes buffered without a newline.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A line is not JSON (or is empty).
    Json(String),
    /// A field of an internal message has the wrong type or value.
    BadField {
        /// The field.
        field: &'static str,
        /// What was wrong.
        why: String,
    },
    /// More descriptors arrived than lines to carry them ([`NodeLimits::max_pending_fds`]).
    TooManyFds {
        /// The bound.
        max: usize,
    },
    /// The send queue would exceed [`NodeLimits::max_queued_bytes`] (back-pressure).
    QueueFull {
        /// Bytes queued.
        queued: usize,
        /// The bound.
        max: usize,
    },
    /// The peer closed its end in the middle of a line.
    EofMidLine {
        /// Bytes of the unfinished line.
        buffered: usize,
    },
    /// A socket call failed.
    Io(io::Error),
    /// The channel is closed.
    Closed,
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::LineTooLong { len, max } => {
                write!(f, "line of {len} bytes without a newline (max {max})")
            }
            NodeError::Json(e) => write!(f, "line is not JSON: {e}"),
            NodeError::BadField { field, why } => write!(f, "field `{field}`: {why}"),
            NodeError::TooManyFds { max } => {
                write!(
                    f,
                    "more than {max} descriptors arrived ahead of their lines"
                )
            }
            NodeError::QueueFull { queued, max } => {
                write!(f, "send queue full ({queued} bytes queued, max {max})")
            }
            NodeError::EofMidLine { buffered } => {
                write!(f, "peer closed mid-line ({buffered} bytes buffered)")
            }
            NodeError::Io(e) => write!(f, "socket error: {e}"),
            NodeError::Closed => write!(f, "channel is closed"),
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for NodeError {
    fn from(e: io::Error) -> Self {
        NodeError::Io(e)
    }
}

fn bad(field: &'static str, why: impl Into<String>) -> NodeError {
    NodeError::BadField {
        field,
        why: why.into(),
    }
}

/// The `type` of a `NODE_HANDLE`: what the receiver makes of the descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleType {
    /// A raw TCP or pipe handle (`net.Native`; what cluster sends).
    NetNative,
    /// A listening `net.Server`.
    NetServer,
    /// A connected `net.Socket`.
    NetSocket,
    /// A raw UDP handle (`dgram.Native`).
    DgramNative,
    /// A `dgram.Socket`.
    DgramSocket,
    /// Any other name, kept as sent.
    Other(String),
}

impl HandleType {
    /// The name on the wire.
    pub fn name(&self) -> &str {
        match self {
            HandleType::NetNative => "net.Native",
            HandleType::NetServer => "net.Server",
            HandleType::NetSocket => "net.Socket",
            HandleType::DgramNative => "dgram.Native",
            HandleType::DgramSocket => "dgram.Socket",
            HandleType::Other(s) => s,
        }
    }

    fn parse(s: &str) -> HandleType {
        match s {
            "net.Native" => HandleType::NetNative,
            "net.Server" => HandleType::NetServer,
            "net.Socket" => HandleType::NetSocket,
            "dgram.Native" => HandleType::DgramNative,
            "dgram.Socket" => HandleType::DgramSocket,
            other => HandleType::Other(other.to_owned()),
        }
    }
}

/// What a `NODE_CLUSTER` message asks (its `act`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// W→P: the worker is up.
    Online,
    /// W→P: asks for a listener.
    QueryServer,
    /// W→P: a server listens.
    Listening,
    /// W→P: a server closed.
    Close,
    /// W→P: the worker leaves on purpose (answered with an `ack`).
    ExitedAfterDisconnect,
    /// P→W: a new connection (inside a `NODE_HANDLE`).
    NewConn,
    /// P→W: close your servers and the channel.
    Disconnect,
    /// Anything else (Node ignores unknown acts).
    Other(String),
}

impl Act {
    /// The name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Act::Online => "online",
            Act::QueryServer => "queryServer",
            Act::Listening => "listening",
            Act::Close => "close",
            Act::ExitedAfterDisconnect => "exitedAfterDisconnect",
            Act::NewConn => "newconn",
            Act::Disconnect => "disconnect",
            Act::Other(s) => s,
        }
    }

    fn parse(s: &str) -> Act {
        match s {
            "online" => Act::Online,
            "queryServer" => Act::QueryServer,
            "listening" => Act::Listening,
            "close" => Act::Close,
            "exitedAfterDisconnect" => Act::ExitedAfterDisconnect,
            "newconn" => Act::NewConn,
            "disconnect" => Act::Disconnect,
            other => Act::Other(other.to_owned()),
        }
    }
}

/// A listener's address type in `queryServer` and `listening`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    /// TCP over IPv4 (`4`).
    Tcp4,
    /// TCP over IPv6 (`6`).
    Tcp6,
    /// A Unix socket path (`-1`).
    Pipe,
    /// UDP over IPv4 (`"udp4"`).
    Udp4,
    /// UDP over IPv6 (`"udp6"`).
    Udp6,
}

impl AddressType {
    fn to_json(self) -> Value {
        match self {
            AddressType::Tcp4 => Value::from(4),
            AddressType::Tcp6 => Value::from(6),
            AddressType::Pipe => Value::from(-1),
            AddressType::Udp4 => Value::from("udp4"),
            AddressType::Udp6 => Value::from("udp6"),
        }
    }

    fn from_json(v: &Value) -> Result<AddressType, NodeError> {
        match (v.as_i64(), v.as_str()) {
            (Some(4), _) => Ok(AddressType::Tcp4),
            (Some(6), _) => Ok(AddressType::Tcp6),
            (Some(-1), _) => Ok(AddressType::Pipe),
            (_, Some("udp4")) => Ok(AddressType::Udp4),
            (_, Some("udp6")) => Ok(AddressType::Udp6),
            _ => Err(bad("addressType", format!("unknown address type {v}"))),
        }
    }

    /// The text Node uses for it inside a handle key (`4`, `6`, `-1`, `udp4`, `udp6`).
    pub fn key_text(self) -> &'static str {
        match self {
            AddressType::Tcp4 => "4",
            AddressType::Tcp6 => "6",
            AddressType::Pipe => "-1",
            AddressType::Udp4 => "udp4",
            AddressType::Udp6 => "udp6",
        }
    }
}

/// The address the primary reports in a round-robin `queryServer` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockName {
    /// The bound address.
    pub address: String,
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// The bound port.
    pub port: u16,
}

/// A `NODE_CLUSTER` message: the fields cluster uses, each present only if it was (or
/// will be) on the wire. Other fields are ignored on decoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMsg {
    /// What it asks; `None` in a reply.
    pub act: Option<Act>,
    /// The sender's message number.
    pub seq: Option<u64>,
    /// In a reply: the `seq` of the request.
    pub ack: Option<u64>,
    /// The primary's handle key (`newconn`, `close`, query replies).
    pub key: Option<String>,
    /// The worker's answer to `newconn`.
    pub accepted: Option<bool>,
    /// Query replies: `0` or `null` on success, else a negative errno.
    pub errno: Option<i64>,
    /// Query and listening: the address (`null` when none was given).
    pub address: Option<String>,
    /// Query and listening: the port (requested in a query; real in `listening`).
    pub port: Option<i64>,
    /// Query and listening: the address type.
    pub address_type: Option<AddressType>,
    /// Query: the primary-side descriptor to listen on (`listen({fd})`).
    pub fd: Option<i64>,
    /// Query: flags (1: IPv6 only; 4: reuse address, UDP).
    pub flags: Option<u64>,
    /// Query: the backlog asked for (`None` when not given: absent, `null` or `false`).
    pub backlog: Option<i64>,
    /// Query: how many servers the worker has on the same address already.
    pub index: Option<u64>,
    /// Query and reply: opaque data shared by all workers of a handle (TLS ticket keys),
    /// as JSON text; `None` for `null` or absent.
    pub data: Option<String>,
    /// Round-robin query reply: the address the primary bound.
    pub sockname: Option<SockName>,
}

impl ClusterMsg {
    /// A message asking `act`.
    pub fn act(act: Act) -> ClusterMsg {
        ClusterMsg {
            act: Some(act),
            ..ClusterMsg::default()
        }
    }

    /// A reply to request `ack`.
    pub fn reply(ack: u64) -> ClusterMsg {
        ClusterMsg {
            ack: Some(ack),
            ..ClusterMsg::default()
        }
    }

    fn from_json(o: &Map<String, Value>) -> Result<ClusterMsg, NodeError> {
        let text = |field: &'static str| -> Result<Option<String>, NodeError> {
            match o.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(bad(field, format!("expected a string, got {v}"))),
            }
        };
        let int = |field: &'static str| -> Result<Option<i64>, NodeError> {
            match o.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) => Ok(Some(n)),
                    // Node numbers are doubles; a whole one may come as `1.0`.
                    None => match v.as_f64() {
                        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                        _ => Err(bad(field, format!("expected an integer, got {v}"))),
                    },
                },
            }
        };
        let uint = |field: &'static str| -> Result<Option<u64>, NodeError> {
            match int(field)? {
                None => Ok(None),
                Some(n) => u64::try_from(n)
                    .map(Some)
                    .map_err(|_| bad(field, format!("expected a count, got {n}"))),
            }
        };
        let accepted = match o.get("accepted") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => return Err(bad("accepted", format!("expected a boolean, got {v}"))),
        };
        let address_type = match o.get("addressType") {
            None | Some(Value::Null) => None,
            Some(v) => Some(AddressType::from_json(v)?),
        };
        let data = match o.get("data") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.to_string()),
        };
        let sockname = match o.get("sockname") {
            None | Some(Value::Null) => None,
            Some(Value::Object(s)) => Some(SockName {
                address: match s.get("address") {
                    Some(Value::String(a)) => a.clone(),
                    _ => return Err(bad("sockname", "no string `address`")),
                },
                family: match s.get("family") {
                    Some(Value::String(a)) => a.clone(),
                    _ => return Err(bad("sockname", "no string `family`")),
                },
                port: s
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| bad("sockname", "no port number"))?,
            }),
            Some(v) => return Err(bad("sockname", format!("expected an object, got {v}"))),
        };
        Ok(ClusterMsg {
            act: text("act")?.map(|a| Act::parse(&a)),
            seq: uint("seq")?,
            ack: uint("ack")?,
            key: text("key")?,
            accepted,
            errno: int("errno")?,
            address: text("address")?,
            port: int("port")?,
            address_type,
            fd: int("fd")?,
            flags: uint("flags")?,
            // Node sends `false` for a backlog not given (`listen(port, host)`: its number
            // conversion gives `false` for anything that is not a number ≥ 0).
            backlog: match o.get("backlog") {
                Some(Value::Bool(false)) => None,
                _ => int("backlog")?,
            },
            index: uint("index")?,
            data,
            sockname,
        })
    }

    /// The message as Node reads it, for serializing (absent fields left out).
    fn view(&self) -> ClusterOut<'_> {
        ClusterOut {
            cmd: CMD_CLUSTER,
            act: self.act.as_ref().map(Act::name),
            ack: self.ack,
            key: self.key.as_deref(),
            accepted: self.accepted,
            errno: self.errno,
            address: self.address.as_deref(),
            port: self.port,
            address_type: self.address_type.map(AddressType::to_json),
            fd: self.fd,
            flags: self.flags,
            backlog: self.backlog,
            index: self.index,
            data: self
                .data
                .as_deref()
                .and_then(|d| serde_json::from_str::<Value>(d).ok()),
            sockname: self.sockname.as_ref().map(|s| SockNameOut {
                address: &s.address,
                family: &s.family,
                port: s.port,
            }),
            seq: self.seq,
        }
    }
}

/// A [`ClusterMsg`] as written on the wire: serialized straight from the message, with no
/// intermediate JSON tree.
#[derive(serde::Serialize)]
struct ClusterOut<'a> {
    cmd: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<i64>,
    #[serde(rename = "addressType", skip_serializing_if = "Option::is_none")]
    address_type: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sockname: Option<SockNameOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// A [`SockName`] as written on the wire.
#[derive(serde::Serialize)]
struct SockNameOut<'a> {
    address: &'a str,
    family: &'a str,
    port: u16,
}

/// A message that is only its `cmd` (`NODE_HANDLE_ACK`, `NODE_HANDLE_NACK`).
#[derive(serde::Serialize)]
struct CmdOnly {
    cmd: &'static str,
}

/// The `NODE_HANDLE` envelope around a message sent with a descriptor.
#[derive(serde::Serialize)]
struct HandleOut<'a, T> {
    cmd: &'static str,
    #[serde(rename = "type")]
    ty: &'a str,
    msg: T,
}

/// The two replies a Node worker sends for every connection handed to it — the
/// `NODE_HANDLE_ACK` of the descriptor and the `NODE_CLUSTER` answer to `newconn` (`ack`,
/// `accepted`, `seq`) — read into a typed struct, without building a JSON tree. Anything
/// else (another field, a duplicate, a number that is not a plain integer) fails here and
/// takes the general path, which decides it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply<'a> {
    #[serde(borrow)]
    cmd: &'a str,
    ack: Option<u64>,
    accepted: Option<bool>,
    seq: Option<u64>,
}

/// The message of `line` if it is one of the replies of [`Reply`]; exactly what the general
/// path would decode it to.
fn decode_reply(line: &[u8]) -> Option<NodeMessage> {
    let r: Reply<'_> = serde_json::from_slice(line).ok()?;
    // The general path takes integers up to i64::MAX.
    let fits = |n: Option<u64>| n.is_none_or(|n| i64::try_from(n).is_ok());
    if !fits(r.ack) || !fits(r.seq) {
        return None;
    }
    match r.cmd {
        CMD_ACK => Some(NodeMessage::HandleAck),
        CMD_CLUSTER => Some(NodeMessage::Cluster(Box::new(ClusterMsg {
            ack: r.ack,
            accepted: r.accepted,
            seq: r.seq,
            ..ClusterMsg::default()
        }))),
        _ => None,
    }
}

const CMD_CLUSTER: &str = "NODE_CLUSTER";
const CMD_HANDLE: &str = "NODE_HANDLE";
const CMD_ACK: &str = "NODE_HANDLE_ACK";
const CMD_NACK: &str = "NODE_HANDLE_NACK";

/// One message of Node's protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMessage {
    /// `NODE_CLUSTER`.
    Cluster(Box<ClusterMsg>),
    /// `NODE_HANDLE_ACK`: the peer took the handle in flight.
    HandleAck,
    /// `NODE_HANDLE_NACK`: the peer got a `NODE_HANDLE` without its descriptor.
    HandleNack,
    /// Another internal message (`NODE_SOCKET_*`, …), as its JSON text.
    Internal {
        /// Its `cmd`.
        cmd: String,
        /// The whole message as JSON.
        json: String,
    },
    /// A user message (`process.send`), as compact JSON text.
    User(String),
}

impl NodeMessage {
    fn from_json(v: Value) -> Result<NodeMessage, NodeError> {
        let cmd = internal_cmd(&v).map(str::to_owned);
        match (cmd, v) {
            (Some(cmd), Value::Object(o)) => match cmd.as_str() {
                CMD_CLUSTER => Ok(NodeMessage::Cluster(Box::new(ClusterMsg::from_json(&o)?))),
                CMD_ACK => Ok(NodeMessage::HandleAck),
                CMD_NACK => Ok(NodeMessage::HandleNack),
                _ => Ok(NodeMessage::Internal {
                    cmd,
                    json: Value::Object(o).to_string(),
                }),
            },
            (_, v) => Ok(NodeMessage::User(v.to_string())),
        }
    }

    /// A user message from JSON text (checked, made compact: one line).
    ///
    /// # Errors
    ///
    /// [`NodeError::Json`] if `json` is not one JSON value.
    pub fn user(json: &[u8]) -> Result<NodeMessage, NodeError> {
        let v: Value = serde_json::from_slice(json).map_err(|e| NodeError::Json(e.to_string()))?;
        NodeMessage::from_json(v)
    }
}

/// Node's test for an internal message: an object whose `cmd` is a string starting with
/// `NODE_` and longer than 5 characters.
fn internal_cmd(v: &Value) -> Option<&str> {
    let cmd = v.as_object()?.get("cmd")?.as_str()?;
    (cmd.starts_with("NODE_") && cmd.len() > 5).then_some(cmd)
}

/// One decoded line: the message, and the handle type if it came in a `NODE_HANDLE`
/// envelope (whose descriptor the stream pairs with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The message (the envelope's inner `msg` for a `NODE_HANDLE`).
    pub msg: NodeMessage,
    /// `Some` for a `NODE_HANDLE`.
    pub handle: Option<HandleType>,
}

/// Decodes one line (without its `\n`).
///
/// # Errors
///
/// Not JSON, an empty line, a `NODE_HANDLE` without an object `msg` or a string `type`,
/// or a `NODE_CLUSTER` field of the wrong type.
pub fn decode_line(line: &[u8]) -> Result<Line, NodeError> {
    if let Some(msg) = decode_reply(line) {
        // Checked against the general path wherever debug assertions are on (tests and
        // the fuzz targets).
        debug_assert_eq!(
            decode_general(line).ok(),
            Some(Line {
                msg: msg.clone(),
                handle: None
            }),
            "the reply fast path and the general path disagree on {:?}",
            String::from_utf8_lossy(line)
        );
        return Ok(Line { msg, handle: None });
    }
    decode_general(line)
}

/// [`decode_line`] through a JSON tree: every message.
fn decode_general(line: &[u8]) -> Result<Line, NodeError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| NodeError::Json(e.to_string()))?;
    if internal_cmd(&v) == Some(CMD_HANDLE) {
        let Value::Object(mut o) = v else {
            return Err(bad("cmd", "NODE_HANDLE that is not an object"));
        };
        let ty = match o.get("type") {
            Some(Value::String(t)) => HandleType::parse(t),
            _ => return Err(bad("type", "NODE_HANDLE without a string `type`")),
        };
        let inner = match o.remove("msg") {
            Some(m @ (Value::Object(_) | Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
                m
            }
            Some(Value::Null) => Value::Null,
            _ => return Err(bad("msg", "NODE_HANDLE without a message")),
        };
        if internal_cmd(&inner) == Some(CMD_HANDLE) {
            return Err(bad("msg", "NODE_HANDLE inside a NODE_HANDLE"));
        }
        return Ok(Line {
            msg: NodeMessage::from_json(inner)?,
            handle: Some(ty),
        });
    }
    Ok(Line {
        msg: NodeMessage::from_json(v)?,
        handle: None,
    })
}

/// Appends `line` as JSON text and a `\n` to `out`.
///
/// # Errors
///
/// A user or internal message whose text is not JSON.
pub fn encode_line(line: &Line, out: &mut Vec<u8>) -> Result<(), NodeError> {
    match &line.msg {
        NodeMessage::Cluster(c) => write_line(out, line.handle.as_ref(), &c.view()),
        NodeMessage::HandleAck => write_line(out, line.handle.as_ref(), &CmdOnly { cmd: CMD_ACK }),
        NodeMessage::HandleNack => {
            write_line(out, line.handle.as_ref(), &CmdOnly { cmd: CMD_NACK })
        }
        NodeMessage::Internal { json, .. } | NodeMessage::User(json) => {
            let v: Value =
                serde_json::from_str(json).map_err(|e| NodeError::Json(e.to_string()))?;
            write_line(out, line.handle.as_ref(), &v)
        }
    }
}

/// Appends `msg` (in a `NODE_HANDLE` envelope of type `handle` if given) and a `\n`.
fn write_line<T: serde::Serialize>(
    out: &mut Vec<u8>,
    handle: Option<&HandleType>,
    msg: &T,
) -> Result<(), NodeError> {
    let written = match handle {
        None => serde_json::to_writer(&mut *out, msg),
        Some(ty) => serde_json::to_writer(
            &mut *out,
            &HandleOut {
                cmd: CMD_HANDLE,
                ty: ty.name(),
                msg,
            },
        ),
    };
    written.map_err(|e| NodeError::Json(e.to_string()))?;
    out.push(b'\n');
    Ok(())
}

/// A received message, with the descriptor of its `NODE_HANDLE` envelope.
#[derive(Debug)]
pub struct Incoming {
    /// The message.
    pub msg: NodeMessage,
    /// For a `NODE_HANDLE`: its type and its descriptor (`None` when none came: answer
    /// `NODE_HANDLE_NACK` and drop the message, as Node does).
    pub handle: Option<(HandleType, Option<OwnedFd>)>,
}

/// Reassembles lines from bytes in any chunking and pairs each `NODE_HANDLE` with the
/// oldest descriptor received and not yet claimed (never by read boundary). I/O-free.
#[derive(Debug)]
pub struct NodeDecoder {
    buf: Vec<u8>,
    /// Where the unparsed bytes start in `buf`.
    start: usize,
    /// Bytes from `start` already known to hold no newline.
    scanned: usize,
    fds: VecDeque<OwnedFd>,
    limits: NodeLimits,
}

impl NodeDecoder {
    /// An empty decoder.
    pub fn new(limits: NodeLimits) -> NodeDecoder {
        NodeDecoder {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            fds: VecDeque::new(),
            limits,
        }
    }

    /// Adds received bytes.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Adds a received descriptor.
    ///
    /// # Errors
    ///
    /// [`NodeError::TooManyFds`] (the descriptor is closed).
    pub fn push_fd(&mut self, fd: OwnedFd) -> Result<(), NodeError> {
        if self.fds.len() >= self.limits.max_pending_fds {
            return Err(NodeError::TooManyFds {
                max: self.limits.max_pending_fds,
            });
        }
        self.fds.push_back(fd);
        Ok(())
    }

    /// The next complete message, if one has arrived.
    ///
    /// # Errors
    ///
    /// As [`decode_line`], or [`NodeError::LineTooLong`]. The bad line is consumed.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, NodeError> {
        let pending = &self.buf[self.start..];
        let Some(nl) = pending[self.scanned..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| i + self.scanned)
        else {
            self.scanned = pending.len();
            self.compact();
            if self.scanned > self.limits.max_line {
                return Err(NodeError::LineTooLong {
                    len: self.scanned,
                    max: self.limits.max_line,
                });
            }
            return Ok(None);
        };
        if nl > self.limits.max_line {
            return Err(NodeError::LineTooLong {
                len: nl,
                max: self.limits.max_line,
            });
        }
        let decoded = decode_line(&pending[..nl]);
        self.start += nl + 1;
        self.scanned = 0;
        let line = decoded?;
        let handle = line.handle.map(|ty| (ty, self.fds.pop_front()));
        Ok(Some(Incoming {
            msg: line.msg,
            handle,
        }))
    }

    /// Drops consumed bytes once they are most of the buffer.
    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Bytes of an unfinished line.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Descriptors waiting for their lines.
    pub fn pending_fds(&self) -> usize {
        self.fds.len()
    }

    /// Forgets everything buffered, closing waiting descriptors.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        self.fds.clear();
    }
}

#[derive(Debug)]
struct OutLine {
    bytes: Vec<u8>,
    fd: Option<SendFd>,
    written: usize,
}

/// Outgoing lines under Node's rule: at most one handle in flight. After a line with a
/// descriptor is written, only ACK/NACK replies go out until the peer's ACK or NACK
/// ([`NodeSendQueue::handle_answered`]); the rest waits in order. I/O-free.
#[derive(Debug)]
pub struct NodeSendQueue {
    /// ACK/NACK replies: never held back by a handle in flight.
    replies: VecDeque<OutLine>,
    lines: VecDeque<OutLine>,
    /// The line being written (bytes of one line never interleave with another's).
    current: Option<OutLine>,
    awaiting_ack: bool,
    queued: usize,
    max_queued: usize,
}

impl NodeSendQueue {
    /// An empty queue holding at most `max_queued` bytes.
    pub fn new(max_queued: usize) -> NodeSendQueue {
        NodeSendQueue {
            replies: VecDeque::new(),
            lines: VecDeque::new(),
            current: None,
            awaiting_ack: false,
            queued: 0,
            max_queued,
        }
    }

    /// Queues `line` (with the descriptor of its `NODE_HANDLE` envelope, if any).
    ///
    /// # Errors
    ///
    /// The line does not encode, or [`NodeError::QueueFull`]; the descriptor comes back.
    pub fn push(
        &mut self,
        line: &Line,
        fd: Option<SendFd>,
    ) -> Result<(), (NodeError, Option<SendFd>)> {
        let mut bytes = Vec::new();
        if let Err(e) = encode_line(line, &mut bytes) {
            return Err((e, fd));
        }
        if self.queued + bytes.len() > self.max_queued {
            return Err((
                NodeError::QueueFull {
                    queued: self.queued,
                    max: self.max_queued,
                },
                fd,
            ));
        }
        self.queued += bytes.len();
        let out = OutLine {
            bytes,
            fd,
            written: 0,
        };
        match line.msg {
            NodeMessage::HandleAck | NodeMessage::HandleNack if line.handle.is_none() => {
                self.replies.push_back(out);
            }
            _ => self.lines.push_back(out),
        }
        Ok(())
    }

    /// The peer answered the handle in flight (ACK or NACK): the queue moves again.
    /// Returns false if no handle was in flight (the answer is ignored, as Node does).
    pub fn handle_answered(&mut self) -> bool {
        std::mem::replace(&mut self.awaiting_ack, false)
    }

    /// Whether a handle is in flight (everything but replies waits).
    pub fn awaiting_ack(&self) -> bool {
        self.awaiting_ack
    }

    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Lines queued, including the one being written.
    pub fn len(&self) -> usize {
        self.replies.len() + self.lines.len() + usize::from(self.current.is_some())
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what the rule allows with `write(bytes, fd)` (which returns the bytes the
    /// kernel took; the descriptor, if given, goes with the first of them). Returns true
    /// when nothing writable is left (the queue may still hold lines waiting for an ACK).
    ///
    /// # Errors
    ///
    /// `write`'s error other than `WouldBlock` (which returns `Ok(false)`).
    pub fn flush_with<W>(&mut self, mut write: W) -> io::Result<bool>
    where
        W: FnMut(&[u8], Option<BorrowedFd<'_>>) -> io::Result<usize>,
    {
        loop {
            if let Some(cur) = &mut self.current {
                let fd = if cur.written == 0 {
                    cur.fd.as_ref().map(AsFd::as_fd)
                } else {
                    None
                };
                match write(&cur.bytes[cur.written..], fd) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
                    Ok(n) => {
                        cur.written += n;
                        self.queued -= n.min(self.queued);
                        if cur.written < cur.bytes.len() {
                            continue;
                        }
                        if cur.fd.is_some() {
                            self.awaiting_ack = true;
                        }
                        // The kernel has the descriptor: our reference goes.
                        self.current = None;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
                continue;
            }
            if let Some(r) = self.replies.pop_front() {
                self.current = Some(r);
                continue;
            }
            if self.awaiting_ack {
                return Ok(true);
            }
            match self.lines.pop_front() {
                Some(l) => self.current = Some(l),
                None => return Ok(true),
            }
        }
    }

    /// Drops everything queued (descriptors are closed); returns the descriptors of lines
    /// never started, so a caller can give their connections to someone else.
    pub fn take_unsent(&mut self) -> Vec<SendFd> {
        self.current = None;
        self.replies.clear();
        self.queued = 0;
        self.lines.drain(..).filter_map(|l| l.fd).collect()
    }
}

/// What [`NodeChannel::recv`] got.
#[derive(Debug)]
pub enum NodeRecv {
    /// A message (ACK/NACK are handled by the channel and not reported; a `NODE_HANDLE`
    /// that came without its descriptor was answered with a NACK and dropped).
    Message(Incoming),
    /// Nothing more now; wait for the next readable event.
    WouldBlock,
    /// The peer closed its end, at a line boundary.
    Eof,
}

/// Node's IPC over a non-blocking Unix stream socket: lines in and out, descriptors with
/// `SCM_RIGHTS`, ACK/NACK answered here, one handle in flight at a time.
///
/// Register it for readable events (edge-triggered), call [`NodeChannel::recv`] until
/// [`NodeRecv::WouldBlock`], and [`NodeChannel::flush`] after queueing and on writable.
#[derive(Debug)]
pub struct NodeChannel {
    sock: UnixStream,
    rx: NodeDecoder,
    tx: NodeSendQueue,
    read_buf: Vec<u8>,
    closed: bool,
    /// ACK/NACK answers that matched no handle in flight.
    stray_answers: u64,
    /// `NODE_HANDLE`s that came without a descriptor (NACKed, dropped).
    nacked: u64,
}

impl NodeChannel {
    /// Wraps a connected Unix stream socket (made non-blocking here).
    ///
    /// # Errors
    ///
    /// The socket cannot be made non-blocking.
    pub fn new(fd: OwnedFd, limits: NodeLimits) -> io::Result<NodeChannel> {
        sys::set_nonblocking(fd.as_fd(), true)?;
        let sock = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd));
        Ok(NodeChannel {
            sock,
            rx: NodeDecoder::new(limits),
            tx: NodeSendQueue::new(limits.max_queued_bytes),
            read_buf: vec![0; READ_CHUNK],
            closed: false,
            stray_answers: 0,
            nacked: 0,
        })
    }

    /// Queues a message (with a descriptor: sent in a `NODE_HANDLE` envelope of type
    /// `handle`). Written by [`NodeChannel::flush`].
    ///
    /// # Errors
    ///
    /// The channel is closed, the message does not encode, or the queue is full; the
    /// descriptor comes back.
    pub fn send(
        &mut self,
        msg: NodeMessage,
        handle: Option<(HandleType, SendFd)>,
    ) -> Result<(), (NodeError, Option<SendFd>)> {
        let (ty, fd) = match handle {
            Some((t, f)) => (Some(t), Some(f)),
            None => (None, None),
        };
        if self.closed {
            return Err((NodeError::Closed, fd));
        }
        self.tx.push(&Line { msg, handle: ty }, fd)
    }

    /// Writes what may be written now. Returns true when nothing writable is left.
    ///
    /// # Errors
    ///
    /// A socket error (the channel is then closed) or [`NodeError::Closed`].
    pub fn flush(&mut self) -> Result<bool, NodeError> {
        if self.closed {
            return Err(NodeError::Closed);
        }
        let sock = self.sock.as_fd();
        let r = self.tx.flush_with(|bytes, fd| match fd {
            Some(fd) => sys::scm::send_with_fds(sock, &[IoSlice::new(bytes)], &[fd]),
            None => {
                let none: [OwnedFd; 0] = [];
                sys::scm::send_with_fds(sock, &[IoSlice::new(bytes)], &none)
            }
        });
        r.map_err(|e| self.fail(e.into()))
    }

    /// Receives the next message, reading as needed.
    ///
    /// # Errors
    ///
    /// Any [`NodeError`]; the channel is then closed and the reason logged.
    pub fn recv(&mut self) -> Result<NodeRecv, NodeError> {
        if self.closed {
            return Err(NodeError::Closed);
        }
        loop {
            match self.rx.next_message() {
                Ok(Some(inc)) => match self.answer(inc) {
                    Some(inc) => return Ok(NodeRecv::Message(inc)),
                    None => continue,
                },
                Ok(None) => {}
                Err(e) => return Err(self.fail(e)),
            }
            let mut fds = VecDeque::new();
            let r = sys::scm::recv_with_fds(
                self.sock.as_fd(),
                &mut self.read_buf,
                sys::scm::MAX_FDS_PER_MSG,
                &mut fds,
            );
            for fd in fds {
                if let Err(e) = self.rx.push_fd(fd) {
                    return Err(self.fail(e));
                }
            }
            match r {
                Ok(r) if r.bytes == 0 => {
                    let buffered = self.rx.buffered();
                    if buffered > 0 {
                        return Err(self.fail(NodeError::EofMidLine { buffered }));
                    }
                    self.rx.clear();
                    return Ok(NodeRecv::Eof);
                }
                Ok(r) => self.rx.push_bytes(&self.read_buf[..r.bytes]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(NodeRecv::WouldBlock),
                Err(e) => return Err(self.fail(e.into())),
            }
        }
    }

    /// Channel-level handling: ACK/NACK move the send queue; a `NODE_HANDLE` is answered
    /// (ACK with its descriptor, NACK and dropped without). Returns what the caller sees.
    fn answer(&mut self, inc: Incoming) -> Option<Incoming> {
        match (&inc.msg, &inc.handle) {
            (NodeMessage::HandleAck | NodeMessage::HandleNack, None) => {
                if !self.tx.handle_answered() {
                    self.stray_answers += 1;
                    log::debug!("node channel: handle answer with no handle in flight");
                }
                None
            }
            (_, Some((_, None))) => {
                self.nacked += 1;
                log::warn!("node channel: NODE_HANDLE without a descriptor: NACK, dropped");
                let _ = self.tx.push(
                    &Line {
                        msg: NodeMessage::HandleNack,
                        handle: None,
                    },
                    None,
                );
                None
            }
            (_, Some((_, Some(_)))) => {
                let _ = self.tx.push(
                    &Line {
                        msg: NodeMessage::HandleAck,
                        handle: None,
                    },
                    None,
                );
                Some(inc)
            }
            _ => Some(inc),
        }
    }

    /// Whether a handle sent is waiting for the peer's ACK.
    pub fn awaiting_ack(&self) -> bool {
        self.tx.awaiting_ack()
    }

    /// Lines queued (including those waiting behind a handle in flight).
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// `NODE_HANDLE`s received without a descriptor (each NACKed and dropped).
    pub fn nacked(&self) -> u64 {
        self.nacked
    }

    /// ACK/NACK answers received with no handle in flight (ignored).
    pub fn stray_answers(&self) -> u64 {
        self.stray_answers
    }

    /// Whether the channel is closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closes the channel (the peer reads EOF); returns the descriptors of queued lines
    /// never started. Idempotent.
    pub fn close(&mut self) -> Vec<SendFd> {
        if self.closed {
            return Vec::new();
        }
        self.closed = true;
        let _ = self.sock.shutdown(Shutdown::Both);
        self.rx.clear();
        self.tx.take_unsent()
    }

    fn fail(&mut self, err: NodeError) -> NodeError {
        log::warn!("node channel fd {}: closing: {err}", self.sock.as_raw_fd());
        drop(self.close());
        err
    }
}

impl AsFd for NodeChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for NodeChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Source for NodeChannel {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.sock.register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.sock.reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.sock.deregister(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Line {
        match decode_line(s.as_bytes()) {
            Ok(l) => l,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn the_reply_fast_path_takes_only_what_it_decodes_as_the_general_path_does() {
        let taken = [
            r#"{"cmd":"NODE_HANDLE_ACK"}"#,
            r#"{"cmd":"NODE_CLUSTER","ack":5,"accepted":true,"seq":7}"#,
            r#"{"cmd":"NODE_CLUSTER","ack":5,"accepted":false,"seq":7}"#,
            r#" { "seq" : 1 , "cmd" : "NODE_CLUSTER" , "ack" : null } "#,
            r#"{"cmd":"NODE_CLUSTER","ack":9223372036854775807}"#,
        ];
        for t in taken {
            let fast = decode_reply(t.as_bytes()).unwrap_or_else(|| panic!("not taken: {t}"));
            assert_eq!(decode_general(t.as_bytes()).unwrap().msg, fast, "{t}");
        }
        // Left to the general path (which may accept or refuse them).
        let left = [
            r#"{"cmd":"NODE_CLUSTER","ack":1.0,"accepted":true,"seq":7}"#,
            r#"{"cmd":"NODE_CLUSTER","ack":9223372036854775808}"#,
            r#"{"cmd":"NODE_CLUSTER","ack":-1}"#,
            r#"{"cmd":"NODE_CLUSTER","ack":1,"ack":2}"#,
            r#"{"cmd":"NODE_CLUSTER","act":"newconn","seq":3}"#,
            r#"{"cmd":"NODE_CLUSTER","accepted":"yes"}"#,
            r#"{"cmd":"NODE_\u0043LUSTER","ack":1}"#,
            r#"{"cmd":"NODE_HANDLE_NACK"}"#,
            r#"{"cmd":"hello","ack":1}"#,
            r#"{"ack":1}"#,
            r#"[1]"#,
            "",
        ];
        for t in left {
            assert_eq!(decode_reply(t.as_bytes()), None, "{t}");
        }
        // The general path still decodes those it can, the same way.
        assert_eq!(
            line(r#"{"cmd":"NODE_CLUSTER","ack":1,"ack":2}"#).msg,
            NodeMessage::Cluster(Box::new(ClusterMsg::reply(2)))
        );
    }

    #[test]
    fn decodes_what_node_sends() {
        let l = line(r#"{"cmd":"NODE_CLUSTER","act":"online","seq":0}"#);
        assert_eq!(l.handle, None);
        let NodeMessage::Cluster(c) = l.msg else {
            panic!("not cluster")
        };
        assert_eq!((c.act, c.seq), (Some(Act::Online), Some(0)));

        let l = line(
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":8000,"addressType":4,"flags":0,"backlog":511,"seq":1}"#,
        );
        let NodeMessage::Cluster(c) = l.msg else {
            panic!("not cluster")
        };
        assert_eq!(c.act, Some(Act::QueryServer));
        assert_eq!(c.port, Some(8000));
        assert_eq!(c.address, None);
        assert_eq!(c.address_type, Some(AddressType::Tcp4));
        assert_eq!((c.index, c.backlog, c.fd), (Some(0), Some(511), None));

        // `listen(port, host)` without a backlog: Node sends `false` for it.
        let l = line(
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":"127.0.0.1","port":8000,"addressType":4,"flags":0,"backlog":false,"seq":1}"#,
        );
        let NodeMessage::Cluster(c) = l.msg else {
            panic!("not cluster")
        };
        assert_eq!(c.address.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.backlog, None);

        let l = line(
            r#"{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k","seq":1}}"#,
        );
        assert_eq!(l.handle, Some(HandleType::NetNative));
        assert!(matches!(l.msg, NodeMessage::Cluster(c) if c.act == Some(Act::NewConn)));

        assert_eq!(
            line(r#"{"cmd":"NODE_HANDLE_ACK"}"#).msg,
            NodeMessage::HandleAck
        );
        assert_eq!(
            line(r#"{"cmd":"NODE_HANDLE_NACK"}"#).msg,
            NodeMessage::HandleNack
        );
    }

    #[test]
    fn user_messages_are_everything_not_internal() {
        for s in [
            r#"{"hello":1}"#,
            r#""text""#,
            "42",
            "true",
            "null",
            r#"{"cmd":"NODE_"}"#,
            r#"{"cmd":"node_cluster"}"#,
            r#"{"cmd":5}"#,
        ] {
            assert_eq!(line(s).msg, NodeMessage::User(s.to_owned()), "{s}");
        }
        assert!(matches!(
            line(r#"{"cmd":"NODE_SOCKET_NOTIFY_CLOSE","key":"x"}"#).msg,
            NodeMessage::Internal { cmd, .. } if cmd == "NODE_SOCKET_NOTIFY_CLOSE"
        ));
    }

    #[test]
    fn malformed_lines_are_clear_errors() {
        for s in [
            "",
            "{",
            "not json",
            r#"{"cmd":"NODE_HANDLE","type":"net.Native"}"#,
            r#"{"cmd":"NODE_HANDLE","msg":{}}"#,
            r#"{"cmd":"NODE_CLUSTER","seq":-1}"#,
            r#"{"cmd":"NODE_CLUSTER","accepted":"yes"}"#,
            r#"{"cmd":"NODE_CLUSTER","addressType":5}"#,
            r#"{"cmd":"NODE_HANDLE","type":"x","msg":{"cmd":"NODE_HANDLE","type":"x","msg":1}}"#,
        ] {
            let e = decode_line(s.as_bytes()).err();
            assert!(e.is_some(), "{s:?} decoded");
            assert!(!e.map(|e| e.to_string()).unwrap_or_default().is_empty());
        }
    }

    #[test]
    fn cluster_messages_round_trip() {
        let msgs = [
            ClusterMsg {
                act: Some(Act::NewConn),
                key: Some("127.0.0.1:0:4:undefined:0".into()),
                seq: Some(7),
                ..ClusterMsg::default()
            },
            ClusterMsg {
                ack: Some(1),
                errno: Some(0),
                key: Some("null:0:4:undefined:0".into()),
                data: Some(r#"{"ticketKeys":"ab"}"#.into()),
                sockname: Some(SockName {
                    address: "::".into(),
                    family: "IPv6".into(),
                    port: 80,
                }),
                seq: Some(2),
                ..ClusterMsg::default()
            },
        ];
        for c in msgs {
            for handle in [None, Some(HandleType::NetNative)] {
                let l = Line {
                    msg: NodeMessage::Cluster(Box::new(c.clone())),
                    handle,
                };
                let mut out = Vec::new();
                assert!(encode_line(&l, &mut out).is_ok());
                assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
                assert_eq!(out.last(), Some(&b'\n'));
                let back = decode_line(&out[..out.len() - 1]).ok();
                assert_eq!(back, Some(l));
            }
        }
    }

    #[test]
    fn user_text_is_checked_and_made_one_line() {
        let m = NodeMessage::user(b"{\n \"a\": [1,\n2]\n}").ok();
        assert_eq!(m, Some(NodeMessage::User(r#"{"a":[1,2]}"#.into())));
        assert!(NodeMessage::user(b"{oops").is_err());
        // Internal text stays internal.
        assert_eq!(
            NodeMessage::user(br#"{"cmd":"NODE_HANDLE_ACK"}"#).ok(),
            Some(NodeMessage::HandleAck)
        );
    }

    fn pipe_fd() -> OwnedFd {
        match nix::unistd::pipe() {
            Ok((r, _w)) => r,
            Err(e) => panic!("pipe: {e}"),
        }
    }

    #[test]
    fn decoder_rechunks_and_pairs_fds_in_order() {
        let wire = concat!(
            r#"{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"a","seq":1}}"#,
            "\n",
            r#"{"x":"é"}"#,
            "\n",
            r#"{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"b","seq":2}}"#,
            "\n"
        )
        .as_bytes();
        for chunk in [1, 2, 3, 7, 64, wire.len()] {
            let mut d = NodeDecoder::new(NodeLimits::default());
            let a = pipe_fd();
            let b = pipe_fd();
            let (ra, rb) = (a.as_raw_fd(), b.as_raw_fd());
            // Both descriptors arrive with the first byte: pairing goes by order only.
            assert!(d.push_fd(a).is_ok());
            assert!(d.push_fd(b).is_ok());
            let mut got = Vec::new();
            for c in wire.chunks(chunk) {
                d.push_bytes(c);
                while let Ok(Some(m)) = d.next_message() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 3, "chunk {chunk}");
            let fd_of = |i: &Incoming| {
                i.handle
                    .as_ref()
                    .and_then(|(_, f)| f.as_ref())
                    .map(AsRawFd::as_raw_fd)
            };
            assert_eq!(fd_of(&got[0]), Some(ra));
            assert_eq!(got[1].msg, NodeMessage::User(r#"{"x":"é"}"#.into()));
            assert_eq!(fd_of(&got[2]), Some(rb));
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn decoder_bounds_lines_and_fds() {
        let limits = NodeLimits {
            max_line: 8,
            max_pending_fds: 1,
            ..NodeLimits::default()
        };
        let mut d = NodeDecoder::new(limits);
        d.push_bytes(b"123456789");
        assert!(matches!(
            d.next_message(),
            Err(NodeError::LineTooLong { .. })
        ));
        let mut d = NodeDecoder::new(limits);
        d.push_bytes(b"12345678\n");
        assert!(matches!(d.next_message(), Ok(Some(_))));
        assert!(d.push_fd(pipe_fd()).is_ok());
        assert!(matches!(
            d.push_fd(pipe_fd()),
            Err(NodeError::TooManyFds { max: 1 })
        ));
        // A bad line is consumed: the next one decodes.
        let mut d = NodeDecoder::new(NodeLimits::default());
        d.push_bytes(b"{bad\n1\n");
        assert!(d.next_message().is_err());
        assert!(
            matches!(d.next_message(), Ok(Some(Incoming { msg: NodeMessage::User(s), .. })) if s == "1")
        );
    }

    fn user(s: &str) -> Line {
        Line {
            msg: NodeMessage::User(s.into()),
            handle: None,
        }
    }

    #[test]
    fn one_handle_at_a_time() {
        let mut q = NodeSendQueue::new(1 << 20);
        let handle = Line {
            msg: NodeMessage::User("1".into()),
            handle: Some(HandleType::NetNative),
        };
        assert!(q.push(&handle, Some(SendFd::Owned(pipe_fd()))).is_ok());
        assert!(q.push(&user("2"), None).is_ok());
        assert!(q.push(&handle, Some(SendFd::Owned(pipe_fd()))).is_ok());
        let mut wire: Vec<(String, bool)> = Vec::new();
        let mut write = |b: &[u8], fd: Option<BorrowedFd<'_>>| {
            wire.push((String::from_utf8_lossy(b).into_owned(), fd.is_some()));
            Ok(b.len())
        };
        assert!(matches!(q.flush_with(&mut write), Ok(true)));
        assert!(q.awaiting_ack());
        // An ACK reply jumps the queue while the handle is in flight.
        let ack = Line {
            msg: NodeMessage::HandleAck,
            handle: None,
        };
        assert!(q.push(&ack, None).is_ok());
        assert!(matches!(q.flush_with(&mut write), Ok(true)));
        assert!(q.handle_answered());
        assert!(matches!(q.flush_with(&mut write), Ok(true)));
        assert!(q.handle_answered());
        assert!(!q.handle_answered(), "nothing in flight");
        assert!(matches!(q.flush_with(&mut write), Ok(true)));
        assert!(q.is_empty());
        let fds: Vec<bool> = wire.iter().map(|(_, f)| *f).collect();
        assert_eq!(fds, [true, false, false, true]);
        assert!(wire[0].0.starts_with(r#"{"cmd":"NODE_HANDLE""#));
        assert_eq!(wire[1].0, "{\"cmd\":\"NODE_HANDLE_ACK\"}\n");
        assert_eq!(wire[2].0, "2\n");
    }

    #[test]
    fn partial_writes_resume_and_the_fd_goes_once() {
        let mut q = NodeSendQueue::new(1 << 20);
        let handle = Line {
            msg: NodeMessage::User(r#""abcdef""#.into()),
            handle: Some(HandleType::NetSocket),
        };
        assert!(q.push(&handle, Some(SendFd::Owned(pipe_fd()))).is_ok());
        let mut out = Vec::new();
        let mut fds = 0;
        let mut budget = 5;
        loop {
            let r = q.flush_with(|b, fd| {
                if budget == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                budget -= 1;
                fds += usize::from(fd.is_some());
                out.push(b[0]);
                Ok(1)
            });
            match r {
                Ok(true) => break,
                Ok(false) => budget = 5,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(fds, 1);
        assert!(decode_line(&out[..out.len() - 1]).is_ok());
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn queue_is_bounded_and_gives_fds_back() {
        let mut q = NodeSendQueue::new(4);
        let r = q.push(&user("123456"), Some(SendFd::Owned(pipe_fd())));
        assert!(matches!(r, Err((NodeError::QueueFull { .. }, Some(_)))));
    }

    #[test]
    fn channel_acks_handles_and_holds_the_queue() {
        let (a, b) = match crate::sys::socketpair() {
            Ok(p) => p,
            Err(e) => panic!("socketpair: {e}"),
        };
        let mut p = NodeChannel::new(a, NodeLimits::default()).expect("channel");
        let mut w = NodeChannel::new(b, NodeLimits::default()).expect("channel");
        let conn = ClusterMsg {
            act: Some(Act::NewConn),
            key: Some("k".into()),
            seq: Some(1),
            ..ClusterMsg::default()
        };
        assert!(
            p.send(
                NodeMessage::Cluster(Box::new(conn.clone())),
                Some((HandleType::NetNative, SendFd::Owned(pipe_fd())))
            )
            .is_ok()
        );
        assert!(p.send(NodeMessage::User("2".into()), None).is_ok());
        assert!(matches!(p.flush(), Ok(true)));
        assert!(p.awaiting_ack());
        assert_eq!(p.queued(), 1, "the user message waits for the ACK");
        let got = w.recv().expect("recv");
        match got {
            NodeRecv::Message(Incoming {
                msg,
                handle: Some((HandleType::NetNative, Some(_))),
            }) => assert_eq!(msg, NodeMessage::Cluster(Box::new(conn))),
            other => panic!("{other:?}"),
        }
        assert!(matches!(w.recv(), Ok(NodeRecv::WouldBlock)));
        assert!(matches!(w.flush(), Ok(true))); // the ACK
        assert!(matches!(p.recv(), Ok(NodeRecv::WouldBlock)));
        assert!(!p.awaiting_ack());
        assert!(matches!(p.flush(), Ok(true)));
        assert!(
            matches!(w.recv(), Ok(NodeRecv::Message(Incoming { msg: NodeMessage::User(s), .. })) if s == "2")
        );
        drop(p);
        assert!(matches!(w.recv(), Ok(NodeRecv::Eof)));
    }

    #[test]
    fn channel_nacks_a_handle_without_descriptor() {
        let (a, b) = crate::sys::socketpair().expect("socketpair");
        let mut w = NodeChannel::new(b, NodeLimits::default()).expect("channel");
        let raw = b"{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":{\"cmd\":\"NODE_CLUSTER\",\"act\":\"newconn\",\"key\":\"k\",\"seq\":1}}\n2\n";
        let none: [OwnedFd; 0] = [];
        assert!(sys::scm::send_with_fds(a.as_fd(), &[IoSlice::new(raw)], &none).is_ok());
        assert!(
            matches!(w.recv(), Ok(NodeRecv::Message(Incoming { msg: NodeMessage::User(s), .. })) if s == "2")
        );
        assert_eq!(w.nacked(), 1);
        assert!(matches!(w.flush(), Ok(true)));
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(&a, &mut buf).expect("read");
        assert_eq!(&buf[..n], b"{\"cmd\":\"NODE_HANDLE_NACK\"}\n");
    }

    #[test]
    fn channel_closes_on_garbage_and_eof_mid_line() {
        let (a, b) = crate::sys::socketpair().expect("socketpair");
        let mut w = NodeChannel::new(b, NodeLimits::default()).expect("channel");
        assert!(nix::unistd::write(&a, b"{nope}\n").is_ok());
        assert!(matches!(w.recv(), Err(NodeError::Json(_))));
        assert!(w.is_closed());
        let (a, b) = crate::sys::socketpair().expect("socketpair");
        let mut w = NodeChannel::new(b, NodeLimits::default()).expect("channel");
        assert!(nix::unistd::write(&a, b"{\"a\":").is_ok());
        drop(a);
        assert!(matches!(
            w.recv(),
            Err(NodeError::EofMidLine { buffered: 5 })
        ));
    }

    #[test]
    fn long_numbers_round_trip_exactly() {
        let l = line("55555.4555555555555555555");
        let mut out = Vec::new();
        assert!(encode_line(&l, &mut out).is_ok());
        assert_eq!(decode_line(&out[..out.len() - 1]).ok(), Some(l));
    }
}
