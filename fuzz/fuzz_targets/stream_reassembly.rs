//! A stream of valid frames, with runs of garbage mixed in, fed to the receive buffer in
//! arbitrary chunks. Every frame encoded before the first garbage must come out exactly as
//! it went in; whatever follows must come out as frames within the limits or as a typed
//! error, never a panic.
#![no_main]

use forkloop::ipc::frame::{self, Kind, Limits};
use forkloop::ipc::RecvBuffer;
use libfuzzer_sys::fuzz_target;

/// Reads ops from the input: each op is a tag byte, then its arguments.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_payload: 4096, max_fds: 0 };
    let mut ops = Ops(data);
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut clean = true;
    let mut chunks = Vec::new();
    while let Some(tag) = ops.byte() {
        match tag % 8 {
            0..=4 => {
                let kind = Kind::ALL[usize::from(ops.byte().unwrap_or(0)) % Kind::ALL.len()];
                let len = usize::from(ops.byte().unwrap_or(0)) * usize::from(tag / 8 % 4 + 1);
                let payload = ops.take(len).to_vec();
                frame::encode(&mut wire, kind, 0, &payload, &limits).expect("within limits");
                if clean {
                    expected.push((kind, payload));
                }
            }
            5 | 6 => chunks.push(usize::from(ops.byte().unwrap_or(1)).max(1)),
            _ => {
                let n = usize::from(ops.byte().unwrap_or(0) % 24);
                wire.extend_from_slice(ops.take(n));
                clean = false;
            }
        }
    }
    if chunks.is_empty() {
        chunks.push(1);
    }
    let mut rb = RecvBuffer::new(limits);
    let mut got = Vec::new();
    let mut rest = &wire[..];
    let mut sizes = chunks.iter().cycle();
    let mut failed = false;
    'feed: while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).min(rest.len());
        match rb.push_bytes(&rest[..n]) {
            Ok(took) => rest = &rest[took..],
            Err(_) => {
                failed = true;
                break;
            }
        }
        loop {
            match rb.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= limits.max_payload as usize);
                    got.push((f.kind, f.payload.to_vec()));
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    if clean {
        assert!(!failed, "a clean stream must not fail");
        assert_eq!(rb.buffered(), 0, "a clean stream leaves nothing behind");
        assert_eq!(got, expected);
    } else {
        // Every expected frame precedes the first garbage, so all of them come out first.
        assert!(got.len() >= expected.len());
        assert_eq!(got[..expected.len()], expected[..], "frames before the garbage are intact");
    }
});
