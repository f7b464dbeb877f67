//! Workers without a channel ([`Protocol::Fds`]): any program that takes its listening
//! sockets the way systemd's socket activation hands them over.
//!
//! Each worker starts with the primary's passed sockets
//! ([`Primary::pass_listeners`]) at descriptors 3, 4, … and `LISTEN_FDS` (their count),
//! `LISTEN_FDNAMES` (their names, `:`-separated) and `LISTEN_PID` (its own pid) set.
//! `LISTEN_PID` is only known once the process exists, so the program is started through
//! `/bin/sh -c 'LISTEN_PID=$$ … exec "$0" "$@"'`, which `exec`s it under the same pid.
//!
//! With no channel, the primary knows only what the process does: it counts as online
//! and listening (on the first passed socket) as soon as it is spawned (connections wait
//! in the sockets' backlog until it accepts), it is asked to leave with `SIGTERM`
//! ([`Primary::disconnect_worker`]), and its exit is its only event after that. No
//! heartbeats, messages or connection counts.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Child;

use nix::sys::signal::Signal;

use super::{Event, Primary, Protocol, Settings, command};
use crate::cluster::{WORKER_ID_ENV, WorkerState};
use crate::ipc::Endpoint;
use crate::rt::EventLoop;
use crate::sys::net as sysnet;

/// The shell that sets `LISTEN_PID` to the program's pid before running it.
const SHELL: &str = "/bin/sh";
const WITH_LISTEN_PID: &str = r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#;

impl Primary {
    /// Listening sockets for [`Protocol::Fds`] workers, with their names (for
    /// `LISTEN_FDNAMES`; a name may not contain `:`). Every such worker spawned after
    /// this inherits them, in this order, from descriptor 3 on. Replaces earlier ones.
    /// They are made blocking, as a service manager hands them over (a program that
    /// wants otherwise sets `O_NONBLOCK` itself).
    ///
    /// # Errors
    ///
    /// A name contains `:` (`InvalidInput`), or a socket's mode cannot be changed.
    pub fn pass_listeners(&self, fds: Vec<(OwnedFd, String)>) -> io::Result<()> {
        if let Some((_, n)) = fds.iter().find(|(_, n)| n.contains(':')) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket name {n:?} contains ':'"),
            ));
        }
        for (fd, _) in &fds {
            crate::sys::set_nonblocking(fd.as_fd(), false)?;
        }
        self.inner.borrow_mut().passed = fds;
        Ok(())
    }

    /// Spawns a [`Protocol::Fds`] worker.
    pub(super) fn spawn_fds<I, K, V>(
        &self,
        settings: &Settings,
        id: u32,
        env: I,
        batch: bool,
    ) -> io::Result<Child>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        let (raw, names): (Vec<_>, Vec<_>) = {
            let inner = self.inner.borrow();
            inner
                .passed
                .iter()
                .map(|(fd, name)| (fd.as_raw_fd(), name.clone()))
                .unzip()
        };
        if raw.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fds workers need listening sockets (Primary::pass_listeners)",
            ));
        }
        let program = settings
            .exec
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no program to run"))?;
        let mut args: Vec<OsString> = vec!["-c".into(), WITH_LISTEN_PID.into(), program.into()];
        args.extend(settings.args.iter().flatten().cloned());
        let mut wrapped = settings.clone();
        wrapped.exec = Some(SHELL.into());
        wrapped.args = Some(args);
        let mut cmd = command(&wrapped, id, env, batch);
        cmd.env_remove(WORKER_ID_ENV);
        cmd.env_remove("LISTEN_PID");
        cmd.env("LISTEN_FDS", raw.len().to_string());
        cmd.env("LISTEN_FDNAMES", names.join(":"));
        crate::sys::process::inherit_fds_from_3(&mut cmd, raw)?;
        cmd.spawn()
    }

    /// A [`Protocol::Fds`] worker was spawned: it is online and listening (next tick).
    pub(super) fn fds_started(&self, lp: &mut EventLoop, worker: u32) {
        let address = {
            let inner = self.inner.borrow();
            inner
                .passed
                .first()
                .map(|(fd, _)| match sysnet::local_addr(fd) {
                    Ok(a) => Endpoint::Tcp(a),
                    Err(_) => Endpoint::Unix(
                        sysnet::unix_local_path(fd)
                            .ok()
                            .flatten()
                            .unwrap_or_default(),
                    ),
                })
        };
        let p = self.clone();
        lp.next_tick(move |lp| {
            if p.worker(worker).is_none_or(|w| w.is_dead()) {
                return;
            }
            p.set_state(worker, WorkerState::Online);
            p.emit(lp, Event::Online { worker });
            if let Some(address) = address {
                p.set_state(worker, WorkerState::Listening);
                p.emit(lp, Event::Listening { worker, address });
            }
        });
    }

    /// If `worker` is a [`Protocol::Fds`] worker, asks it to leave (`SIGTERM`), marks it
    /// as leaving on purpose and returns true.
    pub(super) fn fds_disconnect(&self, worker: u32) -> bool {
        {
            let mut inner = self.inner.borrow_mut();
            let Some(e) = inner.workers.get_mut(&worker) else {
                return false;
            };
            if e.protocol != Protocol::Fds || e.child.is_none() {
                return false;
            }
            e.listed = false;
            e.info.exited_after_disconnect = Some(true);
        }
        if let Err(e) = self.signal(worker, Signal::SIGTERM) {
            log::warn!("worker {worker}: cannot ask it to leave: {e}");
        }
        true
    }
}
