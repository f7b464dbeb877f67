//! The wire format: length-prefixed binary frames. Pure encode/decode, no I/O.
//!
//! # Header
//!
//! Every frame is an 8-byte header followed by `len` payload bytes. Integers are little
//! endian.
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 1 | version | [`VERSION`] (1). Anything else is [`FrameError::BadVersion`]. |
//! | 1 | 1 | kind | a [`Kind`] code. Unknown codes are [`FrameError::UnknownKind`]. |
//! | 2 | 1 | flags | reserved; must be 0 in version 1 ([`FrameError::UnknownFlags`]). |
//! | 3 | 1 | fd count | descriptors that travel with this frame (`SCM_RIGHTS`), at most [`Limits::max_fds`]. |
//! | 4 | 4 | len | payload length in bytes, at most [`Limits::max_payload`]. |
//!
//! # Descriptors
//!
//! A frame that carries descriptors is sent in its own `sendmsg`, whose `SCM_RIGHTS` control
//! message rides with the frame's first byte. The receiver keeps a FIFO of received
//! descriptors and hands each complete frame the next `fd count` of them. Descriptors are
//! never tied to read boundaries, so any re-chunking of the byte stream pairs them the same
//! way.
//!
//! # Limits
//!
//! Every limit is checked on the header alone, before any payload is buffered, so a peer
//! cannot make the receiver allocate more than `HEADER_LEN + max_payload` bytes.

use std::fmt;

/// The only wire version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 8;
/// Default (and largest allowed) payload size: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 << 20;
/// Default (and largest allowed) descriptor count per frame.
pub const DEFAULT_MAX_FDS: u8 = crate::sys::scm::MAX_FDS_PER_MSG as u8;

/// What a frame's payload is. Codes are stable wire values.
///
/// The control kinds are the cluster protocol (see [`crate::ipc::proto`] for their
/// payloads); [`Kind::User`] carries application bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// W→P: the worker is up, before any user code runs.
    Online = 1,
    /// W→P: the worker asks for a listening socket (Node's `queryServer`).
    QueryServer = 2,
    /// P→W: answer to [`Kind::QueryServer`]; carries the listening fd under the shared policy.
    QueryReply = 3,
    /// W→P: one of the worker's servers is listening.
    Listening = 4,
    /// P→W: new connections (one fd each) for a round-robin server.
    NewConn = 5,
    /// W→P: the worker refused a handed-off connection (closing, or over its limit) and
    /// gives it back (its fd). Code 6 is not used.
    Rejected = 7,
    /// P→W: close your servers, drain and exit.
    Disconnect = 8,
    /// Either way: a heartbeat.
    Ping = 9,
    /// Answer to [`Kind::Ping`], with the responder's loop lag.
    Pong = 10,
    /// W→P: the application is ready to take traffic.
    Ready = 11,
    /// A user message relayed through the primary to or from another worker.
    Relay = 12,
    /// W→P: one of the worker's servers closed.
    Close = 13,
    /// W→P: the worker is leaving on purpose (`exitedAfterDisconnect`); expects an ack.
    ExitedAfterDisconnect = 14,
    /// P→W: acknowledges a request by sequence number.
    Ack = 15,
    /// W→P: the worker hit a fatal error, stopped accepting, and asks to be replaced.
    GoingDown = 16,
    /// W→P: the worker's free credit: when it fills up, when it has room again, and when
    /// a hand-off asked for it.
    Credit = 17,
    /// P→W: a relay this worker sent could not be delivered (no such worker, or it is
    /// not connected).
    RelayFailed = 18,
    /// W→P: the counters of the worker's HTTP servers, summed (after a heartbeat answer,
    /// when they changed).
    HttpStats = 19,
    /// Application bytes (and optional descriptors).
    User = 32,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 19] = [
        Kind::Online,
        Kind::QueryServer,
        Kind::QueryReply,
        Kind::Listening,
        Kind::NewConn,
        Kind::Rejected,
        Kind::Disconnect,
        Kind::Ping,
        Kind::Pong,
        Kind::Ready,
        Kind::Relay,
        Kind::Close,
        Kind::ExitedAfterDisconnect,
        Kind::Ack,
        Kind::GoingDown,
        Kind::Credit,
        Kind::RelayFailed,
        Kind::HttpStats,
        Kind::User,
    ];

    /// The kind for a wire code, if there is one.
    pub const fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Online,
            2 => Kind::QueryServer,
            3 => Kind::QueryReply,
            4 => Kind::Listening,
            5 => Kind::NewConn,
            7 => Kind::Rejected,
            8 => Kind::Disconnect,
            9 => Kind::Ping,
            10 => Kind::Pong,
            11 => Kind::Ready,
            12 => Kind::Relay,
            13 => Kind::Close,
            14 => Kind::ExitedAfterDisconnect,
            15 => Kind::Ack,
            16 => Kind::GoingDown,
            17 => Kind::Credit,
            18 => Kind::RelayFailed,
            19 => Kind::HttpStats,
            32 => Kind::User,
            _ => return None,
        })
    }

    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// Limits a decoder enforces. Both are explicit and checked on the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes (default [`DEFAULT_MAX_PAYLOAD`], 16 MiB).
    pub max_payload: u32,
    /// Most descriptors one frame may carry (default [`DEFAULT_MAX_FDS`]).
    pub max_fds: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_fds: DEFAULT_MAX_FDS,
        }
    }
}

impl Limits {
    /// Checks that the limits are within what the implementation supports.
    ///
    /// # Errors
    ///
    /// The first limit that is out of range.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_payload > DEFAULT_MAX_PAYLOAD {
            return Err(LimitsError::MaxPayload(self.max_payload));
        }
        if self.max_fds > DEFAULT_MAX_FDS {
            return Err(LimitsError::MaxFds(self.max_fds));
        }
        Ok(())
    }
}

/// A [`Limits`] field above what the implementation supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsError {
    /// `max_payload` is above [`DEFAULT_MAX_PAYLOAD`].
    MaxPayload(u32),
    /// `max_fds` is above [`DEFAULT_MAX_FDS`].
    MaxFds(u8),
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitsError::MaxPayload(n) => {
                write!(
                    f,
                    "max_payload {n} is above the supported {DEFAULT_MAX_PAYLOAD}"
                )
            }
            LimitsError::MaxFds(n) => {
                write!(f, "max_fds {n} is above the supported {DEFAULT_MAX_FDS}")
            }
        }
    }
}

impl std::error::Error for LimitsError {}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the payload is.
    pub kind: Kind,
    /// Flags (always 0 in version 1).
    pub flags: u8,
    /// How many descriptors travel with the frame.
    pub fds: u8,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// Total frame size: header plus payload.
    pub const fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }

    /// The 8 header bytes.
    pub const fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let l = self.len.to_le_bytes();
        [
            VERSION,
            self.kind.code(),
            self.flags,
            self.fds,
            l[0],
            l[1],
            l[2],
            l[3],
        ]
    }

    /// Parses and validates a header from the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// Returns `Ok(None)` if `buf` is shorter than a header.
    ///
    /// # Errors
    ///
    /// The first violated rule, in header order: version, kind, flags, fd count, length.
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<Header>, FrameError> {
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        if h[0] != VERSION {
            return Err(FrameError::BadVersion { got: h[0] });
        }
        let kind = Kind::from_code(h[1]).ok_or(FrameError::UnknownKind { got: h[1] })?;
        if h[2] != 0 {
            return Err(FrameError::UnknownFlags { flags: h[2] });
        }
        if h[3] > limits.max_fds {
            return Err(FrameError::TooManyFds {
                count: h[3],
                max: limits.max_fds,
            });
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len > limits.max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: limits.max_payload,
            });
        }
        Ok(Some(Header {
            kind,
            flags: h[2],
            fds: h[3],
            len,
        }))
    }
}

/// A complete frame borrowed from the decoder's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: Header,
    /// The payload (`header.len` bytes).
    pub payload: &'a [u8],
}

/// What [`decode`] found at the start of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, which used the first `consumed` bytes of the input.
    Frame {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes used: header plus payload.
        consumed: usize,
    },
    /// The input holds only part of a frame; at least `need` bytes in all are required.
    NeedMore {
        /// Total input length needed before the next call can make progress.
        need: usize,
    },
}

/// Why a header was rejected. Each carries the offending value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The version byte is not [`VERSION`].
    BadVersion {
        /// The byte received.
        got: u8,
    },
    /// The kind code is not a [`Kind`].
    UnknownKind {
        /// The code received.
        got: u8,
    },
    /// Flag bits this version does not define are set.
    UnknownFlags {
        /// The flags byte received.
        flags: u8,
    },
    /// More descriptors than the limit.
    TooManyFds {
        /// Descriptors declared.
        count: u8,
        /// The limit.
        max: u8,
    },
    /// Payload longer than the limit.
    TooLarge {
        /// Length declared (or requested, when encoding).
        len: u32,
        /// The limit.
        max: u32,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::BadVersion { got } => {
                write!(
                    f,
                    "unsupported wire version {got} (this side speaks {VERSION})"
                )
            }
            FrameError::UnknownKind { got } => write!(f, "unknown frame kind {got}"),
            FrameError::UnknownFlags { flags } => write!(f, "unknown frame flags {flags:#04x}"),
            FrameError::TooManyFds { count, max } => {
                write!(f, "frame carries {count} fds (max {max})")
            }
            FrameError::TooLarge { len, max } => {
                write!(
                    f,
                    "frame payload of {len} bytes exceeds the maximum of {max}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Decodes the frame at the start of `buf`.
///
/// Never panics and never allocates: the payload is borrowed from `buf`.
///
/// # Errors
///
/// A [`FrameError`] if the header is invalid; the stream cannot be resynchronised after one.
pub fn decode<'a>(buf: &'a [u8], limits: &Limits) -> Result<Decoded<'a>, FrameError> {
    let Some(header) = Header::parse(buf, limits)? else {
        return Ok(Decoded::NeedMore { need: HEADER_LEN });
    };
    let total = header.frame_len();
    match buf.get(HEADER_LEN..total) {
        Some(payload) => Ok(Decoded::Frame {
            frame: Frame { header, payload },
            consumed: total,
        }),
        None => Ok(Decoded::NeedMore { need: total }),
    }
}

/// Appends one frame (header and payload) to `out`.
///
/// # Errors
///
/// [`FrameError::TooLarge`] or [`FrameError::TooManyFds`] if the frame breaks `limits`;
/// `out` is unchanged then.
pub fn encode(
    out: &mut Vec<u8>,
    kind: Kind,
    fds: usize,
    payload: &[u8],
    limits: &Limits,
) -> Result<(), FrameError> {
    let header = checked_header(kind, fds, payload.len(), limits)?;
    out.reserve(header.frame_len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Builds a header after checking `fds` and `len` against `limits`.
///
/// # Errors
///
/// [`FrameError::TooLarge`] or [`FrameError::TooManyFds`].
pub fn checked_header(
    kind: Kind,
    fds: usize,
    len: usize,
    limits: &Limits,
) -> Result<Header, FrameError> {
    if fds > limits.max_fds as usize {
        return Err(FrameError::TooManyFds {
            count: fds.min(u8::MAX as usize) as u8,
            max: limits.max_fds,
        });
    }
    if len > limits.max_payload as usize {
        return Err(FrameError::TooLarge {
            len: len.min(u32::MAX as usize) as u32,
            max: limits.max_payload,
        });
    }
    Ok(Header {
        kind,
        flags: 0,
        fds: fds as u8,
        len: len as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_kind() {
        let limits = Limits::default();
        for kind in Kind::ALL {
            assert_eq!(Kind::from_code(kind.code()), Some(kind));
            let mut buf = Vec::new();
            encode(&mut buf, kind, 1, b"abc", &limits).unwrap();
            match decode(&buf, &limits).unwrap() {
                Decoded::Frame { frame, consumed } => {
                    assert_eq!(consumed, buf.len());
                    assert_eq!(frame.header.kind, kind);
                    assert_eq!(frame.header.fds, 1);
                    assert_eq!(frame.payload, b"abc");
                }
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_needs_more() {
        let limits = Limits::default();
        let mut buf = Vec::new();
        encode(&mut buf, Kind::User, 0, &[7; 20], &limits).unwrap();
        for cut in 0..buf.len() {
            let need = match decode(&buf[..cut], &limits).unwrap() {
                Decoded::NeedMore { need } => need,
                other => panic!("prefix {cut}: {other:?}"),
            };
            assert!(need > cut && need <= buf.len());
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let limits = Limits {
            max_payload: 100,
            max_fds: 2,
        };
        let h = |b: [u8; 8]| decode(&b, &limits).err();
        assert_eq!(
            h([2, 32, 0, 0, 0, 0, 0, 0]),
            Some(FrameError::BadVersion { got: 2 })
        );
        assert_eq!(
            h([1, 99, 0, 0, 0, 0, 0, 0]),
            Some(FrameError::UnknownKind { got: 99 })
        );
        assert_eq!(
            h([1, 32, 4, 0, 0, 0, 0, 0]),
            Some(FrameError::UnknownFlags { flags: 4 })
        );
        assert_eq!(
            h([1, 32, 0, 3, 0, 0, 0, 0]),
            Some(FrameError::TooManyFds { count: 3, max: 2 })
        );
        assert_eq!(
            h([1, 32, 0, 0, 101, 0, 0, 0]),
            Some(FrameError::TooLarge { len: 101, max: 100 })
        );
        assert_eq!(
            h([1, 32, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            Some(FrameError::TooLarge {
                len: u32::MAX,
                max: 100
            })
        );
    }

    #[test]
    fn encode_refuses_over_limit() {
        let limits = Limits {
            max_payload: 4,
            max_fds: 1,
        };
        let mut buf = Vec::new();
        assert!(encode(&mut buf, Kind::User, 0, b"12345", &limits).is_err());
        assert!(encode(&mut buf, Kind::User, 2, b"1", &limits).is_err());
        assert!(buf.is_empty());
    }
}
