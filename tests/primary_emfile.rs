//! A primary whose descriptor table is full (`EMFILE` on accept) leaves the clients in the
//! backlog and accepts them once descriptors free up, without needing another client to
//! arrive, and says so once per episode.

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
        let open = forkloop::sys::open_fd_count().expect("count fds");
        forkloop::sys::set_fd_limit(open + 16).expect("lower the limit");
        let mut held = fill_fd_table();
        println!("port {}", addr.port());
        let _ = std::io::stdout().flush();
        lp.set_timeout(FULL_MS, move |_| {
            held.truncate(held.len().saturating_sub(4));
            println!("raised");
            let _ = std::io::stdout().flush();
            // The rest stay open as long as the primary runs.
            std::mem::forget(held);
        });
    });
    for _ in 0..2 {
        p.fork(&mut lp).expect("fork");
    }
    cluster_util::run(&mut lp);
}

#[test]
fn a_primary_out_of_descriptors_accepts_the_waiting_clients_once_it_can() {
    worker(|lp, w| {
        let server = w.listen_tcp(lp, "127.0.0.1:0".parse().unwrap(), |lp, conn| {
            conn.on_data(lp, |lp, c, _| {
                c.write(lp, b"ok");
                c.end(lp);
            });
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
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args(args_for(TEST))
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
    let mut clients: Vec<TcpStream> = (0..BURST)
        .map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
            s.write_all(b"x").expect("request");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    // No further client: every one of these must be answered on its own.
    let mut answered = 0;
    for s in &mut clients {
        let mut out = String::new();
        if s.read_to_string(&mut out).is_ok() && out == "ok" {
            answered += 1;
        }
    }
    let took = start.elapsed();
    let raised = rx.try_iter().find(|(l, _)| l == "raised").map(|(_, at)| at);
    drop(clients);
    let _ = guard.0.kill();
    let _ = guard.0.wait();
    let mut log = String::new();
    let _ = stderr.read_to_string(&mut log);
    let episodes = log.matches("cannot accept").count();
    println!("answered {answered}/{BURST} in {took:?}; {episodes} log line(s)\n{log}");
    assert_eq!(answered, BURST, "every client of the burst answered");
    assert!(took < Duration::from_secs(5), "within a bound: {took:?}");
    assert!(
        raised.is_some(),
        "the limit was raised while clients waited"
    );
    assert!(episodes >= 1, "the full table was hit and logged");
    assert!(
        episodes <= 3,
        "one log line per episode, not per attempt: {episodes}"
    );
}
