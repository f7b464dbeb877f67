//! After 100 000 descriptor-carrying messages, and after channels die with descriptors
//! queued in both directions, the process has exactly as many open descriptors as before.
//!
//! This file holds one test so that no other test opens descriptors meanwhile.

mod util;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use forkloop::ipc::{Channel, ChannelConfig, Kind, SendFd};
use forkloop::sys::open_fd_count;

#[test]
fn no_fd_leak_after_100k_fd_messages_and_abrupt_closes() {
    let before = open_fd_count().unwrap();
    {
        let (mut a, mut b) = Channel::pair(ChannelConfig::default()).unwrap();
        let sock = Arc::new(OwnedFd::from(
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        ));
        let mut received = 0usize;
        for round in 0..500 {
            for i in 0..200u32 {
                // Alternate owned duplicates and shared references.
                let fd: SendFd = if i % 2 == 0 {
                    SendFd::Owned(sock.try_clone().unwrap())
                } else {
                    SendFd::Shared(Arc::clone(&sock))
                };
                a.send_with_fds(Kind::User, &i.to_le_bytes(), vec![fd])
                    .unwrap();
            }
            let got = util::pump(&mut a, &mut b).unwrap();
            assert_eq!(got.len(), 200, "round {round}");
            received += got.iter().map(|g| g.fds.len()).sum::<usize>();
        }
        assert_eq!(received, 100_000);
        assert_eq!(b.stray_fds(), 0);

        // Die with descriptors queued on the sending side and in flight to the receiver.
        for _ in 0..50 {
            let owned = sock.try_clone().unwrap();
            a.send_with_fds(Kind::User, b"never flushed", vec![owned.into()])
                .unwrap();
        }
        let (mut c, d) = Channel::pair(ChannelConfig::default()).unwrap();
        for _ in 0..50 {
            let owned = sock.try_clone().unwrap();
            c.send_with_fds(Kind::User, b"in the socket", vec![owned.into()])
                .unwrap();
        }
        util::flush(&mut c).unwrap();
        drop((c, d)); // the kernel closes fds still in the socket buffer
        a.close();
        drop((a, b));
    }
    assert_eq!(open_fd_count().unwrap(), before);
}
