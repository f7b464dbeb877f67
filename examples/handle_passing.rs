//! Passing a listening socket to workers, as with Node's
//! `worker.send('server', server)`: the primary binds one TCP listener, sends its
//! descriptor to every worker, and the workers accept on it from their own loops. The
//! primary then makes a few client connections and prints which worker answered each.
//!
//! ```text
//! cargo run --release --example handle_passing
//! ```

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use forkloop::Role;
use forkloop::ipc::SendFd;
use forkloop::net::tcp;
use forkloop::primary::{Event, Primary};
use forkloop::rt::EventLoop;
use forkloop::worker::{Server, Worker};

const WORKERS: u32 = 2;
const CLIENTS: u32 = 6;

fn main() -> forkloop::Result<()> {
    env_logger::init();
    let mut lp = EventLoop::new()?;
    let code = match forkloop::role() {
        Role::Primary => primary(&mut lp)?,
        Role::Worker(_) => {
            let w = Worker::attach(&mut lp)?
                .ok_or_else(|| forkloop::Error::Config("no channel".into()))?;
            worker(&mut lp, &w);
            lp.run()?
        }
    };
    std::process::exit(code)
}

fn primary(lp: &mut EventLoop) -> forkloop::Result<i32> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    println!("[primary] listening socket bound to {addr}; sending it to {WORKERS} workers");
    let shared = std::sync::Arc::new(OwnedFd::from(listener));
    let p = Primary::new(lp)?;
    let serving = Rc::new(Cell::new(0));
    let answers = Rc::new(Cell::new(0));
    p.on(move |lp, p, ev| match ev {
        Event::Online { worker } => {
            let fd = SendFd::Shared(shared.clone());
            if let Err(e) = p.send_with_fds(lp, *worker, b"server", vec![fd]) {
                eprintln!("[primary] could not send the server to worker {worker}: {e}");
            }
        }
        Event::Listening { worker, address } => {
            println!("[primary] worker {worker} accepts on {address:?}");
            serving.set(serving.get() + 1);
            if serving.get() == WORKERS {
                for i in 0..CLIENTS {
                    connect(lp, p, addr, i, answers.clone());
                }
            }
        }
        Event::Exit { worker, status } => println!("[primary] worker {worker} exited: {status:?}"),
        _ => {}
    });
    for _ in 0..WORKERS {
        p.fork(lp)?;
    }
    Ok(lp.run()?)
}

/// One client connection from the primary's own loop.
fn connect(
    lp: &mut EventLoop,
    p: &Primary,
    addr: std::net::SocketAddr,
    i: u32,
    answers: Rc<Cell<u32>>,
) {
    let p = p.clone();
    let conn = tcp::connect(lp, addr, |_, _, r| {
        if let Err(e) = r {
            eprintln!("[primary] connect failed: {e}");
        }
    });
    let Ok(conn) = conn else { return };
    conn.on_data(lp, move |lp, c, data| {
        print!("[primary] client {i}: {}", String::from_utf8_lossy(data));
        c.destroy(lp);
        answers.set(answers.get() + 1);
        if answers.get() == CLIENTS {
            println!("[primary] {CLIENTS} answers; disconnecting the workers");
            p.disconnect(lp, |_, _| println!("[primary] all workers gone"));
        }
    });
}

fn worker(lp: &mut EventLoop, w: &Worker) {
    w.on_message(lp, |lp, w, msg| {
        if msg.data != b"server" {
            return;
        }
        let Some(fd) = msg.fds.pop() else { return };
        let id = w.id();
        let server = Server::from_std(lp, std::net::TcpListener::from(fd), move |lp, _, conn| {
            conn.write(
                lp,
                format!("handled by worker {id} (pid {})\n", std::process::id()).as_bytes(),
            );
            conn.end(lp);
            conn.on_data(lp, |_, _, _| {}); // read on, so the client's hang-up is seen
        });
        match server {
            Ok(server) => server.announce(lp, w, 0),
            Err(e) => eprintln!("[worker {id}] cannot serve: {e}"),
        }
    });
}
