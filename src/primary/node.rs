//! The primary's side of Node.js's cluster protocol: workers that are unmodified Node.js
//! programs ([`Protocol::Node`](super::settings::Protocol::Node)).
//!
//! A Node worker is spawned with `NODE_UNIQUE_ID` (its id), `NODE_CHANNEL_FD` (its end of
//! the channel) and `NODE_CHANNEL_SERIALIZATION_MODE=json`; Node's `cluster` then runs the
//! worker side itself. The primary registers a [`NodeLink`] instead of a framed channel:
//! it speaks [`ipc::node`](crate::ipc::node) and translates, so the rest of the primary
//! (balancer, events, supervisor) is the same for every worker:
//!
//! | Node (worker → primary) | primary |
//! |---|---|
//! | `online` | `Online` |
//! | `queryServer` | a listen request, keyed as Node keys it (`address:port:addressType:fd:index`); rr: the primary listens and accepts, the reply carries `sockname`; none (and UDP): the bound socket goes with the reply as a `net.Native` (`dgram.Native`) handle |
//! | `listening` | `Listening` |
//! | `close` | the worker leaves that listener |
//! | `exitedAfterDisconnect` | marked as leaving on purpose, answered with an `ack` |
//! | `{ack, accepted}` to a `newconn` | accepted: the primary closes its copy; refused: the connection goes to another worker |
//! | any user message (`process.send`) | [`Event::Message`] with the message's JSON text |
//! | `{"forkloop":"relay","to":N,"data":D}` | `D` to worker `N` (a relay) |
//! | `{"forkloop":"broadcast","data":D}` | `D` to every other worker (a relay each) |
//!
//! A relay reaches a Node worker as the user message
//! `{"forkloop":"relay","from":SENDER,"data":D}`, the sender's id stamped by the primary
//! (so relay and broadcast work between Node workers, and with forkloop workers, whose
//! relays carry JSON text `D` for Node workers to receive them).
//!
//! and, the other way, a hand-off is one `newconn` per connection (a `NODE_HANDLE` of type
//! `net.Native`), `Primary::disconnect_worker` sends `disconnect`, and
//! [`Primary::send`] sends JSON text as a user message (refused if it is not JSON).
//!
//! Differences from Node's own primary, on purpose:
//!
//! * A Node worker holds at most [`NODE_CREDIT`] connection handed off and not answered
//!   (Node: one per listener). A refused connection goes to another worker; the worker
//!   that refused gets connections again [`REFUSED_RETRY`] later (Node offers it the same
//!   connection again at once, a busy loop when every worker is full).
//! * When a worker's channel closes, connections queued for it that it was never sent
//!   go to other workers; those sent and not answered are closed (Node leaks them: the
//!   client hangs).
//! * A `queryServer` with `fd` (`listen({fd})`) and the reuseport policy are refused
//!   (`ENOTSUP`); an address of `null` binds `0.0.0.0` (addressType 4) or `::` (6).
//! * No heartbeats: Node's protocol has none ([`Primary::ping`] fails for Node workers).
//! * `data` (TLS ticket keys) is echoed to each worker, not shared across workers.

use crate::rt::id::IdMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::Event;
use super::Primary;
use super::balance::Conn;
use super::listen::close_handle;
use crate::ipc::node::{
    Act, AddressType, ClusterMsg, HandleType, Incoming, NODE_SERIALIZATION_ENV, NODE_UNIQUE_ID_ENV,
    NodeChannel, NodeError, NodeLimits, NodeMessage, NodeRecv, SockName,
};
use crate::ipc::{
    Endpoint, Kind, ListenMode, ListenRequest, Message, ProtoError, SendError, SendErrorKind,
    SendFd,
};
use crate::rt::{EventLoop, IoId};

/// Connections a Node worker may hold handed off and not yet answered.
pub const NODE_CREDIT: u32 = 1;
/// A Node worker that refused a connection gets connections again after this.
pub const REFUSED_RETRY: Duration = Duration::from_millis(10);

/// A Node worker's channel and what translating needs.
#[derive(Debug)]
pub(crate) struct NodeLink {
    ch: NodeChannel,
    /// The primary's message numbers on this channel.
    next_seq: u64,
    /// Node's key text of each listener the worker has, by the primary's handle id.
    keys: IdMap<u32, String>,
    /// Listen requests waiting for their reply: by request number, the key text.
    queries: IdMap<u64, String>,
    /// `newconn`s sent and not answered: by message number, the handle, the
    /// connection's age and the primary's copy of it.
    conns: IdMap<u64, (u32, u64, Arc<OwnedFd>)>,
}

/// What a worker's line means to the primary.
enum Action {
    Msg(Message, Vec<OwnedFd>),
    Query(u32, ListenRequest),
    Answered {
        seq: u64,
        accepted: bool,
    },
    Close(String),
    /// Relay JSON text to one worker, or to every other (`None`).
    Relay(Option<u32>, String),
    Ignore,
}

/// The `forkloop` key of a relay or broadcast request.
const RELAY_KEY: &str = "forkloop";

/// A user message asking the primary to relay: `(to, data)` (`to` `None`: broadcast).
fn relay_request(json: &str) -> Option<(Option<u32>, String)> {
    if !json.contains(RELAY_KEY) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let o = v.as_object()?;
    let data = o.get("data")?.to_string();
    match o.get(RELAY_KEY)?.as_str()? {
        "relay" => {
            let to = o.get("to")?.as_u64().and_then(|n| u32::try_from(n).ok())?;
            Some((Some(to), data))
        }
        "broadcast" => Some((None, data)),
        _ => None,
    }
}

impl NodeLink {
    fn new(fd: OwnedFd) -> io::Result<NodeLink> {
        Ok(NodeLink {
            ch: NodeChannel::new(fd, NodeLimits::default())?,
            next_seq: 0,
            keys: IdMap::default(),
            queries: IdMap::default(),
            conns: IdMap::default(),
        })
    }

    fn seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Unanswered `newconn`s.
    fn outstanding(&self) -> u32 {
        u32::try_from(self.conns.len()).unwrap_or(u32::MAX)
    }

    fn queue(
        &mut self,
        msg: NodeMessage,
        handle: Option<(HandleType, SendFd)>,
    ) -> Result<(), SendError> {
        self.ch.send(msg, handle).map_err(|(e, fd)| {
            let kind = match e {
                NodeError::Closed => SendErrorKind::Closed,
                NodeError::QueueFull { queued, max } => SendErrorKind::QueueFull {
                    needed: 0,
                    queued,
                    max,
                },
                _ => SendErrorKind::Proto(ProtoError::BadValue {
                    kind: Kind::User,
                    field: "JSON text",
                }),
            };
            SendError::new(kind, fd.into_iter().collect())
        })
    }

    /// Sends user bytes (JSON text) with at most one descriptor.
    fn send_user(&mut self, data: &[u8], mut fds: Vec<SendFd>) -> Result<(), SendError> {
        if fds.len() > 1 {
            let err = ProtoError::WrongFdCount {
                kind: Kind::User,
                got: fds.len(),
            };
            return Err(SendError::new(SendErrorKind::Proto(err), fds));
        }
        let msg = match NodeMessage::user(data) {
            Ok(m) => m,
            Err(_) => {
                let err = ProtoError::BadValue {
                    kind: Kind::User,
                    field: "JSON text",
                };
                return Err(SendError::new(SendErrorKind::Proto(err), fds));
            }
        };
        let handle = fds.pop().map(|fd| (HandleType::NetNative, fd));
        self.queue(msg, handle)
    }

    /// Sends a primary message in Node's terms.
    fn send_message(&mut self, msg: &Message, fds: Vec<SendFd>) -> Result<(), SendError> {
        match msg {
            Message::QueryReply {
                seq,
                errno,
                key,
                mode,
                bound,
            } => {
                let Some(text) = self.queries.remove(&u64::from(*seq)) else {
                    return Err(SendError::new(SendErrorKind::Closed, fds));
                };
                let mut reply = ClusterMsg::reply(u64::from(*seq));
                reply.seq = Some(self.seq());
                reply.key = Some(text.clone());
                let errno = match mode {
                    ListenMode::ReusePort if *errno == 0 => nix::libc::ENOTSUP,
                    _ => *errno,
                };
                if errno != 0 {
                    reply.errno = Some(-i64::from(errno));
                    return self.queue(NodeMessage::Cluster(Box::new(reply)), None);
                }
                reply.errno = Some(0);
                self.keys.insert(*key, text);
                let mut fds = fds;
                match (mode, fds.pop()) {
                    (ListenMode::Shared, Some(fd)) => {
                        let ty = match bound {
                            Some(Endpoint::Udp(_)) => HandleType::DgramNative,
                            _ => HandleType::NetNative,
                        };
                        self.queue(NodeMessage::Cluster(Box::new(reply)), Some((ty, fd)))
                    }
                    _ => {
                        if let Some(Endpoint::Tcp(addr)) = bound {
                            reply.sockname = Some(sock_name(*addr));
                        }
                        self.queue(NodeMessage::Cluster(Box::new(reply)), None)
                    }
                }
            }
            Message::NewConn { key, seq, .. } => {
                let Some(text) = self.keys.get(key).cloned() else {
                    return Err(SendError::new(SendErrorKind::Closed, fds));
                };
                let mut fds = fds.into_iter();
                let mut born = *seq;
                while let Some(fd) = fds.next() {
                    let fd = match fd.into_owned() {
                        Ok(fd) => Arc::new(fd),
                        Err(e) => {
                            log::warn!("a connection not handed off is lost: {e}");
                            continue;
                        }
                    };
                    let n = self.seq();
                    let mut m = ClusterMsg::act(Act::NewConn);
                    m.key = Some(text.clone());
                    m.seq = Some(n);
                    let sent = self.queue(
                        NodeMessage::Cluster(Box::new(m)),
                        Some((HandleType::NetNative, SendFd::Shared(fd.clone()))),
                    );
                    if let Err(mut e) = sent {
                        // This one and the rest go back to the primary.
                        e.fds = std::iter::once(SendFd::Shared(fd)).chain(fds).collect();
                        return Err(e);
                    }
                    self.conns.insert(n, (*key, born, fd));
                    born += 1;
                }
                Ok(())
            }
            Message::Disconnect => {
                let mut m = ClusterMsg::act(Act::Disconnect);
                m.seq = Some(self.seq());
                self.queue(NodeMessage::Cluster(Box::new(m)), None)
            }
            Message::Ack { seq } => {
                let mut m = ClusterMsg::reply(u64::from(*seq));
                m.seq = Some(self.seq());
                self.queue(NodeMessage::Cluster(Box::new(m)), None)
            }
            Message::User(data) => self.send_user(data, fds),
            Message::Relay { peer, payload } => {
                let Ok(data) = serde_json::from_slice::<serde_json::Value>(payload) else {
                    let err = ProtoError::BadValue {
                        kind: Kind::Relay,
                        field: "JSON text",
                    };
                    return Err(SendError::new(SendErrorKind::Proto(err), fds));
                };
                let text = serde_json::json!({ RELAY_KEY: "relay", "from": peer, "data": data });
                self.queue(NodeMessage::User(text.to_string()), None)
            }
            other => {
                let err = ProtoError::BadValue {
                    kind: other.kind(),
                    field: "not in Node's protocol",
                };
                Err(SendError::new(SendErrorKind::Proto(err), fds))
            }
        }
    }

    /// What one message from the worker means.
    fn action(&mut self, inc: Incoming) -> Result<Action, String> {
        let fd = inc.handle.and_then(|(_, fd)| fd);
        let c = match inc.msg {
            NodeMessage::User(json) => {
                if let Some((to, data)) = relay_request(&json) {
                    return Ok(Action::Relay(to, data));
                }
                return Ok(Action::Msg(
                    Message::User(json.into_bytes()),
                    fd.into_iter().collect(),
                ));
            }
            NodeMessage::Cluster(c) => c,
            NodeMessage::Internal { cmd, .. } => {
                log::debug!("node worker: {cmd} ignored");
                return Ok(Action::Ignore);
            }
            NodeMessage::HandleAck | NodeMessage::HandleNack => return Ok(Action::Ignore),
        };
        let Some(act) = &c.act else {
            return Ok(match (c.ack, c.accepted) {
                (Some(seq), Some(accepted)) => Action::Answered { seq, accepted },
                _ => Action::Ignore,
            });
        };
        Ok(match act {
            Act::Online => Action::Msg(Message::Online, Vec::new()),
            Act::QueryServer => {
                let seq = c.seq.ok_or("queryServer without seq")?;
                let seq32 = u32::try_from(seq).map_err(|_| "queryServer seq out of range")?;
                let (req, text) = listen_request(&c)?;
                self.queries.insert(seq, text);
                Action::Query(seq32, req)
            }
            Act::Listening => {
                let (req, _) = listen_request(&c)?;
                let bound = req.endpoint;
                Action::Msg(Message::Listening { key: 0, bound }, Vec::new())
            }
            Act::Close => Action::Close(c.key.clone().ok_or("close without key")?),
            Act::ExitedAfterDisconnect => {
                let seq = c.seq.ok_or("exitedAfterDisconnect without seq")?;
                let seq = u32::try_from(seq).map_err(|_| "seq out of range")?;
                Action::Msg(Message::ExitedAfterDisconnect { seq }, Vec::new())
            }
            other => {
                log::debug!("node worker: act {:?} ignored", other.name());
                Action::Ignore
            }
        })
    }

    /// The channel is going: connections never sent come back (to hand off again); those
    /// sent and unanswered are closed.
    fn take_unsent(&mut self) -> Vec<(u32, Conn)> {
        let unsent: Vec<RawFd> = self
            .ch
            .close()
            .iter()
            .map(|f| std::os::fd::AsFd::as_fd(f).as_raw_fd())
            .collect();
        let mut back = Vec::new();
        for (_, (hid, born, fd)) in self.conns.drain() {
            if unsent.contains(&fd.as_raw_fd())
                && let Ok(fd) = Arc::try_unwrap(fd).or_else(|fd| fd.try_clone())
            {
                back.push((hid, Conn { born, fd }));
            }
        }
        back
    }
}

impl Source for NodeLink {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.ch.register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.ch.reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.ch.deregister(r)
    }
}

/// The address Node's worker reports for a round-robin listener.
fn sock_name(addr: SocketAddr) -> SockName {
    SockName {
        address: addr.ip().to_string(),
        family: if addr.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
        port: addr.port(),
    }
}

/// A `queryServer` (or `listening`) as a listen request, and Node's key text for it.
fn listen_request(c: &ClusterMsg) -> Result<(ListenRequest, String), String> {
    let ty = c.address_type.ok_or("no addressType")?;
    if c.fd.is_some_and(|fd| fd >= 0) {
        return Err("listen({fd}) on a primary descriptor is not supported".into());
    }
    let port = c.port.unwrap_or(0);
    let ip = |v6: bool| -> Result<IpAddr, String> {
        match &c.address {
            None => Ok(if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }),
            Some(a) => a.parse().map_err(|_| format!("bad address {a:?}")),
        }
    };
    let port16 = || u16::try_from(port).map_err(|_| format!("bad port {port}"));
    let endpoint = match ty {
        AddressType::Tcp4 => Endpoint::Tcp(SocketAddr::new(ip(false)?, port16()?)),
        AddressType::Tcp6 => Endpoint::Tcp(SocketAddr::new(ip(true)?, port16()?)),
        AddressType::Udp4 => Endpoint::Udp(SocketAddr::new(ip(false)?, port16()?)),
        AddressType::Udp6 => Endpoint::Udp(SocketAddr::new(ip(true)?, port16()?)),
        AddressType::Pipe => Endpoint::Unix(PathBuf::from(
            c.address.clone().ok_or("pipe without a path")?,
        )),
    };
    let node_flags = c.flags.unwrap_or(0);
    let flags = u32::from(node_flags & 1 != 0) | (u32::from(node_flags & 4 != 0) << 1);
    let backlog = c.backlog.and_then(|b| u32::try_from(b).ok()).unwrap_or(0);
    let index = c.index.unwrap_or(0);
    let text = format!(
        "{}:{port}:{}:{}:{index}",
        c.address.as_deref().unwrap_or("null"),
        ty.key_text(),
        c.fd.map_or_else(|| "undefined".to_owned(), |fd| fd.to_string()),
    );
    let req = ListenRequest {
        endpoint,
        index: u32::try_from(index).map_err(|_| "index out of range")?,
        backlog,
        flags,
    };
    Ok((req, text))
}

/// Prepares `cmd` to start a Node worker: Node's variables instead of forkloop's.
pub(super) fn node_command(cmd: &mut Command, id: u32) {
    cmd.env_remove(crate::cluster::WORKER_ID_ENV);
    cmd.env(NODE_UNIQUE_ID_ENV, id.to_string());
    cmd.env(NODE_SERIALIZATION_ENV, "json");
}

/// Sends through `io` if it is a Node worker's link; gives `fds` back otherwise.
#[allow(clippy::result_large_err)]
pub(crate) fn try_send(
    lp: &mut EventLoop,
    io: Option<IoId>,
    msg: Outgoing<'_>,
    fds: Vec<SendFd>,
) -> Result<Result<(), SendError>, Vec<SendFd>> {
    let Some(io) = io else { return Err(fds) };
    let Some(link) = lp.io_mut::<NodeLink>(io) else {
        return Err(fds);
    };
    let r = match msg {
        Outgoing::Message(m) => link.send_message(m, fds),
        Outgoing::User(d) => link.send_user(d, fds),
    };
    Ok(r.and_then(|()| {
        flush(lp, io).map_err(|_| SendError::new(SendErrorKind::Closed, Vec::new()))
    }))
}

/// What [`try_send`] sends.
pub(crate) enum Outgoing<'a> {
    Message(&'a Message),
    User(&'a [u8]),
}

/// Writes what the link may write; waits for writable if the socket is full.
fn flush(lp: &mut EventLoop, io: IoId) -> Result<(), NodeError> {
    let Some(link) = lp.io_mut::<NodeLink>(io) else {
        return Err(NodeError::Closed);
    };
    let want = if link.ch.flush()? {
        Interest::READABLE
    } else {
        Interest::READABLE | Interest::WRITABLE
    };
    if lp.interest(io) != Some(want) {
        lp.set_interest(io, Some(want))?;
    }
    Ok(())
}

impl Primary {
    /// Registers a Node worker's end of its channel.
    pub(super) fn register_node_link(
        &self,
        lp: &mut EventLoop,
        id: u32,
        fd: OwnedFd,
    ) -> io::Result<IoId> {
        let link = NodeLink::new(fd)?;
        let p = self.clone();
        lp.register(link, Interest::READABLE, move |lp, _, _| {
            p.on_channel(lp, id)
        })
    }

    /// If `worker` speaks Node's protocol, reads and acts on its channel and returns
    /// true.
    pub(super) fn on_node_channel(&self, lp: &mut EventLoop, worker: u32) -> bool {
        let Some(io) = self.registered_channel(worker) else {
            return false;
        };
        if lp.io_ref::<NodeLink>(io).is_none() {
            return false;
        }
        let mut ended: Option<Result<(), String>> = None;
        if let Err(e) = flush(lp, io) {
            ended = Some(Err(format!("write failed: {e}")));
        }
        let mut actions = Vec::new();
        while ended.is_none() {
            let Some(link) = lp.io_mut::<NodeLink>(io) else {
                break;
            };
            match link.ch.recv() {
                Ok(NodeRecv::Message(inc)) => match link.action(inc) {
                    Ok(a) => actions.push(a),
                    Err(why) => ended = Some(Err(format!("bad message: {why}"))),
                },
                Ok(NodeRecv::WouldBlock) => break,
                Ok(NodeRecv::Eof) => ended = Some(Ok(())),
                Err(e) => ended = Some(Err(e.to_string())),
            }
        }
        for a in actions {
            self.node_action(lp, worker, io, a);
        }
        if ended.is_none()
            && let Err(e) = flush(lp, io)
        {
            ended = Some(Err(format!("write failed: {e}")));
        }
        if let Some(how) = ended {
            self.node_link_closed(lp, worker, io, how);
        }
        true
    }

    /// Closes a Node worker's channel from this side (Node's
    /// `worker.process.disconnect()`); false if `worker` has no open Node channel.
    pub(super) fn close_node_link(&self, lp: &mut EventLoop, worker: u32) -> bool {
        let Some(io) = self.channel_of(worker) else {
            return false;
        };
        if lp.io_ref::<NodeLink>(io).is_none() {
            return false;
        }
        self.node_link_closed(lp, worker, io, Ok(()));
        true
    }

    /// A Node worker's channel ended (EOF, or an error, which is reported).
    fn node_link_closed(&self, lp: &mut EventLoop, worker: u32, io: IoId, how: Result<(), String>) {
        let back = lp
            .io_mut::<NodeLink>(io)
            .map(NodeLink::take_unsent)
            .unwrap_or_default();
        {
            let mut inner = self.inner.borrow_mut();
            for (hid, conn) in back {
                inner.bal.requeue(hid, conn);
            }
            inner.bal.unread(worker, 0);
        }
        if let Err(reason) = how {
            log::warn!("worker {worker}: closing its channel: {reason}");
            self.emit(lp, Event::Error { worker, reason });
        }
        self.channel_closed(lp, worker);
    }

    fn node_action(&self, lp: &mut EventLoop, worker: u32, io: IoId, a: Action) {
        match a {
            // The messages a Node worker's cluster traffic maps to mean what they mean from
            // a forkloop worker.
            Action::Msg(msg, fds) => self.handle(lp, worker, msg, fds),
            Action::Ignore => {}
            Action::Relay(to, data) => {
                let targets = match to {
                    Some(t) => vec![t],
                    None => self
                        .workers()
                        .into_iter()
                        .filter(|&w| w != worker)
                        .collect(),
                };
                let msg = Message::Relay {
                    peer: worker,
                    payload: data.into_bytes(),
                };
                for t in targets {
                    if let Err(e) = self.send_msg(lp, t, &msg) {
                        log::info!("worker {worker}: relay to worker {t} dropped: {e}");
                    }
                }
            }
            Action::Query(seq, req) => {
                self.query_server(lp, worker, seq, &req);
                let rr = lp
                    .io_ref::<NodeLink>(io)
                    .is_some_and(|l| !l.queries.contains_key(&u64::from(seq)));
                if rr {
                    self.inner.borrow_mut().bal.credit(worker, NODE_CREDIT);
                    self.pump(lp);
                }
            }
            Action::Close(text) => {
                let hid = lp.io_mut::<NodeLink>(io).and_then(|l| {
                    let hid = l.keys.iter().find(|(_, t)| **t == text).map(|(h, _)| *h)?;
                    l.keys.remove(&hid);
                    Some(hid)
                });
                if let Some(hid) = hid {
                    let gone = self.inner.borrow_mut().bal.leave(worker, hid);
                    if let Some(h) = gone {
                        close_handle(lp, h);
                    }
                }
            }
            Action::Answered { seq, accepted } => {
                let Some(link) = lp.io_mut::<NodeLink>(io) else {
                    return;
                };
                let Some((hid, born, fd)) = link.conns.remove(&seq) else {
                    return; // a reply to something else: ignored, as Node does
                };
                let outstanding = link.outstanding();
                self.inner.borrow_mut().bal.unread(worker, outstanding);
                if !accepted {
                    match Arc::try_unwrap(fd).or_else(|fd| fd.try_clone()) {
                        Ok(fd) => {
                            self.inner
                                .borrow_mut()
                                .bal
                                .rejected(worker, hid, Conn { born, fd });
                            let p = self.clone();
                            lp.set_timeout(REFUSED_RETRY.as_millis() as u64, move |lp| {
                                p.inner.borrow_mut().bal.credit(worker, NODE_CREDIT);
                                p.pump(lp);
                            });
                        }
                        Err(e) => log::warn!("a refused connection is lost: {e}"),
                    }
                }
                self.pump(lp);
            }
        }
    }
}
