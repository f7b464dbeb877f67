//! Helpers shared by the IPC integration tests: blocking receive/flush with timeouts on
//! top of the non-blocking channel, and pipes for checking descriptor identity.
#![allow(dead_code)]

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use forkloop::ipc::{Channel, ChannelError, Flush, Kind, Recv};

/// Every wait in these tests gives up after this long.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A received frame, copied out of the channel.
#[derive(Debug)]
pub struct Got {
    pub kind: Kind,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Waits until `fd` is readable (or writable), at most until `deadline`.
pub fn wait_fd(fd: &impl AsFd, write: bool, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "test wait timed out",
        ));
    }
    let events = if write {
        nix::poll::PollFlags::POLLOUT
    } else {
        nix::poll::PollFlags::POLLIN
    };
    let mut pfd = [nix::poll::PollFd::new(fd.as_fd(), events)];
    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
    nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms))?;
    Ok(())
}

/// Receives the next frame (`Ok(None)` at a clean EOF), waiting at most [`TIMEOUT`].
pub fn recv(ch: &mut Channel) -> Result<Option<Got>, ChannelError> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match ch.recv()? {
            Recv::Frame(f) => {
                return Ok(Some(Got {
                    kind: f.kind,
                    payload: f.payload.to_vec(),
                    fds: f.fds,
                }));
            }
            Recv::Eof => return Ok(None),
            Recv::WouldBlock => {}
        }
        wait_fd(ch, false, deadline)?;
    }
}

/// Writes everything queued, waiting at most [`TIMEOUT`] (the peer must be reading).
pub fn flush(ch: &mut Channel) -> Result<(), ChannelError> {
    let deadline = Instant::now() + TIMEOUT;
    while ch.flush()? == Flush::Pending {
        wait_fd(ch, true, deadline)?;
    }
    Ok(())
}

/// Moves everything queued on `a` to `b` without threads: flushes what fits, then lets `b`
/// read, until `a`'s queue is empty. Returns the frames `b` received.
pub fn pump(a: &mut Channel, b: &mut Channel) -> Result<Vec<Got>, ChannelError> {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    loop {
        let done = a.flush()? == Flush::Done;
        while let Recv::Frame(f) = b.recv()? {
            got.push(Got {
                kind: f.kind,
                payload: f.payload.to_vec(),
                fds: f.fds,
            });
        }
        if done {
            return Ok(got);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "pump timed out").into());
        }
    }
}

/// A pipe: (read end, write end).
pub fn pipe() -> (std::io::PipeReader, OwnedFd) {
    let (r, w) = std::io::pipe().expect("pipe");
    (r, OwnedFd::from(w))
}

/// Writes `tag` through `fd` (a pipe's write end received over a channel).
pub fn write_tag(fd: OwnedFd, tag: u32) {
    use std::io::Write;
    let mut f = std::fs::File::from(fd);
    f.write_all(&tag.to_le_bytes())
        .expect("write through received fd");
}

/// Reads one tag from a pipe's read end.
pub fn read_tag(r: &mut std::io::PipeReader) -> u32 {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).expect("read tag");
    u32::from_le_bytes(b)
}

/// The raw fd number, for messages.
pub fn raw(fd: &impl AsRawFd) -> i32 {
    fd.as_raw_fd()
}
