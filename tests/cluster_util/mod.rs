//! Helpers for cluster tests. A test binary re-executes itself as the worker: the test
//! function starts with [`worker`], which in a worker process runs the worker body and
//! exits, and in the test process returns so the test plays the primary.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use forkloop::ipc::Endpoint;

use forkloop::Role;
use forkloop::primary::{Event, Primary, Settings};
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;

/// Longest a cluster test's loop may run.
pub const DEADLINE_MS: u64 = 20_000;

/// Arguments that make this test binary run exactly `test` (as a worker).
pub fn args_for(test: &str) -> Vec<String> {
    vec![
        test.to_string(),
        "--exact".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
        "-q".into(),
    ]
}

/// In a worker process: attaches, runs `body`, runs the loop, exits with its code.
/// In the test process: returns.
pub fn worker(body: impl FnOnce(&mut EventLoop, &Worker)) {
    if forkloop::role() == Role::Primary {
        return;
    }
    let mut lp = EventLoop::new().expect("loop");
    let w = Worker::attach(&mut lp)
        .expect("attach")
        .expect("worker channel");
    body(&mut lp, &w);
    let code = lp.run().expect("worker loop");
    std::process::exit(code);
}

/// A loop and a primary whose workers run `test`.
pub fn primary(test: &str) -> (EventLoop, Primary) {
    let mut lp = EventLoop::new().expect("loop");
    let p = Primary::new(&mut lp).expect("primary");
    p.setup(&mut lp, Settings::default().args(args_for(test)));
    (lp, p)
}

/// A loop and a primary with `opts` whose workers run `test`.
pub fn primary_with(test: &str, opts: forkloop::primary::PrimaryOptions) -> (EventLoop, Primary) {
    let mut lp = EventLoop::new().expect("loop");
    let p = Primary::with_options(&mut lp, opts).expect("primary");
    p.setup(&mut lp, Settings::default().args(args_for(test)));
    (lp, p)
}

/// Runs the loop until it ends; fails the test if it is still running after the deadline.
pub fn run(lp: &mut EventLoop) -> i32 {
    let t = lp.set_timeout(DEADLINE_MS, |lp| lp.exit(-99));
    lp.unref(t);
    let code = lp.run().expect("primary loop");
    assert_ne!(code, -99, "cluster test timed out");
    code
}

/// A shared list of strings, for recording event order.
#[derive(Clone, Default)]
pub struct Log(Rc<RefCell<Vec<String>>>);

impl Log {
    pub fn push(&self, s: impl Into<String>) {
        self.0.borrow_mut().push(s.into());
    }
    pub fn get(&self) -> Vec<String> {
        self.0.borrow().clone()
    }
    pub fn count(&self, prefix: &str) -> usize {
        self.0
            .borrow()
            .iter()
            .filter(|s| s.starts_with(prefix))
            .count()
    }
}

/// A short name for an event, with its worker.
pub fn name(ev: &Event) -> String {
    match ev {
        Event::Setup(_) => "setup".into(),
        Event::Fork { worker } => format!("fork {worker}"),
        Event::Online { worker } => format!("online {worker}"),
        Event::Listening { worker, .. } => format!("listening {worker}"),
        Event::Ready { worker } => format!("ready {worker}"),
        Event::Message { worker, data, .. } => {
            format!("message {worker} {}", String::from_utf8_lossy(data))
        }
        Event::Disconnect { worker } => format!("disconnect {worker}"),
        Event::Exit { worker, status } => {
            format!("exit {worker} {:?} {:?}", status.code, status.signal)
        }
        Event::Error { worker, reason } => format!("error {worker} {reason}"),
        _ => "other".into(),
    }
}

/// Waits until process `pid` no longer exists (or is a zombie), at most `timeout`.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')),
        };
        if gone {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A child process that is killed and reaped when dropped, even if the test fails.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills a process by pid when dropped (for grandchildren a test learns about).
pub struct PidGuard(pub u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Every client-side wait in cluster tests gives up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One request: connect, send a byte, read the answer to EOF.
pub fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"x")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The port of a `Listening` event on TCP.
pub fn tcp_port(ev: &Event) -> Option<u16> {
    match ev {
        Event::Listening {
            address: Endpoint::Tcp(a),
            ..
        } => Some(a.port()),
        _ => None,
    }
}

/// The TCP port the workers listen on, as the primary's `Listening` events report it.
pub fn port_of(p: &Primary) -> Rc<Cell<u16>> {
    let port = Rc::new(Cell::new(0));
    let pt = port.clone();
    p.on(move |_, _, ev| {
        if let Some(pn) = tcp_port(ev) {
            pt.set(pn);
        }
    });
    port
}

/// Serves `w<ID>` to each connection after its first bytes, then ends it (port 0).
pub fn serve_id(lp: &mut EventLoop, w: &Worker) {
    let w2 = w.clone();
    let server = w.listen_tcp(
        lp,
        "127.0.0.1:0".parse().unwrap(),
        move |lp, _, c: forkloop::net::Stream| {
            let reply = format!("w{}", w2.id());
            c.on_data(lp, move |lp, c, _| {
                c.write(lp, reply.as_bytes());
                c.end(lp);
            });
        },
    );
    server.on_error(|_, _, e| {
        // A worker retired before its listen request was answered is refused with
        // ESHUTDOWN: it is leaving anyway.
        if e.raw_os_error() != Some(nix::libc::ESHUTDOWN) {
            panic!("listen failed: {e}");
        }
    });
}

/// Supervisor options for tests: `workers` workers, no signal handlers, no heartbeats.
pub fn supervisor_options(workers: usize) -> forkloop::primary::supervise::SupervisorOptions {
    forkloop::primary::supervise::SupervisorOptions {
        workers,
        signals: false,
        health: None,
        ..Default::default()
    }
}

/// Once `n` workers have sent "ready", calls `then` (once) with the loopback address the
/// workers listen on.
pub fn on_all_ready<F>(p: &Primary, n: usize, then: F)
where
    F: FnOnce(&mut EventLoop, &Primary, SocketAddr) + 'static,
{
    let ready = Cell::new(0);
    let port = Cell::new(0u16);
    let then = RefCell::new(Some(then));
    p.on(move |lp, p, ev| {
        if let Some(pn) = tcp_port(ev) {
            port.set(pn);
        }
        let Event::Message { data, .. } = ev else {
            return;
        };
        if data != b"ready" {
            return;
        }
        ready.set(ready.get() + 1);
        if ready.get() == n
            && let Some(f) = then.borrow_mut().take()
        {
            f(lp, p, SocketAddr::from(([127, 0, 0, 1], port.get())));
        }
    });
}

/// Counts answers (errors by their text) into `tally`.
pub fn count_answers(
    tally: &RefCell<BTreeMap<String, usize>>,
    answers: Vec<std::io::Result<String>>,
) {
    let mut t = tally.borrow_mut();
    for a in answers {
        *t.entry(a.unwrap_or_else(|e| e.to_string())).or_default() += 1;
    }
}
