//! The crate-wide error type.
//!
//! Module errors carry fields ([`crate::ipc::FrameError`], [`crate::ipc::ChannelError`],
//! [`crate::ipc::ProtoError`]); [`Error`] wraps them with a chained [`std::error::Error::source`]
//! so callers can match on the module error or just print the chain.

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
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Frame(e) => Some(e),
            Error::Channel(e) => Some(e),
            Error::Proto(e) => Some(e),
            Error::Send(e) => Some(e),
            Error::Config(_) => None,
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
