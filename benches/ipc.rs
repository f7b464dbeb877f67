//! Codec throughput: queueing and coalescing frames (the send path without the syscall),
//! reassembling frames from a byte stream (the receive path without the syscall), and typed
//! message encode/decode.

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use forkloop::ipc::frame::{self, Kind, Limits};
use forkloop::ipc::{Message, RecvBuffer, SendQueue};

const FRAMES: usize = 10_000;

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("send_queue");
    for size in [16usize, 256, 4096] {
        let payload = vec![7u8; size];
        g.throughput(Throughput::Elements(FRAMES as u64));
        g.bench_with_input(
            BenchmarkId::new("push_and_flush", size),
            &payload,
            |b, p| {
                let mut q = SendQueue::new(Limits::default(), 1 << 30);
                b.iter(|| {
                    for _ in 0..FRAMES {
                        q.push(Kind::User, p, Vec::new()).unwrap();
                    }
                    let mut written = 0usize;
                    q.flush_with(|iovs, _| {
                        let n = iovs.iter().map(|v| v.len()).sum();
                        written += n;
                        Ok(n)
                    })
                    .unwrap();
                    black_box(written)
                })
            },
        );
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("recv_buffer");
    let limits = Limits::default();
    for size in [16usize, 256, 4096] {
        let mut wire = Vec::new();
        for _ in 0..FRAMES {
            frame::encode(&mut wire, Kind::User, 0, &vec![3u8; size], &limits).unwrap();
        }
        g.throughput(Throughput::Elements(FRAMES as u64));
        g.bench_with_input(
            BenchmarkId::new("reassemble_64k_reads", size),
            &wire,
            |b, w| {
                let mut rb = RecvBuffer::new(limits);
                b.iter(|| {
                    let mut n = 0usize;
                    let mut rest = &w[..];
                    while !rest.is_empty() {
                        let chunk = rest.len().min(64 << 10);
                        let took = rb.push_bytes(&rest[..chunk]).unwrap();
                        rest = &rest[took..];
                        while let Some(f) = rb.next_frame().unwrap() {
                            n += f.payload.len();
                        }
                    }
                    black_box(n)
                })
            },
        );
    }
    g.finish();
}

fn messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("proto");
    let msg = Message::NewConn {
        key: 7,
        seq: 42,
        reply: false,
    };
    g.bench_function("new_conn_encode_decode", |b| {
        let mut buf = Vec::with_capacity(16);
        b.iter(|| {
            buf.clear();
            black_box(&msg).encode_payload(&mut buf);
            black_box(Message::decode(Kind::NewConn, &buf, 1).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, encode, decode, messages);
criterion_main!(benches);
