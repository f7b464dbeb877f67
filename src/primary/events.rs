//! What the primary reports: [`Event`]s for its handlers and [`WorkerInfo`] snapshots.

use std::os::fd::OwnedFd;

#[cfg(doc)]
use super::Primary;
use super::Settings;
use crate::cluster::{ExitStatus, WorkerState};
use crate::ipc::Endpoint;

/// Something that happened in the cluster. Handlers get `&mut Event` so they can take the
/// descriptors out of a [`Event::Message`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// Settings were applied (once per [`Primary::setup`] call, and once per fork, as Node).
    Setup(Settings),
    /// A worker was spawned.
    Fork {
        /// The worker.
        worker: u32,
    },
    /// A worker said "online".
    Online {
        /// The worker.
        worker: u32,
    },
    /// One of a worker's servers is listening.
    Listening {
        /// The worker.
        worker: u32,
        /// Where (the real bound address).
        address: Endpoint,
    },
    /// A worker reported it is ready for traffic.
    Ready {
        /// The worker.
        worker: u32,
    },
    /// A user message from a worker.
    Message {
        /// The sender.
        worker: u32,
        /// The bytes.
        data: Vec<u8>,
        /// Descriptors that came with it.
        fds: Vec<OwnedFd>,
    },
    /// A worker's channel closed.
    Disconnect {
        /// The worker.
        worker: u32,
    },
    /// A worker's process ended (always after its `Disconnect`).
    Exit {
        /// The worker.
        worker: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A worker answered a heartbeat.
    Pong {
        /// The worker.
        worker: u32,
        /// The heartbeat's number.
        seq: u64,
        /// The worker's event-loop lag, in microseconds.
        lag_us: u64,
    },
    /// A worker hit a fatal error, stopped accepting and asks to be replaced.
    GoingDown {
        /// The worker.
        worker: u32,
        /// Why.
        reason: String,
    },
    /// A worker's listen request failed in the primary (the worker hears the error too).
    ListenFailed {
        /// The worker.
        worker: u32,
        /// The address it asked for.
        address: Endpoint,
        /// Why it failed (binding the address).
        error: std::io::Error,
    },
    /// A worker misbehaved (malformed or unexpected message); its channel was closed.
    Error {
        /// The worker.
        worker: u32,
        /// What went wrong.
        reason: String,
    },
}

impl Event {
    /// A [`Event::Message`]'s bytes read as JSON into `T`; `None` for other events.
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
            Event::Message { data, .. } => Some(crate::error::from_json(data)),
            _ => None,
        }
    }

    /// The worker this event is about, if any.
    pub fn worker(&self) -> Option<u32> {
        match *self {
            Event::Setup(_) => None,
            Event::Fork { worker }
            | Event::Online { worker }
            | Event::Listening { worker, .. }
            | Event::Ready { worker }
            | Event::Message { worker, .. }
            | Event::Disconnect { worker }
            | Event::Exit { worker, .. }
            | Event::Pong { worker, .. }
            | Event::GoingDown { worker, .. }
            | Event::ListenFailed { worker, .. }
            | Event::Error { worker, .. } => Some(worker),
        }
    }
}

/// A read-only view of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Its id (from 1).
    pub id: u32,
    /// Its process id.
    pub pid: u32,
    /// Where it is in its life.
    pub state: WorkerState,
    /// Whether its channel is still open (false from the moment it closes).
    pub connected: bool,
    /// `None` until it disconnects or exits; then whether it left on purpose (the primary
    /// called [`Primary::disconnect_worker`], or the worker disconnected or killed itself).
    pub exited_after_disconnect: Option<bool>,
    /// How it ended, once it has.
    pub exit: Option<ExitStatus>,
}

impl WorkerInfo {
    /// Whether the process has exited.
    pub fn is_dead(&self) -> bool {
        self.exit.is_some()
    }

    /// Whether the channel is open.
    pub fn is_connected(&self) -> bool {
        self.connected
    }
}
