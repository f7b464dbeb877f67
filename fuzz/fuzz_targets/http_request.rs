//! Arbitrary bytes, split into arbitrary chunks, through one connection's request decoder
//! (`forkloop::http::Decoder`), fed as a connection feeds it: it must never panic, never
//! hold more than a head's worth of unconsumed bytes, never deliver a body over the limit,
//! and decide exactly the same requests, bodies and errors however the bytes are split.
#![no_main]

use forkloop::http::{Decoded, Decoder, Limits, Request};
use libfuzzer_sys::fuzz_target;

/// What the decoder decided, in order; bodies are whole per request.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Head(
        String,
        String,
        String,
        Vec<(String, Vec<u8>)>,
        Option<u64>,
        bool,
    ),
    End(Vec<u8>),
    Error(String),
}

/// Feeds `chunks` one at a time (the next only when the decoder needs more); returns the
/// steps and the bytes left unconsumed at the end.
fn decode(limits: Limits, chunks: &[&[u8]]) -> (Vec<Step>, usize) {
    let mut d = Decoder::new(limits);
    let mut req = Request::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut next = 0;
    let mut steps = Vec::new();
    let mut body = Vec::new();
    let largest = chunks.iter().map(|c| c.len()).max().unwrap_or(0);
    loop {
        match d.decode(&buf, &mut req) {
            Decoded::NeedMore => {
                let Some(chunk) = chunks.get(next) else {
                    return (steps, buf.len());
                };
                next += 1;
                buf.extend_from_slice(chunk);
                // Bounded memory: less than one head plus one read is ever held.
                assert!(buf.len() < limits.max_head + largest + 1);
            }
            Decoded::Head { used } => {
                assert!(used > 0 && used <= limits.max_head);
                buf.drain(..used);
                steps.push(Step::Head(
                    req.method().to_string(),
                    req.target().to_string(),
                    format!("{:?}", req.version()),
                    req.headers()
                        .map(|(n, v)| (n.to_string(), v.to_vec()))
                        .collect(),
                    req.content_length(),
                    req.is_chunked(),
                ));
            }
            Decoded::Body { used, data } => {
                assert!(used > 0 && data.end <= used);
                body.extend_from_slice(&buf[data]);
                assert!(body.len() as u64 <= limits.max_body);
                buf.drain(..used);
            }
            Decoded::End { used } => {
                buf.drain(..used);
                steps.push(Step::End(std::mem::take(&mut body)));
            }
            Decoded::Error(kind) => {
                steps.push(Step::Error(kind.to_string()));
                // The error sticks.
                assert_eq!(d.decode(&buf, &mut req), Decoded::Error(kind));
                return (steps, usize::MAX);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Three bytes of settings: limits small enough that every limit is reached.
    let [a, b, c, rest @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_head: 16 + usize::from(*a) * 4,
        max_headers: usize::from(*b % 24),
        max_body: u64::from(*c) * 8,
    };
    // The split: a run of chunk lengths (one byte each, 1 to 16) until a zero byte, then
    // the stream itself.
    let (sizes, stream) = match rest.iter().position(|&x| x == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let mut chunks = Vec::new();
    let mut left = stream;
    for s in sizes.iter().cycle() {
        if left.is_empty() {
            break;
        }
        let n = (usize::from(*s) % 16 + 1).min(left.len());
        chunks.push(&left[..n]);
        left = &left[n..];
    }
    if !left.is_empty() {
        chunks.push(left);
    }
    let whole = decode(limits, &[stream]);
    let split = decode(limits, &chunks);
    assert_eq!(whole, split);
    // One byte at a time as well (the slowest client).
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(whole, decode(limits, &bytes));
});
