//! The crate-wide error type.
//!
//! Module errors carry fields ([`crate::ipc::FrameError`], [`crate::ipc::ChannelError`],
//! [`crate::ipc::ProtoError`]); [`Error`] wraps them so callers can match on the module
//! error. Each error's `Display` includes the error it wraps, and its
//! [`std::error::Error::source`] skips that one (it returns the wrapped error's own
//! source), so printing the chain never repeats a message.

use std::fmt;
use std::io;

use crate::ipc::{ChannelError, FrameError, ProtoError, SendError};

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error forkloop returns.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    Io(io::Error),
    /// A frame header was invalid (see [`FrameError`]).
    Frame(FrameError),
    /// An IPC channel failed or was closed (see [`ChannelError`]).
    Channel(ChannelError),
    /// A frame's payload did not decode as a protocol message (see [`ProtoError`]).
    Proto(ProtoError),
    /// A message could not be queued (see [`SendError`]; its descriptors are inside).
    Send(SendError),
    /// A setting or argument was invalid; the text says which and why.
    Config(String),
    /// A value did not encode to, or decode from, JSON.
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    Json(JsonError),
}

/// A typed message that did not encode to, or decode from, JSON.
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
#[derive(Debug)]
pub struct JsonError(pub(crate) serde_json::Error);

#[cfg(feature = "serde")]
impl JsonError {
    /// Line and column of the input where decoding failed (1-based; 0 when encoding).
    pub fn position(&self) -> (usize, usize) {
        (self.0.line(), self.0.column())
    }
}

/// `value` as JSON bytes: the one encoder of every typed message.
#[cfg(feature = "serde")]
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, JsonError> {
    serde_json::to_vec(value).map_err(JsonError)
}

/// `bytes` read as JSON into `T`: the one decoder of every typed message.
#[cfg(feature = "serde")]
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    serde_json::from_slice(bytes).map_err(JsonError)
}

#[cfg(feature = "serde")]
impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "json: {}", self.0)
    }
}

#[cfg(feature = "serde")]
impl std::error::Error for JsonError {}

#[cfg(feature = "serde")]
impl From<JsonError> for Error {
    fn from(e: JsonError) -> Self {
        Error::Json(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Frame(e) => write!(f, "bad frame: {e}"),
            Error::Channel(e) => write!(f, "channel: {e}"),
            Error::Proto(e) => write!(f, "bad message: {e}"),
            Error::Send(e) => write!(f, "{e}"),
            Error::Config(s) => write!(f, "invalid configuration: {s}"),
            #[cfg(feature = "serde")]
            Error::Json(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // `Display` already printed the wrapped error: go on from its source.
        match self {
            Error::Io(e) => e.source(),
            Error::Frame(e) => e.source(),
            Error::Channel(e) => e.source(),
            Error::Proto(e) => e.source(),
            Error::Send(e) => e.source(),
            Error::Config(_) => None,
            #[cfg(feature = "serde")]
            Error::Json(e) => e.source(),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        Error::Frame(e)
    }
}

impl From<ChannelError> for Error {
    fn from(e: ChannelError) -> Self {
        Error::Channel(e)
    }
}

impl From<ProtoError> for Error {
    fn from(e: ProtoError) -> Self {
        Error::Proto(e)
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        Error::Send(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}
