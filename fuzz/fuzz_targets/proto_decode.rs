//! Arbitrary (kind, fd count, payload) through the message decoder: never a panic, and any
//! message that decodes re-encodes to a payload that decodes to the same message.
#![no_main]

use forkloop::ipc::{Kind, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&head, payload)) = data.split_first() else {
        return;
    };
    let kind = Kind::ALL[usize::from(head & 0x1f) % Kind::ALL.len()];
    let fds = usize::from(head >> 5);
    if let Ok(msg) = Message::decode(kind, payload, fds) {
        assert_eq!(msg.kind(), kind);
        let mut again = Vec::new();
        msg.encode_payload(&mut again);
        assert_eq!(Message::decode(kind, &again, fds), Ok(msg));
    }
});
