//! A process whose descriptor table is full (`EMFILE` on accept) leaves the clients in the
//! backlog and accepts them once descriptors free up, without needing another client to
//! arrive, and says so once per episode: the primary on its round-robin listeners, and any
//! loop on its own listeners (a worker accepting on a shared listener).

mod cluster_util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster_util::{ChildGuard, IO_TIMEOUT, args_for, on_all_ready, primary_with, worker};
use forkloop::primary::{Policy, PrimaryOptions};

/// Set in the re-executed copy of this test binary that plays the primary.
const CHILD_ENV: &str = "PRIMARY_EMFILE_TEST_CHILD";
const TEST: &str = "a_primary_out_of_descriptors_accepts_the_waiting_clients_once_it_can";
/// Connections in the burst.
const BURST: usize = 60;
/// How long the primary's descriptor table stays completely full.
const FULL_MS: u64 = 400;

/// Answers `ok` to a connection's first bytes and ends it.
fn answer_ok(lp: &mut forkloop::rt::EventLoop, conn: forkloop::net::Stream) {
    conn.on_data(lp, |lp, c, _| {
        c.write(lp, b"ok");
        c.end(lp);
    });
}

/// Fills the descriptor table (within a limit of what is open + 16), prints `port PORT`;
/// after [`FULL_MS`], frees `free` descriptors (all if `None`) and prints `raised`.
fn fill_then_free(lp: &mut forkloop::rt::EventLoop, port: u16, free: Option<usize>) {
    let open = forkloop::sys::open_fd_count().expect("count fds");
    forkloop::sys::set_fd_limit(open + 16).expect("lower the limit");
    let mut held = fill_fd_table();
    println!("port {port}");
    let _ = std::io::stdout().flush();
    lp.set_timeout(FULL_MS, move |_| {
        let keep = free.map_or(0, |n| held.len().saturating_sub(n));
        held.truncate(keep);
        println!("raised");
        let _ = std::io::stdout().flush();
        // The rest stay open as long as the process runs.
        std::mem::forget(held);
    });
}

/// Opens `/dev/null` until the descriptor table is full; returns what it opened.
fn fill_fd_table() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if forkloop::sys::is_fd_exhaustion(&e) => return held,
            Err(e) => panic!("filling the descriptor table: {e}"),
        }
        assert!(held.len() < 10_000, "the descriptor limit did not bite");
    }
}

/// The primary's part, in the child: two workers; once they listen, the primary's
/// descriptor table is made completely full for [`FULL_MS`], then four descriptors are
/// freed. Prints the port, then "raised" when they are.
fn primary_child() {
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .is_test(false)
        .try_init();
    let (mut lp, p) = primary_with(
        TEST,
        PrimaryOptions {
            policy: Some(Policy::RoundRobin),
            ..PrimaryOptions::default()
        },
    );
    on_all_ready(&p, 2, |lp, _, addr| {
        fill_then_free(lp, addr.port(), Some(4))
    });
    for _ in 0..2 {
        p.fork(&mut lp).expect("fork");
    }
    cluster_util::run(&mut lp);
}

/// Runs `test` of this binary again as a child with [`CHILD_ENV`] set; once it prints
/// `port N`, opens a burst of [`BURST`] connections with one request each and no client
/// after them. Returns how many were answered `ok`, in how long, whether the child printed
/// `raised` meanwhile, and its stderr (the child is killed and reaped).
fn burst_against_child(test: &str) -> (usize, Duration, bool, String) {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args(args_for(test))
        .env(CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the primary");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut guard = ChildGuard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send((line, Instant::now())).is_err() {
                return;
            }
        }
    });
    let port: u16 = loop {
        let (line, _) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the primary reports its port");
        if let Some(p) = line.strip_prefix("port ") {
            break p.parse().expect("port");
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    let clients: Vec<TcpStream> = (0..BURST)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
            s.write_all(b"x").expect("request");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // No further client: every one of these must be answered on its own.
    // Each client hangs up once answered, which frees the server's descriptor for it.
    let mut answered = 0;
    for mut s in clients {
        let mut out = String::new();
        if s.read_to_string(&mut out).is_ok() && out == "ok" {
            answered += 1;
        }
    }
    let took = start.elapsed();
    let raised = rx.try_iter().find(|(l, _)| l == "raised").map(|(_, at)| at);
    let _ = guard.0.kill();
    let _ = guard.0.wait();
    let mut log = String::new();
    let _ = stderr.read_to_string(&mut log);
    (answered, took, raised.is_some(), log)
}

#[test]
fn a_primary_out_of_descriptors_accepts_the_waiting_clients_once_it_can() {
    worker(|lp, w| {
        let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), |lp, _, c| {
            answer_ok(lp, c)
        });
        let w2 = w.clone();
        server.on_listening(lp, move |lp, _| {
            let _ = w2.send(lp, b"ready");
        });
    });
    if std::env::var_os(CHILD_ENV).is_some() {
        primary_child();
        return;
    }
    let (answered, took, raised, log) = burst_against_child(TEST);
    let episodes = log.matches("cannot accept").count();
    println!("answered {answered}/{BURST} in {took:?}; {episodes} log line(s)\n{log}");
    assert_eq!(answered, BURST, "every client of the burst answered");
    assert!(took < Duration::from_secs(5), "within a bound: {took:?}");
    assert!(raised, "descriptors were freed while clients waited");
    assert!(episodes >= 1, "the full table was hit and logged");
    assert!(
        episodes <= 3,
        "one log line per episode, not per attempt: {episodes}"
    );
}

const LOOP_TEST: &str =
    "a_loop_listener_out_of_descriptors_accepts_the_waiting_clients_once_it_can";

#[test]
fn a_loop_listener_out_of_descriptors_accepts_the_waiting_clients_once_it_can() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let _ = env_logger::Builder::new()
            .filter_level(log::LevelFilter::Warn)
            .try_init();
        let mut lp = forkloop::rt::EventLoop::new().expect("loop");
        let l = forkloop::net::tcp::listen(&mut lp, "127.0.0.1:0".parse().unwrap(), answer_ok)
            .expect("listen");
        let port = l.local_addr(&lp).expect("port").port();
        fill_then_free(&mut lp, port, None);
        cluster_util::run(&mut lp);
        return;
    }
    let (answered, took, raised, log) = burst_against_child(LOOP_TEST);
    let episodes = log.matches("accept failed").count();
    println!("answered {answered}/{BURST} in {took:?}; {episodes} log line(s)\n{log}");
    assert_eq!(answered, BURST, "every client of the burst answered");
    assert!(took < Duration::from_secs(5), "within a bound: {took:?}");
    assert!(raised, "descriptors were freed while clients waited");
    assert_eq!(episodes, 1, "one log line per episode, not per attempt");
}
