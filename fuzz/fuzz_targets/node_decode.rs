//! Arbitrary bytes through Node's JSON-lines decoder, whole and re-chunked: never a panic,
//! the same messages whatever the chunking, and every line that decodes re-encodes to one
//! line that decodes to the same message.
#![no_main]

use forkloop::ipc::node::{NodeDecoder, NodeLimits, decode_line, encode_line};
use libfuzzer_sys::fuzz_target;

fn messages(data: &[u8], chunk: usize) -> Vec<String> {
    let limits = NodeLimits {
        max_line: 4096,
        ..NodeLimits::default()
    };
    let mut d = NodeDecoder::new(limits);
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        d.push_bytes(c);
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(format!("{:?}", m.msg)),
                Ok(None) => break,
                // A line too long is not consumed: stop there, as a channel would.
                Err(forkloop::ipc::node::NodeError::LineTooLong { .. }) => return out,
                Err(e) => out.push(format!("error {e}")),
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    for line in rest.split(|&b| b == b'\n') {
        if let Ok(l) = decode_line(line) {
            let mut again = Vec::new();
            if encode_line(&l, &mut again).is_ok() {
                assert_eq!(again.iter().filter(|&&b| b == b'\n').count(), 1);
                let back = decode_line(&again[..again.len() - 1]);
                assert_eq!(back.ok(), Some(l));
            }
        }
    }
    let whole = messages(rest, rest.len());
    assert_eq!(messages(rest, usize::from(head % 17) + 1), whole);
});
