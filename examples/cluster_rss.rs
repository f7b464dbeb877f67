//! Resident memory of an idle cluster: a primary with 4 idle workers. Prints the primary's
//! and each worker's resident set size (VmRSS, Linux) once all are online and settled,
//! then shuts the cluster down.
//!
//! ```text
//! cargo run --release --example cluster_rss
//! ```

use std::cell::Cell;
use std::rc::Rc;

use forkloop::Role;
use forkloop::primary::{Event, Primary};
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;

const WORKERS: u32 = 4;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> forkloop::Result<()> {
    let mut lp = EventLoop::new()?;
    if let Role::Worker(_) = forkloop::role() {
        // An idle worker: attached, waiting for messages.
        let _w = Worker::attach(&mut lp)?;
        std::process::exit(lp.run()?);
    }
    let p = Primary::new(&mut lp)?;
    let online = Rc::new(Cell::new(0));
    p.on(move |lp, p, ev| {
        if let Event::Online { .. } = ev {
            online.set(online.get() + 1);
            if online.get() == WORKERS {
                let p = p.clone();
                lp.set_timeout(500, move |lp| report(lp, &p));
            }
        }
    });
    for _ in 0..WORKERS {
        p.fork(&mut lp)?;
    }
    std::process::exit(lp.run()?)
}

fn report(lp: &mut EventLoop, p: &Primary) {
    let me = std::process::id();
    let primary = rss_kib(me).unwrap_or(0);
    let workers: Vec<(u32, u64)> = p
        .workers()
        .into_iter()
        .filter_map(|id| p.worker(id))
        .map(|i| (i.id, rss_kib(i.pid).unwrap_or(0)))
        .collect();
    println!("primary pid={me} rss_kib={primary}");
    for (id, kib) in &workers {
        println!("worker {id} rss_kib={kib}");
    }
    let max_worker = workers.iter().map(|w| w.1).max().unwrap_or(0);
    println!(
        "summary primary_rss_mib={:.2} max_worker_rss_mib={:.2} (targets: primary <= 4, worker <= 3)",
        primary as f64 / 1024.0,
        max_worker as f64 / 1024.0
    );
    p.disconnect(lp, |_, _| {});
}
