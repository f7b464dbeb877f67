//! The worker side of a cluster: id, messaging, servers to close on disconnect, and the
//! disconnect protocol.
//!
//! [`Worker::attach`] registers the channel (made in [`crate::role`]) on the worker's loop.
//! The channel is ref'd, as in Node: a worker stays up until it disconnects.
//!
//! # Leaving
//!
//! | trigger | what happens |
//! |---|---|
//! | the primary's `disconnect_worker` | servers close (once their connections end), the channel closes, `on_disconnect` handlers run, the loop drains and the worker exits on its own terms |
//! | [`Worker::disconnect`] | as above, then the worker tells the primary it leaves on purpose and closes the channel only after the primary's acknowledgement |
//! | [`Worker::kill`] | tells the primary, waits for the acknowledgement, closes the channel, exits with code 0 |
//! | the channel reaches EOF (primary gone, or it closed the channel) | `on_disconnect` handlers run, then the loop exits with code 0 unless the worker was leaving on purpose |
//! | the primary dies while this worker's loop is blocked | Linux: the parent-death signal (`SIGKILL`, set between fork and exec) ends it at once; everywhere: a watchdog thread sees the channel hang up (or the parent change) and exits the process |
//!
//! "Exits" means [`EventLoop::exit`]: `run()` returns the code and the program's `main`
//! ends the process with it.

pub mod fds;
mod lag;
mod listen;
mod server;
mod watchdog;

pub use listen::{ListenOptions, listen_tcp};
pub use server::{DEFAULT_IDLE_GRACE_MS, Server};

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use crate::ipc::{Channel, ChannelConfig, Endpoint, Kind, Message, SendError, SendFd};
use crate::rt::{EventLoop, Interest, IoId};

/// Where the worker is in leaving (Node's worker-side `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerSideState {
    /// Running.
    Online,
    /// One of its servers listens.
    Listening,
    /// [`Worker::disconnect`] (or the primary's disconnect) is under way.
    Disconnecting,
    /// [`Worker::kill`] is under way.
    Destroying,
}

/// A message that reached this worker.
#[derive(Debug)]
pub struct Incoming {
    /// `Some(id)` when another worker sent it through the primary (the primary stamps the
    /// sender); `None` when it came from the primary.
    pub from: Option<u32>,
    /// The bytes.
    pub data: Vec<u8>,
    /// Descriptors that came with it.
    pub fds: Vec<OwnedFd>,
}

impl Incoming {
    /// Reads the bytes as JSON into `T`.
    ///
    /// # Errors
    ///
    /// The bytes are not valid JSON for `T`.
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::error::JsonError> {
        crate::error::from_json(&self.data)
    }
}

/// Handed to a tracked server's close function; call [`ServerClosed::done`] once the
/// server has fully closed (its connections ended).
#[derive(Debug)]
pub struct ServerClosed {
    worker: Worker,
    token: u64,
}

impl ServerClosed {
    /// Reports that the server is closed.
    pub fn done(self, lp: &mut EventLoop) {
        self.worker.server_closed(lp, self.token);
    }
}

type CloseFn = Box<dyn FnOnce(&mut EventLoop, ServerClosed)>;
type MessageCb = Box<dyn FnMut(&mut EventLoop, &Worker, &mut Incoming)>;
type DisconnectCb = Box<dyn FnMut(&mut EventLoop, &Worker)>;
type RelayFailedCb = Box<dyn FnMut(&mut EventLoop, &Worker, u32)>;
type AckCb = Box<dyn FnOnce(&mut EventLoop, &Worker)>;

struct Tracked {
    key: Option<u32>,
    close: Option<CloseFn>,
}

struct Inner {
    id: u32,
    channel: Option<IoId>,
    state: WorkerSideState,
    exited_after_disconnect: bool,
    next_seq: u32,
    acks: HashMap<u32, AckCb>,
    next_token: u64,
    servers: HashMap<u64, Tracked>,
    closing: BTreeSet<u64>,
    /// What to do once every server has closed during a disconnect.
    after_close: Option<AckCb>,
    unheard: Vec<Incoming>,
    /// Listen requests waiting for the primary's answer, by request number.
    queries: HashMap<u32, listen::Pending>,
    /// Servers served through the primary, by the primary's listener id.
    by_key: HashMap<u32, Server>,
    /// Per-endpoint indexes in use (so the n-th `listen(0)` of every worker shares a port).
    indexes: HashMap<(Endpoint, u32), BTreeSet<u32>>,
    /// Which endpoint and index each listener id holds.
    key_index: HashMap<u32, ((Endpoint, u32), u32)>,
    /// The loop's lag, measured by a sampling timer.
    lag: Rc<lag::LagMeter>,
    /// Ends the process if the primary dies, even while the loop is blocked.
    watchdog: Option<watchdog::Watchdog>,
    /// While a batch of the primary's messages is handled, control replies are queued
    /// and leave together afterwards (one `sendmsg`, one wake-up of the primary).
    corked: bool,
    /// A user message (send or relay) was written at once in this loop iteration: later
    /// ones are queued and leave together right before the loop polls (one `sendmsg` and
    /// one wake-up of the primary per iteration, however many a callback sends).
    wrote_this_turn: bool,
    /// The counters of this worker's HTTP servers, reported with heartbeat answers.
    http_reporters: Vec<Box<dyn Fn() -> crate::ipc::HttpReport>>,
    /// The last report sent (none is sent while nothing changed).
    http_reported: Option<crate::ipc::HttpReport>,
    /// Hand-off servers (by listener id) that answered with no credit left; watched until
    /// one has room again, which the primary is then told ([`Message::Credit`]).
    full: BTreeSet<u32>,
    /// The timer of that watch, while it runs.
    credit_watch: Option<crate::rt::TimerId>,
    /// Descriptor headroom, which bounds the credit (see [`fds`]).
    fds: fds::FdBudget,
    /// Since when a drain stopped at the headroom waits to read on
    /// ([`Worker::drain_later`]).
    redrain_since: Option<u64>,
    /// A delayed drain runs: hand-offs it reads are answered with the credit, since the
    /// primary may be waiting to see them read (nothing else would wake it).
    announce_credit: bool,
}

impl Inner {
    fn release_index(&mut self, key: u32) {
        if let Some((ep, idx)) = self.key_index.remove(&key)
            && let Some(set) = self.indexes.get_mut(&ep)
        {
            set.remove(&idx);
        }
    }
}

#[derive(Default)]
struct Hooks {
    message: crate::hooks::Hooks<MessageCb>,
    disconnect: crate::hooks::Hooks<DisconnectCb>,
    relay_failed: crate::hooks::Hooks<RelayFailedCb>,
}

/// This process's side of the cluster; clone the handle freely (it is an `Rc`).
#[derive(Clone)]
pub struct Worker {
    inner: Rc<RefCell<Inner>>,
    hooks: Rc<Hooks>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("Worker")
            .field("id", &inner.id)
            .field("state", &inner.state)
            .field("connected", &inner.channel.is_some())
            .finish()
    }
}

impl Worker {
    /// In a worker process, registers the channel on `lp` and returns the worker handle;
    /// `None` in the primary (or if already attached).
    ///
    /// # Errors
    ///
    /// The worker environment is broken, or the channel cannot be registered.
    pub fn attach(lp: &mut EventLoop) -> crate::Result<Option<Worker>> {
        let crate::Role::Worker(id) = crate::try_role()? else {
            return Ok(None);
        };
        let Some(fd) = crate::cluster::take_channel() else {
            return Ok(None);
        };
        // Orphan safety: a thread outside the loop ends this process when the primary is
        // gone, even while the loop is blocked (see `watchdog`).
        let watchdog = match watchdog::Watchdog::start(std::os::fd::AsFd::as_fd(&fd)) {
            Ok(w) => Some(w),
            Err(e) => {
                log::warn!("worker {id}: no orphan watchdog: {e}");
                None
            }
        };
        let worker = Worker {
            inner: Rc::new(RefCell::new(Inner {
                id,
                channel: None,
                state: WorkerSideState::Online,
                exited_after_disconnect: false,
                next_seq: 1,
                acks: HashMap::new(),
                next_token: 1,
                servers: HashMap::new(),
                closing: BTreeSet::new(),
                after_close: None,
                unheard: Vec::new(),
                queries: HashMap::new(),
                by_key: HashMap::new(),
                indexes: HashMap::new(),
                key_index: HashMap::new(),
                lag: Rc::new(lag::LagMeter::default()),
                watchdog,
                corked: false,
                wrote_this_turn: false,
                http_reporters: Vec::new(),
                http_reported: None,
                full: BTreeSet::new(),
                credit_watch: None,
                fds: fds::FdBudget::default(),
                redrain_since: None,
                announce_credit: false,
            })),
            hooks: Rc::new(Hooks::default()),
        };
        // The primary's limits, so that a frame it would refuse fails here with a `SendError`.
        let config = ChannelConfig {
            limits: crate::cluster::channel_limits(),
            ..ChannelConfig::default()
        };
        let ch = Channel::new(fd, config)?;
        let w = worker.clone();
        let io = lp.register(ch, Interest::READABLE, move |lp, _, _| w.on_channel(lp))?;
        worker.inner.borrow_mut().channel = Some(io);
        let w = worker.clone();
        lp.add_flusher(move |lp| w.flush_held_back(lp));
        let meter = worker.inner.borrow().lag.clone();
        lag::start(lp, meter);
        // No hand-off is pending yet: the baseline of descriptors outside the loop is exact.
        worker.inner.borrow_mut().fds.count(lp);
        Ok(Some(worker))
    }

    /// This worker's id (from 1).
    pub fn id(&self) -> u32 {
        self.inner.borrow().id
    }

    /// Where the worker is in leaving.
    pub fn state(&self) -> WorkerSideState {
        self.inner.borrow().state
    }

    /// Whether the channel to the primary is open.
    pub fn is_connected(&self) -> bool {
        self.inner.borrow().channel.is_some()
    }

    /// Whether this worker is leaving on purpose.
    pub fn exited_after_disconnect(&self) -> bool {
        self.inner.borrow().exited_after_disconnect
    }

    /// Adds a message handler. Messages that arrived before the first handler are
    /// delivered to it on the next tick (as Node buffers them).
    pub fn on_message<F>(&self, lp: &mut EventLoop, cb: F)
    where
        F: FnMut(&mut EventLoop, &Worker, &mut Incoming) + 'static,
    {
        let first = self.hooks.message.push(Box::new(cb)) == 1;
        if first && !self.inner.borrow().unheard.is_empty() {
            let w = self.clone();
            lp.next_tick(move |lp| {
                let unheard = std::mem::take(&mut w.inner.borrow_mut().unheard);
                for m in unheard {
                    w.deliver(lp, m);
                }
            });
        }
    }

    /// Adds a handler for the channel closing (Node's `cluster.worker.on('disconnect')`).
    pub fn on_disconnect<F>(&self, cb: F)
    where
        F: FnMut(&mut EventLoop, &Worker) + 'static,
    {
        self.hooks.disconnect.push(Box::new(cb));
    }

    /// Adds a handler for relays this worker sent that the primary could not deliver
    /// ([`Worker::relay`] to a worker that does not exist or is not connected); it gets
    /// the destination id. With no handler, each such relay is logged as a warning.
    pub fn on_relay_failed<F>(&self, cb: F)
    where
        F: FnMut(&mut EventLoop, &Worker, u32) + 'static,
    {
        self.hooks.relay_failed.push(Box::new(cb));
    }

    /// Sends user bytes to the primary.
    ///
    /// The first message (or relay) of a loop iteration is written at once; later ones in
    /// the same iteration are queued and leave together right before the loop next waits
    /// for events, or when it exits ([`EventLoop::exit`] or running out of work): a
    /// callback that sends a thousand messages costs one system call, not a thousand. Only
    /// ending the process behind the loop's back (`std::process::exit`) can lose what is
    /// still queued; return from the callback or call [`EventLoop::exit`] instead.
    ///
    /// # Errors
    ///
    /// Disconnected, or the queue is full (back-pressure).
    pub fn send(&self, lp: &mut EventLoop, data: &[u8]) -> Result<(), SendError> {
        self.send_with_fds(lp, data, Vec::new())
    }

    /// Sends user bytes with descriptors to the primary.
    ///
    /// # Errors
    ///
    /// As [`Worker::send`]; the descriptors come back in the error.
    pub fn send_with_fds(
        &self,
        lp: &mut EventLoop,
        data: &[u8],
        fds: Vec<SendFd>,
    ) -> Result<(), SendError> {
        self.send_user(lp, |lp, io| {
            crate::cluster::with_channel(lp, io, fds, |ch, fds| {
                ch.send_with_fds(Kind::User, data, fds)
            })
        })
    }

    /// Queues user traffic with `queue` and writes it at once if it is the first of this
    /// loop iteration (see [`Worker::send`]).
    fn send_user<Q>(&self, lp: &mut EventLoop, queue: Q) -> Result<(), SendError>
    where
        Q: FnOnce(&mut EventLoop, Option<IoId>) -> Result<(), SendError>,
    {
        let (io, at_once) = {
            let mut inner = self.inner.borrow_mut();
            // Even while corked: the callback may never return (a hang), and what it sent
            // first must not wait for that.
            (
                inner.channel,
                !std::mem::replace(&mut inner.wrote_this_turn, true),
            )
        };
        queue(lp, io)?;
        if at_once {
            crate::cluster::flushed(lp, io)
        } else {
            Ok(())
        }
    }

    /// Writes the user traffic held back in this iteration (a flusher: see
    /// [`Worker::send`]).
    fn flush_held_back(&self, lp: &mut EventLoop) {
        let io = {
            let mut inner = self.inner.borrow_mut();
            if !std::mem::take(&mut inner.wrote_this_turn) {
                return;
            }
            inner.channel
        };
        if let Some(io) = io
            && crate::cluster::flush_channel(lp, io).is_err()
        {
            self.channel_gone(lp);
        }
    }

    /// Sends `value` to the primary as a JSON user message.
    ///
    /// # Errors
    ///
    /// `value` does not serialise ([`crate::Error::Json`]), or as
    /// [`Worker::send`].
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn send_json<T: serde::Serialize>(
        &self,
        lp: &mut EventLoop,
        value: &T,
    ) -> crate::Result<()> {
        let data = crate::error::to_json(value)?;
        Ok(self.send(lp, &data)?)
    }

    /// Sends user bytes to worker `to` through the primary, which stamps this worker's id
    /// as the sender. A relay the primary cannot deliver (no such worker, or it is not
    /// connected) comes back as a [`Worker::on_relay_failed`] call.
    ///
    /// # Errors
    ///
    /// As [`Worker::send`].
    pub fn relay(&self, lp: &mut EventLoop, to: u32, data: &[u8]) -> Result<(), SendError> {
        let msg = Message::Relay {
            peer: to,
            payload: data.to_vec(),
        };
        self.send_user(lp, |lp, io| {
            crate::cluster::queue_message(lp, io, &msg, Vec::new())
        })
    }

    /// Sends `value` to worker `to` through the primary as a JSON message (see
    /// [`Worker::relay`]).
    ///
    /// # Errors
    ///
    /// `value` does not serialise ([`crate::Error::Json`]), or as [`Worker::send`].
    #[cfg(feature = "serde")]
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    pub fn relay_json<T: serde::Serialize>(
        &self,
        lp: &mut EventLoop,
        to: u32,
        value: &T,
    ) -> crate::Result<()> {
        let data = crate::error::to_json(value)?;
        Ok(self.relay(lp, to, &data)?)
    }

    /// Tells the primary the application is ready for traffic.
    ///
    /// # Errors
    ///
    /// As [`Worker::send`].
    pub fn ready(&self, lp: &mut EventLoop) -> Result<(), SendError> {
        self.send_msg(lp, &Message::Ready)
    }

    /// Tells the primary one of this worker's servers listens at `address` (the primary
    /// emits `Listening`); `key` is the primary's listener id, or 0 for a server the worker
    /// bound itself.
    ///
    /// # Errors
    ///
    /// As [`Worker::send`].
    pub fn notify_listening(
        &self,
        lp: &mut EventLoop,
        key: u32,
        address: Endpoint,
    ) -> Result<(), SendError> {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.state == WorkerSideState::Online {
                inner.state = WorkerSideState::Listening;
            }
        }
        self.send_msg(
            lp,
            &Message::Listening {
                key,
                bound: address,
            },
        )
    }

    pub(crate) fn send_msg(&self, lp: &mut EventLoop, msg: &Message) -> Result<(), SendError> {
        self.send_msg_with_fds(lp, msg, Vec::new())
    }

    /// Sends a control message with descriptors to the primary (queued while corked).
    pub(crate) fn send_msg_with_fds(
        &self,
        lp: &mut EventLoop,
        msg: &Message,
        fds: Vec<crate::ipc::SendFd>,
    ) -> Result<(), SendError> {
        let (io, corked) = {
            let inner = self.inner.borrow();
            (inner.channel, inner.corked)
        };
        if corked {
            crate::cluster::queue_message(lp, io, msg, fds)
        } else {
            crate::cluster::send_message(lp, io, msg, fds)
        }
    }

    /// Adds a source of HTTP counters, summed into the reports this worker sends the
    /// primary with its heartbeat answers ([`crate::primary::Primary::http_stats`]).
    #[cfg(feature = "http")]
    pub(crate) fn add_http_reporter(&self, report: Box<dyn Fn() -> crate::ipc::HttpReport>) {
        self.inner.borrow_mut().http_reporters.push(report);
    }

    /// The sum of the HTTP counters, if there are any and they changed since the last
    /// report (which this then becomes).
    fn http_report_if_changed(&self) -> Option<crate::ipc::HttpReport> {
        let mut inner = self.inner.borrow_mut();
        if inner.http_reporters.is_empty() {
            return None;
        }
        let mut sum = crate::ipc::HttpReport::default();
        for r in &inner.http_reporters {
            sum.add(&r());
        }
        if inner.http_reported.as_ref() == Some(&sum) {
            return None;
        }
        inner.http_reported = Some(sum.clone());
        Some(sum)
    }

    /// Tracks a server that must close before the worker disconnects. `close` is called
    /// when the worker leaves; it must stop accepting and call [`ServerClosed::done`] once
    /// the server's connections have ended. `key` is the primary's listener id, if the
    /// server listens through the primary (the primary is told when it closes).
    pub fn track_server<F>(&self, key: Option<u32>, close: F) -> u64
    where
        F: FnOnce(&mut EventLoop, ServerClosed) + 'static,
    {
        let mut inner = self.inner.borrow_mut();
        let token = inner.next_token;
        inner.next_token += 1;
        inner.servers.insert(
            token,
            Tracked {
                key,
                close: Some(Box::new(close)),
            },
        );
        token
    }

    /// A tracked server closed by itself: stop tracking it (and tell the primary).
    pub fn untrack_server(&self, lp: &mut EventLoop, token: u64) {
        self.server_closed(lp, token);
    }

    /// A tracked server started closing: tell the primary now (so it stops routing to it)
    /// and forget its key.
    pub(crate) fn stop_routing(&self, lp: &mut EventLoop, token: u64) {
        let key = {
            let mut inner = self.inner.borrow_mut();
            let key = inner.servers.get_mut(&token).and_then(|t| t.key.take());
            if let Some(k) = key {
                inner.by_key.remove(&k);
                inner.release_index(k);
            }
            key
        };
        if let Some(key) = key {
            let _ = self.send_msg(lp, &Message::Close { key });
        }
    }

    fn server_closed(&self, lp: &mut EventLoop, token: u64) {
        let (key, next) = {
            let mut inner = self.inner.borrow_mut();
            let key = inner.servers.remove(&token).and_then(|t| t.key);
            if let Some(k) = key {
                inner.by_key.remove(&k);
                inner.release_index(k);
            }
            inner.closing.remove(&token);
            let next = if inner.closing.is_empty() {
                inner.after_close.take()
            } else {
                None
            };
            (key, next)
        };
        if let Some(key) = key {
            let _ = self.send_msg(lp, &Message::Close { key });
        }
        if let Some(next) = next {
            next(lp, self);
        }
    }

    /// Leaves gracefully (Node's `cluster.worker.disconnect()`): closes the servers, waits
    /// for their connections to end, tells the primary it leaves on purpose, and closes the
    /// channel once the primary acknowledges.
    pub fn disconnect(&self, lp: &mut EventLoop) {
        if !self.begin_leaving(WorkerSideState::Disconnecting) {
            return;
        }
        self.close_servers(lp, Box::new(|lp, w| w.announce_and_close(lp)));
    }

    /// Leaves at once (Node's worker-side `kill()`): tells the primary it leaves on purpose,
    /// closes the channel once acknowledged, and exits with code 0. Servers are not closed
    /// first.
    pub fn kill(&self, lp: &mut EventLoop) {
        if self.inner.borrow().channel.is_none() {
            lp.exit(0);
            return;
        }
        if !self.begin_leaving(WorkerSideState::Destroying) {
            return;
        }
        self.announce_and_close(lp);
    }

    /// Connections handed to this worker that it lost because its descriptor table was
    /// full when they came (the kernel closed them; each is logged with its listener and
    /// number). Credit keeps this at 0 unless descriptors are used up outside the loop.
    pub fn lost_hand_offs(&self, lp: &EventLoop) -> u64 {
        let io = self.inner.borrow().channel;
        io.and_then(|io| lp.io_ref::<Channel>(io))
            .map_or(0, Channel::lost_fds)
    }

    /// This worker's current event-loop lag (how late its sampling timer fires), as
    /// reported in heartbeats.
    pub fn loop_lag(&self) -> std::time::Duration {
        self.inner.borrow().lag.get()
    }

    /// The seeds' "suicide signal": after a fatal error, stop accepting, ask the primary to
    /// start a replacement, let the open connections finish, then leave. The primary stops
    /// routing to this worker as soon as it hears.
    pub fn going_down(&self, lp: &mut EventLoop, reason: &str) {
        let _ = self.send_msg(
            lp,
            &Message::GoingDown {
                reason: reason.to_string(),
            },
        );
        self.disconnect(lp);
    }

    /// Lets the loop end while the channel is still open (Node's `process.channel.unref()`).
    pub fn unref_channel(&self, lp: &mut EventLoop) {
        if let Some(io) = self.inner.borrow().channel {
            lp.unref(io);
        }
    }

    fn begin_leaving(&self, state: WorkerSideState) -> bool {
        let mut inner = self.inner.borrow_mut();
        if matches!(
            inner.state,
            WorkerSideState::Disconnecting | WorkerSideState::Destroying
        ) {
            return false;
        }
        inner.state = state;
        inner.exited_after_disconnect = true;
        true
    }

    /// Sends `ExitedAfterDisconnect` and closes the channel on the acknowledgement.
    fn announce_and_close(&self, lp: &mut EventLoop) {
        let seq = {
            let mut inner = self.inner.borrow_mut();
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner
                .acks
                .insert(seq, Box::new(|lp, w: &Worker| w.close_channel(lp)));
            seq
        };
        if self
            .send_msg(lp, &Message::ExitedAfterDisconnect { seq })
            .is_err()
        {
            self.close_channel(lp);
        }
    }

    /// Starts closing every tracked server; `then` runs once all have closed.
    fn close_servers(&self, lp: &mut EventLoop, then: AckCb) {
        let closers: Vec<(u64, CloseFn)> = {
            let mut inner = self.inner.borrow_mut();
            let closers: Vec<(u64, CloseFn)> = inner
                .servers
                .iter_mut()
                .filter_map(|(t, s)| s.close.take().map(|c| (*t, c)))
                .collect();
            inner.closing.extend(closers.iter().map(|(t, _)| *t));
            if inner.closing.is_empty() {
                drop(inner);
                then(lp, self);
                return;
            }
            inner.after_close = Some(then);
            closers
        };
        for (token, close) in closers {
            close(
                lp,
                ServerClosed {
                    worker: self.clone(),
                    token,
                },
            );
        }
    }

    fn close_channel(&self, lp: &mut EventLoop) {
        // Leaving on purpose: the hang-up that follows is not the primary's death.
        if let Some(w) = &self.inner.borrow().watchdog {
            w.stand_down();
        }
        let io = self.inner.borrow().channel;
        if let Some(ch) = io.and_then(|io| lp.io_mut::<Channel>(io)) {
            // Shut down after what is queued has gone out (best effort).
            let _ = ch.flush();
            ch.close();
        }
        self.channel_gone(lp);
    }

    fn on_channel(&self, lp: &mut EventLoop) {
        self.drain(lp, false);
    }

    /// Reads the channel as far as the descriptor headroom allows (see [`fds`]), at least
    /// one message if `forced`, and handles what it read.
    fn drain(&self, lp: &mut EventLoop, forced: bool) {
        let Some(io) = self.inner.borrow().channel else {
            return;
        };
        let budget = self.inner.borrow().fds.read_budget(lp);
        let budget = match budget {
            Some(b) => b,
            None if forced => 1,
            None => {
                // No room to read descriptors in: only write what is queued.
                if crate::cluster::flush_channel(lp, io).is_err() {
                    self.channel_gone(lp);
                } else {
                    self.drain_later(lp);
                }
                return;
            }
        };
        // Budgeted in bytes as in the primary too: a primary that sends much (relays,
        // broadcasts) cannot starve the worker's own connections.
        let w = self.clone();
        let resume = Box::new(move |lp: &mut EventLoop| w.on_channel(lp));
        let limit = crate::cluster::ReadLimit::Budget(resume);
        let (msgs, closed, more) =
            crate::cluster::drain_channel_within(lp, io, &"the primary", limit, budget);
        let mut gone = closed.is_some();
        if !msgs.is_empty() {
            self.inner.borrow_mut().corked = true;
            let mut msgs = std::collections::VecDeque::from(msgs);
            while let Some((msg, fds)) = msgs.pop_front() {
                if matches!(msg, Message::User(_) | Message::Relay { .. }) {
                    // User code may not return (a hang, a crash): connections read
                    // along with its message go back to the primary first.
                    self.give_back_hand_offs(lp, &mut msgs);
                }
                self.handle(lp, msg, fds);
            }
            let io = {
                let mut inner = self.inner.borrow_mut();
                inner.corked = false;
                inner.channel
            };
            if let Some(io) = io
                && !gone
                && crate::cluster::flush_channel(lp, io).is_err()
            {
                gone = true;
            }
        }
        if gone {
            self.channel_gone(lp);
        } else if more {
            self.drain_later(lp);
        }
    }

    /// A drain stopped at the descriptor headroom, or did not start (see [`fds`]): read on
    /// once the messages read have been handled — at once if there is headroom, else once
    /// connections have closed (looked at every credit-watch period), or after
    /// [`fds::READ_STALL_MAX_MS`]. One such wait at a time.
    fn drain_later(&self, lp: &mut EventLoop) {
        let now = lp.now();
        let room = {
            let mut inner = self.inner.borrow_mut();
            if inner.redrain_since.is_some() {
                return;
            }
            inner.redrain_since = Some(now);
            inner.fds.read_budget(lp).is_some()
        };
        if room {
            let w = self.clone();
            lp.set_immediate(move |lp| w.redrain(lp));
        } else {
            self.redrain_soon(lp);
        }
    }

    fn redrain_soon(&self, lp: &mut EventLoop) {
        let w = self.clone();
        lp.set_timeout(listen::CREDIT_POLL_MS, move |lp| w.redrain(lp));
    }

    /// The wait of [`Worker::drain_later`] is over if there is room or it lasted long enough.
    fn redrain(&self, lp: &mut EventLoop) {
        let (room, since) = {
            let inner = self.inner.borrow();
            (inner.fds.read_budget(lp).is_some(), inner.redrain_since)
        };
        let Some(since) = since else {
            return;
        };
        let stalled = lp.now().saturating_sub(since) >= fds::READ_STALL_MAX_MS;
        if !room && !stalled {
            self.redrain_soon(lp);
            return;
        }
        {
            let mut inner = self.inner.borrow_mut();
            inner.redrain_since = None;
            // The primary may be waiting to see these read: say the credit after them.
            inner.announce_credit = true;
        }
        self.drain(lp, stalled);
        self.inner.borrow_mut().announce_credit = false;
    }

    fn handle(&self, lp: &mut EventLoop, msg: Message, fds: Vec<OwnedFd>) {
        match msg {
            Message::User(data) => self.deliver(
                lp,
                Incoming {
                    from: None,
                    data,
                    fds,
                },
            ),
            Message::Relay { peer, payload } => self.deliver(
                lp,
                Incoming {
                    from: Some(peer),
                    data: payload,
                    fds,
                },
            ),
            Message::Disconnect => {
                if self.begin_leaving(WorkerSideState::Disconnecting) {
                    self.close_servers(lp, Box::new(|lp, w| w.close_channel(lp)));
                }
            }
            Message::Ack { seq } => {
                let cb = self.inner.borrow_mut().acks.remove(&seq);
                if let Some(cb) = cb {
                    cb(lp, self);
                }
            }
            Message::QueryReply {
                seq,
                errno,
                key,
                mode,
                bound,
            } => self.on_query_reply(lp, seq, errno, key, mode, bound, fds),
            Message::NewConn { key, seq, reply } => self.on_new_conn(lp, key, seq, reply, fds),
            Message::Ping { seq } => {
                let lag_us = self.inner.borrow().lag.get().as_micros() as u64;
                let _ = self.send_msg(lp, &Message::Pong { seq, lag_us });
                if let Some(report) = self.http_report_if_changed() {
                    let _ = self.send_msg(lp, &Message::HttpStats(report));
                }
            }
            Message::RelayFailed { peer } => {
                if self.hooks.relay_failed.is_empty() {
                    log::warn!("worker: a relay to worker {peer} was not delivered");
                } else {
                    self.hooks.relay_failed.run(|h| h(lp, self, peer));
                }
            }
            other => log::debug!("worker: ignoring {:?} from the primary", other.kind()),
        }
    }

    fn deliver(&self, lp: &mut EventLoop, mut msg: Incoming) {
        if self.hooks.message.is_empty() {
            self.inner.borrow_mut().unheard.push(msg);
            return;
        }
        self.hooks.message.run(|h| h(lp, self, &mut msg));
    }

    /// The channel is closed: run the disconnect handlers; exit unless leaving on purpose.
    fn channel_gone(&self, lp: &mut EventLoop) {
        let (io, on_purpose, destroying) = {
            let mut inner = self.inner.borrow_mut();
            let Some(io) = inner.channel.take() else {
                return;
            };
            inner.acks.clear();
            (
                io,
                inner.exited_after_disconnect,
                inner.state == WorkerSideState::Destroying,
            )
        };
        lp.close(io, |_| {});
        self.hooks.disconnect.run(|h| h(lp, self));
        if !on_purpose || destroying {
            lp.exit(0);
        }
    }
}
