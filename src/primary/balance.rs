//! Listening sockets and the balancer: how `listen()` in many workers becomes one port.
//!
//! Workers ask for a listener with `QueryServer`; the primary keys requests like Node
//! (endpoint, per-worker index, flags), so the n-th `listen(0)` of every worker shares one
//! port. What a key gets depends on the [`Policy`]:
//!
//! | policy | primary | workers |
//! |---|---|---|
//! | [`Policy::RoundRobin`] (default) | binds, listens, accepts; hands connections to workers (`NewConn` + fds, each worker's share of a burst in one message) | adopt the connection; give back the ones they refuse (`Rejected` + fd) |
//! | [`Policy::Shared`] (`none`) | binds and listens; sends the socket | accept on their own loops |
//! | [`Policy::ReusePort`] | reserves the port (bound, not listening) | bind their own `SO_REUSEPORT` sockets; the kernel spreads connections |
//!
//! With `reuseport`, each worker's socket has its own accept queue: when a worker retires,
//! the connections still queued on its socket are reset unless the kernel migrates them
//! (`net.ipv4.tcp_migrate_req = 1`, Linux ≥ 5.14; the primary warns at start when it is 0).
//! `rr` and `none` lose nothing on reload.
//!
//! UDP is always shared, as in Node. The backlog is the largest any worker asked for
//! (Node: the first worker's in round-robin, the last one's when shared).
//!
//! # Round-robin with credit
//!
//! Connections go to the workers in turn, skipping those without free credit. The
//! primary accepts every connection waiting at that moment (up to the workers' free
//! credit, at most [`HAND_OFF_BATCH`] each), shares them out one at a time in
//! round-robin order over the workers that still have room (a worker that reads its
//! hand-offs faster gets no more of them), and sends each worker its share in one
//! `NewConn` message (one `sendmsg`, one wake-up of the worker). A worker holds at most
//! `credit` hand-offs it has not read.
//! It does not answer the ones it takes: the primary keeps a duplicate of the worker's
//! end of their channel and asks the kernel how much of it the worker has not read yet
//! (one `FIONREAD` per worker with hand-offs outstanding, when accepting; see
//! [`ledger`](crate::ipc::ledger)). The `NewConn` that uses up a worker's credit asks for
//! a `Credit` answer, so the primary hears when it has read them. A worker at its own
//! connection limit says so (`Credit` 0), gives back what it cannot take (`Rejected` with
//! the descriptor), and sends `Credit` once it has room again (it checks every 10 ms while
//! full). When no worker has credit the primary stops accepting, and the kernel's backlog
//! holds the clients: no unbounded queue, no busy loop (Node's RR has both).
//!
//! When accepting fails because the primary's descriptor table is full (`EMFILE`, or
//! `ENFILE` for the system's), the clients stay in the backlog too. If the primary holds
//! connections it accepted in that round, handing them off frees their descriptors and
//! it accepts again at once (each round makes progress); otherwise the listener stops
//! accepting and a timer retries every [`ACCEPT_RETRY_MS`](crate::net::ACCEPT_RETRY_MS).
//! One log line per episode (which ends once the backlog is empty). No spin: a full table
//! would fail every accept at once; no stall: connections already waiting are not
//! reported again by the edge-triggered poller, so without the timer they would wait
//! for the next client to arrive.
//!
//! The listener wakes the primary for every connection that reaches an empty accept
//! queue. How many connections it then finds waiting depends on how soon it runs: by
//! default the primary's loop is in the batch scheduling class
//! ([`PrimaryOptions::yield_to_workers`](super::PrimaryOptions::yield_to_workers), Linux),
//! so a wake-up never preempts a busy worker. On an idle CPU it runs at once; on a loaded
//! machine it runs when a CPU frees up and takes every connection that arrived meanwhile,
//! so bursts grow exactly when CPU is short, with no timer and no wait on an idle
//! machine. With accept windows ([`window`](super::window), opt-in) a heavy stream of
//! connections is accepted once per window instead, whatever the load.
//!
//! The primary keeps the worker's end of each channel open, so a connection handed off
//! is never closed by the kernel before a worker has it: when a worker dies, the
//! hand-offs it never read are read back from its end and handed to other workers, and
//! a worker that refuses one gives it back. Nothing is leaked or reset (Node leaks
//! these). Connections that come back wait in the handle's queue (bounded by the total
//! credit) and are handed off again oldest first.

use crate::rt::id::{IdMap, IdSet};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::window::AcceptWindow;
use crate::ipc::{Endpoint, LISTEN_IPV6_ONLY, ListenRequest};
use crate::rt::IoId;
use crate::sys::net::{self as sysnet, BindOptions};

/// Environment variable choosing the policy: `rr`, `none` or `reuseport`.
pub const POLICY_ENV: &str = "FORKLOOP_SCHED_POLICY";
/// Default hand-offs a worker may hold unread.
pub const DEFAULT_CREDIT: u32 = 16;
/// Most connections handed to a worker in one `NewConn` message (also bounded by the
/// channel's descriptors per frame and by the worker's free credit).
pub const HAND_OFF_BATCH: u32 = 16;
/// `listen()` backlog when a worker asks for none (Node's default).
pub const DEFAULT_BACKLOG: u32 = 511;
/// Default most listeners one worker may hold in the primary (see
/// [`PrimaryOptions::max_listeners_per_worker`](super::PrimaryOptions::max_listeners_per_worker)).
pub const DEFAULT_MAX_LISTENERS_PER_WORKER: u32 = 64;
/// The error number a worker's listen request is refused with when the worker holds its
/// cap of listeners: `EDQUOT` ("quota exceeded"), which binding a socket never returns,
/// so the worker can tell it apart and say what it means.
pub const LISTENER_CAP_ERRNO: i32 = nix::libc::EDQUOT;

/// How a listening endpoint is shared by the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The primary accepts and hands connections to workers (`rr`, the default).
    RoundRobin,
    /// The workers accept on the primary's socket (`none`).
    Shared,
    /// Each worker binds its own `SO_REUSEPORT` socket (`reuseport`, Linux; elsewhere it
    /// falls back to round-robin with a warning).
    ReusePort,
}

/// A policy name that is not `rr`, `none` or `reuseport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePolicyError {
    /// The text that was given.
    pub given: String,
}

impl fmt::Display for ParsePolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown policy {:?}: expected one of rr, none, reuseport",
            self.given
        )
    }
}

impl std::error::Error for ParsePolicyError {}

impl FromStr for Policy {
    type Err = ParsePolicyError;

    /// Parses `rr`, `none` or `reuseport` (the names of [`Policy::name`]).
    fn from_str(s: &str) -> Result<Policy, ParsePolicyError> {
        match s {
            "rr" => Ok(Policy::RoundRobin),
            "none" => Ok(Policy::Shared),
            "reuseport" => Ok(Policy::ReusePort),
            other => Err(ParsePolicyError {
                given: other.to_string(),
            }),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Policy {
    /// The policy named by [`POLICY_ENV`], if set.
    ///
    /// # Errors
    ///
    /// The variable is set to something else than `rr`, `none` or `reuseport`.
    pub fn from_env() -> Result<Option<Policy>, ParsePolicyError> {
        match std::env::var_os(POLICY_ENV) {
            Some(v) => v
                .to_str()
                .ok_or_else(|| ParsePolicyError {
                    given: v.to_string_lossy().into_owned(),
                })?
                .parse()
                .map(Some),
            None => Ok(None),
        }
    }

    /// The name used in [`POLICY_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "rr",
            Policy::Shared => "none",
            Policy::ReusePort => "reuseport",
        }
    }

    /// The policy actually used on this platform.
    pub(crate) fn effective(self) -> Policy {
        if self == Policy::ReusePort && !sysnet::REUSEPORT_BALANCES {
            log::warn!("reuseport does not balance connections on this platform; using rr");
            return Policy::RoundRobin;
        }
        if self == Policy::ReusePort && sysnet::reuseport_migrates() == Some(false) {
            log::warn!(
                "reuseport: net.ipv4.tcp_migrate_req is 0, so connections waiting in a \
                 retiring worker's accept queue are reset on reload; set it to 1 (Linux ≥ 5.14) \
                 or use rr"
            );
        }
        self
    }
}

/// A descriptor the primary's loop polls: a listening socket it accepts on, an accept
/// window's timer.
#[derive(Debug)]
pub(crate) struct Polled<T: AsRawFd>(pub(crate) T);

impl<T: AsRawFd> Source for Polled<T> {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        SourceFd(&self.0.as_raw_fd()).register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        SourceFd(&self.0.as_raw_fd()).reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        SourceFd(&self.0.as_raw_fd()).deregister(r)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HandleKey {
    endpoint: Endpoint,
    index: u32,
    flags: u32,
}

/// How one handle serves its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    RoundRobin,
    Shared,
    ReusePort,
}

/// One listening endpoint shared by workers.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) mode: Mode,
    pub(crate) bound: Endpoint,
    key: HandleKey,
    workers: BTreeSet<u32>,
    backlog: u32,
    /// The socket: shared with workers (Shared, UDP), reserving the port (ReusePort), or
    /// kept for `listen()` backlog changes (RoundRobin; the loop owns a duplicate).
    pub(crate) fd: Option<Arc<OwnedFd>>,
    /// RoundRobin: the accepting listener on the primary's loop.
    pub(crate) listener: Option<IoId>,
    /// RoundRobin: accepting is paused because no worker has credit.
    pub(crate) paused: bool,
    /// RoundRobin: accepting is paused because the primary's descriptor table is full
    /// (`EMFILE`/`ENFILE`); the timer that retries (see [`ACCEPT_RETRY_MS`]).
    ///
    /// [`ACCEPT_RETRY_MS`]: crate::net::ACCEPT_RETRY_MS
    pub(crate) out_of_fds: Option<crate::rt::TimerId>,
    /// An episode of failing accepts for want of descriptors is under way (it was logged;
    /// it ends once the backlog is empty).
    pub(crate) fd_episode: bool,
    /// RoundRobin with accept windows: their state, and the timer ending the open one
    /// (made when the first window opens).
    pub(crate) window: Option<AcceptWindow>,
    pub(crate) window_timer: Option<IoId>,
    /// Connections waiting for a worker with credit (only ones that came back), oldest
    /// first.
    queue: VecDeque<Conn>,
    /// Workers that refused a connection of this handle; skipped until they accept one.
    refused: IdSet<u32>,
    cursor: u32,
    unix_path: Option<PathBuf>,
}

/// An accepted connection, and when it was accepted (a count: older is smaller), so that
/// connections coming back are handed off again oldest first. The count travels with
/// the connection (`NewConn`'s `seq`) and comes back with it.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) born: u64,
    pub(crate) fd: OwnedFd,
}

#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Hand-offs the worker had not read when last looked (plus those sent since).
    inflight: u32,
    /// Hand-offs sent so far, less the ones given back.
    handed: u64,
    /// The worker's own limit from its last answer (`u32::MAX`: none).
    reported: u32,
    /// Listeners the worker holds (handles it joined).
    listeners: u32,
    /// A listen request of the worker was refused for the cap (logged once).
    capped: bool,
    /// The worker gave back a connection it was never handed (logged once).
    bogus: bool,
}

/// The primary's listeners and hand-off bookkeeping.
#[derive(Debug)]
pub(crate) struct Balancer {
    pub(crate) policy: Policy,
    credit: u32,
    /// Most listeners one worker may hold.
    max_listeners: u32,
    /// The length of round-robin listeners' accept windows (`None`: off).
    window: Option<Duration>,
    /// Accept windows opened so far (each time waking for every connection stopped).
    pub(crate) windows_opened: u64,
    /// Connections read back from workers that died without reading them.
    pub(crate) taken_back: u64,
    by_key: HashMap<HandleKey, u32>,
    pub(crate) handles: IdMap<u32, Handle>,
    next_handle: u32,
    /// Connections accepted so far (each [`Conn::born`]).
    accepted_conns: u64,
    load: IdMap<u32, Load>,
    /// Workers taking no new connections (quarantined, retiring).
    pub(crate) excluded: IdSet<u32>,
    /// Keep a listener open (accepting paused) when its last worker leaves, so clients wait
    /// in the backlog for a replacement instead of being refused (set while supervised).
    pub(crate) keep_listeners: bool,
    /// Sockets adopted from a service manager (systemd socket activation). A handle uses a
    /// duplicate, so the original outlives every handle and serves the next one.
    adopted: Vec<OwnedFd>,
}

/// A new handle's socket: its mode, descriptor, bound endpoint and the path to remove
/// when it closes.
type Opened = (Mode, OwnedFd, Endpoint, Option<PathBuf>);

/// What answering a query needs from the primary.
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) handle: u32,
    pub(crate) mode: Mode,
    pub(crate) bound: Endpoint,
    /// Shared policy and UDP: the socket to send with the reply.
    pub(crate) fd: Option<Arc<OwnedFd>>,
    /// RoundRobin: a listener the primary must start accepting on.
    pub(crate) start_accepting: Option<OwnedFd>,
}

impl Balancer {
    pub(crate) fn new(policy: Policy, credit: u32, window: Option<Duration>) -> Balancer {
        Balancer {
            policy: policy.effective(),
            credit: credit.max(1),
            max_listeners: DEFAULT_MAX_LISTENERS_PER_WORKER,
            window,
            windows_opened: 0,
            taken_back: 0,
            by_key: HashMap::new(),
            handles: IdMap::default(),
            next_handle: 1,
            accepted_conns: 0,
            load: IdMap::default(),
            excluded: IdSet::default(),
            keep_listeners: false,
            adopted: Vec::new(),
        }
    }

    /// Adds sockets to use instead of binding when a request matches one (see
    /// [`Balancer::adopted_for`]).
    pub(crate) fn adopt(&mut self, fds: Vec<OwnedFd>) {
        self.adopted.extend(fds);
    }

    /// A duplicate of the adopted socket bound to exactly `ep`, listening with `backlog`
    /// (TCP, Unix), if there is one. Only an exact address matches: a request for port 0,
    /// or for `0.0.0.0:80` when `127.0.0.1:80` was adopted, binds as usual. The reuseport
    /// policy cannot share an adopted port and uses round-robin for it; no path is
    /// recorded, so the service manager's Unix socket file is never removed.
    fn adopted_for(&self, ep: &Endpoint, backlog: u32) -> io::Result<Option<Opened>> {
        let matches = |fd: &&OwnedFd| match ep {
            Endpoint::Tcp(a) | Endpoint::Udp(a) => {
                let stream = matches!(ep, Endpoint::Tcp(_));
                sysnet::is_stream_socket(*fd).is_ok_and(|s| s == stream)
                    && sysnet::local_addr(*fd).is_ok_and(|l| l == *a)
            }
            Endpoint::Unix(p) => {
                sysnet::is_stream_socket(*fd).is_ok_and(|s| s)
                    && sysnet::unix_local_path(*fd).is_ok_and(|l| l.as_deref() == Some(p))
            }
        };
        let Some(original) = self.adopted.iter().find(matches) else {
            return Ok(None);
        };
        let fd = original.try_clone()?;
        crate::sys::set_nonblocking(fd.as_fd(), true)?;
        let mode = match (ep, self.policy) {
            (Endpoint::Udp(_), _) | (_, Policy::Shared) => Mode::Shared,
            _ => Mode::RoundRobin,
        };
        if !matches!(ep, Endpoint::Udp(_)) {
            sysnet::listen(&fd, backlog as i32)?;
        }
        log::info!("listening on {ep:?} with an adopted socket");
        Ok(Some((mode, fd, ep.clone(), None)))
    }

    /// Sets the most listeners one worker may hold (at least 1).
    pub(crate) fn set_max_listeners(&mut self, max: u32) {
        self.max_listeners = max.max(1);
    }

    /// Joins `worker` to the handle for `req`, creating (binding) it if needed.
    ///
    /// # Errors
    ///
    /// Binding failed, or the worker holds its cap of listeners already
    /// ([`LISTENER_CAP_ERRNO`]; logged at the first refusal).
    pub(crate) fn query(&mut self, worker: u32, req: &ListenRequest) -> io::Result<Granted> {
        let key = HandleKey {
            endpoint: req.endpoint.clone(),
            index: req.index,
            flags: req.flags,
        };
        let member = self
            .by_key
            .get(&key)
            .and_then(|id| self.handles.get(id))
            .is_some_and(|h| h.workers.contains(&worker));
        let load = self.load.entry(worker).or_insert(Load {
            reported: u32::MAX,
            ..Load::default()
        });
        if !member && load.listeners >= self.max_listeners {
            if !std::mem::replace(&mut load.capped, true) {
                log::warn!(
                    "worker {worker}: holds {} listeners, the most a worker may \
                     (PrimaryOptions::max_listeners_per_worker); refusing its further \
                     listen requests",
                    load.listeners
                );
            }
            return Err(io::Error::from_raw_os_error(LISTENER_CAP_ERRNO));
        }
        let backlog = if req.backlog == 0 {
            DEFAULT_BACKLOG
        } else {
            req.backlog
        };
        let mut start_accepting = None;
        let id = match self.by_key.get(&key) {
            Some(&id) => id,
            None => {
                let (handle, listener) = self.open(key.clone(), backlog)?;
                start_accepting = listener;
                let id = self.next_handle;
                self.next_handle += 1;
                self.by_key.insert(key, id);
                self.handles.insert(id, handle);
                id
            }
        };
        let Some(h) = self.handles.get_mut(&id) else {
            return Err(io::Error::other("listener table out of step"));
        };
        if backlog > h.backlog && h.mode != Mode::ReusePort {
            if let Some(fd) = &h.fd
                && matches!(h.bound, Endpoint::Tcp(_) | Endpoint::Unix(_))
            {
                sysnet::listen(fd.as_ref(), backlog as i32)?;
            }
            h.backlog = backlog;
        }
        if h.workers.insert(worker)
            && let Some(l) = self.load.get_mut(&worker)
        {
            l.listeners += 1;
        }
        let fd = match h.mode {
            Mode::Shared => h.fd.clone(),
            _ => None,
        };
        Ok(Granted {
            handle: id,
            mode: h.mode,
            bound: h.bound.clone(),
            fd,
            start_accepting,
        })
    }

    /// Binds a new handle for `key`.
    fn open(&self, key: HandleKey, backlog: u32) -> io::Result<(Handle, Option<OwnedFd>)> {
        let ipv6_only = key.flags & LISTEN_IPV6_ONLY != 0;
        let adopted = self.adopted_for(&key.endpoint, backlog)?;
        let (mode, fd, bound, unix_path) = match (&key.endpoint, adopted) {
            (_, Some(opened)) => opened,
            (Endpoint::Udp(addr), None) => {
                let fd = sysnet::bind_udp(
                    *addr,
                    BindOptions {
                        ipv6_only,
                        ..BindOptions::default()
                    },
                )?;
                let bound = Endpoint::Udp(sysnet::local_addr(&fd)?);
                (Mode::Shared, fd, bound, None)
            }
            (Endpoint::Tcp(addr), None) => {
                let (mode, opts) = match self.policy {
                    Policy::ReusePort => (
                        Mode::ReusePort,
                        BindOptions {
                            reuse_port: true,
                            ipv6_only,
                            listen: None,
                        },
                    ),
                    Policy::Shared => (
                        Mode::Shared,
                        BindOptions {
                            ipv6_only,
                            listen: Some(backlog as i32),
                            ..BindOptions::default()
                        },
                    ),
                    Policy::RoundRobin => (
                        Mode::RoundRobin,
                        BindOptions {
                            ipv6_only,
                            listen: Some(backlog as i32),
                            ..BindOptions::default()
                        },
                    ),
                };
                let fd = sysnet::bind_tcp(*addr, opts)?;
                let bound = Endpoint::Tcp(sysnet::local_addr(&fd)?);
                (mode, fd, bound, None)
            }
            (Endpoint::Unix(path), None) => {
                let fd = sysnet::bind_unix(path, backlog as i32)?;
                let mode = match self.policy {
                    Policy::Shared => Mode::Shared,
                    _ => Mode::RoundRobin, // reuseport has no meaning for paths
                };
                (mode, fd, Endpoint::Unix(path.clone()), Some(path.clone()))
            }
        };
        let accept_fd = if mode == Mode::RoundRobin {
            Some(fd.try_clone()?)
        } else {
            None
        };
        let handle = Handle {
            mode,
            bound,
            key,
            workers: BTreeSet::new(),
            backlog,
            fd: Some(Arc::new(fd)),
            listener: None,
            paused: false,
            out_of_fds: None,
            fd_episode: false,
            window: self
                .window
                .filter(|_| mode == Mode::RoundRobin)
                .map(AcceptWindow::new),
            window_timer: None,
            queue: VecDeque::new(),
            refused: IdSet::default(),
            cursor: 0,
            unix_path,
        };
        Ok((handle, accept_fd))
    }

    /// Free credit of `worker`, or 0.
    pub(crate) fn free(&self, worker: u32) -> u32 {
        if self.excluded.contains(&worker) {
            return 0;
        }
        let l = self.load.get(&worker).copied().unwrap_or_default();
        self.credit.min(l.reported).saturating_sub(l.inflight)
    }

    /// The workers of handle `id` that can take connections now, in round-robin order
    /// from the handle's position, each with its room: free credit, at most `batch`.
    fn rooms_iter(&self, id: u32, batch: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.handles.get(&id).into_iter().flat_map(move |h| {
            let start = h.cursor;
            h.workers
                .range(start..)
                .chain(h.workers.range(..start))
                .filter(|w| !h.refused.contains(w))
                .map(move |&w| (w, self.free(w).min(batch)))
                .filter(|&(_, room)| room > 0)
        })
    }

    /// [`Balancer::rooms_iter`], collected (for [`Balancer::share`]).
    pub(crate) fn rooms(&self, id: u32, batch: u32) -> Vec<(u32, u32)> {
        self.rooms_iter(id, batch).collect()
    }

    /// Whether some worker of handle `id` can take a connection now.
    pub(crate) fn has_room(&self, id: u32) -> bool {
        self.rooms_iter(id, 1).next().is_some()
    }

    /// Shares `n` connections of handle `id` out among `rooms` (from
    /// [`Balancer::rooms`], unchanged since; `n` at most their sum), one at a time, in
    /// round-robin order over the workers that still have room: every worker with room
    /// gets its turn, however much room it has, so a worker that reads its hand-offs
    /// faster than the others gets no more of them (a burst of new keep-alive connections
    /// is spread evenly, and stays so). Returns how many each worker gets, in round-robin
    /// order, and moves the handle's round-robin position past the worker that got the
    /// last one.
    pub(crate) fn share(&mut self, id: u32, mut rooms: Vec<(u32, u32)>, n: u32) -> Vec<(u32, u32)> {
        let mut shares = vec![0u32; rooms.len()];
        let len = rooms.len();
        let mut from = 0;
        let mut last = None;
        for _ in 0..n {
            let Some(i) = (0..len).map(|k| (from + k) % len).find(|&i| rooms[i].1 > 0) else {
                break;
            };
            rooms[i].1 -= 1;
            shares[i] += 1;
            from = (i + 1) % len;
            last = Some(rooms[i].0);
        }
        if let (Some(w), Some(h)) = (last, self.handles.get_mut(&id)) {
            h.cursor = w + 1;
        }
        rooms
            .iter()
            .zip(shares)
            .filter(|&(_, k)| k > 0)
            .map(|(&(w, _), k)| (w, k))
            .collect()
    }

    /// A connection just accepted.
    pub(crate) fn new_conn(&mut self, fd: OwnedFd) -> Conn {
        self.accepted_conns += 1;
        Conn {
            born: self.accepted_conns,
            fd,
        }
    }

    /// Records the hand-off of `n` connections to `worker`; returns whether that used up
    /// its credit (the hand-off then asks for a `Credit` answer).
    pub(crate) fn hand_off(&mut self, worker: u32, n: u32) -> bool {
        let l = self.load.entry(worker).or_default();
        l.inflight += n;
        l.handed += u64::from(n);
        self.free(worker) == 0
    }

    /// A hand-off of `n` connections to `worker` could not be sent (they are queued again).
    pub(crate) fn hand_off_failed(&mut self, worker: u32, n: u32) {
        if let Some(l) = self.load.get_mut(&worker) {
            l.inflight = l.inflight.saturating_sub(n);
            l.handed = l.handed.saturating_sub(u64::from(n));
        }
    }

    /// Of the connections sent to `worker`, `unread` are not read yet (the channel says).
    pub(crate) fn unread(&mut self, worker: u32, unread: u32) {
        if let Some(l) = self.load.get_mut(&worker) {
            l.inflight = unread;
        }
    }

    /// Workers of handle `id` worth looking at again: those with at least half their
    /// credit in hand-offs not known to be read. The others have room enough; counting
    /// what they were sent since the last look keeps turns fair without a system call.
    /// A worker with no room left is always among them, so accepting pauses only on a
    /// fresh look.
    pub(crate) fn outstanding(&self, id: u32) -> Vec<u32> {
        self.handles.get(&id).map_or_else(Vec::new, |h| {
            h.workers
                .iter()
                .copied()
                .filter(|w| {
                    self.load.get(w).is_some_and(|l| {
                        let limit = self.credit.min(l.reported);
                        l.inflight > 0 && l.inflight.saturating_mul(2) >= limit
                    })
                })
                .collect()
        })
    }

    /// `worker` has room for `credit` more hand-offs: it takes connections again, including
    /// on the handles where it refused one.
    pub(crate) fn credit(&mut self, worker: u32, credit: u32) {
        if let Some(l) = self.load.get_mut(&worker) {
            l.reported = credit;
        }
        if credit > 0 {
            for h in self.handles.values_mut() {
                h.refused.remove(&worker);
            }
        }
    }

    /// `worker` refused `conn` of handle `handle` and gave it back: it waits for another
    /// worker. A worker can give back only as many connections as it was handed: any
    /// more would be descriptors of its own making, which the primary would hold and hand
    /// on (a worker could fill the primary's descriptor table so); those are closed, and
    /// logged once per worker.
    pub(crate) fn rejected(&mut self, worker: u32, handle: u32, conn: Conn) {
        match self.load.get_mut(&worker) {
            Some(l) if l.handed > 0 => l.handed -= 1,
            Some(l) => {
                if !std::mem::replace(&mut l.bogus, true) {
                    log::warn!(
                        "worker {worker}: gave back a connection it was never handed; \
                         closing it (and any more such)"
                    );
                }
                return;
            }
            None => {
                log::debug!("worker {worker}: gave back a connection but listens nowhere");
                return;
            }
        }
        if let Some(h) = self.handles.get_mut(&handle) {
            h.refused.insert(worker);
        }
        self.requeue(handle, conn);
    }

    /// Queues `conn` again for handle `handle`, in age order.
    pub(crate) fn requeue(&mut self, handle: u32, conn: Conn) {
        match self.handles.get_mut(&handle) {
            Some(h) => {
                let at = h.queue.partition_point(|c| c.born < conn.born);
                h.queue.insert(at, conn);
            }
            None => log::debug!("connection for a closed listener dropped"),
        }
    }

    /// Queues again the connections of one `NewConn` message to handle `handle`: the
    /// i-th of `fds` is connection `seq + i`. Returns how many.
    pub(crate) fn requeue_run(&mut self, handle: u32, seq: u64, fds: Vec<OwnedFd>) -> u64 {
        let n = fds.len() as u64;
        for (i, fd) in fds.into_iter().enumerate() {
            let born = seq.wrapping_add(i as u64);
            self.requeue(handle, Conn { born, fd });
        }
        n
    }

    /// The oldest queued connection of `handle`, if any.
    pub(crate) fn next_queued(&mut self, handle: u32) -> Option<Conn> {
        self.handles.get_mut(&handle)?.queue.pop_front()
    }

    /// Removes `worker` from handle `id`; returns the handle if it has no workers left (it
    /// is then forgotten and its listener must be closed).
    pub(crate) fn leave(&mut self, worker: u32, id: u32) -> Option<Handle> {
        let h = self.handles.get_mut(&id)?;
        if h.workers.remove(&worker)
            && let Some(l) = self.load.get_mut(&worker)
        {
            l.listeners = l.listeners.saturating_sub(1);
        }
        h.refused.remove(&worker);
        if !h.workers.is_empty() || self.keep_listeners {
            return None;
        }
        self.forget(id)
    }

    /// Forgets handle `id` (its socket closes when the returned handle drops).
    fn forget(&mut self, id: u32) -> Option<Handle> {
        let h = self.handles.remove(&id)?;
        self.by_key.remove(&h.key);
        if let Some(path) = &h.unix_path {
            let _ = std::fs::remove_file(path);
        }
        Some(h)
    }

    /// Removes the handles no worker uses (after keeping them across worker changes).
    pub(crate) fn close_idle(&mut self) -> Vec<Handle> {
        let idle: Vec<u32> = self
            .handles
            .iter()
            .filter(|(_, h)| h.workers.is_empty())
            .map(|(id, _)| *id)
            .collect();
        idle.into_iter().filter_map(|id| self.forget(id)).collect()
    }

    /// `worker` is gone (what it never read was queued again before); returns the handles
    /// it was the last worker of.
    pub(crate) fn worker_gone(&mut self, worker: u32) -> Vec<Handle> {
        self.load.remove(&worker);
        self.excluded.remove(&worker);
        let ids: Vec<u32> = self.handles.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.leave(worker, id))
            .collect()
    }

    /// Handles whose queue is not empty or whose accepting is paused.
    pub(crate) fn waiting_handles(&self) -> Vec<u32> {
        self.handles
            .iter()
            .filter(|(_, h)| h.paused || !h.queue.is_empty())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Hand-offs sent to `worker` so far, less the ones it gave back.
    pub(crate) fn handed_to(&self, worker: u32) -> u64 {
        self.load.get(&worker).map_or(0, |l| l.handed)
    }

    /// Hand-offs `worker` had not read when last looked (plus those sent since).
    pub(crate) fn inflight_of(&self, worker: u32) -> u32 {
        self.load.get(&worker).map_or(0, |l| l.inflight)
    }
}

/// Accepts one connection from a round-robin handle's socket.
pub(crate) fn accept_one(fd: &impl AsFd) -> io::Result<OwnedFd> {
    sysnet::accept(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A round-robin balancer with credit 4 and workers `1..=n` on one port-0 handle.
    fn with_workers(n: u32) -> (Balancer, u32) {
        let mut b = Balancer::new(Policy::RoundRobin, 4, None);
        let req = ListenRequest {
            endpoint: Endpoint::Tcp("127.0.0.1:0".parse().unwrap()),
            index: 0,
            backlog: 0,
            flags: 0,
        };
        let mut handle = 0;
        for w in 1..=n {
            handle = b.query(w, &req).unwrap().handle;
        }
        (b, handle)
    }

    #[test]
    fn connections_are_shared_in_turn_among_the_workers_with_room() {
        let (mut b, h) = with_workers(2);
        let share = |b: &mut Balancer, n, batch| {
            let rooms = b.rooms(h, batch);
            b.share(h, rooms, n)
        };
        // Equal credit: turns alternate, starting at the first worker.
        assert_eq!(share(&mut b, 3, 16), [(1, 2), (2, 1)]);
        // The first worker took the last one, so the next turn is the second's.
        assert_eq!(share(&mut b, 1, 16), [(2, 1)]);

        // Three hand-offs to worker 1 leave it 1 free against worker 2's 4: turns still
        // alternate while worker 1 has room (having more room earns no more), then the
        // rest go to worker 2.
        assert!(!b.hand_off(1, 3), "one credit left");
        assert_eq!(share(&mut b, 4, 16), [(1, 1), (2, 3)]);
        assert!(!b.hand_off(2, 1));
        assert_eq!(
            share(&mut b, 2, 16),
            [(1, 1), (2, 1)],
            "in turn, not to the freer"
        );

        // No more than the room there is: free credit, at most `batch` per worker.
        let total: u32 = b.rooms(h, 2).iter().map(|r| r.1).sum();
        assert_eq!(total, 3);
        assert_eq!(share(&mut b, 10, 2), [(1, 1), (2, 2)]);
        assert!(b.has_room(h));
        assert_eq!(share(&mut b, 0, 16), []);
    }

    #[test]
    fn a_worker_gives_back_no_more_connections_than_it_was_handed() {
        let (mut b, h) = with_workers(1);
        let conn =
            |b: &mut Balancer| b.new_conn(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        b.hand_off(1, 1);
        let c = conn(&mut b);
        b.rejected(1, h, c);
        assert!(
            b.next_queued(h).is_some(),
            "a connection it was handed waits again"
        );
        let c = conn(&mut b);
        b.rejected(1, h, c);
        assert!(
            b.next_queued(h).is_none(),
            "one it was never handed is closed, not queued"
        );
    }

    #[test]
    fn a_worker_holds_at_most_its_cap_of_listeners() {
        let mut b = Balancer::new(Policy::RoundRobin, 4, None);
        b.set_max_listeners(2);
        let req = |index| ListenRequest {
            endpoint: Endpoint::Tcp("127.0.0.1:0".parse().unwrap()),
            index,
            backlog: 0,
            flags: 0,
        };
        let first = b.query(1, &req(0)).unwrap().handle;
        b.query(1, &req(1)).unwrap();
        let refused = b.query(1, &req(2)).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(LISTENER_CAP_ERRNO));
        assert!(
            b.query(1, &req(0)).is_ok(),
            "one it holds again is no new one"
        );
        assert!(b.query(2, &req(2)).is_ok(), "the cap is per worker");
        assert!(b.leave(1, first).is_some(), "its last worker left");
        assert!(b.query(1, &req(2)).is_ok(), "leaving one frees its place");
    }

    #[test]
    fn connections_that_come_back_wait_oldest_first() {
        let (mut b, h) = with_workers(1);
        let mut conns: Vec<Conn> = (0..3)
            .map(|_| b.new_conn(OwnedFd::from(std::fs::File::open("/dev/null").unwrap())))
            .collect();
        let newest = conns.pop().unwrap();
        let middle = conns.pop().unwrap();
        let oldest = conns.pop().unwrap();
        b.requeue(h, newest);
        b.requeue(h, oldest);
        b.requeue(h, middle);
        let order: Vec<u64> = std::iter::from_fn(|| b.next_queued(h).map(|c| c.born)).collect();
        assert_eq!(order, [1, 2, 3]);
    }
}
