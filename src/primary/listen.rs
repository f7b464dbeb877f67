//! The primary's side of listening: answering workers' listen requests, accepting on
//! round-robin listeners and handing connections off in bursts (the bookkeeping lives in
//! [`super::balance`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use super::Primary;
use super::balance::{self, Conn, Mode, Polled};
use super::window::AcceptWindow;
use crate::ipc::{Channel, ListenMode, ListenRequest, Message, SendFd};
use crate::rt::{EventLoop, Interest, IoId};
use crate::sys::OneShotTimer;

impl Primary {
    /// Answers a worker's request for a listener.
    pub(super) fn query_server(
        &self,
        lp: &mut EventLoop,
        worker: u32,
        seq: u32,
        req: &ListenRequest,
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
                // Refusals for the listener cap are logged once, by the balancer.
                if e.raw_os_error() != Some(balance::LISTENER_CAP_ERRNO) {
                    log::info!("worker {worker}: cannot listen on {:?}: {e}", req.endpoint);
                }
                let errno = e.raw_os_error().unwrap_or(nix::libc::EINVAL);
                let reply = Message::QueryReply {
                    seq,
                    errno,
                    key: 0,
                    mode: ListenMode::HandOff,
                    bound: None,
                };
                let _ = self.send_msg(lp, worker, &reply);
                let address = req.endpoint.clone();
                self.emit(
                    lp,
                    super::Event::ListenFailed {
                        worker,
                        address,
                        error: e,
                    },
                );
                return;
            }
        };
        if let Some(fd) = g.start_accepting {
            let p = self.clone();
            let hid = g.handle;
            match lp.register(Polled(fd), Interest::READABLE, move |lp, _, _| {
                p.on_listener(lp, hid)
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
    /// Every connection waiting at that moment (up to the workers' free credit, at most
    /// [`HAND_OFF_BATCH`](super::HAND_OFF_BATCH) each) is accepted, then shared out one at
    /// a time, in round-robin order over the workers that still have room
    /// ([`Balancer::share`](super::balance::Balancer::share)), and each worker's share
    /// goes in one message: one `sendmsg` and one wake-up per worker, however many
    /// connections came together, and workers take turns connection by connection as
    /// in Node (a burst of keep-alive connections is split evenly).
    /// Returns how many connections were handed off.
    fn accept(&self, lp: &mut EventLoop, hid: u32) -> u32 {
        let mut took = 0;
        loop {
            self.look_at_unread(lp, hid);
            let rooms = {
                let inner = self.inner.borrow();
                inner.bal.rooms(hid, inner.batch)
            };
            let room: u32 = rooms.iter().map(|&(_, r)| r).sum();
            if room == 0 {
                self.pause(hid);
                return took;
            }
            let mut conns = Vec::new();
            let mut drained = false;
            let mut out_of_fds = None;
            while conns.len() < room as usize {
                match self.next_conn(hid) {
                    Next::Conn(conn) => conns.push(conn),
                    Next::None => {
                        drained = true;
                        break;
                    }
                    Next::OutOfFds(e) => {
                        out_of_fds = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = &out_of_fds {
                self.fd_episode(hid, e);
                if conns.is_empty() {
                    // Nothing of ours to free: wait for descriptors on a timer.
                    self.retry_later(lp, hid);
                    return took;
                }
                // Handing these off frees their descriptors: accept again right after.
            }
            // Accepting changed no credit, so `rooms` still hold and take every connection.
            let shares = self
                .inner
                .borrow_mut()
                .bal
                .share(hid, rooms, conns.len() as u32);
            let mut conns = conns.into_iter();
            for (worker, n) in shares {
                let part: Vec<_> = conns.by_ref().take(n as usize).collect();
                took += part.len() as u32;
                self.dispatch(lp, worker, hid, part);
            }
            if drained {
                return took;
            }
        }
    }

    /// The listener of handle `hid` is readable: accept, and open an accept window if
    /// connections come fast enough (see [`window`](super::window)).
    fn on_listener(&self, lp: &mut EventLoop, hid: u32) {
        let took = self.accept(lp, hid);
        let open = self
            .with_window(hid, |w| w.woke(Instant::now(), took))
            .unwrap_or(false);
        if open {
            self.inner.borrow_mut().bal.windows_opened += 1;
            self.watch_listener(lp, hid, false);
            self.start_window(lp, hid);
        }
    }

    /// Arms the timer that ends handle `hid`'s open accept window (made on first use). If
    /// that fails the window closes and the listener is watched again.
    fn start_window(&self, lp: &mut EventLoop, hid: u32) {
        let Some((len, timer)) = self
            .with_handle(hid, |h| h.window.map(|w| (w.len(), h.window_timer)))
            .flatten()
        else {
            return;
        };
        let armed = match timer {
            Some(io) => Ok(io),
            None => self.window_timer(lp, hid),
        }
        .and_then(|io| {
            let t = lp
                .io_ref::<Polled<OneShotTimer>>(io)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "window timer closed"))?;
            t.0.arm(len).map(|()| io)
        });
        match armed {
            Ok(io) => {
                self.with_handle(hid, |h| h.window_timer = Some(io));
            }
            Err(e) => {
                log::error!("listener {hid}: accept window timer failed, windows off: {e}");
                self.with_handle(hid, |h| h.window = None);
                self.watch_listener(lp, hid, true);
            }
        }
    }

    /// Makes and registers handle `hid`'s window timer; its firing ends the window.
    fn window_timer(&self, lp: &mut EventLoop, hid: u32) -> io::Result<IoId> {
        let p = self.clone();
        let io = lp.register(
            Polled(OneShotTimer::new()?),
            Interest::READABLE,
            move |lp, _, _| p.end_window(lp, hid),
        )?;
        // The workers' channels keep the loop alive, not a listener's window.
        lp.unref(io);
        Ok(io)
    }

    /// Handle `hid`'s accept window ended: take what came during it, then open the next
    /// window or watch the listener again.
    fn end_window(&self, lp: &mut EventLoop, hid: u32) {
        let Some(io) = self.with_handle(hid, |h| h.window_timer).flatten() else {
            return;
        };
        let fired = lp.io_ref::<Polled<OneShotTimer>>(io).map(|t| t.0.take());
        match fired {
            Some(Ok(true)) => {}
            // Not fired (a stale readiness report), or gone.
            Some(Ok(false)) | None => return,
            Some(Err(e)) => log::warn!("listener {hid}: reading the window timer: {e}"),
        }
        let took = self.accept(lp, hid);
        let Some((open, paused)) = self.with_handle(hid, |h| {
            let paused = h.paused;
            let open = h
                .window
                .as_mut()
                .is_some_and(|w| w.ended(Instant::now(), took, paused));
            (open, paused)
        }) else {
            return;
        };
        match (open, paused) {
            (true, false) => self.start_window(lp, hid),
            // No worker has credit: the window stalls, no timer until `pump` accepts again.
            (true, true) => {}
            (false, _) => self.watch_listener(lp, hid, true),
        }
    }

    /// Accepting on handle `hid` resumed after a pause: a window that stalled for it
    /// starts a fresh one (unless accepting paused again at once).
    fn resume_window(&self, lp: &mut EventLoop, hid: u32) {
        let resume = self
            .with_handle(hid, |h| {
                !h.paused && h.window.as_mut().is_some_and(|w| w.resumed(Instant::now()))
            })
            .unwrap_or(false);
        if resume {
            self.start_window(lp, hid);
        }
    }

    /// Runs `f` on handle `hid`, if it still exists.
    fn with_handle<R>(&self, hid: u32, f: impl FnOnce(&mut balance::Handle) -> R) -> Option<R> {
        self.inner.borrow_mut().bal.handles.get_mut(&hid).map(f)
    }

    /// Runs `f` on handle `hid`'s accept windows, if it has them (round-robin with
    /// windows on): nothing, not even reading the clock, happens otherwise.
    fn with_window<R>(&self, hid: u32, f: impl FnOnce(&mut AcceptWindow) -> R) -> Option<R> {
        self.with_handle(hid, |h| h.window.as_mut().map(f))
            .flatten()
    }

    /// Starts or stops waking up for handle `hid`'s new connections. Watching again reports
    /// connections already waiting, so none is left behind.
    fn watch_listener(&self, lp: &mut EventLoop, hid: u32, on: bool) {
        if let Some(io) = self.with_handle(hid, |h| h.listener).flatten() {
            let interest = on.then_some(Interest::READABLE);
            if let Err(e) = lp.set_interest(io, interest) {
                log::error!("listener {hid}: cannot change what it waits for: {e}");
            }
        }
    }

    /// Asks the kernel how many of their hand-offs the workers of handle `hid` that have
    /// some outstanding have not read yet (see [`ledger`](crate::ipc::ledger)).
    fn look_at_unread(&self, lp: &mut EventLoop, hid: u32) {
        let looked: Vec<(u32, u32)> = {
            let inner = self.inner.borrow();
            inner
                .bal
                .outstanding(hid)
                .into_iter()
                .filter_map(|w| {
                    let e = inner.workers.get(&w)?;
                    let peer = e.peer_end.as_ref()?.as_fd();
                    let ch = lp.io_mut::<Channel>(e.channel?)?;
                    match ch.unread_fds(peer) {
                        Ok(n) => Some((w, n)),
                        Err(err) => {
                            log::warn!("worker {w}: cannot tell what it has read: {err}");
                            None
                        }
                    }
                })
                .collect()
        };
        let mut inner = self.inner.borrow_mut();
        for (w, n) in looked {
            inner.bal.unread(w, n);
        }
    }

    /// The next connection for handle `hid`: one that came back, else a new one.
    /// Accepting failures other than for want of descriptors (`ECONNABORTED`…) are
    /// skipped, as Node does; the next connection retries.
    fn next_conn(&self, hid: u32) -> Next {
        let mut inner = self.inner.borrow_mut();
        if let Some(conn) = inner.bal.next_queued(hid) {
            return Next::Conn(conn);
        }
        let Some(h) = inner.bal.handles.get_mut(&hid) else {
            return Next::None;
        };
        let Some(fd) = h.fd.as_ref().filter(|_| h.out_of_fds.is_none()) else {
            return Next::None;
        };
        match balance::accept_one(fd.as_ref()) {
            Ok(fd) => Next::Conn(inner.bal.new_conn(fd)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The backlog is empty: an episode of want of descriptors is over.
                if std::mem::take(&mut h.fd_episode) {
                    log::debug!("listener {hid}: accepting again");
                }
                Next::None
            }
            Err(e) if crate::sys::is_fd_exhaustion(&e) => Next::OutOfFds(e),
            Err(e) => {
                log::warn!("accept on listener {hid}: {e}");
                Next::None
            }
        }
    }

    /// Accepting on handle `hid` failed for want of descriptors: logged once per episode
    /// (which ends once the backlog is empty).
    fn fd_episode(&self, hid: u32, e: &io::Error) {
        let first = self
            .with_handle(hid, |h| !std::mem::replace(&mut h.fd_episode, true))
            .unwrap_or(false);
        if first {
            log::warn!(
                "listener {hid}: cannot accept: {e} ({}); clients wait in the backlog, \
                 accepting again as descriptors free up (retrying every {} ms)",
                crate::sys::fd_limit_summary(),
                crate::net::ACCEPT_RETRY_MS
            );
        }
    }

    /// Stops accepting on handle `hid` (the clients wait in the backlog) and tries again
    /// after [`ACCEPT_RETRY_MS`](crate::net::ACCEPT_RETRY_MS).
    fn retry_later(&self, lp: &mut EventLoop, hid: u32) {
        let p = self.clone();
        let t = lp.set_timeout(crate::net::ACCEPT_RETRY_MS, move |lp| {
            p.with_handle(hid, |h| h.out_of_fds = None);
            p.retry_accept(lp, hid);
        });
        lp.unref(t); // the workers' channels keep the loop alive, not a retry
        self.with_handle(hid, |h| h.out_of_fds = Some(t));
    }

    /// The retry timer of handle `hid` fired: accept what waits (if a worker has credit;
    /// otherwise `pump` does once one has).
    fn retry_accept(&self, lp: &mut EventLoop, hid: u32) {
        let room = self.inner.borrow().bal.has_room(hid);
        if !room {
            self.pause(hid);
            return;
        }
        self.accept(lp, hid);
        self.resume_window(lp, hid);
    }

    /// Hands `conns` to `worker`: one message per run of consecutive [`Conn::born`]
    /// numbers (the message carries the first; new connections form one run, the ones that
    /// came back may not). On failure the connections are queued again and the worker is
    /// excluded from further hand-offs (its channel is going away).
    fn dispatch(&self, lp: &mut EventLoop, worker: u32, hid: u32, conns: Vec<Conn>) {
        let io = self.channel_of(worker);
        let mut conns = conns.into_iter().peekable();
        while let Some(first) = conns.next() {
            let seq = first.born;
            let mut fds = vec![SendFd::Owned(first.fd)];
            while let Some(next) = conns.next_if(|c| c.born == seq + fds.len() as u64) {
                fds.push(SendFd::Owned(next.fd));
            }
            let reply = self
                .inner
                .borrow_mut()
                .bal
                .hand_off(worker, fds.len() as u32);
            let msg = Message::NewConn {
                key: hid,
                seq,
                reply,
            };
            if let Err(e) = crate::cluster::send_message(lp, io, &msg, fds) {
                let mut inner = self.inner.borrow_mut();
                // Descriptors that were queued stay with the channel (its ledger).
                inner.bal.hand_off_failed(worker, e.fds.len() as u32);
                // Sent as owned descriptors, so they come back as they went.
                let fds = e.fds.into_iter().filter_map(|fd| match fd.into_owned() {
                    Ok(fd) => Some(fd),
                    Err(err) => {
                        log::warn!("a connection not handed off is lost: {err}");
                        None
                    }
                });
                inner.bal.requeue_run(hid, seq, fds.collect());
                inner.bal.excluded.insert(worker);
            }
        }
    }

    /// No worker has credit: stop accepting (the kernel backlog holds clients). Only a
    /// flag: the listener stays registered (edge-triggered, so it costs nothing), and
    /// `pump` accepts again, until `WouldBlock`, once credit returns.
    fn pause(&self, hid: u32) {
        self.with_handle(hid, |h| h.paused = true);
    }

    /// Gives waiting connections to workers with credit, and resumes paused accepting.
    pub(super) fn pump(&self, lp: &mut EventLoop) {
        let waiting = self.inner.borrow().bal.waiting_handles();
        for hid in waiting {
            self.look_at_unread(lp, hid);
            let ready = {
                let mut inner = self.inner.borrow_mut();
                let has_credit = inner.bal.has_room(hid);
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
                self.resume_window(lp, hid);
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

    /// Connections handed off to `worker` so far, less the ones it gave back (round-robin
    /// policy).
    pub fn handed(&self, worker: u32) -> u64 {
        self.inner.borrow().bal.handed_to(worker)
    }

    /// Connections handed to workers that died (or left) without reading them, which the
    /// primary read back from their channels and handed off again (round-robin policy).
    pub fn taken_back(&self) -> u64 {
        self.inner.borrow().bal.taken_back
    }

    /// Listening endpoints the primary holds (one per key any worker listens on).
    pub fn listener_count(&self) -> usize {
        self.inner.borrow().bal.handles.len()
    }

    /// Adopts listening sockets bound by someone else, typically the service manager's
    /// ([`systemd::listen_fds`](super::systemd::listen_fds)). A worker's listen request whose address is exactly one
    /// of theirs uses it instead of binding; see [`systemd`](super::systemd) for the matching rules.
    pub fn adopt_listeners(&self, fds: Vec<OwnedFd>) {
        self.inner.borrow_mut().bal.adopt(fds);
    }

    /// How many times a round-robin listener stopped waking the primary for each new
    /// connection and accepted in windows instead (see
    /// [`PrimaryOptions::accept_window`](super::PrimaryOptions::accept_window)).
    pub fn accept_windows(&self) -> u64 {
        self.inner.borrow().bal.windows_opened
    }

    /// Hand-offs sent to `worker` that it had not read when the primary last looked (it
    /// looks when accepting), plus those sent since.
    pub fn in_flight(&self, worker: u32) -> u32 {
        self.inner.borrow().bal.inflight_of(worker)
    }
}

/// What [`Primary::next_conn`] found.
enum Next {
    Conn(Conn),
    /// Nothing now (the backlog is empty, or accepting waits for descriptors).
    None,
    /// Accepting failed for want of descriptors (`EMFILE`, `ENFILE`).
    OutOfFds(io::Error),
}

/// A listener no worker uses any more: stop accepting; queued connections close with it.
pub(super) fn close_handle(lp: &mut EventLoop, h: balance::Handle) {
    if let Some(t) = h.out_of_fds {
        lp.clear_timeout(t);
    }
    if let Some(io) = h.window_timer {
        lp.close(io, |_| {});
    }
    if let Some(io) = h.listener {
        lp.close(io, |_| {});
    }
    log::debug!("listener {:?} closed: no worker listens on it", h.bound);
}
