//! Arbitrary bytes through the frame decoder: it must never panic, never report a frame
//! that breaks the limits, and never ask for more than one largest frame.
#![no_main]

use forkloop::ipc::frame::{self, Decoded, HEADER_LEN, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small payload limit so both sides of every check are reached.
    let (max, bytes) = match data.split_first() {
        Some((m, rest)) => (*m as u32 * 4, rest),
        None => (0, data),
    };
    for limits in [Limits { max_payload: max, max_fds: 3 }, Limits::default()] {
        let mut rest = bytes;
        loop {
            match frame::decode(rest, &limits) {
                Ok(Decoded::Frame { frame, consumed }) => {
                    assert!(frame.header.len <= limits.max_payload);
                    assert!(frame.header.fds <= limits.max_fds);
                    assert_eq!(consumed, HEADER_LEN + frame.payload.len());
                    assert_eq!(frame.header.to_bytes()[..], rest[..HEADER_LEN]);
                    rest = &rest[consumed..];
                }
                Ok(Decoded::NeedMore { need }) => {
                    assert!(need > rest.len());
                    assert!(need <= HEADER_LEN + limits.max_payload as usize);
                    break;
                }
                Err(_) => break,
            }
        }
    }
});
