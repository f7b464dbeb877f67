//! A worker flooding the primary with small messages cannot starve the other workers or
//! the primary's accepting: the primary reads each channel up to a budget per wake-up and
//! comes back on the next loop turn.

mod cluster_util;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster_util::{fetch, on_all_ready, primary_with, run, worker};

use forkloop::ipc::READ_BUDGET;
use forkloop::net::Stream;
use forkloop::primary::{Event, Policy, PrimaryOptions};
use forkloop::rt::{EventLoop, Phase};
use forkloop::worker::Worker;

/// One flooding message: 16 bytes.
const FLOOD_MSG: &[u8] = b"0123456789abcdef";

/// Requests the client makes while the flood goes on.
const REQUESTS: usize = 40;

/// Sends 16-byte messages to the primary as fast as the channel takes them, until the
/// channel is gone.
fn flood(lp: &mut EventLoop, w: Worker) {
    for _ in 0..4096 {
        match w.send(lp, FLOOD_MSG) {
            Ok(()) => {}
            // Try again on the next turn.
            Err(e) if e.is_queue_full() => break,
            Err(_) => return,
        }
    }
    lp.set_immediate(move |lp| flood(lp, w));
}

fn serve(lp: &mut EventLoop, w: &Worker, conn: Stream) {
    let reply = format!("w{}", w.id());
    conn.on_data(lp, move |lp, c, _| {
        c.write(lp, reply.as_bytes());
        c.end(lp);
    });
}

/// The resident set of this process, in bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[test]
fn a_flooding_worker_does_not_starve_clients_or_grow_the_primary() {
    worker(|lp, w| {
        let w2 = w.clone();
        let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), move |lp, c| {
            serve(lp, &w2, c)
        });
        let w3 = w.clone();
        server.on_listening(lp, move |lp, _| {
            let _ = w3.send(lp, b"ready");
            if w3.id() == 1 {
                flood(lp, w3.clone());
            }
        });
    });
    let (mut lp, p) = primary_with(
        "a_flooding_worker_does_not_starve_clients_or_grow_the_primary",
        PrimaryOptions {
            policy: Some(Policy::RoundRobin),
            ..PrimaryOptions::default()
        },
    );
    // Messages the primary handled per loop iteration (reset in the check phase).
    let this_turn = Rc::new(Cell::new(0usize));
    let most_per_turn = Rc::new(Cell::new(0usize));
    let flooded = Rc::new(Cell::new(0usize));
    // Counted while the client runs (a worker's last words, read when it exits, are
    // read whole).
    let counting = Rc::new(Cell::new(true));
    let (t, m, f, c) = (
        this_turn.clone(),
        most_per_turn.clone(),
        flooded.clone(),
        counting.clone(),
    );
    p.on(move |_, _, ev| {
        if let Event::Message { data, .. } = ev
            && data == FLOOD_MSG
            && c.get()
        {
            t.set(t.get() + 1);
            m.set(m.get().max(t.get()));
            f.set(f.get() + 1);
            // A handler with some work to do: the primary reads slower than the worker
            // writes, so without a budget it would never get out of the channel.
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(2) {
                std::hint::spin_loop();
            }
        }
    });
    let t = this_turn.clone();
    let check = lp.add_watcher(Phase::Check, move |_| t.set(0));
    lp.unref(check);
    let rss_before = rss();
    let rss_max = Rc::new(Cell::new(rss_before));
    let r = rss_max.clone();
    let probe = lp.set_interval(20, move |_| r.set(r.get().max(rss())));
    lp.unref(probe);
    let slowest = Rc::new(Cell::new(Duration::ZERO));
    let answers = Rc::new(Cell::new(0usize));
    let (s, a, c) = (slowest.clone(), answers.clone(), counting.clone());
    on_all_ready(&p, 2, move |lp, p, addr| {
        let p2 = p.clone();
        lp.spawn_blocking(
            move || {
                // Let the flood build up first.
                std::thread::sleep(Duration::from_millis(300));
                let mut slowest = Duration::ZERO;
                let mut ok = 0;
                for _ in 0..REQUESTS {
                    let start = Instant::now();
                    if fetch(addr).is_ok_and(|a| a.starts_with('w')) {
                        ok += 1;
                    }
                    slowest = slowest.max(start.elapsed());
                }
                (ok, slowest)
            },
            move |lp, r| {
                let (ok, slowest) = r.unwrap();
                c.set(false);
                a.set(ok);
                s.set(slowest);
                p2.disconnect(lp, |_, _| {});
            },
        );
    });
    for _ in 0..2 {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);

    assert_eq!(answers.get(), REQUESTS, "every request answered");
    // Generous (the machine may be busy): this is "served", not a latency benchmark.
    assert!(
        slowest.get() < Duration::from_secs(2),
        "slowest request {:?}",
        slowest.get()
    );
    assert!(flooded.get() > 0, "the flood reached the primary");
    // A frame of a 16-byte message takes more than 16 bytes: one budget per turn, two
    // when the channel's return found it empty and a readable event came after.
    let bound = 2 * (READ_BUDGET / FLOOD_MSG.len() + 1);
    assert!(
        most_per_turn.get() <= bound,
        "{} messages handled in one loop turn (bound {bound})",
        most_per_turn.get()
    );
    eprintln!(
        "flood: {} messages, at most {} per turn, slowest request {:?}",
        flooded.get(),
        most_per_turn.get(),
        slowest.get()
    );
    let grew = rss_max.get().saturating_sub(rss_before);
    assert!(grew < 32 << 20, "primary RSS grew by {grew} bytes");
}
