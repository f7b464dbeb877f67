//! A cluster whose workers can leave on purpose without losing a request: two workers
//! under a supervisor serve HTTP; `/crash` answers `worker N going down` with
//! `Connection: close`, and the worker says it is going down, stops accepting and exits
//! once its requests in flight are done, while the supervisor starts its replacement
//! within its restart budget (a worker that leaves within 1 s of starting is replaced after
//! a growing delay, and more than five such ends of a slot in 10 s trip its breaker: the
//! slot waits for the cool-down; Node's program counts five restarts in 10 s for the whole
//! cluster). `/slow` answers after 1 s, any other path after 0–20 ms with
//! `<url> served by worker N`. SIGTERM lets the workers finish and exits with 0. The same
//! program as Node's classic graceful-exit cluster (`process.send({cmd: 'going-down'})`,
//! `server.close()`, a hand-rolled restart window), which listens on every interface;
//! this one listens on 127.0.0.1 only.
//!
//! Run: `cargo run --example graceful_exit -- [--port P]` (default 8123; 0 picks a free
//! port). The primary prints `listening on ADDR` once worker 1 listens.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;

use forkloop::http::{Config, Server};
use forkloop::primary::Event;
use forkloop::primary::supervise::{Supervisor, SupervisorOptions};
use forkloop::{EventLoop, Side};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::args().skip_while(|a| a != "--port").nth(1);
    let port: u16 = port.as_deref().unwrap_or("8123").parse()?;
    let mut lp = EventLoop::new()?;
    match forkloop::start(&mut lp)? {
        Side::Primary(p) => {
            p.on(|_, _, ev| {
                if let Event::Listening { worker: 1, address } = ev {
                    println!("listening on {address}");
                }
            });
            // Restarts within a budget, and SIGTERM: drain, then exit with 0.
            let opts = SupervisorOptions {
                workers: 2,
                ..SupervisorOptions::default()
            };
            Supervisor::new(&mut lp, &p, opts)?.start(&mut lp)?;
        }
        Side::Worker(w) => {
            let (id, addr) = (w.id(), SocketAddr::from(([127, 0, 0, 1], port)));
            let server = Server::listen(
                &mut lp,
                Some(&w.clone()),
                addr,
                Config::default(),
                move |lp, req, mut res| {
                    if req.target() == "/crash" {
                        if let Err(e) = res.set_header("Connection", "close") {
                            eprintln!("worker {id}: {e}");
                        }
                        res.end(lp, format!("worker {id} going down\n").as_bytes());
                        // Stop accepting, get replaced, exit once the requests in flight are done.
                        return w.going_down(lp, "/crash");
                    }
                    let ms = match req.target() {
                        "/slow" => 1000,
                        _ => RandomState::new().hash_one(()) % 21,
                    };
                    // While the worker leaves, the server adds `Connection: close` itself.
                    let body = format!("{} served by worker {id}\n", req.target());
                    lp.set_timeout(ms, move |lp| res.end(lp, body.as_bytes()));
                },
            );
            server.net().on_error(move |lp, _, e| {
                eprintln!("worker {id}: cannot listen: {e}");
                lp.exit(1);
            });
        }
    }
    std::process::exit(lp.run()?)
}
