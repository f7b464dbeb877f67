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
//! the cluster's, as in Node. Order for one worker (node-cluster.md §3.2):
//! `Setup` → `Fork` → `Online` → `Listening`… → `Disconnect` → `Exit`.
//!
//! Differences from Node, on purpose (node-cluster.md §5 and "quirks"):
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
//! * Dropping the last [`Primary`] handle kills (`SIGKILL`) and reaps every worker still
//!   alive, so a primary that unwinds leaves no orphans or zombies behind.
//!
//! # Implementation notes
//!
//! | | Linux | macOS / BSD |
//! |---|---|---|
//! | child exit | `SIGCHLD` on the loop, then `waitpid` for each worker | the same |
//! | descriptor passing | `SCM_RIGHTS`, received with `MSG_CMSG_CLOEXEC` | `SCM_RIGHTS`, close-on-exec set right after |
//! | workers outliving the primary | `PR_SET_PDEATHSIG(SIGKILL)` plus the worker's watchdog thread | the watchdog thread (channel hang-up, parent change) |
//! | reuseport policy | `SO_REUSEPORT` groups | falls back to round-robin with a warning |
//!
//! Spawn workers from the loop's thread: Linux sends the parent-death signal when the
//! *thread* that spawned a child exits, not only the process.

mod balance;
mod settings;
mod stdio;
pub mod supervise;
pub mod systemd;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

pub use balance::{DEFAULT_BACKLOG, DEFAULT_CREDIT, HAND_OFF_BATCH, POLICY_ENV, Policy};
pub use settings::Settings;

use balance::{Balancer, Mode, RawListener};

use crate::cluster::{CHANNEL_FD_ENV, ExitStatus, WORKER_ID_ENV, WorkerState};
use crate::ipc::{
    Channel, ChannelConfig, Endpoint, Kind, ListenMode, Message, Recv, SendError, SendFd,
};
use crate::rt::{EventLoop, Interest, IoId, SignalId};

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
    /// A worker misbehaved (malformed or unexpected message); its channel was closed.
    Error {
        /// The worker.
        worker: u32,
        /// What went wrong.
        reason: String,
    },
}

impl Event {
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

/// How a primary is set up (besides [`Settings`], which say how workers are spawned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryOptions {
    /// How listening endpoints are shared; `None` reads [`POLICY_ENV`]
    /// (`FORKLOOP_SCHED_POLICY=rr|none|reuseport`), and round-robin if it is unset.
    pub policy: Option<Policy>,
    /// Round-robin: hand-offs a worker may hold unanswered (default [`DEFAULT_CREDIT`]).
    pub credit: u32,
    /// Limits of every worker channel.
    pub channel: ChannelConfig,
}

impl Default for PrimaryOptions {
    fn default() -> Self {
        PrimaryOptions {
            policy: None,
            credit: DEFAULT_CREDIT,
            channel: ChannelConfig::default(),
        }
    }
}

type Handler = Box<dyn FnMut(&mut EventLoop, &Primary, &mut Event)>;
type DoneCb = Box<dyn FnOnce(&mut EventLoop, &Primary)>;

struct Entry {
    info: WorkerInfo,
    child: Option<Child>,
    channel: Option<IoId>,
    /// In Node's `cluster.workers`: until the primary disconnects it, or it has both
    /// disconnected and exited.
    listed: bool,
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
}

#[derive(Default)]
struct Hooks {
    cluster: crate::hooks::Hooks<Handler>,
    workers: RefCell<HashMap<u32, Rc<crate::hooks::Hooks<Handler>>>>,
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
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
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
                bal: Balancer::new(policy, opts.credit),
            })),
            hooks: Rc::new(Hooks::default()),
        };
        let p = primary.clone();
        let id = lp.on_signal(nix::libc::SIGCHLD, move |lp, _| p.reap(lp))?;
        primary.inner.borrow_mut().sigchld = Some(id);
        Ok(primary)
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
        let (settings, id, config) = {
            let mut inner = self.inner.borrow_mut();
            let id = inner.next_id;
            inner.next_id += 1;
            (inner.settings.clone(), id, inner.config)
        };
        let (mine, theirs) = crate::sys::socketpair()?;
        let mut cmd = command(&settings, id, env);
        let mut child =
            crate::sys::process::spawn_with_fd(&mut cmd, theirs.as_fd(), CHANNEL_FD_ENV)?;
        drop(theirs);
        let channel = match self.register_channel(lp, id, mine, config) {
            Ok(io) => io,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        if settings.silent == Some(true) {
            if let Some(out) = child.stdout.take() {
                stdio::forward(lp, out.into(), id, stdio::Sink::Stdout)?;
            }
            if let Some(err) = child.stderr.take() {
                stdio::forward(lp, err.into(), id, stdio::Sink::Stderr)?;
            }
        }
        let info = WorkerInfo {
            id,
            pid: child.id(),
            state: WorkerState::None,
            connected: true,
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
                    channel: Some(channel),
                    listed: true,
                },
            );
            inner.sigchld
        };
        if let Some(s) = sigchld {
            lp.set_ref(s, true); // an unreaped child keeps the primary alive
        }
        let p = self.clone();
        lp.next_tick(move |lp| p.emit(lp, Event::Fork { worker: id }));
        Ok(id)
    }

    fn register_channel(
        &self,
        lp: &mut EventLoop,
        id: u32,
        fd: OwnedFd,
        config: ChannelConfig,
    ) -> io::Result<IoId> {
        let ch = Channel::new(fd, config)?;
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

    /// A view of worker `id`, while the primary still tracks it (until its `Exit` event
    /// has been handled).
    pub fn worker(&self, id: u32) -> Option<WorkerInfo> {
        self.inner.borrow().workers.get(&id).map(|e| e.info.clone())
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
    /// `value` does not serialise ([`crate::Error::Config`] with serde's reason), or as
    /// [`Primary::send`].
    #[cfg(feature = "serde")]
    pub fn send_json<T: serde::Serialize>(
        &self,
        lp: &mut EventLoop,
        worker: u32,
        value: &T,
    ) -> crate::Result<()> {
        let data = serde_json::to_vec(value).map_err(|e| crate::Error::Config(e.to_string()))?;
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
        let ids: Vec<u32> = self.inner.borrow().workers.keys().copied().collect();
        ids.into_iter()
            .filter(|&id| self.send(lp, id, data).is_ok())
            .count()
    }

    fn channel_of(&self, worker: u32) -> Option<IoId> {
        let inner = self.inner.borrow();
        inner
            .workers
            .get(&worker)
            .filter(|e| e.info.connected)
            .and_then(|e| e.channel)
    }

    /// Asks a worker to leave gracefully (Node's `worker.disconnect()`): it is delisted at
    /// once and marked as leaving on purpose; it closes its servers, lets their connections
    /// finish, closes its channel and exits. Returns false if it is not connected.
    pub fn disconnect_worker(&self, lp: &mut EventLoop, worker: u32) -> bool {
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
            None => false,
        }
    }

    /// Sends `signal` to a worker's process (Node's `worker.kill()`, default `SIGTERM`):
    /// nothing else, so `exited_after_disconnect` stays false.
    ///
    /// # Errors
    ///
    /// The worker is unknown or already reaped, or `kill(2)` fails.
    pub fn kill(&self, worker: u32, signal: Signal) -> io::Result<()> {
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

    /// Answers a worker's request for a listener.
    fn query_server(
        &self,
        lp: &mut EventLoop,
        worker: u32,
        seq: u32,
        req: &crate::ipc::ListenRequest,
    ) {
        let leaving = {
            let inner = self.inner.borrow();
            inner
                .workers
                .get(&worker)
                .is_none_or(|e| e.info.exited_after_disconnect == Some(true))
        };
        if leaving {
            // Node leaves such a query unanswered; refusing is clearer.
            let reply = Message::QueryReply {
                seq,
                errno: nix::libc::ESHUTDOWN,
                key: 0,
                mode: ListenMode::HandOff,
                bound: None,
            };
            let _ = self.send_msg(lp, worker, &reply);
            return;
        }
        let granted = self.inner.borrow_mut().bal.query(worker, req);
        let g = match granted {
            Ok(g) => g,
            Err(e) => {
                log::info!("worker {worker}: cannot listen on {:?}: {e}", req.endpoint);
                let errno = e.raw_os_error().unwrap_or(nix::libc::EINVAL);
                let reply = Message::QueryReply {
                    seq,
                    errno,
                    key: 0,
                    mode: ListenMode::HandOff,
                    bound: None,
                };
                let _ = self.send_msg(lp, worker, &reply);
                return;
            }
        };
        if let Some(fd) = g.start_accepting {
            let p = self.clone();
            let hid = g.handle;
            match lp.register(RawListener(fd), Interest::READABLE, move |lp, _, _| {
                p.accept(lp, hid)
            }) {
                Ok(io) => {
                    if let Some(h) = self.inner.borrow_mut().bal.handles.get_mut(&hid) {
                        h.listener = Some(io);
                    }
                }
                Err(e) => log::error!("cannot watch listener {hid}: {e}"),
            }
        }
        let mode = match g.mode {
            Mode::RoundRobin => ListenMode::HandOff,
            Mode::Shared => ListenMode::Shared,
            Mode::ReusePort => ListenMode::ReusePort,
        };
        let reply = Message::QueryReply {
            seq,
            errno: 0,
            key: g.handle,
            mode,
            bound: Some(g.bound),
        };
        let fds: Vec<SendFd> = g.fd.into_iter().map(SendFd::Shared).collect();
        let io = self.channel_of(worker);
        let sent = crate::cluster::send_message(lp, io, &reply, fds);
        if sent.is_err() {
            log::info!("worker {worker}: listener reply not delivered");
        }
        // A worker joined: connections waiting on a kept listener can go now.
        self.pump(lp);
    }

    /// Accepts on round-robin handle `hid` while some worker has credit.
    ///
    /// Connections are handed off in bursts: the worker with the most free credit
    /// (round-robin among equals) gets every connection waiting at that moment, up to its
    /// free credit and [`HAND_OFF_BATCH`], in one message — one `sendmsg` and one wake-up
    /// of the worker for the burst. The next burst starts at the next worker.
    fn accept(&self, lp: &mut EventLoop, hid: u32) {
        loop {
            let picked = {
                let inner = self.inner.borrow();
                inner
                    .bal
                    .pick(hid)
                    .map(|w| (w, inner.bal.free(w).min(inner.batch)))
            };
            let Some((worker, room)) = picked else {
                self.pause(hid);
                return;
            };
            let mut batch = Vec::new();
            let mut drained = false;
            while batch.len() < room as usize {
                match self.next_conn(hid) {
                    Some(fd) => batch.push(fd),
                    None => {
                        drained = true;
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                self.dispatch(lp, worker, hid, batch);
            }
            if drained {
                return;
            }
        }
    }

    /// The next connection for handle `hid`: one that came back, else a new one; `None`
    /// once the backlog is empty (or accepting failed; the next connection retries).
    fn next_conn(&self, hid: u32) -> Option<Arc<OwnedFd>> {
        let mut inner = self.inner.borrow_mut();
        if let Some(fd) = inner.bal.next_queued(hid) {
            return Some(fd);
        }
        match balance::accept_one(inner.bal.accept_fd(hid)?.as_ref()) {
            Ok(fd) => Some(Arc::new(fd)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                // EMFILE, ECONNABORTED…: skip, as Node does; the next connection retries.
                log::warn!("accept on listener {hid}: {e}");
                None
            }
        }
    }

    /// Hands `fds` to `worker` in one message; on failure the connections are queued
    /// again and the worker is excluded from further hand-offs (its channel is going away).
    fn dispatch(&self, lp: &mut EventLoop, worker: u32, hid: u32, fds: Vec<Arc<OwnedFd>>) {
        let seq = self.inner.borrow_mut().bal.hand_off(worker, hid, &fds);
        let n = fds.len() as u32;
        let msg = Message::NewConn { key: hid, seq };
        let io = self.channel_of(worker);
        let fds = fds.into_iter().map(SendFd::Shared).collect();
        if crate::cluster::send_message(lp, io, &msg, fds).is_err() {
            let mut inner = self.inner.borrow_mut();
            for i in 0..n {
                inner.bal.unsend(seq.wrapping_add(i));
            }
            inner.bal.excluded.insert(worker);
        }
    }

    /// No worker has credit: stop accepting (the kernel backlog holds clients). Only a
    /// flag: the listener stays registered (edge-triggered, so it costs nothing), and
    /// `pump` accepts again, until `WouldBlock`, once credit returns.
    fn pause(&self, hid: u32) {
        if let Some(h) = self.inner.borrow_mut().bal.handles.get_mut(&hid) {
            h.paused = true;
        }
    }

    /// Gives waiting connections to workers with credit, and resumes paused accepting.
    fn pump(&self, lp: &mut EventLoop) {
        let waiting = self.inner.borrow().bal.waiting_handles();
        for hid in waiting {
            let ready = {
                let mut inner = self.inner.borrow_mut();
                let has_credit = inner.bal.pick(hid).is_some();
                match inner.bal.handles.get_mut(&hid) {
                    Some(h) if has_credit => {
                        h.paused = false;
                        true
                    }
                    _ => false,
                }
            };
            if ready {
                self.accept(lp, hid);
            }
        }
    }

    /// Keeps listeners open while no worker listens on them (accepting paused; clients wait
    /// in the backlog), so a restart or a reload of the last worker refuses nobody. Turning
    /// it off closes the listeners no worker uses. The supervisor turns it on while it runs.
    pub fn keep_listeners(&self, lp: &mut EventLoop, on: bool) {
        let idle = {
            let mut inner = self.inner.borrow_mut();
            inner.bal.keep_listeners = on;
            if on {
                Vec::new()
            } else {
                inner.bal.close_idle()
            }
        };
        for h in idle {
            close_handle(lp, h);
        }
    }

    /// Stops (`false`) or resumes (`true`) handing new connections to `worker` under the
    /// round-robin policy (quarantine, retirement). Its open connections are not touched.
    pub fn set_routing(&self, lp: &mut EventLoop, worker: u32, on: bool) {
        {
            let mut inner = self.inner.borrow_mut();
            if on {
                inner.bal.excluded.remove(&worker);
            } else {
                inner.bal.excluded.insert(worker);
            }
        }
        if on {
            self.pump(lp);
        }
    }

    /// Whether new connections go to `worker`.
    pub fn is_routed(&self, worker: u32) -> bool {
        !self.inner.borrow().bal.excluded.contains(&worker)
    }

    /// Connections handed off to `worker` and accepted so far (round-robin policy).
    pub fn handed(&self, worker: u32) -> u64 {
        self.inner.borrow().bal.handed_to(worker)
    }

    /// Sends a heartbeat to `worker`; its answer arrives as [`Event::Pong`].
    ///
    /// # Errors
    ///
    /// As [`Primary::send`].
    pub fn ping(&self, lp: &mut EventLoop, worker: u32, seq: u64) -> Result<(), SendError> {
        self.send_msg(lp, worker, &Message::Ping { seq })
    }

    /// Listening endpoints the primary holds (one per key any worker listens on).
    pub fn listener_count(&self) -> usize {
        self.inner.borrow().bal.handles.len()
    }

    /// Adopts listening sockets bound by someone else, typically the service manager's
    /// ([`systemd::listen_fds`]). A worker's listen request whose address is exactly one
    /// of theirs uses it instead of binding; see [`systemd`] for the matching rules.
    pub fn adopt_listeners(&self, fds: Vec<OwnedFd>) {
        self.inner.borrow_mut().bal.adopt(fds);
    }

    /// Hand-offs sent to `worker` and not yet answered.
    pub fn in_flight(&self, worker: u32) -> u32 {
        self.inner.borrow().bal.inflight_of(worker)
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

    /// The channel of `worker` is ready: read every frame, then act on each.
    fn on_channel(&self, lp: &mut EventLoop, worker: u32) {
        let Some(io) = self
            .inner
            .borrow()
            .workers
            .get(&worker)
            .and_then(|e| e.channel)
        else {
            return;
        };
        let mut msgs = Vec::new();
        let mut closed = None;
        if let Err(e) = crate::cluster::flush_channel(lp, io) {
            closed = Some(format!("write failed: {e}"));
        }
        if let Some(ch) = lp.io_mut::<Channel>(io) {
            while closed.is_none() {
                match ch.recv() {
                    Ok(Recv::Frame(f)) => match f.into_message() {
                        Ok(m) => msgs.push(m),
                        Err(e) => {
                            log::warn!("worker {worker}: closing its channel: bad message: {e}");
                            ch.close();
                            closed = Some(format!("bad message: {e}"));
                        }
                    },
                    Ok(Recv::WouldBlock) => break,
                    Ok(Recv::Eof) => closed = Some(String::new()),
                    Err(e) => closed = Some(e.to_string()),
                }
            }
        }
        for (msg, fds) in msgs {
            self.handle(lp, worker, msg, fds);
        }
        if let Some(reason) = closed {
            if !reason.is_empty() {
                let p = self.clone();
                let err = Event::Error { worker, reason };
                p.emit(lp, err);
            }
            self.channel_closed(lp, worker);
        }
    }

    /// Acts on one message from `worker`.
    fn handle(&self, lp: &mut EventLoop, worker: u32, msg: Message, fds: Vec<OwnedFd>) {
        match msg {
            Message::Online => {
                self.set_state(worker, WorkerState::Online);
                self.emit(lp, Event::Online { worker });
            }
            Message::Listening { bound, .. } => {
                self.set_state(worker, WorkerState::Listening);
                self.emit(
                    lp,
                    Event::Listening {
                        worker,
                        address: bound,
                    },
                );
            }
            Message::Ready => self.emit(lp, Event::Ready { worker }),
            Message::User(data) => self.emit(lp, Event::Message { worker, data, fds }),
            Message::Relay { peer, payload } => {
                let stamped = Message::Relay {
                    peer: worker,
                    payload,
                };
                if self.send_msg(lp, peer, &stamped).is_err() {
                    log::info!("worker {worker}: relay to worker {peer} dropped: not connected");
                }
            }
            Message::ExitedAfterDisconnect { seq } => {
                if let Some(e) = self.inner.borrow_mut().workers.get_mut(&worker) {
                    e.info.exited_after_disconnect = Some(true);
                }
                let _ = self.send_msg(lp, worker, &Message::Ack { seq });
            }
            Message::QueryServer { seq, request } => self.query_server(lp, worker, seq, &request),
            Message::Close { key } => {
                let gone = self.inner.borrow_mut().bal.leave(worker, key);
                if let Some(h) = gone {
                    close_handle(lp, h);
                }
            }
            Message::Accepted { seq, credit } => {
                self.inner.borrow_mut().bal.accepted(worker, seq, credit);
                self.pump(lp);
            }
            Message::Rejected { seq } => {
                self.inner.borrow_mut().bal.rejected(worker, seq);
                self.pump(lp);
            }
            Message::Pong { seq, lag_us } => self.emit(
                lp,
                Event::Pong {
                    worker,
                    seq,
                    lag_us,
                },
            ),
            Message::GoingDown { reason } => {
                // Stop routing to it at once; whoever supervises starts the replacement.
                self.set_routing(lp, worker, false);
                self.emit(lp, Event::GoingDown { worker, reason });
            }
            other => self.misbehaved(
                lp,
                worker,
                format!("unexpected {:?} from a worker", other.kind()),
            ),
        }
    }

    fn misbehaved(&self, lp: &mut EventLoop, worker: u32, reason: String) {
        log::warn!("worker {worker}: closing its channel: {reason}");
        if let Some(ch) = self
            .channel_of(worker)
            .and_then(|io| lp.io_mut::<Channel>(io))
        {
            ch.close();
        }
        self.emit(lp, Event::Error { worker, reason });
        self.channel_closed(lp, worker);
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
        lp.close(io, |_| {});
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
                self.on_channel(lp, worker);
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

/// A listener no worker uses any more: stop accepting; queued connections close with it.
fn close_handle(lp: &mut EventLoop, h: balance::Handle) {
    if let Some(io) = h.listener {
        lp.close(io, |_| {});
    }
    log::debug!("listener {:?} closed: no worker listens on it", h.bound);
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

/// The command that starts worker `id`.
fn command<I, K, V>(settings: &Settings, id: u32, env: I) -> Command
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
