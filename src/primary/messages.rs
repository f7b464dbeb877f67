//! Reading a worker's channel and acting on what it says.

use std::os::fd::OwnedFd;

use super::balance::Conn;
use super::listen::close_handle;
use super::{Event, Primary};
use crate::cluster::{ReadLimit, WorkerState};
use crate::ipc::{Channel, Message};
use crate::rt::EventLoop;

impl Primary {
    /// The channel of `worker` is ready: read up to the per-wake-up budget
    /// ([`READ_BUDGET`](crate::ipc::READ_BUDGET)), then act on each message; if more is
    /// waiting, come back on the next loop turn, after the other channels and the
    /// listeners had theirs.
    pub(super) fn on_channel(&self, lp: &mut EventLoop, worker: u32) {
        #[cfg(feature = "node")]
        if self.on_node_channel(lp, worker) {
            return;
        }
        let p = self.clone();
        let resume = Box::new(move |lp: &mut EventLoop| p.on_channel(lp, worker));
        self.read_channel(lp, worker, ReadLimit::Budget(resume));
    }

    /// Reads everything `worker` wrote (it has exited), then acts on each message.
    pub(super) fn read_last_of(&self, lp: &mut EventLoop, worker: u32) {
        #[cfg(feature = "node")]
        if self.on_node_channel(lp, worker) {
            return;
        }
        self.read_channel(lp, worker, ReadLimit::All);
    }

    fn read_channel(&self, lp: &mut EventLoop, worker: u32, limit: ReadLimit) {
        let Some(io) = self.registered_channel(worker) else {
            return;
        };
        let peer = format!("worker {worker}");
        let (msgs, closed) = crate::cluster::drain_channel(lp, io, &peer, limit);
        for (msg, fds) in msgs {
            self.handle(lp, worker, msg, fds);
        }
        if let Some(ended) = closed {
            if let crate::cluster::Ended::Failed(reason) = ended {
                let p = self.clone();
                p.emit(lp, Event::Error { worker, reason });
            }
            self.channel_closed(lp, worker);
        }
    }

    /// Acts on one message from `worker` (from a forkloop worker's channel, or mapped
    /// from a Node worker's).
    pub(super) fn handle(&self, lp: &mut EventLoop, worker: u32, msg: Message, fds: Vec<OwnedFd>) {
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
                if let Err(e) = self.send_msg(lp, peer, &stamped) {
                    log::info!("worker {worker}: relay to worker {peer} not delivered: {e}");
                    // The sender hears of it; if even that fails, its channel is gone.
                    let _ = self.send_msg(lp, worker, &Message::RelayFailed { peer });
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
            Message::Rejected { key, seq } => {
                // The frame's rule guarantees exactly one descriptor: the connection.
                if let Some(fd) = fds.into_iter().next() {
                    let conn = Conn { born: seq, fd };
                    self.inner.borrow_mut().bal.rejected(worker, key, conn);
                }
                self.pump(lp);
            }
            Message::Credit { credit } => {
                self.inner.borrow_mut().bal.credit(worker, credit);
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
            Message::HttpStats(report) => {
                if let Some(e) = self.inner.borrow_mut().workers.get_mut(&worker) {
                    e.http = Some(report);
                }
            }
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
}
