//! Which descriptors a channel's peer has not read yet, and getting them back.
//!
//! A descriptor sent over a Unix socket waits in the socket until the peer reads it; if the
//! peer's end of the socket closes first (the peer process died), the kernel closes the
//! descriptor. A sender that must not lose what it sent (the primary, handing connections
//! to workers) keeps a duplicate of the peer's end: the peer's end then outlives the peer,
//! and whatever the peer never read can be read back from it.
//!
//! A channel that keeps an [`FdLedger`] ([`Channel::track_fds`](super::Channel::track_fds))
//! records where in its outgoing byte stream each frame with descriptors starts. The
//! number of bytes the peer has not read (`FIONREAD` on the duplicate) tells where its
//! reading stopped, and so which of those frames it has read: a frame with descriptors
//! always starts its own `sendmsg`, and the kernel gives a `sendmsg`'s descriptors to
//! whoever reads its first byte. This costs the sender one `ioctl` when it wants to know,
//! and the receiver nothing: no acknowledgement messages.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::buf::SendFd;
use super::frame::{HEADER_LEN, Header, Kind, Limits};
use crate::sys;

/// A frame with descriptors that the peer never read.
#[derive(Debug)]
pub struct UnreadFrame {
    /// What the payload is.
    pub kind: Kind,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// The descriptors that travelled (or were to travel) with it.
    pub fds: Vec<OwnedFd>,
}

/// Where a channel's frames with descriptors start in its outgoing byte stream, and how
/// much of that stream has been written.
#[derive(Debug, Default)]
pub struct FdLedger {
    /// Bytes queued so far: where the next frame starts.
    queued: u64,
    /// Bytes written to the socket so far.
    written: u64,
    /// Start and descriptor count of each frame with descriptors not known to be read.
    frames: VecDeque<(u64, u32)>,
    /// What was still queued when the channel closed: bytes from the first unwritten one,
    /// and the descriptors of the frames among them.
    unsent: Vec<u8>,
    unsent_fds: Vec<SendFd>,
}

impl FdLedger {
    /// A frame of `len` bytes (header included) with `fds` descriptors was queued.
    pub(crate) fn queued(&mut self, len: usize, fds: usize) {
        if fds > 0 {
            self.frames.push_back((self.queued, fds as u32));
        }
        self.queued += len as u64;
    }

    /// `n` more bytes were written to the socket.
    pub(crate) fn written(&mut self, n: usize) {
        self.written += n as u64;
    }

    /// The channel closed with these bytes and descriptors still queued.
    pub(crate) fn keep_unsent(&mut self, bytes: Vec<u8>, fds: Vec<SendFd>) {
        self.unsent = bytes;
        self.unsent_fds = fds;
    }

    /// Where the peer's reading stands: the offset of the first byte it has not read, from
    /// `peer`, a duplicate of its end of the socket. Frames before that are forgotten.
    fn first_unread(&mut self, peer: BorrowedFd<'_>) -> io::Result<u64> {
        let waiting = sys::unread_bytes(peer)? as u64;
        let first = self.written.saturating_sub(waiting);
        while self.frames.front().is_some_and(|&(start, _)| start < first) {
            self.frames.pop_front();
        }
        Ok(first)
    }

    /// How many descriptors sent on the channel the peer has not read: those in frames
    /// still queued, and those in frames written that it has not started reading. `peer`
    /// is a duplicate of the peer's end of the socket.
    ///
    /// # Errors
    ///
    /// The `FIONREAD` on `peer` failed.
    pub fn unread_fds(&mut self, peer: BorrowedFd<'_>) -> io::Result<u32> {
        self.first_unread(peer)?;
        Ok(self.frames.iter().map(|&(_, n)| n).sum())
    }

    /// Once the channel is closed and the peer gone for good (nothing else reads `peer`,
    /// a duplicate of its end of the socket, any more): the frames with descriptors the
    /// peer never read, in the order they were sent: read back from `peer`, then those
    /// that were still queued here. Reading errors are logged and end the reading; what
    /// cannot be framed is closed.
    pub fn read_back(mut self, peer: BorrowedFd<'_>, limits: Limits) -> Vec<UnreadFrame> {
        let first = match self.first_unread(peer) {
            Ok(first) => first,
            Err(e) => {
                log::warn!("cannot tell what the peer left unread: {e}");
                return Vec::new();
            }
        };
        let Some(&(start, _)) = self.frames.front() else {
            return Vec::new(); // it read every descriptor it was sent
        };
        let (mut bytes, mut fds) = read_all(peer, limits.max_fds as usize);
        // The stream from the first unread byte: what the socket held, then what was never
        // written. Frames with descriptors begin at `start`; the bytes before it end a
        // frame the peer had started (its descriptors went with its first byte) or are
        // frames without descriptors.
        bytes.extend_from_slice(&self.unsent);
        for fd in self.unsent_fds.drain(..) {
            match fd.into_owned() {
                Ok(fd) => fds.push_back(fd),
                Err(e) => log::warn!("a descriptor never sent is lost: {e}"),
            }
        }
        let skip = usize::try_from(start - first).unwrap_or(usize::MAX);
        let rest = bytes.get(skip..).unwrap_or_default();
        frames_with_fds(rest, fds, limits)
    }
}

/// Reads everything waiting on `peer`, with the descriptors that came with it, in order.
fn read_all(peer: BorrowedFd<'_>, max_fds: usize) -> (Vec<u8>, VecDeque<OwnedFd>) {
    let mut bytes = Vec::new();
    let mut fds = VecDeque::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match sys::scm::recv_with_fds(peer, &mut buf, max_fds, &mut fds) {
            Ok(r) if r.bytes == 0 => break,
            Ok(r) if r.truncated => {
                // Descriptors the kernel could not install are closed: the frames from
                // this one on cannot be paired with theirs, so reading stops here.
                bytes.extend_from_slice(&buf[..r.bytes]);
                log::warn!(
                    "reading back what the peer left unread: descriptor table full ({}); \
                     the descriptors of the frames from here on are lost",
                    sys::fd_limit_summary()
                );
                break;
            }
            Ok(r) => bytes.extend_from_slice(&buf[..r.bytes]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                log::warn!("reading back what the peer left unread: {e}");
                break;
            }
        }
    }
    (bytes, fds)
}

/// The frames with descriptors in `stream` (which starts at a frame boundary), each with
/// the next of `fds` as its header counts them. A frame cut short ends the stream.
fn frames_with_fds(stream: &[u8], mut fds: VecDeque<OwnedFd>, limits: Limits) -> Vec<UnreadFrame> {
    let mut out = Vec::new();
    let mut rest = stream;
    loop {
        let h = match Header::parse(rest, &limits) {
            Ok(Some(h)) if rest.len() >= h.frame_len() => h,
            Ok(_) => break,
            Err(e) => {
                log::warn!("reading back what the peer left unread: {e}");
                break;
            }
        };
        let n = usize::from(h.fds);
        if fds.len() < n {
            log::warn!("reading back what the peer left unread: a frame lacks its fds");
            break;
        }
        let frame_fds: Vec<OwnedFd> = fds.drain(..n).collect();
        if n > 0 {
            out.push(UnreadFrame {
                kind: h.kind,
                payload: rest[HEADER_LEN..h.frame_len()].to_vec(),
                fds: frame_fds,
            });
        }
        rest = &rest[h.frame_len()..];
    }
    out
}
