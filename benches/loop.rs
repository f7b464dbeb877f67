//! Event-loop hot paths: one loop iteration per immediate, nextTick and microtask drains,
//! timer create + fire on one and on many duration lists, set + clear, and futures.
//! (`examples/loop_bench.rs` measures the same against Node.)

use std::cell::Cell;
use std::rc::Rc;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use forkloop::rt::{EventLoop, FakeClock, yield_now};

const N: u64 = 10_000;

fn counter() -> Rc<Cell<u64>> {
    Rc::new(Cell::new(0))
}

fn immediate_step(lp: &mut EventLoop, c: Rc<Cell<u64>>) {
    c.set(c.get() + 1);
    if c.get() < N {
        lp.set_immediate(move |lp| immediate_step(lp, c));
    }
}

fn tick_step(lp: &mut EventLoop, c: Rc<Cell<u64>>) {
    c.set(c.get() + 1);
    if c.get() < N {
        lp.next_tick(move |lp| tick_step(lp, c));
    }
}

fn micro_step(lp: &mut EventLoop, c: Rc<Cell<u64>>) {
    c.set(c.get() + 1);
    if c.get() < N {
        lp.queue_microtask(move |lp| micro_step(lp, c));
    }
}

fn chains(c: &mut Criterion) {
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Elements(N));
    let mut lp = EventLoop::new().unwrap();
    g.bench_function("immediate", |b| {
        b.iter(|| {
            let n = counter();
            let n2 = n.clone();
            lp.set_immediate(move |lp| immediate_step(lp, n2));
            lp.run().unwrap();
            black_box(n.get())
        })
    });
    g.bench_function("next_tick", |b| {
        b.iter(|| {
            let n = counter();
            let n2 = n.clone();
            lp.set_immediate(move |lp| tick_step(lp, n2));
            lp.run().unwrap();
            black_box(n.get())
        })
    });
    g.bench_function("microtask", |b| {
        b.iter(|| {
            let n = counter();
            let n2 = n.clone();
            lp.set_immediate(move |lp| micro_step(lp, n2));
            lp.run().unwrap();
            black_box(n.get())
        })
    });
    g.bench_function("future_yield", |b| {
        b.iter(|| {
            lp.spawn_local(async {
                for _ in 0..N {
                    yield_now().await;
                }
            });
            lp.run().unwrap();
        })
    });
    g.finish();
}

fn timers(c: &mut Criterion) {
    let mut g = c.benchmark_group("timers");
    g.throughput(Throughput::Elements(N));
    let clock = FakeClock::new(0);
    clock.auto_advance(true);
    let mut lp = EventLoop::with_clock(Box::new(clock)).unwrap();
    for (name, lists) in [("create_fire_one_list", 1), ("create_fire_100_lists", 100)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let n = counter();
                for i in 0..N {
                    let n = n.clone();
                    lp.set_timeout(1 + i % lists, move |_| n.set(n.get() + 1));
                }
                lp.run().unwrap();
                black_box(n.get())
            })
        });
    }
    g.bench_function("set_and_clear", |b| {
        b.iter(|| {
            for i in 0..N {
                let id = lp.set_timeout(1000 + i % 7, |_| {});
                lp.clear_timeout(id);
            }
        })
    });
    g.bench_function("next_tick_batch", |b| {
        b.iter(|| {
            let n = counter();
            for _ in 0..N {
                let n = n.clone();
                lp.next_tick(move |_| n.set(n.get() + 1));
            }
            lp.run().unwrap();
            black_box(n.get())
        })
    });
    g.finish();
}

criterion_group!(benches, chains, timers);
criterion_main!(benches);
