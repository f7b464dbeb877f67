//! Descriptor exhaustion: a worker at a low `RLIMIT_NOFILE` takes only the hand-offs it
//! can hold (the rest wait in the kernel's backlog) and loses none; a receive the kernel
//! truncates because the descriptor table is full leaves the channel working and says
//! which frame lost which descriptors.

mod cluster_util;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster_util::{ChildGuard, Log, args_for, name, primary, run, worker};
use forkloop::ipc::{Channel, ChannelConfig, Message, Recv, SendFd};
use forkloop::primary::Event;
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;

/// Set in a re-executed copy of this test binary that must run a test's child part.
const CHILD_ENV: &str = "FD_LIMIT_TEST_CHILD";

/// Runs `test` of this binary again in a child process with [`CHILD_ENV`] set, and
/// returns its output once it exits (killed after 20 s); fails if it did not succeed.
fn run_child(test: &str) -> String {
    let exe = std::env::current_exe().expect("test binary");
    let child = std::process::Command::new(exe)
        .args(args_for(test))
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut guard = ChildGuard(child);
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = guard.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < end, "child test timed out");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = guard.0.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = guard.0.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(status.success(), "child failed: {status}\n{out}\n{err}");
    out
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

/// Opens `/dev/null` until the descriptor table is full; returns what it opened.
fn fill_fd_table() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => return held,
            Err(e) => panic!("filling the descriptor table: {e}"),
        }
        assert!(held.len() < 10_000, "the descriptor limit did not bite");
    }
}

/// Whether the write end of the pipe whose read end is `r` is closed everywhere (reading
/// sees EOF at once).
fn writer_closed(r: &OwnedFd) -> bool {
    nix::fcntl::fcntl(
        r.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("nonblocking");
    let mut b = [0u8; 1];
    matches!(nix::unistd::read(r.as_fd(), &mut b), Ok(0))
}

#[test]
fn a_receive_truncated_by_a_full_descriptor_table_is_survived_and_accounted_for() {
    if std::env::var_os(CHILD_ENV).is_none() {
        // The descriptor limit is per process: the receiver runs in a child so the test
        // harness keeps its own.
        let out = run_child(
            "a_receive_truncated_by_a_full_descriptor_table_is_survived_and_accounted_for",
        );
        assert!(out.contains("child done"), "child output: {out}");
        return;
    }
    let (mut tx, mut rx) = Channel::pair(ChannelConfig::default()).expect("pair");
    // Four connections in one NewConn, then a frame without descriptors, then one more
    // NewConn with one; all sent before the receiver's table fills.
    let (readers, writers): (Vec<OwnedFd>, Vec<SendFd>) = (0..5)
        .map(|_| {
            let (r, w) = pipe();
            (r, SendFd::from(w))
        })
        .unzip();
    let mut writers = writers.into_iter();
    let newconn = |seq| Message::NewConn {
        key: 7,
        seq,
        reply: false,
    };
    tx.send_msg(&newconn(100), writers.by_ref().take(4).collect())
        .unwrap();
    tx.send_msg(&Message::Ping { seq: 1 }, vec![]).unwrap();
    tx.send_msg(&newconn(200), writers.collect()).unwrap();
    tx.flush().unwrap();

    let open = forkloop::sys::open_fd_count().unwrap();
    forkloop::sys::set_fd_limit(open + 64).unwrap();
    let mut held = fill_fd_table();
    // Room for two descriptors only.
    held.truncate(held.len() - 2);

    let next = |rx: &mut Channel| match rx.recv().expect("the channel survives") {
        Recv::Frame(f) => {
            let lost = f.lost_fds;
            let (m, fds) = f.into_message().expect("decodes as sent");
            (m, fds, lost)
        }
        other => panic!("expected a frame, got {other:?}"),
    };
    let (m, fds, lost) = next(&mut rx);
    assert!(matches!(m, Message::NewConn { seq: 100, .. }), "{m:?}");
    assert_eq!((fds.len(), lost), (2, 2), "two arrived, two were lost");
    assert!(!writer_closed(&readers[0]) && !writer_closed(&readers[1]));
    assert!(
        writer_closed(&readers[2]) && writer_closed(&readers[3]),
        "the kernel closed the ones it could not install"
    );
    let (m, fds, lost) = next(&mut rx);
    assert!(matches!(m, Message::Ping { seq: 1 }));
    assert_eq!((fds.len(), lost), (0, 0));
    let (m, fds2, lost) = next(&mut rx);
    assert!(matches!(m, Message::NewConn { seq: 200, .. }), "{m:?}");
    assert_eq!(
        (fds2.len(), lost),
        (0, 1),
        "no room at all: the one was lost"
    );
    assert!(writer_closed(&readers[4]));
    assert_eq!(rx.lost_fds(), 3);

    // Room again: the channel carries descriptors as before.
    drop(held);
    let (r, w) = pipe();
    tx.send_msg(&newconn(300), vec![SendFd::from(w)]).unwrap();
    tx.flush().unwrap();
    let (m, fds3, lost) = next(&mut rx);
    assert!(matches!(m, Message::NewConn { seq: 300, .. }));
    assert_eq!((fds3.len(), lost), (1, 0));
    assert!(!rx.is_closed());
    drop((fds, r));
    println!("child done");
}

/// Clients each holding one connection with one request.
const CLIENTS: usize = 150;
/// The workers' descriptor limit.
const WORKER_FD_LIMIT: usize = 64;

/// How the clients fared: answered, reset (or ended unanswered), answered before any
/// client let go.
#[derive(Debug, Default)]
struct Outcome {
    answered: usize,
    failed: usize,
    answered_while_held: usize,
}

/// Reads whatever answer `s` has; `Some(true)` answered, `Some(false)` failed, `None` not
/// yet.
fn poll_answer(s: &mut TcpStream) -> Option<bool> {
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => Some(false),
        Ok(_) => Some(true),
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(_) => Some(false),
    }
}

/// Opens [`CLIENTS`] connections with one request each; waits until the answers stop
/// coming; then closes the answered ones, a few at a time, until every client is
/// answered or 15 s have passed.
fn clients(addr: SocketAddr) -> Outcome {
    let mut waiting: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, cluster_util::IO_TIMEOUT).unwrap();
            s.write_all(b"x").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut out = Outcome::default();
    let mut answered: Vec<TcpStream> = Vec::new();
    let end = Instant::now() + Duration::from_secs(15);
    let mut quiet_since = Instant::now();
    let mut letting_go = false;
    while !waiting.is_empty() && Instant::now() < end {
        let before = waiting.len();
        let mut still = Vec::new();
        for mut s in waiting {
            match poll_answer(&mut s) {
                Some(true) => answered.push(s),
                Some(false) => out.failed += 1,
                None => still.push(s),
            }
        }
        waiting = still;
        if waiting.len() != before {
            quiet_since = Instant::now();
        }
        if !letting_go && quiet_since.elapsed() > Duration::from_millis(600) {
            // The workers hold all they can: the rest wait in the backlog.
            letting_go = true;
            out.answered_while_held = answered.len();
        }
        if letting_go {
            // Hang up on a few answered clients; their slots go to waiting ones.
            let n = answered.len().min(10);
            out.answered += n;
            answered.drain(..n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !letting_go {
        out.answered_while_held = answered.len();
    }
    out.answered += answered.len();
    out.failed += waiting.len();
    out
}

/// Answers each connection's first bytes with `ok` and holds it until the client hangs up.
fn serve_and_hold(lp: &mut EventLoop, w: &Worker) {
    let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), |lp, _, conn| {
        let answered = Cell::new(false);
        conn.on_data(lp, move |lp, c, _| {
            if !answered.replace(true) {
                c.write(lp, b"ok");
            }
        });
        conn.on_end(lp, |lp, c| c.end(lp));
    });
    let w2 = w.clone();
    server.on_listening(lp, move |lp, _| {
        let _ = w2.send(lp, b"ready");
    });
    let w3 = w.clone();
    w.on_message(lp, move |lp, _, msg| {
        if msg.data == b"report" {
            let lost = w3.lost_hand_offs(lp);
            let _ = w3.send(lp, format!("lost {lost}").as_bytes());
        }
    });
}

#[test]
fn workers_at_a_low_descriptor_limit_hold_what_they_can_and_lose_nothing() {
    if forkloop::role() != forkloop::Role::Primary {
        let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
            .try_init();
        // As a worker started under `ulimit -n 64` would be.
        forkloop::sys::set_fd_limit(WORKER_FD_LIMIT).expect("lower the worker's limit");
    }
    worker(serve_and_hold);
    let (mut lp, p) =
        primary("workers_at_a_low_descriptor_limit_hold_what_they_can_and_lose_nothing");
    let log = Log::default();
    let lost = Rc::new(RefCell::new(BTreeMap::new()));
    let outcome = Rc::new(RefCell::new(None));
    let (l, lo) = (log.clone(), lost.clone());
    p.on(move |lp, p, ev| {
        l.push(name(ev));
        if let Event::Message { worker, data, .. } = ev
            && let Some(n) = String::from_utf8_lossy(data).strip_prefix("lost ")
        {
            lo.borrow_mut().insert(*worker, n.parse::<u64>().unwrap());
            if lo.borrow().len() == 2 {
                p.disconnect(lp, |_, _| {});
            }
        }
    });
    let o = outcome.clone();
    cluster_util::on_all_ready(&p, 2, move |lp, p, addr| {
        let p = p.clone();
        lp.spawn_blocking(
            move || clients(addr),
            move |lp, r| {
                *o.borrow_mut() = Some(r.unwrap());
                p.broadcast(lp, b"report");
            },
        );
    });
    for _ in 0..2 {
        p.fork(&mut lp).unwrap();
    }
    run(&mut lp);
    let outcome = outcome.take().expect("the clients finished");
    println!("{outcome:?}, lost {:?}", lost.borrow());
    assert_eq!(outcome.failed, 0, "no connection reset or left unanswered");
    assert_eq!(outcome.answered, CLIENTS, "every client answered");
    assert!(
        outcome.answered_while_held < CLIENTS,
        "the limit bit: some clients waited for held ones to close ({outcome:?})"
    );
    assert_eq!(
        log.count("exit"),
        2,
        "each worker exited once, at the final disconnect: {:?}",
        log.get()
    );
    assert!(
        log.get()
            .iter()
            .filter(|e| e.starts_with("exit"))
            .all(|e| e.ends_with("Some(0) None")),
        "clean exits only: {:?}",
        log.get()
    );
    assert_eq!(log.count("fork"), 2, "no worker was replaced");
    assert_eq!(
        lost.borrow().values().sum::<u64>(),
        0,
        "no hand-off lost to a full descriptor table"
    );
}
