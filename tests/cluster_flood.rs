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

/// Set to a number of requests by `scripts/fault-message-flood.sh`: the test then measures
/// (no handler cost in the primary, that many requests) and prints the client's latency
/// percentiles and the primary's memory for the script to judge; timing is never asserted
/// here.
const PROBE_ENV: &str = "FORKLOOP_FLOOD_PROBE";

/// The probe's request count, if this run is the probe.
fn probe_requests() -> Option<usize> {
    std::env::var(PROBE_ENV).ok()?.parse().ok()
}

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
        let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), move |lp, _, c| {
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
            while probe_requests().is_none() && start.elapsed() < Duration::from_micros(2) {
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
    let requests = probe_requests().unwrap_or(REQUESTS);
    let latencies = Rc::new(std::cell::RefCell::new(Vec::new()));
    let (s, a, c, l) = (
        slowest.clone(),
        answers.clone(),
        counting.clone(),
        latencies.clone(),
    );
    on_all_ready(&p, 2, move |lp, p, addr| {
        let p2 = p.clone();
        lp.spawn_blocking(
            move || {
                // Let the flood build up first.
                std::thread::sleep(Duration::from_millis(300));
                let mut all = Vec::with_capacity(requests);
                let mut ok = 0;
                for _ in 0..requests {
                    let start = Instant::now();
                    let answer = fetch(addr);
                    if answer.as_ref().is_ok_and(|a| a.starts_with('w')) {
                        ok += 1;
                    }
                    all.push((start.elapsed(), answer.is_ok_and(|a| a == "w1")));
                }
                (ok, all)
            },
            move |lp, r| {
                let (ok, all) = r.unwrap();
                c.set(false);
                a.set(ok);
                s.set(all.iter().map(|&(d, _)| d).max().unwrap_or_default());
                *l.borrow_mut() = all;
                p2.disconnect(lp, |_, _| {});
            },
        );
    });
    for _ in 0..2 {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);

    assert_eq!(answers.get(), requests, "every request answered");
    if probe_requests().is_some() {
        let pct = |flooder: Option<bool>, p: f64| {
            let mut v: Vec<Duration> = latencies
                .borrow()
                .iter()
                .filter(|&&(_, w1)| flooder.is_none_or(|f| f == w1))
                .map(|&(d, _)| d)
                .collect();
            v.sort();
            v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
                .map_or(0, Duration::as_micros)
        };
        println!(
            "flood-probe: requests={} messages={} p50_us={} p99_us={} max_us={} \
             flooder_p99_us={} other_p99_us={} primary_rss_grew_kb={} primary_rss_max_kb={}",
            latencies.borrow().len(),
            flooded.get(),
            pct(None, 0.50),
            pct(None, 0.99),
            pct(None, 1.0),
            pct(Some(true), 0.99),
            pct(Some(false), 0.99),
            rss_max.get().saturating_sub(rss_before) >> 10,
            rss_max.get() >> 10,
        );
    }
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
