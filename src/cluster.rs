//! Roles and the shared vocabulary of the primary and its workers.
//!
//! A worker is a process the primary spawned (exec of a program, never a bare `fork()` of
//! a running one) with two environment variables: [`WORKER_ID_ENV`] (its id, from 1) and
//! [`CHANNEL_FD_ENV`] (the descriptor number of its end of the channel). [`role`] reads
//! both, removes them from the environment, takes ownership of the descriptor (made
//! close-on-exec again, so the worker's own children never inherit it) and, in a worker,
//! writes the `Online` message at once: the primary hears "online" before any user code
//! runs.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use crate::ipc::frame::{Header, Kind};

/// Environment variable holding a worker's id.
pub const WORKER_ID_ENV: &str = "FORKLOOP_WORKER_ID";
/// Environment variable holding the descriptor number of a worker's channel.
pub const CHANNEL_FD_ENV: &str = "FORKLOOP_CHANNEL_FD";

/// Which side of a cluster this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not started by a forkloop primary.
    Primary,
    /// A worker, with its id (ids start at 1 and grow).
    Worker(u32),
}

impl Role {
    /// Whether this is the primary.
    pub fn is_primary(self) -> bool {
        self == Role::Primary
    }
}

static ROLE: OnceLock<Result<Role, String>> = OnceLock::new();
static CHANNEL: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// This process's role. The first call decides (and, in a worker, says "online").
///
/// Call it early in `main`, before other threads start: it edits the environment.
///
/// # Errors
///
/// The worker variables are present but unusable (no channel, not a number, a descriptor
/// that is not a socket): such a process must not carry on as a primary.
pub fn try_role() -> crate::Result<Role> {
    ROLE.get_or_init(|| detect().map_err(|e| e.to_string()))
        .clone()
        .map_err(crate::Error::Config)
}

/// This process's role; see [`try_role`]. A process whose worker variables are broken
/// prints why and exits with status 1 rather than carrying on as a second primary.
pub fn role() -> Role {
    match try_role() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("forkloop: {e}");
            std::process::exit(1)
        }
    }
}

fn detect() -> io::Result<Role> {
    let Some(id) = std::env::var_os(WORKER_ID_ENV) else {
        return Ok(Role::Primary);
    };
    // SAFETY: documented precondition of `role`: called before other threads exist.
    unsafe { std::env::remove_var(WORKER_ID_ENV) };
    let id: u32 = id
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| bad(format!("{WORKER_ID_ENV}={id:?} is not a worker id")))?;
    let fd = crate::sys::process::take_inherited_fd(CHANNEL_FD_ENV)?.ok_or_else(|| {
        bad(format!(
            "{WORKER_ID_ENV} is set but {CHANNEL_FD_ENV} is not"
        ))
    })?;
    say_online(&fd)?;
    if let Ok(mut slot) = CHANNEL.lock() {
        *slot = Some(fd);
    }
    Ok(Role::Worker(id))
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Writes the `Online` frame on the fresh channel (8 bytes on an empty socket: it fits).
fn say_online(fd: &OwnedFd) -> io::Result<()> {
    let header = Header {
        kind: Kind::Online,
        flags: 0,
        fds: 0,
        len: 0,
    }
    .to_bytes();
    let no_fds: [OwnedFd; 0] = [];
    let n = crate::sys::scm::send_with_fds(fd.as_fd(), &[IoSlice::new(&header)], &no_fds)?;
    if n != header.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write of online",
        ));
    }
    Ok(())
}

/// Takes the worker's channel descriptor (once), for a program that speaks the protocol
/// itself instead of using [`crate::worker::Worker::attach`]. `None` in the primary or if
/// taken already.
pub fn take_channel() -> Option<OwnedFd> {
    let _ = try_role();
    CHANNEL.lock().ok().and_then(|mut slot| slot.take())
}

/// How a worker process ended: exactly one of `code` and `signal` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(s: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus {
            code: s.code(),
            signal: s.signal(),
        }
    }
}

/// A worker's life as the primary sees it (Node's `worker.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawned; not yet online.
    None,
    /// Said "online".
    Online,
    /// One of its servers listens.
    Listening,
    /// Its channel closed.
    Disconnected,
    /// The process exited. Unlike Node, a later channel close does not turn `Dead` back
    /// into `Disconnected`.
    Dead,
}

/// Flushes a channel registered on `lp` and keeps its interest in step: readable only
/// while nothing waits to be written (so a peer's reads do not wake this loop as
/// "writable"), readable and writable while a flush is pending.
///
/// # Errors
///
/// The channel failed (it is then closed; its readable event reports the disconnect), or
/// `io` is not a channel.
pub(crate) fn flush_channel(
    lp: &mut crate::rt::EventLoop,
    io: crate::rt::IoId,
) -> Result<(), crate::ipc::ChannelError> {
    use crate::ipc::{Channel, ChannelError, Flush};
    use crate::rt::Interest;
    let Some(ch) = lp.io_mut::<Channel>(io) else {
        return Err(ChannelError::Closed);
    };
    let want = match ch.flush()? {
        Flush::Done => Interest::READABLE,
        Flush::Pending => Interest::READABLE | Interest::WRITABLE,
    };
    if lp.interest(io) != Some(want) {
        lp.set_interest(io, Some(want))?;
    }
    Ok(())
}

/// Messages read from a channel in one go, with their descriptors.
pub(crate) type Received = Vec<(crate::ipc::Message, Vec<std::os::fd::OwnedFd>)>;

/// How a channel finished.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The peer closed it cleanly.
    Eof,
    /// It failed (or carried a malformed message), for this reason.
    Failed(String),
}

/// Answers a readiness event on the loop-registered channel `io`: writes what is queued,
/// then reads every whole message. Returns the messages and, if the channel is finished,
/// how. A malformed message closes the channel; it is logged as coming from `peer`.
pub(crate) fn drain_channel(
    lp: &mut crate::rt::EventLoop,
    io: crate::rt::IoId,
    peer: &dyn std::fmt::Display,
) -> (Received, Option<Ended>) {
    let (msgs, closed, _) = drain_channel_within(lp, io, peer, usize::MAX);
    (msgs, closed)
}

/// [`drain_channel`], but it stops reading once the messages read carry `max_fds`
/// descriptors or more (it reads at least one message): every descriptor read is one
/// more open in this process until the messages are handled. Also returns whether it
/// stopped for that; the caller must then drain again itself once it has handled them
/// (the channel's readiness is edge-triggered: what is left raises no new event).
pub(crate) fn drain_channel_within(
    lp: &mut crate::rt::EventLoop,
    io: crate::rt::IoId,
    peer: &dyn std::fmt::Display,
    max_fds: usize,
) -> (Received, Option<Ended>, bool) {
    use crate::ipc::{Channel, Recv};
    let mut msgs = Vec::new();
    let mut closed = None;
    let mut fds_read = 0;
    if let Err(e) = flush_channel(lp, io) {
        closed = Some(Ended::Failed(format!("write failed: {e}")));
    }
    if let Some(ch) = lp.io_mut::<Channel>(io) {
        while closed.is_none() {
            if fds_read >= max_fds {
                return (msgs, closed, true);
            }
            match ch.recv() {
                Ok(Recv::Frame(f)) => match f.into_message_with_loss() {
                    Ok((m, fds, lost)) => {
                        if lost > 0 {
                            log_lost(peer, &m, fds.len(), lost);
                        }
                        fds_read += fds.len() + lost;
                        msgs.push((m, fds));
                    }
                    Err(e) => {
                        log::warn!("closing the channel to {peer}: bad message: {e}");
                        ch.close();
                        closed = Some(Ended::Failed(format!("bad message: {e}")));
                    }
                },
                Ok(Recv::WouldBlock) => break,
                Ok(Recv::Eof) => closed = Some(Ended::Eof),
                Err(e) => closed = Some(Ended::Failed(e.to_string())),
            }
        }
    }
    (msgs, closed, false)
}

/// Says which descriptors of message `m` from `peer` were lost to a full descriptor table
/// (`got` arrived, the `lost` after them did not; see [`InFrame::lost_fds`]).
///
/// [`InFrame::lost_fds`]: crate::ipc::InFrame::lost_fds
fn log_lost(peer: &dyn std::fmt::Display, m: &crate::ipc::Message, got: usize, lost: usize) {
    use crate::ipc::Message;
    match m {
        Message::NewConn { key, seq, .. } => {
            let first = seq.wrapping_add(got as u64);
            let last = first.wrapping_add(lost as u64 - 1);
            log::warn!(
                "NewConn from {peer} for listener {key}: connections {first}..={last} lost \
                 (descriptor table full; {got} of its {} arrived and are served)",
                got + lost
            );
        }
        other => log::warn!(
            "{:?} message from {peer}: {lost} of its {} descriptor(s) lost (descriptor \
             table full)",
            other.kind(),
            got + lost
        ),
    }
}

/// Queues a frame on the loop-registered channel `io` and writes it at once (see
/// [`flush_channel`]).
///
/// # Errors
///
/// No channel ([`SendErrorKind::Closed`](crate::ipc::SendErrorKind), the descriptors come
/// back), a refused frame, or a write that failed (the channel is then closed).
pub(crate) fn send_frame(
    lp: &mut crate::rt::EventLoop,
    io: Option<crate::rt::IoId>,
    kind: crate::ipc::Kind,
    data: &[u8],
    fds: Vec<crate::ipc::SendFd>,
) -> Result<(), crate::ipc::SendError> {
    with_channel(lp, io, fds, |ch, fds| ch.send_with_fds(kind, data, fds))?;
    flushed(lp, io)
}

/// Queues a typed message on the loop-registered channel `io` and writes it at once.
///
/// # Errors
///
/// As [`send_frame`].
pub(crate) fn send_message(
    lp: &mut crate::rt::EventLoop,
    io: Option<crate::rt::IoId>,
    msg: &crate::ipc::Message,
    fds: Vec<crate::ipc::SendFd>,
) -> Result<(), crate::ipc::SendError> {
    queue_message(lp, io, msg, fds)?;
    flushed(lp, io)
}

/// Queues a typed message on the loop-registered channel `io` without writing it: the
/// caller flushes later (see [`flush_channel`]), so that replies produced together leave
/// in one `sendmsg` and wake the peer once.
///
/// # Errors
///
/// As [`send_frame`], except that nothing is written yet.
pub(crate) fn queue_message(
    lp: &mut crate::rt::EventLoop,
    io: Option<crate::rt::IoId>,
    msg: &crate::ipc::Message,
    fds: Vec<crate::ipc::SendFd>,
) -> Result<(), crate::ipc::SendError> {
    with_channel(lp, io, fds, |ch, fds| ch.send_msg(msg, fds))
}

/// Runs `queue` on the loop-registered channel `io`, or gives `fds` back in a `Closed`
/// error if there is none.
fn with_channel<F>(
    lp: &mut crate::rt::EventLoop,
    io: Option<crate::rt::IoId>,
    fds: Vec<crate::ipc::SendFd>,
    queue: F,
) -> Result<(), crate::ipc::SendError>
where
    F: FnOnce(
        &mut crate::ipc::Channel,
        Vec<crate::ipc::SendFd>,
    ) -> Result<(), crate::ipc::SendError>,
{
    use crate::ipc::{Channel, SendError, SendErrorKind};
    match io.and_then(|io| lp.io_mut::<Channel>(io)) {
        Some(ch) => queue(ch, fds),
        None => Err(SendError::new(SendErrorKind::Closed, fds)),
    }
}

fn flushed(
    lp: &mut crate::rt::EventLoop,
    io: Option<crate::rt::IoId>,
) -> Result<(), crate::ipc::SendError> {
    use crate::ipc::{SendError, SendErrorKind};
    match io.map(|io| flush_channel(lp, io)) {
        Some(Ok(())) => Ok(()),
        _ => Err(SendError::new(SendErrorKind::Closed, Vec::new())),
    }
}
