//! Cluster-aware listening in a worker: `listen` asks the primary (Node's `queryServer`),
//! which answers how to serve the endpoint (see [`crate::primary`]'s policy table):
//!
//! * **hand-off** (round-robin): connections arrive as `NewConn` messages, each with one or
//!   more descriptors (a burst the primary accepted at once). Taking one needs no answer
//!   (the primary sees from the channel what the worker has read); a connection the worker
//!   refuses (server closing, at its limit, or unknown) goes back with `Rejected` and its
//!   descriptor, and the primary hands it to another worker. `Credit` tells the primary
//!   when a server fills up, when it has room again, and answers a `NewConn` that asks;
//!   it is also bounded by the worker's descriptor headroom, and sent when that changes
//!   much (see [`fds`](super::fds)), so a worker never takes a hand-off it cannot hold;
//! * **shared**: the listening socket comes with the reply; the worker accepts on it;
//! * **reuseport**: the worker binds its own `SO_REUSEPORT` socket to the address the
//!   primary reserved.
//!
//! Outside a cluster, [`listen_tcp`] simply binds.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;

use crate::ipc::{Endpoint, LISTEN_IPV6_ONLY, ListenMode, ListenRequest, Message};
use crate::net::{Stream, UdpSocket, tcp, udp, unix};
use crate::rt::EventLoop;
use crate::sys::net::{self as sysnet, BindOptions};

use super::{Server, Worker};

/// How often (ms) a worker with a full server checks whether it has room again (hand-off:
/// to tell the primary; shared listener: to wait on it again).
pub(super) const CREDIT_POLL_MS: u64 = 10;

/// How to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOptions {
    /// The `listen()` backlog asked for (the primary uses the largest any worker asks).
    pub backlog: u32,
    /// IPv6 addresses only: refuse IPv4-mapped connections.
    pub ipv6_only: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: crate::primary::DEFAULT_BACKLOG,
            ipv6_only: false,
        }
    }
}

/// A listen request waiting for the primary.
pub(super) struct Pending {
    server: Server,
    slot: (Endpoint, u32),
    index: u32,
    backlog: u32,
}

/// Listens on `addr`: through the primary when `worker` is given (in a cluster), by
/// binding here otherwise. The result arrives through [`Server::on_listening`] or
/// [`Server::on_error`], always after this call returns.
pub fn listen_tcp<F>(
    lp: &mut EventLoop,
    worker: Option<&Worker>,
    addr: SocketAddr,
    on_connection: F,
) -> Server
where
    F: FnMut(&mut EventLoop, &Server, Stream) + 'static,
{
    if let Some(w) = worker {
        return w.listen_tcp(lp, addr, on_connection);
    }
    match Server::bind(lp, addr, on_connection) {
        Ok(server) => {
            let s = server.clone();
            lp.next_tick(move |lp| s.now_listening(lp, false));
            server
        }
        Err(e) => {
            let server = Server::new(|lp, _, c: Stream| c.destroy(lp));
            let s = server.clone();
            lp.next_tick(move |lp| s.fail(lp, e));
            server
        }
    }
}

impl Worker {
    /// Listens on a TCP address through the primary (port 0: the n-th such listen of every
    /// worker shares one port). See [`listen_tcp`].
    pub fn listen_tcp<F>(&self, lp: &mut EventLoop, addr: SocketAddr, on_connection: F) -> Server
    where
        F: FnMut(&mut EventLoop, &Server, Stream) + 'static,
    {
        self.listen_with(
            lp,
            Endpoint::Tcp(addr),
            ListenOptions::default(),
            on_connection,
        )
    }

    /// Listens on a Unix-domain socket path through the primary.
    pub fn listen_unix<F>(
        &self,
        lp: &mut EventLoop,
        path: impl Into<PathBuf>,
        on_connection: F,
    ) -> Server
    where
        F: FnMut(&mut EventLoop, &Server, Stream) + 'static,
    {
        let path: PathBuf = path.into();
        let path = std::path::absolute(&path).unwrap_or(path);
        self.listen_with(
            lp,
            Endpoint::Unix(path),
            ListenOptions::default(),
            on_connection,
        )
    }

    /// Listens on `endpoint` (TCP or Unix) through the primary, with options.
    pub fn listen_with<F>(
        &self,
        lp: &mut EventLoop,
        endpoint: Endpoint,
        opts: ListenOptions,
        on_connection: F,
    ) -> Server
    where
        F: FnMut(&mut EventLoop, &Server, Stream) + 'static,
    {
        let server = Server::new(on_connection);
        self.query(lp, server.clone(), endpoint, opts);
        server
    }

    /// Sends the listen request for `server`.
    fn query(&self, lp: &mut EventLoop, server: Server, endpoint: Endpoint, opts: ListenOptions) {
        server.set_endpoint(endpoint.clone());
        let flags = if opts.ipv6_only { LISTEN_IPV6_ONLY } else { 0 };
        let (seq, index) = {
            let mut inner = self.inner.borrow_mut();
            let slot = (endpoint.clone(), flags);
            let used = inner.indexes.entry(slot.clone()).or_default();
            let index = (0..).find(|i| !used.contains(i)).unwrap_or(0);
            used.insert(index);
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.queries.insert(
                seq,
                Pending {
                    server: server.clone(),
                    slot,
                    index,
                    backlog: opts.backlog,
                },
            );
            (seq, index)
        };
        let req = Message::QueryServer {
            seq,
            request: ListenRequest {
                endpoint,
                index,
                backlog: opts.backlog,
                flags,
            },
        };
        if self.send_msg(lp, &req).is_err() {
            let pending = self.inner.borrow_mut().queries.remove(&seq);
            if let Some(p) = pending {
                self.release_slot(&p);
                let s = p.server;
                lp.next_tick(move |lp| {
                    s.fail(
                        lp,
                        io::Error::new(io::ErrorKind::NotConnected, "not connected to the primary"),
                    )
                });
            }
        }
    }

    /// Binds a UDP socket through the primary (UDP endpoints are always shared, as in
    /// Node): `on_bound` gets the socket or the bind error; `on_message` runs per datagram.
    /// The socket is closed when the worker disconnects.
    pub fn bind_udp<M, B>(&self, lp: &mut EventLoop, addr: SocketAddr, on_message: M, on_bound: B)
    where
        M: FnMut(&mut EventLoop, UdpSocket, &[u8], SocketAddr) + 'static,
        B: FnOnce(&mut EventLoop, io::Result<UdpSocket>) + 'static,
    {
        let on_bound = Rc::new(RefCell::new(Some(on_bound)));
        let binding = Server::new(|lp, _, c: Stream| c.destroy(lp));
        let (w, done) = (self.clone(), on_bound.clone());
        binding.0.borrow_mut().datagram = Some(Box::new(move |lp, fd: OwnedFd, key: u32| {
            let sock = udp::open_std(lp, std::net::UdpSocket::from(fd), on_message)?;
            w.track_server(Some(key), move |lp, closed| {
                sock.close(lp, move |lp| closed.done(lp));
            });
            if let Some(cb) = done.borrow_mut().take() {
                cb(lp, Ok(sock));
            }
            Ok(())
        }));
        binding.on_error(move |lp, _, e| {
            if let Some(cb) = on_bound.borrow_mut().take() {
                cb(lp, Err(io::Error::new(e.kind(), e.to_string())));
            }
        });
        self.query(lp, binding, Endpoint::Udp(addr), ListenOptions::default());
    }

    fn release_slot(&self, p: &Pending) {
        if let Some(set) = self.inner.borrow_mut().indexes.get_mut(&p.slot) {
            set.remove(&p.index);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_query_reply(
        &self,
        lp: &mut EventLoop,
        seq: u32,
        errno: i32,
        key: u32,
        mode: ListenMode,
        bound: Option<Endpoint>,
        mut fds: Vec<OwnedFd>,
    ) {
        let Some(p) = self.inner.borrow_mut().queries.remove(&seq) else {
            return;
        };
        if errno != 0 {
            self.release_slot(&p);
            let e = if errno == crate::primary::LISTENER_CAP_ERRNO {
                io::Error::new(
                    io::ErrorKind::QuotaExceeded,
                    "the primary refused another listener: this worker holds the most \
                     listeners a worker may (PrimaryOptions::max_listeners_per_worker)",
                )
            } else {
                io::Error::from_raw_os_error(errno)
            };
            p.server.fail(lp, e);
            return;
        }
        let bound = bound.unwrap_or_else(|| p.slot.0.clone());
        p.server.set_endpoint(bound.clone());
        let served = match mode {
            ListenMode::HandOff => Ok(()),
            ListenMode::Shared => match fds.pop() {
                Some(fd) if matches!(bound, Endpoint::Udp(_)) => {
                    p.server.attach_datagram(lp, fd, key)
                }
                Some(fd) => attach_listener(lp, &p.server, &bound, fd, true),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "shared listener missing",
                )),
            },
            ListenMode::ReusePort => {
                let ipv6_only = p.slot.1 & LISTEN_IPV6_ONLY != 0;
                bind_reuseport(lp, &p.server, &bound, p.backlog, ipv6_only)
            }
        };
        if let Err(e) = served {
            self.release_slot(&p);
            let _ = self.send_msg(lp, &Message::Close { key });
            p.server.fail(lp, e);
            return;
        }
        {
            let mut inner = self.inner.borrow_mut();
            inner.by_key.insert(key, p.server.clone());
            inner.key_index.insert(key, (p.slot.clone(), p.index));
        }
        p.server.0.borrow_mut().key = Some(key);
        if matches!(bound, Endpoint::Udp(_)) {
            // Datagram sockets are tracked by bind_udp; just report the binding.
            let _ = self.notify_listening(lp, key, bound);
        } else {
            p.server.announce(lp, self, key);
        }
        p.server.now_listening(lp, mode == ListenMode::HandOff);
        if mode == ListenMode::HandOff {
            // A worker short of descriptors says so before the first hand-off: the
            // primary would otherwise send its default credit's worth at once.
            let (credit, _) = self.credit_of(lp, &p.server);
            if credit != u32::MAX {
                let _ = self.send_msg(lp, &Message::Credit { credit });
            }
        }
    }

    /// Connections handed off by the primary: `fds[i]` is connection `seq + i`. Each one
    /// the server takes needs no answer; each one it refuses goes back in `Rejected` with
    /// its descriptor. The primary hears the credit left when the server is full now
    /// (which is watched, so that the primary hears when it has room again) and when it
    /// asked (`reply`). The messages leave together once the batch of messages is handled.
    pub(super) fn on_new_conn(
        &self,
        lp: &mut EventLoop,
        key: u32,
        seq: u64,
        reply: bool,
        fds: Vec<OwnedFd>,
    ) {
        let server = self.inner.borrow().by_key.get(&key).cloned();
        let mut full = false;
        for (i, fd) in fds.into_iter().enumerate() {
            let refused = match &server {
                Some(s) => match adopt_handed_off(lp, s, fd) {
                    Ok(()) => continue,
                    Err(fd) => {
                        full |= !s.is_closing();
                        fd
                    }
                },
                None => fd, // unknown server
            };
            self.send_back(lp, key, seq.wrapping_add(i as u64), refused);
        }
        // A closing or unknown server says nothing more: its refusals went back already.
        if let Some(s) = server.filter(|s| !s.is_closing()) {
            let (credit, changed) = self.credit_of(lp, &s);
            full |= credit == 0;
            let announce = self.inner.borrow().announce_credit;
            if reply || credit == 0 || changed || announce {
                let _ = self.send_msg(lp, &Message::Credit { credit });
            }
        }
        if full {
            self.watch_credit(lp, key);
        }
    }

    /// Sends back, at once, the connections in the `NewConn` messages among `rest` (read
    /// from the channel but not handled yet), before user code that might never return
    /// runs. The primary hands them to a worker again; this is not a refusal, so the
    /// credit of the servers concerned follows at once.
    pub(super) fn give_back_hand_offs(
        &self,
        lp: &mut EventLoop,
        rest: &mut VecDeque<(Message, Vec<OwnedFd>)>,
    ) {
        if !rest
            .iter()
            .any(|(m, _)| matches!(m, Message::NewConn { .. }))
        {
            return;
        }
        let mut keys = BTreeSet::new();
        for (msg, fds) in std::mem::take(rest) {
            let Message::NewConn { key, seq, .. } = msg else {
                rest.push_back((msg, fds));
                continue;
            };
            keys.insert(key);
            for (i, fd) in fds.into_iter().enumerate() {
                self.send_back(lp, key, seq.wrapping_add(i as u64), fd);
            }
        }
        let open: Vec<Server> = {
            let inner = self.inner.borrow();
            keys.iter()
                .filter_map(|k| inner.by_key.get(k))
                .filter(|s| !s.is_closing())
                .cloned()
                .collect()
        };
        let credit = open.iter().map(|s| self.credit_of(lp, s).0).min();
        if let Some(credit) = credit.filter(|&c| c > 0) {
            let _ = self.send_msg(lp, &Message::Credit { credit });
        }
        let io = self.inner.borrow().channel;
        if let Some(io) = io {
            let _ = crate::cluster::flush_channel(lp, io);
        }
    }

    /// Gives connection `seq` of listener `key` back to the primary (`Rejected` with its
    /// descriptor), which hands it to a worker again.
    fn send_back(&self, lp: &mut EventLoop, key: u32, seq: u64, fd: OwnedFd) {
        let back = Message::Rejected { key, seq };
        if self.send_msg_with_fds(lp, &back, vec![fd.into()]).is_err() {
            log::warn!("a connection could not go back to the primary");
        }
    }

    /// Watches hand-off server `key`, which refused a connection or has no room left: once
    /// it has room (a connection of it has ended), the primary is told the credit it has
    /// again and stops skipping this worker.
    fn watch_credit(&self, lp: &mut EventLoop, key: u32) {
        let arm = {
            let mut inner = self.inner.borrow_mut();
            inner.full.insert(key);
            inner.credit_watch.is_none()
        };
        if arm {
            self.arm_credit_watch(lp);
        }
    }

    fn arm_credit_watch(&self, lp: &mut EventLoop) {
        let w = self.clone();
        let t = lp.set_timeout(CREDIT_POLL_MS, move |lp| w.check_credit(lp));
        lp.unref(t); // the servers keep the loop alive, not the watch
        self.inner.borrow_mut().credit_watch = Some(t);
    }

    fn check_credit(&self, lp: &mut EventLoop) {
        let watched: Vec<(u32, Option<Server>)> = {
            let mut inner = self.inner.borrow_mut();
            inner.credit_watch = None;
            let keys: Vec<u32> = inner.full.iter().copied().collect();
            keys.into_iter()
                .map(|k| (k, inner.by_key.get(&k).cloned()))
                .collect()
        };
        let mut room = 0;
        for (key, server) in watched {
            match server {
                Some(s) if !s.is_closing() => {
                    let credit = self.credit_of(lp, &s).0;
                    if credit > 0 {
                        self.inner.borrow_mut().full.remove(&key);
                        room = room.max(credit);
                    }
                }
                // Gone or closing: nothing to wait for.
                _ => {
                    self.inner.borrow_mut().full.remove(&key);
                }
            }
        }
        if room > 0 {
            let _ = self.send_msg(lp, &Message::Credit { credit: room });
        }
        if !self.inner.borrow().full.is_empty() {
            self.arm_credit_watch(lp);
        }
    }
}

impl Worker {
    /// The credit hand-off server `s` has: its own room, within the descriptor headroom
    /// (see [`fds`](super::fds)); and whether the headroom's credit changed so much that
    /// the primary must hear it.
    fn credit_of(&self, lp: &mut EventLoop, s: &Server) -> (u32, bool) {
        let (fds, changed, recount) = {
            let mut inner = self.inner.borrow_mut();
            let (fds, changed) = inner.fds.credit(lp);
            (fds, changed, inner.fds.recount_due(lp))
        };
        if recount {
            // In the check phase: the hand-offs being taken now are loop handles by then.
            let w = self.clone();
            lp.set_immediate(move |lp| w.inner.borrow_mut().fds.count(lp));
        }
        (s.capacity(lp).min(fds), changed)
    }
}

/// Serves one handed-off connection on `server`, or gives its descriptor back if the
/// server refuses it (closing, or at its limit). If the socket cannot be registered with
/// the loop, the connection is closed (and logged). Descriptor headroom is not checked
/// here: the descriptor is in the table already (see [`fds`](super::fds)).
fn adopt_handed_off(lp: &mut EventLoop, server: &Server, fd: OwnedFd) -> Result<(), OwnedFd> {
    if server.is_closing() || server.capacity(lp) == 0 {
        return Err(fd);
    }
    let stream = match server.endpoint() {
        Some(Endpoint::Unix(_)) => {
            unix::open_handed_off(lp, std::os::unix::net::UnixStream::from(fd))
        }
        _ => tcp::open_handed_off(lp, std::net::TcpStream::from(fd)),
    };
    match stream {
        Ok(stream) => {
            server.adopt(lp, stream);
        }
        Err(e) => log::warn!("cannot serve a handed-off connection, closing it: {e}"),
    }
    Ok(())
}

/// Serves connections accepted from listening socket `fd`. A `shared` one (the same
/// socket in every worker) is waited on exclusively where the OS allows (one worker woken
/// per connection), and the server stops waiting on it while it is at its connection
/// limit, leaving the connections to the other workers.
fn attach_listener(
    lp: &mut EventLoop,
    server: &Server,
    bound: &Endpoint,
    fd: OwnedFd,
    shared: bool,
) -> io::Result<()> {
    let s = server.clone();
    let adopt = move |lp: &mut EventLoop, c: Stream| {
        s.adopt(lp, c);
    };
    let l = match bound {
        Endpoint::Unix(_) => {
            unix::listen_std(lp, std::os::unix::net::UnixListener::from(fd), adopt)?
        }
        _ => tcp::listen_std(lp, std::net::TcpListener::from(fd), adopt)?,
    };
    if shared {
        if let Err(e) = l.wait_exclusive(lp) {
            l.close(lp, |_| {});
            return Err(e);
        }
        server.pause_when_full();
    }
    server.set_listener(lp, l)
}

fn bind_reuseport(
    lp: &mut EventLoop,
    server: &Server,
    bound: &Endpoint,
    backlog: u32,
    ipv6_only: bool,
) -> io::Result<()> {
    let Endpoint::Tcp(addr) = bound else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "reuseport needs a TCP address",
        ));
    };
    let opts = BindOptions {
        reuse_port: true,
        ipv6_only,
        listen: Some(backlog as i32),
    };
    let fd = sysnet::bind_tcp(*addr, opts)?;
    attach_listener(lp, server, bound, fd, false)
}
