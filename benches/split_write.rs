//! A response written as head then body costs no more than one write: the mean time of
//! sequential keep-alive requests against four loop servers on loopback, as ratios to the
//! one-write server from the same run. A `TCP_NODELAY` or cork regression shows as a
//! delayed-ACK stall (tens of milliseconds per request).
//!
//! `cargo bench --bench split_write` prints each server's mean and ratio and exits 1 when a
//! split write is over 1.5× the one-write server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use forkloop::net::{StreamOptions, tcp};
use forkloop::rt::EventLoop;

/// How a server answers `GET`.
#[derive(Clone, Copy)]
enum Answer {
    OneWrite,
    HeadThenBody,
    /// Head in the data callback, body in an immediate (outside the callback's cork).
    BodyLater,
}

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
const BODY: &[u8] = b"hello";
const ROUNDS: u32 = 5;
const PER_ROUND: usize = 1_000;
const LIMIT: f64 = 1.5;

fn serve(lp: &mut EventLoop, answer: Answer, opts: StreamOptions) -> SocketAddr {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let l = tcp::listen(lp, any, move |lp, conn| {
        conn.on_data(lp, move |lp, conn, _| match answer {
            Answer::OneWrite => {
                conn.write(lp, &[HEAD, BODY].concat());
            }
            Answer::HeadThenBody => {
                conn.write(lp, HEAD);
                conn.write(lp, BODY);
            }
            Answer::BodyLater => {
                conn.write(lp, HEAD);
                lp.set_immediate(move |lp| {
                    conn.write(lp, BODY);
                });
            }
        });
    })
    .expect("listen");
    l.set_stream_options(lp, opts);
    l.local_addr(lp).expect("local address")
}

/// Mean time of `n` sequential keep-alive requests; gives up once `budget` is spent, so
/// stalls end the run early (the mean is over the requests made).
fn mean_latency(addr: SocketAddr, n: usize, budget: Duration) -> Duration {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let want = HEAD.len() + BODY.len();
    let mut buf = [0u8; 256];
    let start = Instant::now();
    let mut done = 0;
    while done < n && start.elapsed() < budget {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut got = 0;
        while got < want {
            let k = c.read(&mut buf[got..]).expect("read");
            assert!(k > 0, "server closed");
            got += k;
        }
        assert_eq!(&buf[..want], [HEAD, BODY].concat().as_slice());
        done += 1;
    }
    start.elapsed() / done.max(1) as u32
}

fn main() {
    // `cargo test --benches` runs bench binaries with no `--bench`: nothing to time then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let mut lp = EventLoop::new().expect("loop");
        let nagle = StreamOptions {
            no_delay: false,
            ..StreamOptions::default()
        };
        let addrs = [
            serve(&mut lp, Answer::OneWrite, StreamOptions::default()),
            serve(&mut lp, Answer::HeadThenBody, StreamOptions::default()),
            // Nagle on: only the cork keeps head and body together.
            serve(&mut lp, Answer::HeadThenBody, nagle),
            // No cork: only TCP_NODELAY keeps the body from waiting for an ACK.
            serve(&mut lp, Answer::BodyLater, StreamOptions::default()),
        ];
        tx.send((addrs, lp.handle())).expect("send");
        lp.run().expect("run");
    });
    let (addrs, stop) = rx.recv().expect("addresses");
    // Rounds alternate between the servers so that load from elsewhere hits all alike.
    let mut total = [Duration::ZERO; 4];
    for _ in 0..ROUNDS {
        for (i, a) in addrs.iter().enumerate() {
            total[i] += mean_latency(*a, PER_ROUND, Duration::from_secs(10));
        }
    }
    stop.post(|lp| lp.exit(0));
    server.join().expect("server thread");
    let one = total[0] / ROUNDS;
    println!("{PER_ROUND} sequential keep-alive requests x {ROUNDS} rounds, mean per request");
    println!("  {:<24} {:>10.1?}", "one write", one);
    let mut worst = 0.0f64;
    let names = ["head+body, default", "head+body, Nagle on", "body later"];
    for (i, name) in names.iter().enumerate() {
        let split = total[i + 1] / ROUNDS;
        let ratio = split.as_secs_f64() / one.as_secs_f64();
        worst = worst.max(ratio);
        println!("  {name:<24} {split:>10.1?}  {ratio:.2}x");
    }
    if worst > LIMIT {
        println!("FAIL: a split write is {worst:.2}x one write (limit {LIMIT}x)");
        std::process::exit(1);
    }
    println!("PASS: every split write within {LIMIT}x of one write");
}
