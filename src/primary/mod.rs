//! The primary: forks workers, keeps the worker table, routes messages, reaps exits.
//!
//! The primary is an ordinary [`EventLoop`] with cluster handles registered on it: one
//! [`Channel`] per worker, a `SIGCHLD` listener, and (in `silent` mode) the workers' output
//! pipes. [`Primary`] is a cheap handle (clone it into callbacks) over the cluster state.
//!
//! # Events
//!
//! Handlers added with [`Primary::on`] (cluster-wide) and [`Primary::on_worker`] (one
//! worker) receive every [`Event`]; for each event the worker's handlers run first, then
//! the cluster's, as in Node. Order for one worker:
//! `Setup` → `Fork` → `Online` → `Listening`… → `Disconnect` → `Exit`.
//!
//! Differences from Node, on purpose:
//!
//! * `Disconnect` always comes before `Exit`: when the exit is seen first, whatever the
//!   worker wrote before dying is read, then the channel is closed and `Disconnect` emitted.
//!   The state is `Disconnected` at `Disconnect` and `Dead` from `Exit` on; it never goes
//!   back from `Dead` (Node's can).
//! * [`Primary::disconnect`]'s callback runs once **all** the workers it disconnected have
//!   disconnected and exited (Node runs it after the first).
//! * A malformed or unexpected message from a worker closes that worker's channel, logs
//!   the reason and emits [`Event::Error`]; the primary and the other workers carry on.
//! * Workers can message each other ([`crate::worker::Worker::relay`]); the primary stamps
//!   the sender's id, so a worker cannot pretend to be another.
//! * The primary yields the CPU to its workers ([`PrimaryOptions::yield_to_workers`], on
//!   by default on Linux): its loop's thread is in the batch scheduling class, so a new
//!   connection waking it does not preempt a busy worker.
//! * Dropping the last [`Primary`] handle kills (`SIGKILL`) and reaps every worker still
//!   alive, so a primary that unwinds leaves no orphans or zombies behind.
//!
//! # The life of a connection (round-robin)
//!
//! 1. A worker's `listen` arrives as a listen request; `Primary::query_server`
//!    (`listen.rs`) asks the balancer (`Balancer::query`, `balance.rs`) for the shared
//!    listener of that address, binding it on first use.
//! 2. The listener becomes readable: `Primary::on_listener` → `Primary::accept`, which
//!    takes the room every worker has (`Balancer::rooms`: its credit less what it holds
//!    unread, as its channel reports and `Primary::look_at_unread` checks), accepts that
//!    many (`Primary::next_conn`), and shares them out in turn (`Balancer::share`).
//! 3. `Primary::dispatch` sends each worker's share as `NewConn` messages, consecutive
//!    connections in one message with their descriptors (`Balancer::hand_off` counts
//!    them in flight).
//! 4. In the worker, `Worker::on_new_conn` (`worker/listen.rs`) gives each descriptor to
//!    its `Server` (`Server::adopt`), whose connection callback gets it; one it cannot
//!    take goes back in `Rejected` (`Balancer::rejected` queues it for another worker).
//! 5. The worker reports its credit (`Credit`, bounded by its descriptor headroom:
//!    `worker::fds`); `Balancer::credit` records it and `Primary::pump` accepts again
//!    for listeners that had paused for want of room.
//!
//! Under `none` the listener's descriptor goes to the workers in step 1 and they accept
//! themselves; under `reuseport` each worker binds its own socket.
//!
//! # Implementation notes
//!
//! | | Linux | macOS / BSD |
//! |---|---|---|
//! | child exit | `SIGCHLD` on the loop, then `waitpid` for each worker | the same |
//! | descriptor passing | `SCM_RIGHTS`, received with `MSG_CMSG_CLOEXEC` | `SCM_RIGHTS`, close-on-exec set right after |
//! | workers outliving the primary | `PR_SET_PDEATHSIG(SIGKILL)` plus the worker's watchdog thread | the watchdog thread (channel hang-up, parent change) |
//! | reuseport policy | `SO_REUSEPORT` groups | falls back to round-robin with a warning |
//! | yielding to workers | the loop's thread in `SCHED_BATCH`, workers reset to `SCHED_OTHER` between `fork` and `exec` | nothing (no such class) |
//!
//! Spawn workers from the loop's thread: Linux sends the parent-death signal when the
//! *thread* that spawned a child exits, not only the process.

mod balance;
mod events;
mod fds;
mod listen;
mod messages;
#[cfg(feature = "node")]
pub(crate) mod node;
mod settings;
mod stdio;
pub mod supervise;
pub mod systemd;
pub mod window;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

pub use balance::{
    DEFAULT_BACKLOG, DEFAULT_CREDIT, DEFAULT_MAX_LISTENERS_PER_WORKER, HAND_OFF_BATCH,
    LISTENER_CAP_ERRNO, POLICY_ENV, ParsePolicyError, Policy,
};
pub use events::{Event, WorkerInfo};
pub use settings::{Output, Protocol, Settings};
pub use window::{ACCEPT_WINDOW_HOLD_OFF_MS, ACCEPT_WINDOW_MIN_BATCH, ACCEPT_WINDOW_SHORTEST};

use balance::Balancer;
use listen::close_handle;
use window::window_len;

use crate::cluster::{
    CHANNEL_FD_ENV, CHANNEL_LIMITS_ENV, ExitStatus, PRIMARY_PID_ENV, WORKER_ID_ENV, WorkerState,
};
use crate::ipc::{Channel, ChannelConfig, FdLedger, Kind, Message, SendError, SendFd};
use crate::rt::{EventLoop, Interest, IoId, SignalId};
use crate::sys::BatchScheduling;

/// How a primary is set up (besides [`Settings`], which say how workers are spawned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryOptions {
    /// How listening endpoints are shared; `None` reads [`POLICY_ENV`]
    /// (`FORKLOOP_SCHED_POLICY=rr|none|reuseport`), and round-robin if it is unset.
    pub policy: Option<Policy>,
    /// Round-robin: hand-offs a worker may hold unread (default [`DEFAULT_CREDIT`]).
    ///
    /// While every worker is at its credit the primary stops accepting, and the next
    /// round takes what queued meanwhile in one batch: a small credit saves the primary
    /// wake-ups under a stream of short connections. But a burst of new connections larger
    /// than `workers × credit` (a keep-alive client opening all of its connections at
    /// once) is shared in turn only among the workers that keep up with it: the one that
    /// reads its hand-offs first gets the rest, and keep-alive connections stay where
    /// they land. A credit of at least the burst divided by the workers shares it
    /// evenly.
    pub credit: u32,
    /// Round-robin: accept windows (default `None`: off). Under a heavy stream of new
    /// connections the primary then accepts once per window instead of waking for each
    /// connection — far less CPU, at the price of up to this much wait in the accept
    /// queue; see [`window`] for when windows open and close. At least
    /// [`ACCEPT_WINDOW_SHORTEST`]; zero means off.
    pub accept_window: Option<Duration>,
    /// Let workers run first (default `true`): the thread running the primary's loop
    /// enters the batch scheduling class (Linux `SCHED_BATCH`; nothing changes on systems
    /// without it, or when the thread is not in the normal class). Its share of CPU stays
    /// the same, but when a connection or a worker's message wakes it, it no longer
    /// preempts a busy worker: it runs on an idle CPU at once, or when the running task's
    /// slice ends, and then accepts every connection that arrived meanwhile in one go.
    /// On a loaded machine that halves the primary's wake-ups and its workers'
    /// preemptions; on an idle one nothing waits. Workers start in the normal class. The
    /// thread returns to the normal class when the primary is dropped.
    pub yield_to_workers: bool,
    /// Limits of every worker channel.
    pub channel: ChannelConfig,
    /// Most listeners one worker may hold in the primary (default
    /// [`DEFAULT_MAX_LISTENERS_PER_WORKER`], at least 1): each is a socket the primary
    /// binds (and, round-robin, a second descriptor it accepts on), so a worker listening
    /// in a loop could otherwise use up the primary's descriptors and starve everyone.
    /// Listening again on an endpoint the worker already holds does not count; one it
    /// closes frees its place. A request beyond the cap fails in the worker with
    /// [`io::ErrorKind::QuotaExceeded`] (error number [`LISTENER_CAP_ERRNO`]), and the
    /// primary logs the first refusal per worker.
    pub max_listeners_per_worker: u32,
}

impl Default for PrimaryOptions {
    fn default() -> Self {
        PrimaryOptions {
            policy: None,
            credit: DEFAULT_CREDIT,
            accept_window: None,
            yield_to_workers: true,
            channel: ChannelConfig::default(),
            max_listeners_per_worker: DEFAULT_MAX_LISTENERS_PER_WORKER,
        }
    }
}

type Handler = Box<dyn FnMut(&mut EventLoop, &Primary, &mut Event)>;
type DoneCb = Box<dyn FnOnce(&mut EventLoop, &Primary)>;

struct Entry {
    info: WorkerInfo,
    child: Option<Child>,
    channel: Option<IoId>,
    /// A duplicate of the worker's end of its channel, kept until the worker is gone: the
    /// connections it has not read stay in the socket, not closed by the kernel, and are
    /// read back and handed to others if it dies (see [`crate::ipc::ledger`]).
    peer_end: Option<OwnedFd>,
    /// The channel's ledger once the channel closed while the process still ran: what the
    /// worker never read is read back when it exits.
    ledger: Option<FdLedger>,
    /// In Node's `cluster.workers`: until the primary disconnects it, or it has both
    /// disconnected and exited.
    listed: bool,
    /// What it speaks.
    protocol: Protocol,
    /// The latest counters of its HTTP servers, if it reported any.
    http: Option<crate::ipc::HttpReport>,
}

struct Inner {
    settings: Settings,
    next_id: u32,
    workers: BTreeMap<u32, Entry>,
    sigchld: Option<SignalId>,
    waiters: Vec<(BTreeSet<u32>, Option<DoneCb>)>,
    config: ChannelConfig,
    /// Most connections per `NewConn` message ([`HAND_OFF_BATCH`], within the channel's
    /// descriptor limit).
    batch: u32,
    bal: Balancer,
    /// Held while the loop's thread is in the batch class (see
    /// [`PrimaryOptions::yield_to_workers`]).
    sched: Option<BatchScheduling>,
    /// Listening sockets every [`Protocol::Fds`] worker inherits, with their names.
    passed: Vec<(OwnedFd, String)>,
}

#[derive(Default)]
struct Hooks {
    cluster: crate::hooks::Hooks<Handler>,
    workers: RefCell<crate::rt::id::IdMap<u32, Rc<crate::hooks::Hooks<Handler>>>>,
}

/// The primary's cluster state; clone the handle freely (it is an `Rc`).
#[derive(Clone)]
pub struct Primary {
    inner: Rc<RefCell<Inner>>,
    hooks: Rc<Hooks>,
}

impl fmt::Debug for Primary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("Primary")
            .field("workers", &inner.workers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Primary {
    /// A primary on `lp` with default options (the policy from [`POLICY_ENV`]).
    ///
    /// # Errors
    ///
    /// [`POLICY_ENV`] holds an unknown policy (`InvalidInput`, naming the accepted values),
    /// or the `SIGCHLD` listener cannot be installed.
    pub fn new(lp: &mut EventLoop) -> io::Result<Primary> {
        Primary::with_options(lp, PrimaryOptions::default())
    }

    /// A primary whose worker channels use `config` (other options default).
    ///
    /// # Errors
    ///
    /// As [`Primary::with_options`].
    pub fn with_channel_config(lp: &mut EventLoop, config: ChannelConfig) -> io::Result<Primary> {
        Primary::with_options(
            lp,
            PrimaryOptions {
                channel: config,
                ..PrimaryOptions::default()
            },
        )
    }

    /// A primary with the given options.
    ///
    /// # Errors
    ///
    /// An invalid channel configuration or policy variable (`InvalidInput`), or the
    /// `SIGCHLD` listener cannot be installed.
    pub fn with_options(lp: &mut EventLoop, opts: PrimaryOptions) -> io::Result<Primary> {
        opts.channel.validate()?;
        let policy = match opts.policy {
            Some(p) => p,
            None => Policy::from_env()
                .map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{POLICY_ENV}: {e}"))
                })?
                .unwrap_or(Policy::RoundRobin),
        };
        let primary = Primary {
            inner: Rc::new(RefCell::new(Inner {
                settings: Settings::default(),
                next_id: 1,
                workers: BTreeMap::new(),
                sigchld: None,
                waiters: Vec::new(),
                batch: HAND_OFF_BATCH
                    .min(u32::from(opts.channel.limits.max_fds))
                    .max(1),
                config: opts.channel,
                bal: Balancer::new(policy, opts.credit, window_len(opts.accept_window)),
                sched: opts.yield_to_workers.then(BatchScheduling::enter).flatten(),
                passed: Vec::new(),
            })),
            hooks: Rc::new(Hooks::default()),
        };
        primary
            .inner
            .borrow_mut()
            .bal
            .set_max_listeners(opts.max_listeners_per_worker);
        let p = primary.clone();
        let id = lp.on_signal(nix::libc::SIGCHLD, move |lp, _| p.reap(lp))?;
        primary.inner.borrow_mut().sigchld = Some(id);
        Ok(primary)
    }

    /// Whether the loop's thread is in the batch scheduling class (see
    /// [`PrimaryOptions::yield_to_workers`]).
    pub fn yields_to_workers(&self) -> bool {
        self.inner.borrow().sched.is_some()
    }

    /// The policy in force (after falling back where the platform lacks one).
    pub fn policy(&self) -> Policy {
        self.inner.borrow().bal.policy
    }

    /// Layers `settings` over the current ones (Node's `setupPrimary`) and emits
    /// [`Event::Setup`] on the next tick.
    pub fn setup(&self, lp: &mut EventLoop, settings: Settings) {
        let applied = {
            let mut inner = self.inner.borrow_mut();
            inner.settings.merge(settings);
            let full = std::mem::take(&mut inner.settings).with_defaults();
            inner.settings = full.clone();
            full
        };
        let p = self.clone();
        lp.next_tick(move |lp| p.emit(lp, Event::Setup(applied)));
    }

    /// The settings in force (defaults filled once [`Primary::setup`] or a fork ran).
    pub fn settings(&self) -> Settings {
        self.inner.borrow().settings.clone()
    }

    /// Adds a cluster-wide event handler.
    pub fn on<F>(&self, handler: F)
    where
        F: FnMut(&mut EventLoop, &Primary, &mut Event) + 'static,
    {
        self.hooks.cluster.push(Box::new(handler));
    }

    /// Adds a handler for one worker's events (they run before the cluster-wide ones).
    pub fn on_worker<F>(&self, worker: u32, handler: F)
    where
        F: FnMut(&mut EventLoop, &Primary, &mut Event) + 'static,
    {
        let list = self
            .hooks
            .workers
            .borrow_mut()
            .entry(worker)
            .or_default()
            .clone();
        list.push(Box::new(handler));
    }

    /// Spawns a worker with the current settings (from the loop's thread; see the
    /// implementation notes). Returns its id.
    ///
    /// # Errors
    ///
    /// The channel or the process cannot be created.
    pub fn fork(&self, lp: &mut EventLoop) -> io::Result<u32> {
        self.fork_with_env(lp, Vec::<(OsString, OsString)>::new())
    }

    /// Spawns a worker with an extra environment overlay (Node's `fork(env)`).
    ///
    /// # Errors
    ///
    /// The channel or the process cannot be created.
    pub fn fork_with_env<I, K, V>(&self, lp: &mut EventLoop, env: I) -> io::Result<u32>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.setup(lp, Settings::default());
        let (settings, id, config, batch) = {
            let mut inner = self.inner.borrow_mut();
            let id = inner.next_id;
            inner.next_id += 1;
            let batch = inner.sched.is_some();
            (inner.settings.clone(), id, inner.config, batch)
        };
        let protocol = settings.protocol.unwrap_or_default();
        let (mut child, channel, peer_end) = if protocol == Protocol::Fds {
            (self.spawn_fds(&settings, id, env, batch)?, None, None)
        } else {
            let cmd = command(&settings, id, env, batch);
            let (child, io, peer) = self.spawn_with_channel(lp, cmd, id, protocol, config)?;
            (child, Some(io), peer)
        };
        if settings.silent == Some(true) {
            let tag = stdio::Tag {
                worker: id,
                pid: child.id(),
                output: settings.output.unwrap_or_default(),
            };
            if let Some(out) = child.stdout.take() {
                stdio::forward(lp, out.into(), tag, stdio::Sink::Stdout)?;
            }
            if let Some(err) = child.stderr.take() {
                stdio::forward(lp, err.into(), tag, stdio::Sink::Stderr)?;
            }
        }
        let info = WorkerInfo {
            id,
            pid: child.id(),
            state: WorkerState::None,
            connected: channel.is_some(),
            exited_after_disconnect: None,
            exit: None,
        };
        let sigchld = {
            let mut inner = self.inner.borrow_mut();
            inner.workers.insert(
                id,
                Entry {
                    info,
                    child: Some(child),
                    channel,
                    peer_end,
                    ledger: None,
                    listed: true,
                    protocol,
                    http: None,
                },
            );
            inner.sigchld
        };
        if let Some(s) = sigchld {
            lp.set_ref(s, true); // an unreaped child keeps the primary alive
        }
        let p = self.clone();
        lp.next_tick(move |lp| p.emit(lp, Event::Fork { worker: id }));
        if protocol == Protocol::Fds {
            self.fds_started(lp, id);
        }
        Ok(id)
    }

    /// Spawns `cmd` with its end of a new channel in `protocol`; returns the child, the
    /// registered channel and, for forkloop workers, a duplicate of their end (see
    /// [`Entry::peer_end`]).
    fn spawn_with_channel(
        &self,
        lp: &mut EventLoop,
        mut cmd: Command,
        id: u32,
        protocol: Protocol,
        config: ChannelConfig,
    ) -> io::Result<(Child, IoId, Option<OwnedFd>)> {
        let (mine, theirs) = crate::sys::socketpair()?;
        let channel_env = match protocol {
            #[cfg(feature = "node")]
            Protocol::Node => {
                node::node_command(&mut cmd, id);
                crate::ipc::node::NODE_CHANNEL_FD_ENV
            }
            #[cfg(not(feature = "node"))]
            Protocol::Node => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "Node.js workers need forkloop's `node` feature",
                ));
            }
            _ => {
                cmd.env(
                    CHANNEL_LIMITS_ENV,
                    crate::cluster::limits_to_env(config.limits),
                );
                CHANNEL_FD_ENV
            }
        };
        let mut child = crate::sys::process::spawn_with_fd(&mut cmd, theirs.as_fd(), channel_env)?;
        let registered = match protocol {
            #[cfg(feature = "node")]
            Protocol::Node => self.register_node_link(lp, id, mine),
            _ => self.register_channel(lp, id, mine, config),
        };
        match registered {
            // Only forkloop workers' unread hand-offs are read back from their end;
            // keeping a Node worker's end would hide its closing the channel.
            Ok(io) => Ok((
                child,
                io,
                (protocol == Protocol::Forkloop).then_some(theirs),
            )),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn register_channel(
        &self,
        lp: &mut EventLoop,
        id: u32,
        fd: OwnedFd,
        config: ChannelConfig,
    ) -> io::Result<IoId> {
        let mut ch = Channel::new(fd, config)?;
        ch.track_fds();
        let p = self.clone();
        lp.register(ch, Interest::READABLE, move |lp, _, _| p.on_channel(lp, id))
    }

    /// Node's `cluster.workers`: ids of the workers listed (spawned, and neither
    /// disconnected by the primary nor both disconnected and exited).
    pub fn workers(&self) -> Vec<u32> {
        let inner = self.inner.borrow();
        inner
            .workers
            .values()
            .filter(|e| e.listed)
            .map(|e| e.info.id)
            .collect()
    }

    /// Workers whose `Exit` has not been emitted yet (for the supervisor's checks).
    pub(crate) fn live_workers(&self) -> Vec<u32> {
        let inner = self.inner.borrow();
        inner
            .workers
            .values()
            .filter(|e| e.info.state != WorkerState::Dead)
            .map(|e| e.info.id)
            .collect()
    }

    /// A view of worker `id`, while the primary still tracks it (until its `Exit` event
    /// has been handled).
    pub fn worker(&self, id: u32) -> Option<WorkerInfo> {
        self.inner.borrow().workers.get(&id).map(|e| e.info.clone())
    }

    /// The latest counters of `worker`'s HTTP servers (`forkloop::http::Server`), summed.
    /// They travel only with heartbeat answers (when they changed), so they are as fresh
    /// as the last heartbeat: a supervisor pings every worker each
    /// [`HealthPolicy::interval`](supervise::HealthPolicy::interval) (1 s by default); a
    /// bare `Primary` gets them when it calls [`Primary::ping`]. `None` for an unknown
    /// worker or one that has not reported: no HTTP server, no heartbeat yet, heartbeats
    /// off (`forkloop run --heartbeat-ms 0`), or a Node.js or fds-protocol worker.
    pub fn http_stats(&self, worker: u32) -> Option<crate::ipc::HttpReport> {
        self.inner.borrow().workers.get(&worker)?.http.clone()
    }

    /// Sends user bytes to a worker.
    ///
    /// # Errors
    ///
    /// The worker is unknown or disconnected ([`SendErrorKind::Closed`](crate::ipc::SendErrorKind::Closed)), or its queue is
    /// full (back-pressure).
    pub fn send(&self, lp: &mut EventLoop, worker: u32, data: &[u8]) -> Result<(), SendError> {
        self.send_with_fds(lp, worker, data, Vec::new())
    }

    /// Sends user bytes with descriptors to a worker (Node's `worker.send(msg, handle)`).
    ///
    /// # Errors
    ///
    /// As [`Primary::send`]; the descriptors come back in the error.
    pub fn send_with_fds(
        &self,
        lp: &mut EventLoop,
        worker: u32,
        data: &[u8],
        fds: Vec<SendFd>,
    ) -> Result<(), SendError> {
        let io = self.channel_of(worker);
        send_on(lp, io, Kind::User, data, fds)
    }

    /// Sends `value` to a worker as a JSON user message.
    ///
    /// # Errors
    ///
    /// `value` does not serialise ([`crate::Error::Json`]), or as
    /// [`Primary::send`].
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn send_json<T: serde::Serialize>(
        &self,
        lp: &mut EventLoop,
        worker: u32,
        value: &T,
    ) -> crate::Result<()> {
        let data = crate::error::to_json(value)?;
        Ok(self.send(lp, worker, &data)?)
    }

    /// Sends a control message to a worker.
    pub(crate) fn send_msg(
        &self,
        lp: &mut EventLoop,
        worker: u32,
        msg: &Message,
    ) -> Result<(), SendError> {
        let io = self.channel_of(worker);
        crate::cluster::send_message(lp, io, msg, Vec::new())
    }

    /// Sends user bytes to every connected worker; returns how many it was queued for.
    pub fn broadcast(&self, lp: &mut EventLoop, data: &[u8]) -> usize {
        self.broadcast_except(lp, None, data)
    }

    /// Sends user bytes to every connected worker but `except` (typically the worker whose
    /// message is being passed on); returns how many it was queued for.
    pub fn broadcast_except(&self, lp: &mut EventLoop, except: Option<u32>, data: &[u8]) -> usize {
        let ids: Vec<u32> = self.inner.borrow().workers.keys().copied().collect();
        ids.into_iter()
            .filter(|&id| Some(id) != except && self.send(lp, id, data).is_ok())
            .count()
    }

    /// Sends `value` as JSON to every connected worker but `except` (`None`: to all);
    /// returns how many it was queued for.
    ///
    /// # Errors
    ///
    /// `value` does not serialise ([`crate::Error::Json`]).
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn broadcast_json<T: serde::Serialize>(
        &self,
        lp: &mut EventLoop,
        except: Option<u32>,
        value: &T,
    ) -> crate::Result<usize> {
        let data = crate::error::to_json(value)?;
        Ok(self.broadcast_except(lp, except, &data))
    }

    fn channel_of(&self, worker: u32) -> Option<IoId> {
        let inner = self.inner.borrow();
        inner
            .workers
            .get(&worker)
            .filter(|e| e.info.connected)
            .and_then(|e| e.channel)
    }

    /// The channel registered for `worker`, connected or not (to read what it left).
    fn registered_channel(&self, worker: u32) -> Option<IoId> {
        self.inner
            .borrow()
            .workers
            .get(&worker)
            .and_then(|e| e.channel)
    }

    /// Asks a worker to leave gracefully (Node's `worker.disconnect()`): it is delisted at
    /// once and marked as leaving on purpose; it closes its servers, lets their connections
    /// finish, closes its channel and exits. Returns false if it is not connected.
    pub fn disconnect_worker(&self, lp: &mut EventLoop, worker: u32) -> bool {
        if self.fds_disconnect(worker) {
            return true;
        }
        {
            let mut inner = self.inner.borrow_mut();
            let Some(e) = inner.workers.get_mut(&worker) else {
                return false;
            };
            if !e.info.connected {
                return false;
            }
            e.listed = false;
            e.info.exited_after_disconnect = Some(true);
        }
        self.send_msg(lp, worker, &Message::Disconnect).is_ok()
    }

    /// Closes a worker's channel from this side (Node's `worker.process.disconnect()`): the
    /// worker sees EOF and exits with code 0.
    pub fn close_channel(&self, lp: &mut EventLoop, worker: u32) -> bool {
        match self
            .channel_of(worker)
            .and_then(|io| lp.io_mut::<Channel>(io))
        {
            Some(ch) => {
                ch.close();
                self.channel_closed(lp, worker);
                true
            }
            #[cfg(feature = "node")]
            None => self.close_node_link(lp, worker),
            #[cfg(not(feature = "node"))]
            None => false,
        }
    }

    /// Sends signal number `signal` (as in `libc`: `SIGTERM` is what Node's `worker.kill()`
    /// sends by default) to a worker's process: nothing else, so
    /// `exited_after_disconnect` stays false.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a number that is not a signal; the worker is unknown or already
    /// reaped; `kill(2)` fails.
    pub fn kill(&self, worker: u32, signal: i32) -> io::Result<()> {
        let signal = Signal::try_from(signal).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{signal} is not a signal number"),
            )
        })?;
        self.signal(worker, signal)
    }

    /// [`Primary::kill`] with a signal known to be valid.
    pub(crate) fn signal(&self, worker: u32, signal: Signal) -> io::Result<()> {
        let pid = {
            let inner = self.inner.borrow();
            match inner.workers.get(&worker) {
                Some(e) if e.child.is_some() => e.info.pid,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        "no such live worker",
                    ));
                }
            }
        };
        signal::kill(Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// Disconnects every connected worker; `done` runs once all of them have disconnected
    /// and exited (on the next tick if there are none).
    pub fn disconnect<F>(&self, lp: &mut EventLoop, done: F)
    where
        F: FnOnce(&mut EventLoop, &Primary) + 'static,
    {
        let ids: Vec<u32> = {
            let inner = self.inner.borrow();
            inner.workers.keys().copied().collect()
        };
        for &id in &ids {
            self.disconnect_worker(lp, id);
        }
        let waiting: BTreeSet<u32> = {
            let inner = self.inner.borrow();
            ids.into_iter()
                .filter(|id| inner.workers.contains_key(id))
                .collect()
        };
        self.inner
            .borrow_mut()
            .waiters
            .push((waiting, Some(Box::new(done))));
        let p = self.clone();
        lp.next_tick(move |lp| p.run_waiters(lp));
    }

    fn run_waiters(&self, lp: &mut EventLoop) {
        let ready: Vec<DoneCb> = {
            let mut inner = self.inner.borrow_mut();
            let live: BTreeSet<u32> = inner.workers.keys().copied().collect();
            let mut ready = Vec::new();
            inner.waiters.retain_mut(|(ids, cb)| {
                ids.retain(|id| live.contains(id));
                if ids.is_empty() {
                    ready.extend(cb.take());
                    false
                } else {
                    true
                }
            });
            ready
        };
        for cb in ready {
            cb(lp, self);
        }
    }

    /// Sends a heartbeat to `worker`; its answer arrives as [`Event::Pong`].
    ///
    /// # Errors
    ///
    /// As [`Primary::send`].
    pub fn ping(&self, lp: &mut EventLoop, worker: u32, seq: u64) -> Result<(), SendError> {
        self.send_msg(lp, worker, &Message::Ping { seq })
    }

    /// Runs the handlers for `ev`: the worker's, then the cluster's.
    fn emit(&self, lp: &mut EventLoop, mut ev: Event) {
        if let Some(w) = ev.worker() {
            let list = self.hooks.workers.borrow().get(&w).cloned();
            if let Some(list) = list {
                list.run(|h| h(lp, self, &mut ev));
            }
        }
        self.hooks.cluster.run(|h| h(lp, self, &mut ev));
    }

    fn set_state(&self, worker: u32, state: WorkerState) {
        if let Some(e) = self.inner.borrow_mut().workers.get_mut(&worker)
            && e.info.state != WorkerState::Dead
        {
            e.info.state = state;
        }
    }

    /// The channel of `worker` is gone: emit `Disconnect`, and `Exit` too if the process
    /// has already been reaped.
    fn channel_closed(&self, lp: &mut EventLoop, worker: u32) {
        let (io, exited) = {
            let mut inner = self.inner.borrow_mut();
            let Some(e) = inner.workers.get_mut(&worker) else {
                return;
            };
            let Some(io) = e.channel.take() else {
                return; // already handled
            };
            e.info.connected = false;
            if e.info.state != WorkerState::Dead {
                e.info.state = WorkerState::Disconnected;
            }
            e.info.exited_after_disconnect = Some(e.info.exited_after_disconnect.unwrap_or(false));
            (io, e.info.exit.is_some())
        };
        let ledger = lp.io_mut::<Channel>(io).and_then(Channel::take_ledger);
        lp.close(io, |_| {});
        if let Some(e) = self.inner.borrow_mut().workers.get_mut(&worker) {
            e.ledger = ledger;
        }
        if exited {
            self.reclaim(worker);
        }
        let emptied = self.inner.borrow_mut().bal.worker_gone(worker);
        for h in emptied {
            close_handle(lp, h);
        }
        self.pump(lp);
        self.emit(lp, Event::Disconnect { worker });
        if exited {
            self.finish(lp, worker);
        }
    }

    /// SIGCHLD: reap every worker that has exited.
    fn reap(&self, lp: &mut EventLoop) {
        let exited: Vec<(u32, ExitStatus)> = {
            let mut inner = self.inner.borrow_mut();
            inner
                .workers
                .values_mut()
                .filter_map(|e| {
                    let child = e.child.as_mut()?;
                    let status = child.try_wait().ok()??;
                    e.child = None;
                    Some((e.info.id, status.into()))
                })
                .collect()
        };
        for (worker, status) in exited {
            let connected = {
                let mut inner = self.inner.borrow_mut();
                let Some(e) = inner.workers.get_mut(&worker) else {
                    continue;
                };
                e.info.exit = Some(status);
                e.info.exited_after_disconnect =
                    Some(e.info.exited_after_disconnect.unwrap_or(false));
                e.channel.is_some()
            };
            if connected {
                // Read what it wrote before dying; EOF then closes the channel, which
                // emits Disconnect and then Exit.
                self.read_last_of(lp, worker);
                if self
                    .inner
                    .borrow()
                    .workers
                    .get(&worker)
                    .is_some_and(|e| e.channel.is_some())
                {
                    if let Some(ch) = self
                        .channel_of(worker)
                        .and_then(|io| lp.io_mut::<Channel>(io))
                    {
                        ch.close();
                    }
                    self.channel_closed(lp, worker);
                }
            } else {
                // Its channel closed earlier: take back what it never read.
                self.reclaim(worker);
                self.pump(lp);
                self.finish(lp, worker);
            }
        }
        let (sigchld, any_alive) = {
            let inner = self.inner.borrow();
            (
                inner.sigchld,
                inner.workers.values().any(|e| e.child.is_some()),
            )
        };
        if let Some(s) = sigchld {
            lp.set_ref(s, any_alive);
        }
    }

    /// `worker` has exited and its channel is closed: the connections handed to it that it
    /// never read are read back from its end of the channel and queued for other workers.
    fn reclaim(&self, worker: u32) {
        let mut inner = self.inner.borrow_mut();
        let limits = inner.config.limits;
        let Some(e) = inner.workers.get_mut(&worker) else {
            return;
        };
        let (Some(peer), Some(ledger)) = (e.peer_end.take(), e.ledger.take()) else {
            return;
        };
        let mut back = 0;
        for f in ledger.read_back(peer.as_fd(), limits) {
            // Other frames with descriptors carried a listener (shared policy): the
            // primary has its own.
            if let Ok(Message::NewConn { key, seq, .. }) =
                Message::decode(f.kind, &f.payload, f.fds.len())
            {
                back += inner.bal.requeue_run(key, seq, f.fds);
            }
        }
        inner.bal.taken_back += back;
        if back > 0 {
            log::info!("worker {worker}: {back} connection(s) it never read handed off again");
        }
    }

    /// Disconnected and exited: delist, emit `Exit`, forget the worker.
    fn finish(&self, lp: &mut EventLoop, worker: u32) {
        let status = {
            let mut inner = self.inner.borrow_mut();
            let Some(e) = inner.workers.get_mut(&worker) else {
                return;
            };
            e.listed = false;
            if e.info.exit.is_some() {
                e.info.state = WorkerState::Dead;
            }
            e.info.exit
        };
        let Some(status) = status else {
            return;
        };
        self.emit(lp, Event::Exit { worker, status });
        self.inner.borrow_mut().workers.remove(&worker);
        self.hooks.workers.borrow_mut().remove(&worker);
        self.run_waiters(lp);
    }
}

/// Queues a frame on a registered channel and writes it at once.
fn send_on(
    lp: &mut EventLoop,
    io: Option<IoId>,
    kind: Kind,
    data: &[u8],
    fds: Vec<SendFd>,
) -> Result<(), SendError> {
    crate::cluster::send_frame(lp, io, kind, data, fds)
}

/// The command that starts worker `id` (in the normal scheduling class when the primary's
/// thread is in the batch class: `batch`).
fn command<I, K, V>(settings: &Settings, id: u32, env: I, batch: bool) -> Command
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let exec = settings
        .exec
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("/proc/self/exe"));
    let mut cmd = Command::new(exec);
    if let Some(args) = &settings.args {
        cmd.args(args);
    }
    for (k, v) in &settings.env {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k.into(), v.into());
    }
    cmd.env(WORKER_ID_ENV, id.to_string());
    cmd.env(PRIMARY_PID_ENV, std::process::id().to_string());
    // Sockets a service manager passed to the primary are the primary's alone.
    for var in crate::primary::systemd::ACTIVATION_ENV {
        cmd.env_remove(var);
    }
    if let Some(dir) = &settings.cwd {
        cmd.current_dir(dir);
    }
    if settings.silent == Some(true) {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    if let Some(uid) = settings.uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
    }
    if let Some(gid) = settings.gid {
        std::os::unix::process::CommandExt::gid(&mut cmd, gid);
    }
    // Orphan safety: the worker is killed when this thread (the loop's) ends (Linux).
    crate::sys::process::die_with_parent(&mut cmd);
    if batch {
        crate::sys::process::normal_scheduling_in_child(&mut cmd);
    }
    cmd
}

impl Drop for Inner {
    fn drop(&mut self) {
        for e in self.workers.values_mut() {
            if let Some(mut child) = e.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
