//! Running under systemd: socket activation and the `sd_notify` protocol, without
//! libsystemd.
//!
//! # Socket activation
//!
//! [`listen_fds`] takes the listening sockets systemd passed (`LISTEN_PID`, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`; descriptors from [`LISTEN_FDS_START`]), and
//! [`Primary::adopt_listeners`](super::Primary::adopt_listeners) hands them to the
//! primary. When a worker then listens on an endpoint, the primary uses the adopted socket
//! whose local address is **exactly** the requested one instead of binding:
//!
//! * TCP and UDP: same family, address and port (`0.0.0.0:80` does not match an adopted
//!   `127.0.0.1:80` or `[::]:80`); a request for port 0 never matches, it wants a fresh
//!   port. Unix: same path (workers send absolute paths).
//! * The socket is used as the policy says (round-robin or shared); the reuseport policy
//!   cannot split an adopted port between workers' own sockets, so such a handle uses
//!   round-robin.
//! * The adopted socket itself is never closed: each handle uses a duplicate, so when the
//!   last worker stops listening the socket stays with the primary (and with systemd)
//!   for the next one, and a Unix socket's file is never removed.
//! * Sockets nobody asks for stay open, unused. Adopt before forking workers: an endpoint
//!   already bound by then keeps its own socket.
//!
//! # Notifications
//!
//! [`Notifier::from_env`] reads `NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket); its methods send one datagram each: [`Notifier::ready`] (`READY=1`),
//! [`Notifier::reloading`] (`RELOADING=1` with `MONOTONIC_USEC=`, as `Type=notify-reload`
//! wants since systemd 253; send `READY=1` again when the reload is done),
//! [`Notifier::stopping`], [`Notifier::status`], [`Notifier::watchdog`],
//! [`Notifier::main_pid`]. Failures are logged, never fatal: a service must not die
//! because its supervisor's socket went away. With `WatchdogSec=`, [`watchdog_interval`]
//! is half of `WATCHDOG_USEC` (systemd's advice), and [`Notifier::start_watchdog`] pings at
//! that rate from the primary's loop, so a primary whose loop hangs stops pinging and
//! systemd restarts it.
//!
//! The variables are read from this process's environment, which is never edited.
//! [`listen_fds`] takes the sockets once per process (a second call is an error, so two
//! owners of one descriptor cannot happen). Workers do not inherit the
//! [`ACTIVATION_ENV`] variables: the primary removes them from each worker's command.
//! `NOTIFY_SOCKET` and `WATCHDOG_*` are passed on (as `sd_notify` leaves them); systemd's
//! default `NotifyAccess=main` ignores what workers send.
//!
//! ```no_run
//! use forkloop::primary::{Primary, systemd};
//! use forkloop::rt::EventLoop;
//!
//! # fn main() -> std::io::Result<()> {
//! let sockets = systemd::listen_fds()?;
//! let mut lp = EventLoop::new()?;
//! let primary = Primary::new(&mut lp)?;
//! primary.adopt_listeners(sockets);
//! if let Some(sd) = systemd::Notifier::from_env() {
//!     if let Some(every) = systemd::watchdog_interval() {
//!         sd.start_watchdog(&mut lp, every);
//!     }
//!     sd.ready(); // in a real program: once the workers listen
//! }
//! # Ok(())
//! # }
//! ```

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::rt::{EventLoop, TimerId};
use crate::sys::process::take_fds;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

const LISTEN_PID: &str = "LISTEN_PID";
const LISTEN_FDS: &str = "LISTEN_FDS";
const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// The socket-activation variables, which the primary removes from its workers'
/// environment.
pub const ACTIVATION_ENV: [&str; 3] = [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES];

/// Set once the passed sockets were taken: they have one owner per process.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The sockets systemd passed to this process (socket activation), in order; empty when
/// none were (no `LISTEN_FDS`, or `LISTEN_PID` names another process). Each is made
/// close-on-exec; their blocking mode is left as passed (adoption makes them
/// non-blocking). The environment is not edited.
///
/// # Errors
///
/// `InvalidData` when a variable is malformed, the names do not match the count, or a
/// passed descriptor is not open; no descriptor is taken then. `AlreadyExists` when the
/// sockets were taken before in this process (each has one owner).
pub fn listen_fds() -> io::Result<Vec<OwnedFd>> {
    Ok(listen_fds_with_names()?
        .into_iter()
        .map(|(fd, _)| fd)
        .collect())
}

/// As [`listen_fds`], with each socket's name from `LISTEN_FDNAMES` (systemd's
/// `FileDescriptorName=`, by default the socket unit's name; `"unknown"` when the
/// variable is absent).
///
/// # Errors
///
/// As [`listen_fds`].
pub fn listen_fds_with_names() -> io::Result<Vec<(OwnedFd, String)>> {
    let pid = std::env::var_os(LISTEN_PID);
    let fds = std::env::var_os(LISTEN_FDS);
    let names = std::env::var_os(LISTEN_FDNAMES);
    let text = |v: &Option<OsString>, name: &str| -> io::Result<Option<String>> {
        v.as_ref()
            .map(|s| {
                s.to_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("{name} is not UTF-8")))
            })
            .transpose()
    };
    let count = parse_listen_env(
        text(&pid, LISTEN_PID)?.as_deref(),
        text(&fds, LISTEN_FDS)?.as_deref(),
        std::process::id(),
    )?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let names = parse_fd_names(text(&names, LISTEN_FDNAMES)?.as_deref(), count)?;
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the sockets passed by the service manager were taken already",
        ));
    }
    // SAFETY: `LISTEN_PID` names this process, so the service manager passed these
    // descriptors to it, and `TAKEN` makes this the only place that ever owns them.
    let fds = match unsafe { take_fds(LISTEN_FDS_START, count) } {
        Ok(fds) => fds,
        Err(e) => {
            TAKEN.store(false, Ordering::SeqCst);
            return Err(e);
        }
    };
    Ok(fds.into_iter().zip(names).collect())
}

/// How many sockets `LISTEN_PID`/`LISTEN_FDS` pass to process `our_pid` (0 when the
/// variables are absent or name another process), as `sd_listen_fds` reads them.
///
/// # Errors
///
/// `InvalidData` when a value present is not a number (or the pid is 0).
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    our_pid: u32,
) -> io::Result<usize> {
    let Some(pid) = listen_pid else {
        return Ok(0);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| invalid(format!("{LISTEN_PID}={pid:?} is not a pid")))?;
    if pid != our_pid {
        return Ok(0);
    }
    let Some(n) = listen_fds else {
        return Ok(0);
    };
    n.trim()
        .parse()
        .map_err(|_| invalid(format!("{LISTEN_FDS}={n:?} is not a count")))
}

/// The names in `LISTEN_FDNAMES` (colon-separated), or `"unknown"` for each of `count`
/// sockets when absent.
fn parse_fd_names(names: Option<&str>, count: usize) -> io::Result<Vec<String>> {
    let Some(names) = names else {
        return Ok(vec!["unknown".to_string(); count]);
    };
    let names: Vec<String> = names.split(':').map(str::to_string).collect();
    if names.len() != count {
        return Err(invalid(format!(
            "{LISTEN_FDNAMES} has {} names for {count} sockets",
            names.len()
        )));
    }
    Ok(names)
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The interval at which to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if it is set for
/// this process (`WATCHDOG_PID` absent or equal to our pid), as `sd_watchdog_enabled`
/// reads them. `None` also when a value is malformed (logged).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from given values: `usec` is `WATCHDOG_USEC`, `pid` is
/// `WATCHDOG_PID`, `our_pid` the process asking. Returns half of `usec` (at least 1 µs),
/// or `None` when the watchdog is off, meant for another process, or malformed (logged).
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    let usec = usec?;
    if let Some(pid) = pid {
        match pid.trim().parse::<u32>() {
            Ok(p) if p == our_pid => {}
            Ok(_) => return None,
            Err(_) => {
                log::warn!("WATCHDOG_PID={pid:?} is not a pid; watchdog off");
                return None;
            }
        }
    }
    match usec.trim().parse::<u64>() {
        Ok(0) => None,
        Ok(us) => Some(Duration::from_micros((us / 2).max(1))),
        Err(_) => {
            log::warn!("WATCHDOG_USEC={usec:?} is not a number; watchdog off");
            None
        }
    }
}

struct Target {
    sock: UnixDatagram,
    addr: SocketAddr,
    name: OsString,
}

/// Sends `sd_notify` datagrams to the service manager. Cheap to clone; usable from any
/// thread.
#[derive(Clone)]
pub struct Notifier {
    target: Arc<Target>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("socket", &self.target.name)
            .finish()
    }
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, if it is set (and usable: an unusable one is
    /// logged).
    pub fn from_env() -> Option<Notifier> {
        let addr = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::new(&addr) {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={addr:?} unusable: {e}");
                None
            }
        }
    }

    /// A notifier sending to `addr`: an absolute path, or `@name` for an abstract socket
    /// (Linux). Nothing is sent yet.
    ///
    /// # Errors
    ///
    /// The address is malformed or unsupported here, or the socket cannot be created.
    pub fn new(addr: impl AsRef<OsStr>) -> io::Result<Notifier> {
        let name = addr.as_ref().to_os_string();
        let target = crate::sys::net::unix_socket_addr(&name)?;
        let sock = UnixDatagram::unbound()?;
        // Never stall the primary's loop on a full queue; such a datagram is dropped.
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            target: Arc::new(Target {
                sock,
                addr: target,
                name,
            }),
        })
    }

    /// Sends `state` (newline-separated `KEY=value` assignments) as one datagram.
    ///
    /// # Errors
    ///
    /// The datagram cannot be sent (no listener, queue full, …).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let t = &self.target;
        let n = t.sock.send_to_addr(state.as_bytes(), &t.addr)?;
        if n != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short notify datagram",
            ));
        }
        Ok(())
    }

    fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            log::warn!("sd_notify {state:?} to {:?}: {e}", self.target.name);
        }
    }

    /// `READY=1`: start-up (or a reload) is complete.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (now, `CLOCK_MONOTONIC`): a reload began. Send
    /// [`Notifier::ready`] when it is done.
    pub fn reloading(&self) {
        let now = crate::sys::monotonic_usec();
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    /// `STOPPING=1`: shutdown began.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `STATUS=text` (shown by `systemctl status`); line breaks become spaces.
    pub fn status(&self, text: &str) {
        let one_line = text.replace(['\n', '\r'], " ");
        self.send(&format!("STATUS={one_line}"));
    }

    /// `WATCHDOG=1`: the keep-alive ping.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `MAINPID=pid`: the service's main process is `pid`.
    pub fn main_pid(&self, pid: u32) {
        self.send(&format!("MAINPID={pid}"));
    }

    /// `EXTEND_TIMEOUT_USEC=`: the current start, reload or stop needs `by` more time.
    pub fn extend_timeout(&self, by: Duration) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }

    /// Sends `WATCHDOG=1` now and then every `every` from `lp` (pass
    /// [`watchdog_interval`]). Pinging from the loop means a hung loop stops the pings. The
    /// timer does not keep the loop alive; clear it with [`EventLoop::clear_interval`].
    pub fn start_watchdog(&self, lp: &mut EventLoop, every: Duration) -> TimerId {
        self.watchdog();
        let me = self.clone();
        let ms = (every.as_secs_f64() * 1000.0).max(1.0);
        let id = lp.set_interval(ms, move |_| me.watchdog());
        lp.unref(id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_env() {
        assert_eq!(parse_listen_env(None, Some("2"), 7).unwrap(), 0);
        assert_eq!(parse_listen_env(Some("7"), Some("2"), 7).unwrap(), 2);
        assert_eq!(
            parse_listen_env(Some("8"), Some("2"), 7).unwrap(),
            0,
            "not ours"
        );
        assert_eq!(parse_listen_env(Some("7"), None, 7).unwrap(), 0);
        assert!(parse_listen_env(Some("x"), Some("2"), 7).is_err());
        assert!(parse_listen_env(Some("0"), Some("2"), 7).is_err());
        assert!(parse_listen_env(Some("7"), Some("-1"), 7).is_err());
        assert!(parse_listen_env(Some("7"), Some("two"), 7).is_err());
    }

    #[test]
    fn fd_names() {
        assert_eq!(parse_fd_names(None, 2).unwrap(), ["unknown", "unknown"]);
        assert_eq!(
            parse_fd_names(Some("web:admin"), 2).unwrap(),
            ["web", "admin"]
        );
        assert_eq!(parse_fd_names(Some("web::"), 3).unwrap(), ["web", "", ""]);
        assert!(parse_fd_names(Some("web"), 2).is_err());
    }

    #[test]
    fn take_fds_refuses_closed_descriptors() {
        // Far above anything a test process has open.
        // SAFETY: nothing is open there, so nothing can be taken from another owner.
        let err = unsafe { take_fds(900_000, 2) }.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
