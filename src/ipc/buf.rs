//! The two buffers behind a [`Channel`](super::Channel), free of I/O so that tests and the
//! fuzzer drive exactly the code the channel runs.
//!
//! * [`RecvBuffer`] reassembles frames from bytes that arrive in any chunking and pairs each
//!   frame with its descriptors from a FIFO (never by read boundary).
//! * [`SendQueue`] holds outgoing frames, coalescing small ones into shared segments so one
//!   `sendmsg` carries many, and starting a new segment for every frame with descriptors so
//!   the `SCM_RIGHTS` data rides with that frame's first byte.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::channel::{ChannelError, SendError, SendErrorKind};
use super::frame::{self, HEADER_LEN, Header, Kind, Limits};

/// Bytes the receive buffer starts with, and the most one read asks for by default.
pub const READ_CHUNK: usize = 64 << 10;
/// Small frames are appended to the last queued segment until it holds this many bytes.
pub const SEGMENT_CAP: usize = 64 << 10;
/// Written segments kept for reuse (each up to 64 KiB).
const SPARE_SEGMENTS: usize = 8;
/// Most iovecs handed to one `sendmsg`.
pub const MAX_IOVECS: usize = 64;

/// A received frame: its kind, its payload (borrowed from the channel's buffer until the
/// next receive) and the descriptors that came with it, owned.
#[derive(Debug)]
pub struct InFrame<'a> {
    /// What the payload is.
    pub kind: Kind,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// Descriptors that travelled with this frame: as many as its header declared, less
    /// [`InFrame::lost_fds`].
    pub fds: Vec<OwnedFd>,
    /// Descriptors this frame declared that never arrived: the receive that brought them
    /// was truncated because this process's descriptor table was full (the kernel closed
    /// them). The ones in `fds` are the first of the frame's, in order. Usually 0.
    pub lost_fds: usize,
}

/// Reassembles frames and pairs them with descriptors.
#[derive(Debug)]
pub struct RecvBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    /// Descriptors taken from the FIFO so far (by frames, or closed as strays): the
    /// position in the descriptor stream of `fds[0]`.
    fds_out: u64,
    /// Truncated receives not yet claimed by a frame: where their descriptors start in
    /// the descriptor stream, and how many arrived.
    cuts: VecDeque<(u64, usize)>,
    limits: Limits,
    stray_fds: u64,
    lost_fds: u64,
}

impl RecvBuffer {
    /// An empty buffer enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RecvBuffer {
            buf: Vec::new(),
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            fds_out: 0,
            cuts: VecDeque::new(),
            limits,
            stray_fds: 0,
            lost_fds: 0,
        }
    }

    /// Records that the last read was truncated (`MSG_CTRUNC`) because this process could
    /// not install every descriptor: the last `got` descriptors queued are all that
    /// arrived of the next frame with descriptors, which is then delivered with those
    /// and [`InFrame::lost_fds`] set, instead of failing the channel. (A frame with
    /// descriptors starts its sender's `sendmsg`, and the kernel hands a `sendmsg`'s
    /// descriptors to the read that takes its first byte, so the truncated read's
    /// descriptors are exactly the first ones of that frame.)
    pub fn truncated(&mut self, got: usize) {
        let at = self.fds_out + (self.fds.len() - got.min(self.fds.len())) as u64;
        self.cuts.push_back((at, got));
    }

    /// Descriptors frames declared that never arrived (see [`InFrame::lost_fds`]).
    pub fn lost_fds(&self) -> u64 {
        self.lost_fds
    }

    /// For a frame declaring `declared` descriptors at the front: how many it takes from
    /// the FIFO, and the truncated receive that brought them, if it was one (with how
    /// many arrived).
    fn claim(&self, declared: usize) -> (usize, Option<usize>) {
        match self.cuts.front() {
            Some(&(at, got)) if declared > 0 && at == self.fds_out => {
                (got.min(declared), Some(got))
            }
            _ => (declared, None),
        }
    }

    /// The most descriptors that may wait in the FIFO: two frames' worth (a complete frame
    /// and the start of the next one can arrive in one read).
    pub fn max_queued_fds(&self) -> usize {
        2 * self.limits.max_fds as usize
    }

    /// Bytes buffered that do not yet form a whole frame (or have not been taken).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Descriptors received so far that no frame claimed (closed when found).
    pub fn stray_fds(&self) -> u64 {
        self.stray_fds
    }

    /// Whether a whole frame is buffered, so that [`RecvBuffer::next_frame`] returns it
    /// without error.
    ///
    /// # Errors
    ///
    /// The header at the front is invalid, or the frame is whole but declares more
    /// descriptors than have arrived (they travel with its first byte, so they must be
    /// here by now).
    pub fn frame_ready(&self) -> Result<bool, ChannelError> {
        let avail = &self.buf[self.start..self.end];
        let Some(h) = Header::parse(avail, &self.limits)? else {
            return Ok(false);
        };
        if avail.len() < h.frame_len() {
            return Ok(false);
        }
        if self.fds.len() < self.claim(h.fds as usize).0 {
            return Err(ChannelError::FdMismatch {
                declared: h.fds,
                available: self.fds.len(),
            });
        }
        Ok(true)
    }

    /// Takes the next whole frame, if one is buffered, with its descriptors.
    ///
    /// # Errors
    ///
    /// As [`RecvBuffer::frame_ready`].
    pub fn next_frame(&mut self) -> Result<Option<InFrame<'_>>, ChannelError> {
        let avail = &self.buf[self.start..self.end];
        let Some(h) = Header::parse(avail, &self.limits)? else {
            return Ok(None);
        };
        if avail.len() < h.frame_len() {
            return Ok(None);
        }
        let (n, cut) = self.claim(h.fds as usize);
        if self.fds.len() < n {
            return Err(ChannelError::FdMismatch {
                declared: h.fds,
                available: self.fds.len(),
            });
        }
        let fds = self.fds.drain(..n).collect();
        self.fds_out += n as u64;
        let lost = h.fds as usize - n;
        if let Some(got) = cut {
            self.cuts.pop_front();
            // More arrived than the frame declared (a peer lying about its count): they
            // belong to no frame.
            let extra = (got - n).min(self.fds.len());
            self.fds.drain(..extra);
            self.fds_out += extra as u64;
            self.stray_fds += extra as u64;
        }
        self.lost_fds += lost as u64;
        let payload = self.start + HEADER_LEN..self.start + h.frame_len();
        self.start = payload.end;
        Ok(Some(InFrame {
            kind: h.kind,
            payload: &self.buf[payload],
            fds,
            lost_fds: lost,
        }))
    }

    /// Closes descriptors no frame can claim: when no partial frame is buffered, any queued
    /// descriptor arrived with bytes that are already consumed. Returns how many were closed.
    pub fn close_strays(&mut self) -> usize {
        if self.start != self.end {
            return 0;
        }
        // Truncated receives whose bytes are all consumed have nothing left to claim.
        self.cuts.clear();
        if self.fds.is_empty() {
            return 0;
        }
        let n = self.fds.len();
        self.fds.clear();
        self.fds_out += n as u64;
        self.stray_fds += n as u64;
        log::debug!("closed {n} stray fd(s) that no frame claimed");
        n
    }

    /// Reads more bytes through `read`, which gets free space (at most `max_read` bytes)
    /// and the descriptor FIFO, and returns how many bytes it wrote.
    ///
    /// Before reading, stray descriptors are closed and the buffer is compacted or grown so
    /// the frame at the front fits (never beyond header plus `max_payload`).
    ///
    /// # Errors
    ///
    /// Whatever `read` returns; `InvalidData` if more descriptors are queued than
    /// [`RecvBuffer::max_queued_fds`] afterwards.
    pub fn fill_with<F>(&mut self, max_read: usize, read: F) -> io::Result<usize>
    where
        F: FnOnce(&mut [u8], &mut VecDeque<OwnedFd>) -> io::Result<usize>,
    {
        self.close_strays();
        self.make_room();
        let stop = self.buf.len().min(self.end + max_read.max(1));
        if stop <= self.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "receive buffer full: take the buffered frames first",
            ));
        }
        let n = read(&mut self.buf[self.end..stop], &mut self.fds)?;
        self.end += n.min(stop - self.end);
        if self.fds.len() > self.max_queued_fds() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} fds queued without frames to claim them (max {})",
                    self.fds.len(),
                    self.max_queued_fds()
                ),
            ));
        }
        Ok(n)
    }

    /// Drops everything buffered; queued descriptors are closed and counted as strays.
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.stray_fds += self.fds.len() as u64;
        self.fds_out += self.fds.len() as u64;
        self.fds.clear();
        self.cuts.clear();
    }

    /// Appends bytes directly, as one read would have delivered them; returns how many fit
    /// (take the buffered frames, then push the rest). Used by tests and fuzzing.
    ///
    /// # Errors
    ///
    /// As [`RecvBuffer::fill_with`].
    pub fn push_bytes(&mut self, data: &[u8]) -> io::Result<usize> {
        self.fill_with(data.len(), |spare, _| {
            let n = spare.len().min(data.len());
            spare[..n].copy_from_slice(&data[..n]);
            Ok(n)
        })
    }

    /// Ensures there is free space after `end`, big enough for the frame at the front.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 4 * READ_CHUNK {
                // A big frame has gone; give its memory back.
                self.buf = Vec::new();
            }
        }
        let avail = &self.buf[self.start..self.end];
        let want = match Header::parse(avail, &self.limits) {
            Ok(Some(h)) => h.frame_len().max(READ_CHUNK),
            _ => READ_CHUNK,
        };
        if self.start > 0 && (self.start + want > self.buf.len() || self.end == self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if want > self.buf.len() || self.end == self.buf.len() {
            let cap = HEADER_LEN + self.limits.max_payload as usize;
            let grown = (self.buf.len() * 2).clamp(want, cap.max(READ_CHUNK));
            self.buf.resize(grown.max(want), 0);
        }
    }
}

/// A descriptor to send: owned (closed once sent) or shared (the caller keeps its own
/// reference, e.g. a connection the primary must be able to re-dispatch).
#[derive(Debug)]
pub enum SendFd {
    /// Closed by the channel once the kernel has it.
    Owned(OwnedFd),
    /// The channel drops its reference once the kernel has it.
    Shared(Arc<OwnedFd>),
}

impl AsFd for SendFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            SendFd::Owned(fd) => fd.as_fd(),
            SendFd::Shared(fd) => fd.as_fd(),
        }
    }
}

impl SendFd {
    /// The descriptor itself: the owned one, or the shared one if this was the last
    /// reference, else a duplicate.
    ///
    /// # Errors
    ///
    /// Duplicating failed (out of descriptors).
    pub fn into_owned(self) -> io::Result<OwnedFd> {
        match self {
            SendFd::Owned(fd) => Ok(fd),
            SendFd::Shared(fd) => Arc::try_unwrap(fd).or_else(|fd| fd.try_clone()),
        }
    }
}

impl From<OwnedFd> for SendFd {
    fn from(fd: OwnedFd) -> Self {
        SendFd::Owned(fd)
    }
}

impl From<Arc<OwnedFd>> for SendFd {
    fn from(fd: Arc<OwnedFd>) -> Self {
        SendFd::Shared(fd)
    }
}

#[derive(Debug, Default)]
struct Segment {
    buf: Vec<u8>,
    fds: Vec<SendFd>,
}

/// Outgoing frames, bounded in bytes.
#[derive(Debug)]
pub struct SendQueue {
    segs: VecDeque<Segment>,
    head_off: usize,
    queued: usize,
    max_queued: usize,
    limits: Limits,
    spare: Vec<Vec<u8>>,
}

impl SendQueue {
    /// An empty queue that holds at most `max_queued` bytes and enforces `limits`.
    pub fn new(limits: Limits, max_queued: usize) -> Self {
        SendQueue {
            segs: VecDeque::new(),
            head_off: 0,
            queued: 0,
            max_queued,
            limits,
            spare: Vec::new(),
        }
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Queues one frame whose payload `write` appends (exactly `len` bytes).
    ///
    /// # Errors
    ///
    /// The frame breaks the limits, or the queue would exceed its byte bound
    /// ([`SendErrorKind::QueueFull`]); the descriptors come back in the error.
    pub fn push_with<W>(
        &mut self,
        kind: Kind,
        len: usize,
        fds: Vec<SendFd>,
        write: W,
    ) -> Result<(), SendError>
    where
        W: FnOnce(&mut Vec<u8>),
    {
        let header = match frame::checked_header(kind, fds.len(), len, &self.limits) {
            Ok(h) => h,
            Err(e) => return Err(SendError::new(SendErrorKind::Frame(e), fds)),
        };
        let total = header.frame_len();
        if self.queued + total > self.max_queued {
            let kind = SendErrorKind::QueueFull {
                needed: total,
                queued: self.queued,
                max: self.max_queued,
            };
            return Err(SendError::new(kind, fds));
        }
        let coalesce = fds.is_empty()
            && self
                .segs
                .back()
                .is_some_and(|s| s.buf.len() + total <= SEGMENT_CAP);
        if !coalesce {
            let mut buf = self.spare.pop().unwrap_or_default();
            // Room for the frames that will coalesce after this one, so appends do not
            // reallocate.
            buf.reserve(total.max(SEGMENT_CAP));
            self.segs.push_back(Segment { buf, fds });
        }
        let Some(seg) = self.segs.back_mut() else {
            return Ok(()); // unreachable: a segment was pushed above
        };
        let before = seg.buf.len();
        seg.buf.extend_from_slice(&header.to_bytes());
        write(&mut seg.buf);
        debug_assert_eq!(
            seg.buf.len() - before,
            total,
            "payload writer wrote the wrong length"
        );
        // Keep the stream well-formed even if a writer misbehaves in release builds.
        seg.buf.resize(before + total, 0);
        self.queued += total;
        Ok(())
    }

    /// Queues one frame with the given payload.
    ///
    /// # Errors
    ///
    /// As [`SendQueue::push_with`].
    pub fn push(&mut self, kind: Kind, payload: &[u8], fds: Vec<SendFd>) -> Result<(), SendError> {
        self.push_with(kind, payload.len(), fds, |b| b.extend_from_slice(payload))
    }

    /// Writes queued bytes through `write` (a `sendmsg`) until the queue is empty or `write`
    /// would block. Returns `true` when everything was written.
    ///
    /// Each call of `write` gets consecutive segments up to (not including) the next one
    /// that carries descriptors, and the descriptors of the first segment when its first
    /// byte is being sent.
    ///
    /// # Errors
    ///
    /// Any error from `write` other than `WouldBlock`; `WriteZero` if it accepts nothing.
    pub fn flush_with<F>(&mut self, mut write: F) -> io::Result<bool>
    where
        F: FnMut(&[IoSlice<'_>], &[SendFd]) -> io::Result<usize>,
    {
        while let Some(head) = self.segs.front() {
            let mut iovs = [IoSlice::new(&[]); MAX_IOVECS];
            iovs[0] = IoSlice::new(&head.buf[self.head_off..]);
            let mut n = 1;
            for seg in self.segs.iter().skip(1) {
                if n == MAX_IOVECS || !seg.fds.is_empty() {
                    break;
                }
                iovs[n] = IoSlice::new(&seg.buf);
                n += 1;
            }
            let fds: &[SendFd] = if self.head_off == 0 { &head.fds } else { &[] };
            match write(&iovs[..n], fds) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => self.advance(w),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Takes everything queued: the bytes not yet written (the first segment's from where
    /// writing stopped) and the descriptors not yet sent, in order.
    pub fn take_unsent(&mut self) -> (Vec<u8>, Vec<SendFd>) {
        let mut bytes = Vec::with_capacity(self.queued);
        let mut fds = Vec::new();
        for (i, seg) in self.segs.drain(..).enumerate() {
            let from = if i == 0 { self.head_off } else { 0 };
            bytes.extend_from_slice(&seg.buf[from..]);
            fds.extend(seg.fds);
        }
        self.head_off = 0;
        self.queued = 0;
        (bytes, fds)
    }

    /// Drops everything queued (descriptors are closed). Returns the bytes dropped.
    pub fn clear(&mut self) -> usize {
        let n = self.queued;
        self.segs.clear();
        self.head_off = 0;
        self.queued = 0;
        n
    }

    fn advance(&mut self, mut written: usize) {
        self.queued -= written.min(self.queued);
        if let Some(head) = self.segs.front_mut() {
            head.fds.clear(); // the kernel has them now
        }
        while written > 0 {
            let Some(head) = self.segs.front_mut() else {
                return;
            };
            let rest = head.buf.len() - self.head_off;
            if written < rest {
                self.head_off += written;
                return;
            }
            written -= rest;
            self.head_off = 0;
            if let Some(mut seg) = self.segs.pop_front()
                && self.spare.len() < SPARE_SEGMENTS
                && seg.buf.capacity() <= 4 * SEGMENT_CAP
            {
                seg.buf.clear();
                self.spare.push(seg.buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::frame::encode;

    fn null() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").expect("/dev/null"))
    }

    /// Feeds `frames` (kind User, payload `[i]`, declaring the given descriptor counts) in
    /// one read bringing `got` descriptors, marked truncated when `cut`.
    fn feed(rb: &mut RecvBuffer, declared: &[usize], got: usize, cut: bool) {
        let mut bytes = Vec::new();
        for (i, &n) in declared.iter().enumerate() {
            encode(&mut bytes, Kind::User, n, &[i as u8], &Limits::default()).unwrap();
        }
        rb.fill_with(bytes.len(), |buf, fds| {
            buf[..bytes.len()].copy_from_slice(&bytes);
            fds.extend((0..got).map(|_| null()));
            Ok(bytes.len())
        })
        .unwrap();
        if cut {
            rb.truncated(got);
        }
    }

    fn take(rb: &mut RecvBuffer) -> (u8, usize, usize) {
        let f = rb.next_frame().unwrap().expect("a whole frame");
        (f.payload[0], f.fds.len(), f.lost_fds)
    }

    #[test]
    fn a_truncated_frame_takes_what_arrived_and_the_next_ones_their_own() {
        let mut rb = RecvBuffer::new(Limits::default());
        feed(&mut rb, &[3], 1, true);
        assert_eq!(take(&mut rb), (0, 1, 2));
        feed(&mut rb, &[0, 1], 1, false);
        assert_eq!(take(&mut rb), (0, 0, 0));
        assert_eq!(take(&mut rb), (1, 1, 0));
        assert_eq!((rb.lost_fds(), rb.stray_fds()), (2, 0));
    }

    #[test]
    fn descriptors_beyond_a_truncated_frames_count_are_strays() {
        // A peer that lies (3 sent with a frame declaring 1) and a truncation: the extra
        // two must not slide to the next frame.
        let mut rb = RecvBuffer::new(Limits::default());
        feed(&mut rb, &[1], 3, true);
        assert_eq!(take(&mut rb), (0, 1, 0));
        assert_eq!(rb.stray_fds(), 2);
        feed(&mut rb, &[1], 1, false);
        assert_eq!(take(&mut rb), (0, 1, 0));
    }

    #[test]
    fn a_truncation_with_nothing_arrived_marks_the_next_frame_with_descriptors() {
        let mut rb = RecvBuffer::new(Limits::default());
        feed(&mut rb, &[0, 2, 1], 0, true);
        assert_eq!(take(&mut rb), (0, 0, 0), "no descriptors: not the one cut");
        assert_eq!(take(&mut rb), (1, 0, 2));
        // A read brings one `sendmsg`'s descriptors at most, so the third frame's would
        // come with a later read; claiming some that never came is a mismatch (the channel
        // fails), not a silent misfit.
        assert!(rb.next_frame().is_err());
    }
}
