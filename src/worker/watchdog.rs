//! The orphan watchdog: a tiny thread, outside the worker's event loop, that ends the
//! process when the primary is gone, even while the loop is blocked (a busy loop, a long
//! synchronous call). Node's workers only notice the primary's death by reading EOF on
//! their loop, so a blocked worker outlives it.
//!
//! The thread sleeps in `poll(2)` on a *duplicate* of the channel descriptor, asking only
//! for the hang-up events ([`crate::sys::watch`]): it never reads, so no channel byte is
//! consumed, and data arriving does not wake it for good. It wakes when
//!
//! * the peer hangs up: if the parent process changed (the primary died and this process
//!   was re-parented) it exits at once; otherwise the primary closed the channel on
//!   purpose, and the loop gets [`GRACE`] to act on the EOF itself (run its disconnect
//!   handlers and exit); a loop that does not stand the watchdog down by then is blocked,
//!   and the watchdog exits;
//! * every [`CHECK_EVERY`], to compare the parent pid with the one seen at start (the
//!   portable fallback, gunicorn's way: where no hang-up is reported, e.g. macOS, this is
//!   what finds the orphan);
//! * its owner wakes it: [`Watchdog::stand_down`] (the worker closes the channel on purpose;
//!   the thread stops watching the channel and drops its duplicate, but keeps the parent
//!   check, as Linux's parent-death signal does) or dropping the [`Watchdog`] (the thread
//!   ends).
//!
//! "Exits" is `std::process::exit(0)`: the same code a worker whose channel reached EOF
//! exits with. On Linux the parent-death signal (`SIGKILL`, set by the primary when it
//! spawns the worker) normally gets there first; the watchdog is the second line.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sys::watch::{Woke, wait_hangup};

/// How often the parent pid is compared with the one seen at start.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After a hang-up with the parent still alive: how long the loop has to act on it.
pub(crate) const GRACE: Duration = Duration::from_secs(1);
/// During the grace period: how often the parent pid is checked.
const GRACE_STEP: Duration = Duration::from_millis(10);
/// The thread only polls and logs.
const STACK_SIZE: usize = 128 * 1024;

/// Why the watchdog decided the worker is an orphan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Orphaned {
    /// This process has a new parent: the primary died.
    ParentGone,
    /// The channel hung up and the loop did not act on it within the grace period.
    ChannelClosed,
}

type OnOrphan = Box<dyn FnOnce(Orphaned) + Send>;

/// How a watchdog behaves; [`Config::exiting`] in a worker, other values in tests.
pub(crate) struct Config {
    /// The parent pid at start; a different parent means the primary died.
    pub(crate) parent: u32,
    pub(crate) check_every: Duration,
    pub(crate) grace: Duration,
    pub(crate) on_orphan: OnOrphan,
}

impl Config {
    /// The worker's watchdog: exits the process with code 0.
    pub(crate) fn exiting() -> Config {
        Config {
            parent: std::os::unix::process::parent_id(),
            check_every: CHECK_EVERY,
            grace: GRACE,
            on_orphan: Box::new(|why| {
                log::warn!(
                    "worker {}: primary gone ({why:?}); exiting",
                    std::process::id()
                );
                std::process::exit(0)
            }),
        }
    }
}

/// The watchdog thread's handle. Dropping it stops the thread (it wakes and ends at once,
/// closing its duplicate of the channel); it is not joined.
#[derive(Debug)]
pub(crate) struct Watchdog {
    stood_down: Arc<AtomicBool>,
    /// Our end of the wake pair: a byte means "stand down", closing it means "stop".
    wake: UnixStream,
}

impl Watchdog {
    /// Starts watching the channel `fd` (a duplicate is taken; `fd` stays the caller's).
    ///
    /// # Errors
    ///
    /// The descriptor cannot be duplicated, the wake pair cannot be made, or the thread
    /// cannot be spawned.
    pub(crate) fn start(fd: BorrowedFd<'_>) -> io::Result<Watchdog> {
        Watchdog::start_with(fd, Config::exiting())
    }

    pub(crate) fn start_with(fd: BorrowedFd<'_>, cfg: Config) -> io::Result<Watchdog> {
        let watched = fd.try_clone_to_owned()?;
        let (mine, theirs) = crate::sys::socketpair()?;
        let stood_down = Arc::new(AtomicBool::new(false));
        let flag = stood_down.clone();
        let wake = UnixStream::from(theirs);
        std::thread::Builder::new()
            .name("forkloop-watchdog".into())
            .stack_size(STACK_SIZE)
            .spawn(move || watch(watched, wake, &flag, cfg))?;
        Ok(Watchdog {
            stood_down,
            wake: UnixStream::from(mine),
        })
    }

    /// The worker is closing its channel on purpose: the coming hang-up is not the
    /// primary's death. Call it before shutting the channel down. Idempotent.
    pub(crate) fn stand_down(&self) {
        if !self.stood_down.swap(true, Ordering::SeqCst) {
            // The pair is empty: one byte always fits. If it did not, the thread would
            // still see the flag on the hang-up.
            let _ = (&self.wake).write(&[1]);
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing `wake` (right after this) wakes the thread, which then ends.
        self.stood_down.store(true, Ordering::SeqCst);
    }
}

/// What woke the thread through its wake pair.
enum Told {
    StandDown,
    Stop,
}

/// Drains the wake pair: `Stop` once the owner's end is closed.
fn told(wake: &UnixStream) -> Told {
    let mut buf = [0u8; 16];
    loop {
        match (&*wake).read(&mut buf) {
            Ok(0) => return Told::Stop,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Told::StandDown,
            Err(_) => return Told::Stop,
        }
    }
}

fn parent_changed(parent: u32) -> bool {
    std::os::unix::process::parent_id() != parent
}

/// The thread's body.
fn watch(channel: OwnedFd, wake: UnixStream, stood_down: &AtomicBool, cfg: Config) {
    let mut channel = Some(channel);
    loop {
        let woke = wait_hangup(
            channel.as_ref().map(AsFd::as_fd),
            wake.as_fd(),
            cfg.check_every,
        );
        match woke {
            Ok(Woke::Wake) => match told(&wake) {
                Told::Stop => return,
                Told::StandDown => channel = None,
            },
            Ok(Woke::Hangup) if stood_down.load(Ordering::SeqCst) => channel = None,
            Ok(Woke::Hangup) => {
                channel = None;
                match grace(&wake, &cfg) {
                    Ok(why) => return (cfg.on_orphan)(why),
                    Err(Told::Stop) => return,
                    Err(Told::StandDown) => {}
                }
            }
            Ok(Woke::Timeout) => {}
            Err(e) => {
                // Not expected (ENOMEM…); keep the parent check without busy looping.
                log::warn!("worker watchdog: poll failed: {e}");
                std::thread::sleep(cfg.check_every);
            }
        }
        if parent_changed(cfg.parent) {
            return (cfg.on_orphan)(Orphaned::ParentGone);
        }
    }
}

/// After a hang-up: waits up to `cfg.grace` for the loop to stand down, checking the
/// parent every few milliseconds. `Ok`: orphaned; `Err`: told to stand down or stop.
fn grace(wake: &UnixStream, cfg: &Config) -> Result<Orphaned, Told> {
    let end = Instant::now() + cfg.grace;
    loop {
        if parent_changed(cfg.parent) {
            return Ok(Orphaned::ParentGone);
        }
        let now = Instant::now();
        if now >= end {
            return Ok(Orphaned::ChannelClosed);
        }
        let step = GRACE_STEP.min(end - now);
        if let Ok(Woke::Wake) = wait_hangup(None, wake.as_fd(), step) {
            return Err(told(wake));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;
    use std::sync::mpsc;

    fn config(parent: u32, grace: Duration) -> (Config, mpsc::Receiver<Orphaned>) {
        let (tx, rx) = mpsc::channel();
        let cfg = Config {
            parent,
            check_every: Duration::from_millis(20),
            grace,
            on_orphan: Box::new(move |why| {
                let _ = tx.send(why);
            }),
        };
        (cfg, rx)
    }

    /// A blocking pair (the watchdog's duplicate shares the flag; it never reads).
    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = crate::sys::socketpair().expect("socketpair");
        let (a, b) = (UnixStream::from(a), UnixStream::from(b));
        a.set_nonblocking(false).expect("blocking");
        b.set_nonblocking(false).expect("blocking");
        (a, b)
    }

    fn our_parent() -> u32 {
        std::os::unix::process::parent_id()
    }

    const WAIT: Duration = Duration::from_secs(5);
    const QUIET: Duration = Duration::from_millis(300);

    #[test]
    fn peer_hangup_with_parent_alive_fires_after_the_grace() {
        let (a, b) = pair();
        let (cfg, rx) = config(our_parent(), Duration::from_millis(100));
        let _w = Watchdog::start_with(a.as_fd(), cfg).expect("start");
        let t = Instant::now();
        drop(b);
        assert_eq!(rx.recv_timeout(WAIT), Ok(Orphaned::ChannelClosed));
        assert!(t.elapsed() >= Duration::from_millis(100), "grace respected");
    }

    #[test]
    fn a_new_parent_fires_at_once() {
        let (a, _b) = pair();
        let (cfg, rx) = config(our_parent().wrapping_add(1), Duration::from_secs(60));
        let _w = Watchdog::start_with(a.as_fd(), cfg).expect("start");
        assert_eq!(rx.recv_timeout(WAIT), Ok(Orphaned::ParentGone));
    }

    #[test]
    fn data_neither_fires_nor_is_consumed() {
        let (a, mut b) = pair();
        let (cfg, rx) = config(our_parent(), Duration::from_millis(10));
        let _w = Watchdog::start_with(a.as_fd(), cfg).expect("start");
        b.write_all(b"frame bytes").expect("write");
        assert!(rx.recv_timeout(QUIET).is_err(), "data is not a hang-up");
        let mut got = [0u8; 11];
        (&a).read_exact(&mut got).expect("bytes still there");
        assert_eq!(&got, b"frame bytes");
    }

    #[test]
    fn stand_down_before_our_own_shutdown() {
        let (a, _b) = pair();
        let (cfg, rx) = config(our_parent(), Duration::from_millis(10));
        let w = Watchdog::start_with(a.as_fd(), cfg).expect("start");
        w.stand_down();
        a.shutdown(Shutdown::Both).expect("shutdown"); // what Channel::close does
        assert!(
            rx.recv_timeout(QUIET).is_err(),
            "a graceful close is not orphaning"
        );
    }

    #[test]
    fn standing_down_within_the_grace_wins() {
        let (a, b) = pair();
        let (cfg, rx) = config(our_parent(), Duration::from_millis(500));
        let w = Watchdog::start_with(a.as_fd(), cfg).expect("start");
        drop(b);
        std::thread::sleep(Duration::from_millis(50));
        w.stand_down(); // the loop saw the EOF and leaves on its own terms
        assert!(rx.recv_timeout(Duration::from_millis(800)).is_err());
    }

    #[test]
    fn drop_stops_the_thread_and_releases_the_duplicate() {
        let (a, b) = pair();
        let (cfg, rx) = config(our_parent(), Duration::from_millis(10));
        let w = Watchdog::start_with(a.as_fd(), cfg).expect("start");
        drop(w);
        drop(a);
        // Only the watchdog's duplicate could keep `a`'s socket open now: EOF proves it
        // was closed.
        b.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut buf = [0u8; 1];
        assert_eq!((&b).read(&mut buf).expect("read"), 0, "EOF");
        assert!(
            rx.recv_timeout(QUIET).is_err(),
            "a stopped watchdog never fires"
        );
    }
}
