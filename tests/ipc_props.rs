//! Property tests: random frame sequences, random re-chunking of the byte stream (down to
//! 1-byte reads), and descriptors always paired with the right frame, checked through real
//! pipes sent over a real socketpair.

mod util;

use forkloop::ipc::frame::{self, Decoded, HEADER_LEN, Kind, Limits};
use forkloop::ipc::{Channel, ChannelConfig, ChannelError, Message, RecvBuffer, SendFd};
use proptest::prelude::*;
use util::{pipe, pump, read_tag, write_tag};

fn kind() -> impl Strategy<Value = Kind> {
    proptest::sample::select(Kind::ALL.to_vec())
}

fn frames() -> impl Strategy<Value = Vec<(Kind, Vec<u8>)>> {
    prop::collection::vec((kind(), prop::collection::vec(any::<u8>(), 0..300)), 0..40)
}

/// Feeds `wire` to a receive buffer in chunks of the given sizes (cycled), taking frames as
/// they complete. Returns the frames, or the first error.
fn reassemble(
    wire: &[u8],
    chunks: &[usize],
    limits: Limits,
) -> Result<Vec<(Kind, Vec<u8>)>, ChannelError> {
    let mut rb = RecvBuffer::new(limits);
    let mut out = Vec::new();
    let mut rest = wire;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let took = rb.push_bytes(&rest[..n])?;
        rest = &rest[took..];
        while let Some(f) = rb.next_frame()? {
            out.push((f.kind, f.payload.to_vec()));
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_never_panics_and_respects_limits(bytes in prop::collection::vec(any::<u8>(), 0..64), max in 0u32..64) {
        let limits = Limits { max_payload: max, max_fds: 4 };
        match frame::decode(&bytes, &limits) {
            Ok(Decoded::Frame { frame, consumed }) => {
                prop_assert!(consumed <= bytes.len());
                prop_assert!(frame.header.len <= max);
                prop_assert!(frame.header.fds <= 4);
                prop_assert_eq!(consumed, HEADER_LEN + frame.payload.len());
            }
            Ok(Decoded::NeedMore { need }) => {
                prop_assert!(need > bytes.len());
                prop_assert!(need <= HEADER_LEN + max as usize);
            }
            Err(_) => {}
        }
    }

    #[test]
    fn rechunked_stream_reassembles_exactly(input in frames(), chunks in prop::collection::vec(1usize..50, 1..20)) {
        let limits = Limits::default();
        let mut wire = Vec::new();
        for (k, p) in &input {
            frame::encode(&mut wire, *k, 0, p, &limits).unwrap();
        }
        prop_assert_eq!(reassemble(&wire, &chunks, limits).unwrap(), input.clone());
        // One byte at a time gives the same frames.
        prop_assert_eq!(reassemble(&wire, &[1], limits).unwrap(), input);
    }

    #[test]
    fn corruption_is_an_error_never_a_panic(input in frames(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let limits = Limits { max_payload: 512, max_fds: 4 };
        let mut wire = Vec::new();
        for (k, p) in &input {
            frame::encode(&mut wire, *k, 0, p, &limits).unwrap();
        }
        if !wire.is_empty() {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        // Either it still parses (payload byte changed) or a typed error comes back.
        let _ = reassemble(&wire, &[7, 1, 300], limits);
    }

    #[test]
    fn messages_round_trip(seq in any::<u32>(), key in any::<u32>(), lag in any::<u64>(), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let msgs = [
            Message::NewConn { key, seq: lag, reply: seq % 2 == 1 },
            Message::Pong { seq: lag, lag_us: lag / 3 },
            Message::Relay { peer: key, payload: body.clone() },
            Message::User(body),
        ];
        for m in msgs {
            let mut p = Vec::new();
            m.encode_payload(&mut p);
            let fds = usize::from(m.kind() == Kind::NewConn);
            prop_assert_eq!(Message::decode(m.kind(), &p, fds).unwrap(), m);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Frames with 0–3 pipe write ends each cross a real socketpair whose receiver reads at
    /// most `read_size` bytes per `recvmsg`; every received fd must be the one sent with that
    /// frame: writing the frame's tag through it arrives at the matching read end.
    #[test]
    fn fds_stay_paired_with_their_frames(
        spec in prop::collection::vec((0usize..=3, 0usize..200), 1..24),
        read_size in prop_oneof![Just(1usize), 2usize..64, Just(65536)],
    ) {
        let (sa, sb) = forkloop::sys::socketpair().unwrap();
        let mut a = Channel::new(sa, ChannelConfig::default()).unwrap();
        let mut b = Channel::new(sb, ChannelConfig { read_size, ..ChannelConfig::default() }).unwrap();
        let mut readers = Vec::new();
        for (i, (nfds, len)) in spec.iter().enumerate() {
            let mut fds: Vec<SendFd> = Vec::new();
            for j in 0..*nfds {
                let (r, w) = pipe();
                readers.push(((i * 4 + j) as u32, r));
                fds.push(w.into());
            }
            a.send_with_fds(Kind::User, &vec![i as u8; *len], fds).unwrap();
        }
        let got = pump(&mut a, &mut b).unwrap();
        prop_assert_eq!(got.len(), spec.len());
        for (i, g) in got.into_iter().enumerate() {
            prop_assert_eq!(g.payload.len(), spec[i].1);
            prop_assert_eq!(g.fds.len(), spec[i].0);
            for (j, fd) in g.fds.into_iter().enumerate() {
                write_tag(fd, (i * 4 + j) as u32);
            }
        }
        for (tag, mut r) in readers {
            prop_assert_eq!(read_tag(&mut r), tag);
        }
        prop_assert_eq!(b.stray_fds(), 0);
    }
}
