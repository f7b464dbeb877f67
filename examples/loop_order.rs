//! Node's callback order inside I/O callbacks, line for line: a blocking-pool read and a
//! TCP connect each schedule a timeout of 0, two immediates, nextTicks, microtasks and a
//! future (Node's promise), and print as they run. The output is the same as this Node
//! program's: `setTimeout`, `setImmediate`, `process.nextTick`, `queueMicrotask` and
//! `Promise.resolve().then` inside an `fs.readFile` callback and a `net.connect` callback.

use forkloop::EventLoop;
use forkloop::net::tcp;

fn schedule(lp: &mut EventLoop, tag: &'static str) {
    lp.set_timeout(0, move |lp| {
        println!("{tag}: timeout");
        lp.next_tick(move |_| println!("{tag}: timeout -> nextTick"));
    });
    lp.set_immediate(move |lp| {
        println!("{tag}: immediate 1");
        lp.queue_microtask(move |_| println!("{tag}: immediate 1 -> microtask"));
    });
    lp.set_immediate(move |_| println!("{tag}: immediate 2"));
    lp.next_tick(move |lp| {
        println!("{tag}: nextTick");
        lp.queue_microtask(move |_| println!("{tag}: nextTick -> microtask"));
        lp.next_tick(move |_| println!("{tag}: nextTick -> nextTick"));
    });
    lp.queue_microtask(move |lp| {
        println!("{tag}: microtask");
        lp.next_tick(move |_| println!("{tag}: microtask -> nextTick"));
    });
    lp.spawn_local(async move { println!("{tag}: promise") });
    println!("{tag}: callback returns");
}

fn tcp_round(lp: &mut EventLoop) -> std::io::Result<()> {
    let server = tcp::listen(lp, "127.0.0.1:0".parse().unwrap(), |lp, c| c.destroy(lp))?;
    let addr = server.local_addr(lp)?;
    tcp::connect(lp, addr, move |lp, conn, _| {
        println!("-- tcp connect done");
        schedule(lp, "tcp");
        conn.destroy(lp);
        // Like Node's `server.close(cb)` with no connection left: the callback is a nextTick.
        server.close(lp, |_| {});
        lp.next_tick(|_| println!("-- server closed"));
    })?;
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut lp = EventLoop::new()?;
    lp.spawn_blocking(
        || std::fs::read("/etc/hostname").map(|b| b.len()),
        |lp, read| {
            let read = read.unwrap_or_else(|_| Err(std::io::Error::other("read panicked")));
            println!("-- blocking-pool read done ({read:?} bytes)");
            schedule(lp, "fs");
            lp.set_timeout(5, |lp| {
                if let Err(e) = tcp_round(lp) {
                    eprintln!("tcp round: {e}");
                }
            });
        },
    );
    lp.on_exit(|_, code| println!("-- loop ended, code {code}"));
    std::process::exit(lp.run()?)
}
