//! The framed channel over real socketpairs: typed messages, descriptors, malformed input,
//! back-pressure.

mod util;

use std::io::{IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdUnix;
use std::sync::Arc;

use forkloop::ipc::frame::{self, Kind, Limits};
use forkloop::ipc::{
    Channel, ChannelConfig, ChannelError, Endpoint, FrameError, HttpReport, ListenMode,
    ListenRequest, Message, ProtoError, Recv, SendErrorKind, SendFd,
};
use util::{pipe, pump, read_tag, recv, write_tag};

/// A channel whose peer is a plain blocking socket we write raw bytes into.
fn raw_peer(config: ChannelConfig) -> (Channel, StdUnix) {
    let (a, b) = forkloop::sys::socketpair().unwrap();
    let ch = Channel::new(a, config).unwrap();
    forkloop::sys::set_nonblocking(b.as_fd(), false).unwrap();
    (ch, StdUnix::from(b))
}

fn header(version: u8, kind: u8, flags: u8, fds: u8, len: u32) -> Vec<u8> {
    let mut h = vec![version, kind, flags, fds];
    h.extend_from_slice(&len.to_le_bytes());
    h
}

/// After a malformed stream the channel is closed and the peer reads EOF.
fn assert_closed_for_peer(ch: &Channel, peer: &mut StdUnix) {
    assert!(ch.is_closed());
    let mut b = [0u8; 16];
    peer.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    assert_eq!(peer.read(&mut b).unwrap(), 0, "peer should see EOF");
}

fn all_messages() -> Vec<Message> {
    let tcp: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    vec![
        Message::Online,
        Message::QueryServer {
            seq: 7,
            request: ListenRequest {
                endpoint: Endpoint::Tcp("[::1]:0".parse().unwrap()),
                index: 2,
                backlog: 511,
                flags: 1,
            },
        },
        Message::QueryReply {
            seq: 7,
            errno: 98,
            key: 3,
            mode: ListenMode::HandOff,
            bound: None,
        },
        Message::QueryReply {
            seq: 8,
            errno: 0,
            key: 4,
            mode: ListenMode::Shared,
            bound: Some(Endpoint::Unix("/tmp/x.sock".into())),
        },
        Message::Listening {
            key: 4,
            bound: Endpoint::Udp(tcp),
        },
        Message::NewConn {
            key: 1,
            seq: 99,
            reply: true,
        },
        Message::Rejected {
            key: 1,
            seq: u64::MAX,
        },
        Message::Disconnect,
        Message::Ping { seq: u64::MAX },
        Message::Pong {
            seq: 5,
            lag_us: 1234,
        },
        Message::Ready,
        Message::Relay {
            peer: 3,
            payload: b"hi there".to_vec(),
        },
        Message::Close { key: 4 },
        Message::ExitedAfterDisconnect { seq: 1 },
        Message::Ack { seq: 1 },
        Message::GoingDown {
            reason: "out of memory".into(),
        },
        Message::Credit { credit: 5 },
        Message::HttpStats(HttpReport {
            requests: 10,
            accepted: 4,
            open: 2,
            errors: vec![("malformed".into(), 1), ("timeout".into(), u64::MAX)],
        }),
        Message::HttpStats(HttpReport::default()),
        Message::User(vec![]),
        Message::User(vec![0xff; 300]),
    ]
}

#[test]
fn every_message_kind_round_trips() {
    let (mut a, mut b) = Channel::pair(ChannelConfig::default()).unwrap();
    let msgs = all_messages();
    let mut readers = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let fds: Vec<SendFd> = match m {
            Message::NewConn { .. } | Message::Rejected { .. } => {
                let (r, w) = pipe();
                readers.push((i as u32, r));
                vec![w.into()]
            }
            _ => Vec::new(),
        };
        a.send_msg(m, fds).unwrap();
    }
    let got = pump(&mut a, &mut b).unwrap();
    assert_eq!(got.len(), msgs.len());
    for (i, (g, want)) in got.into_iter().zip(&msgs).enumerate() {
        let n = g.fds.len();
        let m = Message::decode(g.kind, &g.payload, n).unwrap();
        assert_eq!(&m, want);
        for fd in g.fds {
            write_tag(fd, i as u32);
        }
    }
    for (i, mut r) in readers {
        assert_eq!(read_tag(&mut r), i);
    }
}

#[test]
fn send_msg_refuses_a_wrong_fd_count_and_gives_the_fd_back() {
    let (mut a, _b) = Channel::pair(ChannelConfig::default()).unwrap();
    let (_r, w) = pipe();
    let err = a.send_msg(&Message::Online, vec![w.into()]).unwrap_err();
    assert!(matches!(
        err.kind,
        SendErrorKind::Proto(ProtoError::WrongFdCount { got: 1, .. })
    ));
    assert_eq!(err.fds.len(), 1);
    let err = a
        .send_msg(
            &Message::NewConn {
                key: 0,
                seq: 0,
                reply: false,
            },
            vec![],
        )
        .unwrap_err();
    assert!(matches!(err.kind, SendErrorKind::Proto(_)));
    assert_eq!(a.queued_bytes(), 0);
}

#[test]
fn new_conn_carries_a_burst_of_connections_in_order() {
    // One NewConn frame with three descriptors: connections seq, seq+1, seq+2, in order.
    let (mut a, mut b) = Channel::pair(ChannelConfig::default()).unwrap();
    let mut readers = queue_conns(&mut a, 7, 3);
    let burst = Message::NewConn {
        key: 9,
        seq: 7,
        reply: false,
    };
    let mut got = pump(&mut a, &mut b).unwrap();
    assert_eq!(got.len(), 1);
    let g = got.pop().unwrap();
    let m = Message::decode(g.kind, &g.payload, g.fds.len()).unwrap();
    assert_eq!(m, burst);
    assert_eq!(g.fds.len(), 3);
    for (i, fd) in g.fds.into_iter().enumerate() {
        write_tag(fd, 7 + i as u32);
    }
    for (i, r) in readers.iter_mut().enumerate() {
        assert_eq!(read_tag(r), 7 + i as u32);
    }
}

/// Node's test-cluster-send-handle-large-payload: 800 KB plus a descriptor, both ways; the
/// descriptor stays paired with its message across many reads.
#[test]
fn large_payload_with_fd_both_directions() {
    let (mut p, mut w) = Channel::pair(ChannelConfig::default()).unwrap();
    let big: Vec<u8> = (0..800_000u32).map(|i| (i % 253) as u8).collect();
    for tag in [1u32, 2] {
        let (from, to) = if tag == 1 {
            (&mut p, &mut w)
        } else {
            (&mut w, &mut p)
        };
        let (mut r, wfd) = pipe();
        from.send(Kind::User, b"before").unwrap();
        from.send_with_fds(Kind::User, &big, vec![wfd.into()])
            .unwrap();
        from.send(Kind::User, b"after").unwrap();
        let got = pump(from, to).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].payload, b"before");
        assert!(got[0].fds.is_empty());
        assert_eq!(got[1].payload, big);
        assert_eq!(got[2].payload, b"after");
        assert!(got[2].fds.is_empty());
        let mut fds = got.into_iter().nth(1).unwrap().fds;
        assert_eq!(fds.len(), 1);
        write_tag(fds.pop().unwrap(), tag);
        assert_eq!(read_tag(&mut r), tag);
    }
}

#[test]
fn clean_eof_at_a_frame_boundary() {
    let (mut a, mut b) = Channel::pair(ChannelConfig::default()).unwrap();
    a.send(Kind::User, b"last").unwrap();
    util::flush(&mut a).unwrap();
    drop(a);
    assert_eq!(recv(&mut b).unwrap().unwrap().payload, b"last");
    assert!(recv(&mut b).unwrap().is_none());
}

#[test]
fn peer_close_mid_frame_is_an_error() {
    let (mut ch, mut peer) = raw_peer(ChannelConfig::default());
    let mut bytes = header(1, Kind::User.code(), 0, 0, 10);
    bytes.extend_from_slice(b"12345");
    peer.write_all(&bytes).unwrap();
    drop(peer);
    match recv(&mut ch) {
        Err(ChannelError::EofMidFrame { buffered: 13 }) => {}
        other => panic!("expected EofMidFrame, got {other:?}"),
    }
    assert!(ch.is_closed());
    assert!(matches!(ch.recv(), Err(ChannelError::Closed)));
}

#[test]
fn truncated_header_at_eof_is_an_error() {
    let (mut ch, mut peer) = raw_peer(ChannelConfig::default());
    peer.write_all(&[1, 32, 0]).unwrap();
    drop(peer);
    assert!(matches!(
        recv(&mut ch),
        Err(ChannelError::EofMidFrame { buffered: 3 })
    ));
}

#[test]
fn oversized_length_closes_the_channel() {
    let config = ChannelConfig {
        limits: Limits {
            max_payload: 1024,
            ..Limits::default()
        },
        max_queued_bytes: 4096,
        ..ChannelConfig::default()
    };
    let (mut ch, mut peer) = raw_peer(config);
    peer.write_all(&header(1, Kind::User.code(), 0, 0, 1025))
        .unwrap();
    match recv(&mut ch) {
        Err(ChannelError::Frame(FrameError::TooLarge {
            len: 1025,
            max: 1024,
        })) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_closed_for_peer(&ch, &mut peer);
}

#[test]
fn bad_version_closes_the_channel() {
    let (mut ch, mut peer) = raw_peer(ChannelConfig::default());
    // A valid frame first: it is delivered; the bad one after it closes the channel.
    let mut bytes = Vec::new();
    frame::encode(&mut bytes, Kind::Ready, 0, b"", &Limits::default()).unwrap();
    bytes.extend_from_slice(&header(9, Kind::User.code(), 0, 0, 0));
    peer.write_all(&bytes).unwrap();
    assert_eq!(recv(&mut ch).unwrap().unwrap().kind, Kind::Ready);
    assert!(matches!(
        recv(&mut ch),
        Err(ChannelError::Frame(FrameError::BadVersion { got: 9 }))
    ));
    assert_closed_for_peer(&ch, &mut peer);
}

#[test]
fn unknown_kind_and_flags_close_the_channel() {
    for (kind, flags, want) in [
        (200u8, 0u8, FrameError::UnknownKind { got: 200 }),
        (
            Kind::User.code(),
            0x80,
            FrameError::UnknownFlags { flags: 0x80 },
        ),
    ] {
        let (mut ch, mut peer) = raw_peer(ChannelConfig::default());
        peer.write_all(&header(1, kind, flags, 0, 0)).unwrap();
        match recv(&mut ch) {
            Err(ChannelError::Frame(e)) => assert_eq!(e, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
        assert_closed_for_peer(&ch, &mut peer);
    }
}

#[test]
fn fd_count_mismatch_closes_the_channel() {
    let (mut ch, mut peer) = raw_peer(ChannelConfig::default());
    let mut bytes = header(1, Kind::User.code(), 0, 1, 2);
    bytes.extend_from_slice(b"no");
    peer.write_all(&bytes).unwrap(); // declares one fd, sends none
    match recv(&mut ch) {
        Err(ChannelError::FdMismatch {
            declared: 1,
            available: 0,
        }) => {}
        other => panic!("expected FdMismatch, got {other:?}"),
    }
    assert_closed_for_peer(&ch, &mut peer);
}

#[test]
fn stray_fds_are_closed_and_counted() {
    let (mut ch, peer) = raw_peer(ChannelConfig::default());
    let (mut r, w) = pipe();
    // A frame that declares no fds, sent with one attached.
    let mut bytes = header(1, Kind::User.code(), 0, 0, 3);
    bytes.extend_from_slice(b"abc");
    let n = forkloop::sys::scm::send_with_fds(peer.as_fd(), &[IoSlice::new(&bytes)], &[w.as_fd()])
        .unwrap();
    assert_eq!(n, bytes.len());
    drop(w); // our copy; the only other one is the stray in the receiver
    let got = recv(&mut ch).unwrap().unwrap();
    assert_eq!(got.payload, b"abc");
    assert!(got.fds.is_empty());
    // The next receive finds the FIFO holding an fd that no buffered frame can claim.
    assert!(matches!(ch.recv(), Ok(Recv::WouldBlock)));
    assert_eq!(ch.stray_fds(), 1);
    let mut b = [0u8; 1];
    assert_eq!(r.read(&mut b).unwrap(), 0, "stray write end must be closed");
    assert!(
        !ch.is_closed(),
        "a stray fd is not a reason to drop the channel"
    );
}

#[test]
fn more_fds_than_the_control_buffer_is_an_error() {
    let config = ChannelConfig {
        limits: Limits {
            max_fds: 2,
            ..Limits::default()
        },
        ..ChannelConfig::default()
    };
    let (mut ch, mut peer) = raw_peer(config);
    let pipes: Vec<_> = (0..3).map(|_| pipe()).collect();
    let fds: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
    let bytes = header(1, Kind::User.code(), 0, 3, 0);
    forkloop::sys::scm::send_with_fds(peer.as_fd(), &[IoSlice::new(&bytes)], &fds).unwrap();
    let err = recv(&mut ch).unwrap_err();
    assert!(
        err.to_string().contains("MSG_CTRUNC"),
        "unexpected error: {err}"
    );
    drop(fds);
    for (mut r, w) in pipes {
        drop(w);
        let mut b = [0u8; 1];
        assert_eq!(r.read(&mut b).unwrap(), 0, "received fds must be closed");
    }
    assert_closed_for_peer(&ch, &mut peer);
}

#[test]
fn full_queue_is_back_pressure_and_gives_the_fds_back() {
    let config = ChannelConfig {
        limits: Limits {
            max_payload: 1000,
            ..Limits::default()
        },
        max_queued_bytes: 4096,
        ..ChannelConfig::default()
    };
    let (mut a, mut b) = Channel::pair(config).unwrap();
    let payload = [5u8; 1000];
    let mut sent = 0;
    let (mut r, w) = pipe();
    let shared = Arc::new(w);
    let err = loop {
        match a.send_with_fds(Kind::User, &payload, vec![SendFd::Shared(shared.clone())]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(sent, 4, "4 frames of 1008 bytes fit in 4096");
    assert!(err.is_queue_full());
    match err.kind {
        SendErrorKind::QueueFull {
            needed: 1008,
            queued: 4032,
            max: 4096,
        } => {}
        ref k => panic!("unexpected {k:?}"),
    }
    assert_eq!(err.fds.len(), 1, "the descriptor comes back");
    assert_eq!(a.queued_bytes(), 4032);
    // Once the peer reads, the queue drains and sending works again.
    let got = pump(&mut a, &mut b).unwrap();
    assert_eq!(got.len(), 4);
    a.send_with_fds(Kind::User, &payload, err.fds).unwrap();
    let got2 = pump(&mut a, &mut b).unwrap();
    assert_eq!(got2.len(), 1);
    for (i, g) in got.into_iter().chain(got2).enumerate() {
        assert_eq!(g.fds.len(), 1);
        write_tag(g.fds.into_iter().next().unwrap(), i as u32);
    }
    drop(shared);
    for i in 0..5 {
        assert_eq!(read_tag(&mut r), i);
    }
}

#[test]
fn sending_on_a_closed_channel_gives_the_fds_back() {
    let (mut a, _b) = Channel::pair(ChannelConfig::default()).unwrap();
    a.close();
    let (_r, w) = pipe();
    let err = a
        .send_with_fds(Kind::User, b"x", vec![w.into()])
        .unwrap_err();
    assert!(matches!(err.kind, SendErrorKind::Closed));
    assert_eq!(err.fds.len(), 1);
    assert!(matches!(a.flush(), Err(ChannelError::Closed)));
}

#[test]
fn oversized_send_is_refused_before_queueing() {
    let config = ChannelConfig {
        limits: Limits {
            max_payload: 10,
            max_fds: 1,
        },
        max_queued_bytes: 100,
        ..ChannelConfig::default()
    };
    let (mut a, _b) = Channel::pair(config).unwrap();
    let err = a.send(Kind::User, &[0; 11]).unwrap_err();
    assert!(matches!(
        err.kind,
        SendErrorKind::Frame(FrameError::TooLarge { len: 11, max: 10 })
    ));
    let (_r1, w1) = pipe();
    let (_r2, w2) = pipe();
    let err = a
        .send_with_fds(Kind::User, b"", vec![w1.into(), w2.into()])
        .unwrap_err();
    assert!(matches!(
        err.kind,
        SendErrorKind::Frame(FrameError::TooManyFds { count: 2, max: 1 })
    ));
    assert_eq!(err.fds.len(), 2);
    assert_eq!(a.queued_bytes(), 0);
}

#[test]
fn invalid_config_is_rejected() {
    let config = ChannelConfig {
        max_queued_bytes: 100,
        ..ChannelConfig::default()
    };
    let (a, _b) = forkloop::sys::socketpair().unwrap();
    let err = Channel::new(a, config).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn malformed_payloads_are_typed_errors() {
    let (mut a, mut b) = Channel::pair(ChannelConfig::default()).unwrap();
    a.send(Kind::Ping, &[1, 2, 3]).unwrap(); // u64 field cut short
    a.send(Kind::Ack, &[1, 0, 0, 0, 9]).unwrap(); // one byte too many
    a.send(Kind::NewConn, &[0; 13]).unwrap(); // a connection without its fd
    // An HTTP report claiming more error kinds than a report may carry.
    let mut report = vec![0u8; 24];
    report.extend_from_slice(&65u32.to_le_bytes());
    a.send(Kind::HttpStats, &report).unwrap();
    let got = pump(&mut a, &mut b).unwrap();
    let errs: Vec<ProtoError> = got
        .into_iter()
        .map(|g| Message::decode(g.kind, &g.payload, g.fds.len()).unwrap_err())
        .collect();
    assert_eq!(
        errs,
        vec![
            ProtoError::Truncated {
                kind: Kind::Ping,
                field: "seq"
            },
            ProtoError::TrailingBytes {
                kind: Kind::Ack,
                extra: 1
            },
            ProtoError::WrongFdCount {
                kind: Kind::NewConn,
                got: 0
            },
            ProtoError::BadValue {
                kind: Kind::HttpStats,
                field: "errors"
            },
        ]
    );
    assert!(
        !b.is_closed(),
        "a bad payload is the caller's decision, not the channel's"
    );
}

#[test]
fn many_small_frames_share_few_writes_and_fds_start_a_new_one() {
    use forkloop::ipc::SendQueue;
    let mut q = SendQueue::new(Limits::default(), 1 << 20);
    for i in 0..1000u32 {
        q.push(Kind::User, &i.to_le_bytes(), Vec::new()).unwrap();
    }
    let mut calls = 0;
    assert!(
        q.flush_with(|iovs, fds| {
            calls += 1;
            assert!(fds.is_empty());
            Ok(iovs.iter().map(|v| v.len()).sum())
        })
        .unwrap()
    );
    assert_eq!(calls, 1, "12 000 bytes of small frames go in one sendmsg");

    let (_r, w) = pipe();
    q.push(Kind::User, b"a", Vec::new()).unwrap();
    q.push(Kind::User, b"b", vec![w.into()]).unwrap();
    q.push(Kind::User, b"c", Vec::new()).unwrap();
    let mut seen = Vec::new();
    q.flush_with(|iovs, fds| {
        let n: usize = iovs.iter().map(|v| v.len()).sum();
        seen.push((n, fds.len()));
        Ok(n)
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![(9, 0), (18, 1)],
        "the fd rides with frame b's first byte"
    );
}

#[test]
fn partial_writes_resume_where_they_stopped() {
    use forkloop::ipc::{RecvBuffer, SendQueue};
    let mut q = SendQueue::new(Limits::default(), 1 << 20);
    let (_r, w) = pipe();
    q.push(Kind::User, &[1; 100], Vec::new()).unwrap();
    q.push(Kind::User, &[2; 50], vec![w.into()]).unwrap();
    let mut wire = Vec::new();
    let mut fd_at = Vec::new();
    let mut budget = [7usize, 0, 1, 3, 200, 5, 1000].into_iter();
    loop {
        let done = q
            .flush_with(|iovs, fds| {
                let b = budget.next().unwrap_or(1000);
                if b == 0 {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                if !fds.is_empty() {
                    fd_at.push(wire.len());
                }
                let mut left = b;
                for v in iovs {
                    let n = v.len().min(left);
                    wire.extend_from_slice(&v[..n]);
                    left -= n;
                }
                Ok(b - left)
            })
            .unwrap();
        if done {
            break;
        }
    }
    assert_eq!(
        fd_at,
        vec![108],
        "fds sent once, with the first byte of their frame"
    );
    let mut rb = RecvBuffer::new(Limits::default());
    assert_eq!(rb.push_bytes(&wire).unwrap(), wire.len());
    // No fds were fed to the buffer, so the second frame is a mismatch: the fd pairing is
    // enforced, not assumed.
    assert_eq!(rb.next_frame().unwrap().unwrap().payload, &[1; 100][..]);
    assert!(matches!(
        rb.next_frame(),
        Err(ChannelError::FdMismatch {
            declared: 1,
            available: 0
        })
    ));
}

/// Waits for the next edge-triggered event on `poll`; whether one came within `within`.
fn event_within(poll: &mut mio::Poll, within: std::time::Duration) -> bool {
    let mut events = mio::Events::with_capacity(4);
    poll.poll(&mut events, Some(within)).unwrap();
    !events.is_empty()
}

#[test]
fn after_a_short_read_data_arriving_later_raises_an_event_and_is_read() {
    use mio::{Interest, Poll, Token};
    let (mut ch, mut peer) = raw_peer(ChannelConfig::default());
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut ch, Token(0), Interest::READABLE)
        .unwrap();
    let frame = |payload: &[u8]| {
        let mut b = header(1, Kind::User.code(), 0, 0, payload.len() as u32);
        b.extend_from_slice(payload);
        b
    };
    let first = frame(b"first frame");
    let second = frame(b"second");

    // Half a frame: the read is short (the socket is empty after it), so the channel may
    // answer "wait" without reading again; the rest must still raise an event.
    peer.write_all(&first[..10]).unwrap();
    assert!(event_within(&mut poll, util::TIMEOUT));
    assert!(matches!(ch.recv().unwrap(), Recv::WouldBlock));
    assert!(
        matches!(ch.recv().unwrap(), Recv::WouldBlock),
        "still nothing"
    );
    peer.write_all(&first[10..]).unwrap();
    assert!(
        event_within(&mut poll, util::TIMEOUT),
        "the rest raised an event"
    );
    match ch.recv().unwrap() {
        Recv::Frame(f) => assert_eq!(f.payload, b"first frame"),
        _ => panic!("expected the first frame"),
    }
    assert!(matches!(ch.recv().unwrap(), Recv::WouldBlock));

    // A whole frame later, then two at once: each read hands over everything there was.
    peer.write_all(&second).unwrap();
    assert!(event_within(&mut poll, util::TIMEOUT));
    match ch.recv().unwrap() {
        Recv::Frame(f) => assert_eq!(f.payload, b"second"),
        _ => panic!("expected the second frame"),
    }
    assert!(matches!(ch.recv().unwrap(), Recv::WouldBlock));
    peer.write_all(&[first.clone(), second.clone()].concat())
        .unwrap();
    assert!(event_within(&mut poll, util::TIMEOUT));
    let mut got = Vec::new();
    while let Recv::Frame(f) = ch.recv().unwrap() {
        got.push(f.payload.to_vec());
    }
    assert_eq!(got, [b"first frame".to_vec(), b"second".to_vec()]);
    assert!(
        !event_within(&mut poll, std::time::Duration::from_millis(20)),
        "no event without new data"
    );
}

/// Queues a `NewConn` for connections `seq..seq + n`, each a pipe's write end; returns the
/// read ends.
fn queue_conns(ch: &mut Channel, seq: u64, n: usize) -> Vec<std::io::PipeReader> {
    let (readers, writers): (Vec<_>, Vec<SendFd>) = (0..n)
        .map(|_| {
            let (r, w) = pipe();
            (r, SendFd::from(w))
        })
        .unzip();
    let msg = Message::NewConn {
        key: 9,
        seq,
        reply: false,
    };
    ch.send_msg(&msg, writers).unwrap();
    readers
}

/// Reads exactly `n` bytes from `peer` as a receiver would, returning the descriptors.
fn peer_reads(peer: &std::os::fd::OwnedFd, n: usize) -> Vec<std::os::fd::OwnedFd> {
    let mut fds = std::collections::VecDeque::new();
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let r = forkloop::sys::scm::recv_with_fds(peer.as_fd(), &mut buf[got..], 8, &mut fds);
        got += r.unwrap().bytes;
    }
    fds.into()
}

#[test]
fn descriptors_the_peer_never_read_are_counted_and_read_back() {
    // A channel keeping a ledger, and the peer's end of its socket (the primary keeps a
    // duplicate of each worker's). The peer reads a frame without descriptors and the
    // first bytes of a NewConn, which gives it that frame's descriptor; it never reads the
    // next NewConn, and a third one is still queued when the channel closes. The count of
    // unread descriptors follows, and once the peer is gone the two unread frames come
    // back with their own descriptors, in order.
    let (a, peer) = forkloop::sys::socketpair().unwrap();
    let config = ChannelConfig::default();
    let mut ch = Channel::new(a, config).unwrap();
    ch.track_fds();
    ch.send(Kind::User, b"x").unwrap();
    let mut first = queue_conns(&mut ch, 1, 1);
    ch.send_msg(&Message::Ping { seq: 5 }, vec![]).unwrap();
    let mut second = queue_conns(&mut ch, 2, 2);
    util::flush(&mut ch).unwrap();
    assert_eq!(ch.unread_fds(peer.as_fd()).unwrap(), 3);

    let got = peer_reads(&peer, frame::HEADER_LEN + 1 + 3);
    assert_eq!(
        got.len(),
        1,
        "the started frame's descriptor went with its first byte"
    );
    for fd in got {
        write_tag(fd, 1);
    }
    assert_eq!(read_tag(&mut first[0]), 1);
    assert_eq!(ch.unread_fds(peer.as_fd()).unwrap(), 2);

    let mut third = queue_conns(&mut ch, 4, 1);
    assert_eq!(ch.queued_bytes(), frame::HEADER_LEN + 13, "still queued");
    assert_eq!(ch.unread_fds(peer.as_fd()).unwrap(), 3);

    let ledger = ch.take_ledger().expect("the channel kept a ledger");
    assert!(ch.is_closed());
    let back = ledger.read_back(peer.as_fd(), config.limits);
    let seqs: Vec<(u64, usize)> = back
        .iter()
        .map(
            |f| match Message::decode(f.kind, &f.payload, f.fds.len()).unwrap() {
                Message::NewConn { seq, .. } => (seq, f.fds.len()),
                other => panic!("unexpected {other:?}"),
            },
        )
        .collect();
    assert_eq!(seqs, [(2, 2), (4, 1)]);
    let mut fds = back.into_iter().flat_map(|f| f.fds);
    for (tag, r) in (2..).zip(second.iter_mut().chain(third.iter_mut())) {
        write_tag(fds.next().expect("a descriptor per connection"), tag);
        assert_eq!(read_tag(r), tag);
    }
    assert!(fds.next().is_none());
}

#[test]
fn without_a_ledger_nothing_is_counted_and_a_fully_read_stream_gives_nothing_back() {
    let (a, peer) = forkloop::sys::socketpair().unwrap();
    let config = ChannelConfig::default();
    let mut plain = Channel::new(a, config).unwrap();
    let _r = queue_conns(&mut plain, 1, 1);
    util::flush(&mut plain).unwrap();
    assert_eq!(plain.unread_fds(peer.as_fd()).unwrap(), 0, "not tracked");
    assert!(plain.take_ledger().is_none());

    let (a, peer) = forkloop::sys::socketpair().unwrap();
    let mut ch = Channel::new(a, config).unwrap();
    ch.track_fds();
    let _r = queue_conns(&mut ch, 1, 2);
    util::flush(&mut ch).unwrap();
    assert_eq!(peer_reads(&peer, frame::HEADER_LEN + 13).len(), 2);
    assert_eq!(ch.unread_fds(peer.as_fd()).unwrap(), 0);
    let back = ch
        .take_ledger()
        .unwrap()
        .read_back(peer.as_fd(), config.limits);
    assert!(back.is_empty());
}
