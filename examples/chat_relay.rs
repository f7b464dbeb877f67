//! Workers chat through the primary: each of three workers greets the next one, the
//! primary passes each greeting on, and lets each worker go once it has heard its own;
//! the primary ends when all have gone. The same program as Node's classic `cluster`
//! relay: `cluster.workers[msg.to].send(...)` in the primary, `process.send(...)` in the
//! workers.
//!
//! Run: `cargo run --features serde --example chat_relay`

use forkloop::primary::{Event, Primary};
use forkloop::{EventLoop, Side};
use serde_json::{Value, json};

const N: u32 = 3;

fn on_event(lp: &mut EventLoop, p: &Primary, ev: &mut Event) -> Option<()> {
    let (from, msg) = (ev.worker()?, ev.json::<Value>()?.ok()?);
    if let Some(to) = msg["to"].as_u64() {
        let _ = p.send_json(lp, to as u32, &json!({ "from": from, "text": msg["text"] }));
    } else if msg["gotIt"] == true {
        // Its own greeting went out before it could hear one: it has nothing left to do.
        p.disconnect_worker(lp, from);
    }
    Some(())
}

fn main() -> forkloop::Result<()> {
    let mut lp = EventLoop::new()?;
    match forkloop::start(&mut lp)? {
        Side::Primary(p) => {
            (0..N).try_for_each(|_| p.fork(&mut lp).map(drop))?;
            p.on(|lp, p, ev| _ = on_event(lp, p, ev));
            lp.on_exit(|_, _| println!("[primary] all workers gone"));
        }
        Side::Worker(w) => {
            let (id, to) = (w.id(), w.id() % N + 1);
            w.on_message(&mut lp, move |lp, w, m| {
                let m: Value = m.json().unwrap_or_default();
                println!("[worker {id}] got {} from {}", m["text"], m["from"]);
                let _ = w.send_json(lp, &json!({ "gotIt": true }));
            });
            let text = format!("hello worker {to}, this is worker {id}");
            w.send_json(&mut lp, &json!({ "to": to, "text": text }))?;
        }
    }
    std::process::exit(lp.run()?)
}
