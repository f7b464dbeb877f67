//! Roles and the shared vocabulary of the primary and its workers.
//!
//! A worker is a process the primary spawned (exec of a program, never a bare `fork()` of
//! a running one) with four environment variables: [`WORKER_ID_ENV`] (its id, from 1),
//! [`CHANNEL_FD_ENV`] (the descriptor number of its end of the channel),
//! [`PRIMARY_PID_ENV`] (the primary's pid) and [`CHANNEL_LIMITS_ENV`] (the frame limits
//! the primary enforces on the channel). [`role`] reads them once per process and takes
//! ownership of the descriptor (made close-on-exec again, so the worker's own children
//! never inherit it); in a worker it writes the `Online` message at once, so the primary
//! hears "online" before any user code runs.
//!
//! The environment is never edited. A worker's own children inherit the variables, but
//! their parent is the worker, not the pid in [`PRIMARY_PID_ENV`], so they are primaries.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use crate::ipc::frame::{Header, Kind, Limits};

/// Environment variable holding a worker's id.
pub const WORKER_ID_ENV: &str = "FORKLOOP_WORKER_ID";
/// Environment variable holding the descriptor number of a worker's channel.
pub const CHANNEL_FD_ENV: &str = "FORKLOOP_CHANNEL_FD";
/// Environment variable holding the pid of the primary that spawned the worker. The
/// worker variables count only in a process whose parent has this pid.
pub const PRIMARY_PID_ENV: &str = "FORKLOOP_PRIMARY_PID";
/// Environment variable holding the channel's frame limits as `MAX_PAYLOAD,MAX_FDS`, so
/// that a worker refuses to send (with a `SendError`) what its primary would refuse to
/// read. Absent: the defaults.
pub const CHANNEL_LIMITS_ENV: &str = "FORKLOOP_CHANNEL_LIMITS";

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
static LIMITS: OnceLock<Limits> = OnceLock::new();

/// This process's role. The first call decides (and, in a worker, says "online"); it is
/// safe to call from any thread, any number of times.
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
    let primary = std::env::var_os(PRIMARY_PID_ENV).ok_or_else(|| {
        bad(format!(
            "{WORKER_ID_ENV} is set but {PRIMARY_PID_ENV} is not"
        ))
    })?;
    let primary: u32 = primary
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("{PRIMARY_PID_ENV}={primary:?} is not a pid")))?;
    if primary != std::os::unix::process::parent_id() {
        // Inherited from an ancestor: a worker's child, not a worker.
        return Ok(Role::Primary);
    }
    let id: u32 = id
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| bad(format!("{WORKER_ID_ENV}={id:?} is not a worker id")))?;
    let limits = match std::env::var(CHANNEL_LIMITS_ENV) {
        Ok(v) => limits_from_env(&v).ok_or_else(|| {
            bad(format!(
                "{CHANNEL_LIMITS_ENV}={v:?} is not MAX_PAYLOAD,MAX_FDS"
            ))
        })?,
        Err(_) => Limits::default(),
    };
    // SAFETY: `detect` runs at most once per process (behind `ROLE`), and the parent check
    // above shows the variable was set by the primary that spawned this very process and
    // passed it the descriptor: nothing else in the process owns it.
    let fd =
        unsafe { crate::sys::process::take_inherited_fd(CHANNEL_FD_ENV) }?.ok_or_else(|| {
            bad(format!(
                "{WORKER_ID_ENV} is set but {CHANNEL_FD_ENV} is not"
            ))
        })?;
    say_online(&fd)?;
    let _ = LIMITS.set(limits);
    if let Ok(mut slot) = CHANNEL.lock() {
        *slot = Some(fd);
    }
    Ok(Role::Worker(id))
}

/// The frame limits of this worker's channel, as its primary set them (the defaults in a
/// primary).
pub(crate) fn channel_limits() -> Limits {
    LIMITS.get().copied().unwrap_or_default()
}

/// `limits` as [`CHANNEL_LIMITS_ENV`] carries them.
pub(crate) fn limits_to_env(limits: Limits) -> String {
    format!("{},{}", limits.max_payload, limits.max_fds)
}

fn limits_from_env(v: &str) -> Option<Limits> {
    let (payload, fds) = v.split_once(',')?;
    let limits = Limits {
        max_payload: payload.parse().ok()?,
        max_fds: fds.parse().ok()?,
    };
    limits.validate().ok()?;
    Some(limits)
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

/// This process's side of the cluster, from [`start`]: the primary's handle, or the
/// worker's.
#[derive(Debug)]
pub enum Side {
    /// Not started by a forkloop primary: this process is the primary.
    Primary(crate::primary::Primary),
    /// A worker, attached to its channel.
    Worker(crate::worker::Worker),
}

/// The one entry point: in the primary, a [`Primary`](crate::primary::Primary) on `lp`
/// (policy and limits from [`PrimaryOptions`](crate::primary::PrimaryOptions)'s
/// defaults); in a worker, its [`Worker`](crate::worker::Worker), attached to `lp`.
///
/// # Errors
///
/// The worker environment is broken ([`crate::Error::Config`]), the worker's channel was
/// attached already, or the primary or the channel cannot be set up.
pub fn start(lp: &mut crate::rt::EventLoop) -> crate::Result<Side> {
    start_with(lp, crate::primary::PrimaryOptions::default())
}

/// As [`start`], with the primary's options (a worker ignores them: its channel limits
/// come from its primary).
///
/// # Errors
///
/// As [`start`].
pub fn start_with(
    lp: &mut crate::rt::EventLoop,
    opts: crate::primary::PrimaryOptions,
) -> crate::Result<Side> {
    match try_role()? {
        Role::Primary => Ok(Side::Primary(crate::primary::Primary::with_options(
            lp, opts,
        )?)),
        Role::Worker(id) => crate::worker::Worker::attach(lp)?
            .map(Side::Worker)
            .ok_or_else(|| {
                crate::Error::Config(format!("worker {id}: its channel was attached already"))
            }),
    }
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

/// How much one [`drain_channel`] reads.
pub(crate) enum ReadLimit {
    /// At most [`READ_BUDGET`](crate::ipc::READ_BUDGET) bytes; if more is waiting, the job
    /// runs on the next loop turn (one queued at a time per channel) to read on.
    Budget(Box<dyn FnOnce(&mut crate::rt::EventLoop)>),
    /// Everything, to `WouldBlock` (a channel whose peer is gone, read one last time).
    All,
}

/// Answers a readiness event on the loop-registered channel `io`: writes what is queued,
/// then reads whole messages, up to `limit`. Returns the messages and, if the channel is
/// finished, how. A malformed message closes the channel; it is logged as coming from
/// `peer`.
pub(crate) fn drain_channel(
    lp: &mut crate::rt::EventLoop,
    io: crate::rt::IoId,
    peer: &dyn std::fmt::Display,
    limit: ReadLimit,
) -> (Received, Option<Ended>) {
    let (msgs, closed, _) = drain_channel_within(lp, io, peer, limit, usize::MAX);
    (msgs, closed)
}

/// [`drain_channel`], but it also stops reading once the messages read carry `max_fds`
/// descriptors or more (it reads at least one message): every descriptor read is one
/// more open in this process until the messages are handled. Also returns whether it
/// stopped for that; the caller must then drain again itself once it has handled them
/// (the channel's readiness is edge-triggered: what is left raises no new event).
pub(crate) fn drain_channel_within(
    lp: &mut crate::rt::EventLoop,
    io: crate::rt::IoId,
    peer: &dyn std::fmt::Display,
    limit: ReadLimit,
    max_fds: usize,
) -> (Received, Option<Ended>, bool) {
    use crate::ipc::{Channel, READ_BUDGET, Recv};
    let mut msgs = Vec::new();
    let mut closed = None;
    let mut yielded = false;
    let mut at_fd_limit = false;
    let mut fds_read = 0;
    if let Err(e) = flush_channel(lp, io) {
        closed = Some(Ended::Failed(format!("write failed: {e}")));
    }
    let budgeted = matches!(limit, ReadLimit::Budget(_));
    if let Some(ch) = lp.io_mut::<Channel>(io)
        // A readable event while the channel's return is queued: that return reads.
        && !(budgeted && ch.resume_queued)
    {
        let start = ch.received_bytes();
        let read_size = ch.config().read_size as u64;
        while closed.is_none() {
            if fds_read >= max_fds {
                at_fd_limit = true;
                break;
            }
            // Stop where another read could take the wake-up past its budget.
            let spent = ch.received_bytes() - start;
            if budgeted && spent > 0 && spent + read_size > READ_BUDGET as u64 && ch.needs_read() {
                ch.resume_queued = true;
                yielded = true;
                break;
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
    if let (true, ReadLimit::Budget(resume)) = (yielded, limit) {
        lp.queue_next_turn(move |lp| {
            if let Some(ch) = lp.io_mut::<Channel>(io) {
                ch.resume_queued = false;
                resume(lp);
            }
        });
    }
    (msgs, closed, at_fd_limit)
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
    #[cfg(feature = "node")]
    let fds = match crate::primary::node::try_send(
        lp,
        io,
        crate::primary::node::Outgoing::User(data),
        fds,
    ) {
        Ok(sent) => return sent,
        Err(fds) => fds,
    };
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
    #[cfg(feature = "node")]
    let fds = match crate::primary::node::try_send(
        lp,
        io,
        crate::primary::node::Outgoing::Message(msg),
        fds,
    ) {
        Ok(sent) => return sent,
        Err(fds) => fds,
    };
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
pub(crate) fn with_channel<F>(
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

/// Writes what is queued on the loop-registered channel `io`, as [`send_frame`] does after
/// queueing.
///
/// # Errors
///
/// The channel is closed or failed, as a `Closed` [`SendError`](crate::ipc::SendError).
pub(crate) fn flushed(
    lp: &mut crate::rt::EventLoop,
    io: Option<crate::rt::IoId>,
) -> Result<(), crate::ipc::SendError> {
    use crate::ipc::{SendError, SendErrorKind};
    match io.map(|io| flush_channel(lp, io)) {
        Some(Ok(())) => Ok(()),
        _ => Err(SendError::new(SendErrorKind::Closed, Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::ipc::frame::HEADER_LEN;
    use crate::ipc::{Channel, ChannelConfig, Flush, Message, READ_BUDGET};
    use crate::rt::{EventLoop, Interest, IoId, RunMode};

    /// Messages read per loop turn.
    type Turns = Rc<RefCell<Vec<Vec<u8>>>>;

    fn read(lp: &mut EventLoop, io: IoId, got: Turns) {
        let again = got.clone();
        let resume = Box::new(move |lp: &mut EventLoop| read(lp, io, again));
        let (msgs, ended) = drain_channel(lp, io, &"test peer", ReadLimit::Budget(resume));
        assert!(ended.is_none());
        let mut turns = got.borrow_mut();
        let Some(turn) = turns.last_mut() else {
            return;
        };
        for (m, _) in msgs {
            let Message::User(data) = m else {
                panic!("unexpected {m:?}");
            };
            turn.push(data[0]);
        }
    }

    #[test]
    fn a_channel_is_read_one_budget_per_turn_and_resumes_by_itself() {
        let (mut tx, rx) = Channel::pair(ChannelConfig::default()).unwrap();
        // Fill the socket: far more than one budget waits in the kernel.
        let mut sent = 0usize;
        loop {
            let m = Message::User(vec![(sent % 251) as u8; 16]);
            tx.send_msg(&m, Vec::new()).unwrap();
            sent += 1;
            if sent.is_multiple_of(64) && tx.flush().unwrap() == Flush::Pending {
                break;
            }
        }
        let in_socket = sent - tx.queued_bytes() / (HEADER_LEN + 16);
        assert!(
            in_socket * (HEADER_LEN + 16) > 2 * READ_BUDGET,
            "{in_socket}"
        );
        let mut lp = EventLoop::new().unwrap();
        let got: Turns = Rc::default();
        let g = got.clone();
        let io = lp
            .register(rx, Interest::READABLE, move |lp, io, _| {
                read(lp, io, g.clone())
            })
            .unwrap();
        let mut turns = 0;
        while got.borrow().iter().map(Vec::len).sum::<usize>() < in_socket {
            got.borrow_mut().push(Vec::new());
            lp.run_mode(RunMode::NoWait).unwrap();
            turns += 1;
            assert!(turns < 1000, "the reader did not come back by itself");
        }
        lp.close(io, |_| {});
        let turns = got.borrow();
        let most = turns.iter().map(Vec::len).max().unwrap_or(0);
        assert!(
            most <= READ_BUDGET / (HEADER_LEN + 16) + 1,
            "{most} messages in one turn"
        );
        assert!(turns.len() >= 3, "read in {} turns", turns.len());
        let all: Vec<u8> = turns.iter().flatten().copied().collect();
        let want: Vec<u8> = (0..in_socket).map(|i| (i % 251) as u8).collect();
        assert_eq!(all, want, "every message, in order");
    }
}
