//! Primary ↔ worker messaging and the worker lifecycle, as in Node's classic cluster example: each
//! worker greets the primary, the primary answers; then worker 1 is told to disconnect,
//! worker 2 is killed, and worker 3 leaves on its own. Every event is printed in order.
//!
//! ```text
//! cargo run --release --example messaging
//! ```

use std::cell::Cell;
use std::rc::Rc;

use forkloop::Role;
use forkloop::primary::{Event, Primary};
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;
use nix::sys::signal::Signal;

const WORKERS: u32 = 3;

fn main() -> forkloop::Result<()> {
    env_logger::init();
    let mut lp = EventLoop::new()?;
    let code = match forkloop::role() {
        Role::Primary => primary(&mut lp)?,
        Role::Worker(_) => {
            let w = Worker::attach(&mut lp)?
                .ok_or_else(|| forkloop::Error::Config("no channel".into()))?;
            worker(&mut lp, &w)?
        }
    };
    std::process::exit(code)
}

fn primary(lp: &mut EventLoop) -> forkloop::Result<i32> {
    let p = Primary::new(lp)?;
    let greeted = Rc::new(Cell::new(0));
    p.on(move |lp, p, ev| match ev {
        Event::Setup(_) => {}
        Event::Fork { worker } => {
            println!("[primary] fork: worker {worker} (pid {})", pid(p, *worker))
        }
        Event::Online { worker } => println!("[primary] online: worker {worker}"),
        Event::Message { worker, data, .. } => {
            println!(
                "[primary] message from worker {worker}: {}",
                String::from_utf8_lossy(data)
            );
            let _ = p.send(lp, *worker, format!("welcome, worker {worker}").as_bytes());
            greeted.set(greeted.get() + 1);
            if greeted.get() == WORKERS {
                println!("[primary] all workers greeted: disconnecting worker 1, killing worker 2");
                p.disconnect_worker(lp, 1);
                let _ = p.kill(2, Signal::SIGTERM as i32);
            }
        }
        Event::Disconnect { worker } => {
            let info = p.worker(*worker);
            println!(
                "[primary] disconnect: worker {worker} (exited after disconnect: {:?})",
                info.and_then(|i| i.exited_after_disconnect)
            );
        }
        Event::Exit { worker, status } => {
            println!(
                "[primary] exit: worker {worker} code={:?} signal={:?}; {} listed",
                status.code,
                status.signal,
                p.workers().len()
            );
        }
        other => println!("[primary] {other:?}"),
    });
    for _ in 0..WORKERS {
        p.fork(lp)?;
    }
    let code = lp.run()?;
    println!("[primary] all workers gone; exiting");
    Ok(code)
}

fn pid(p: &Primary, w: u32) -> u32 {
    p.worker(w).map_or(0, |i| i.pid)
}

fn worker(lp: &mut EventLoop, w: &Worker) -> forkloop::Result<i32> {
    let id = w.id();
    w.send(
        lp,
        format!("hello from worker {id} (pid {})", std::process::id()).as_bytes(),
    )?;
    w.on_message(lp, move |lp, w, msg| {
        println!(
            "[worker {id}] primary says: {}",
            String::from_utf8_lossy(&msg.data)
        );
        if w.id() == WORKERS {
            println!("[worker {id}] leaving on my own");
            w.disconnect(lp);
        }
    });
    w.on_disconnect(move |_, w| {
        println!(
            "[worker {id}] disconnected (on purpose: {})",
            w.exited_after_disconnect()
        )
    });
    Ok(lp.run()?)
}
