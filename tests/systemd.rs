//! systemd integration (issue 6 item 8): `sd_notify` datagrams on a fake notify socket,
//! `WATCHDOG_USEC` parsing, and socket activation end to end (a sub-primary started the
//! way systemd starts a service adopts the sockets; its worker serves on them).

mod cluster_util;

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster_util::{ChildGuard, args_for, primary, run, worker};
use forkloop::ipc::Endpoint;
use forkloop::net::Stream;
use forkloop::primary::Event;
use forkloop::primary::systemd::{self, Notifier, parse_watchdog};
use forkloop::rt::EventLoop;
use forkloop::worker::Worker;

const SUB_ENV: &str = "FORKLOOP_TEST_SUB";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "forkloop-sd-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake `NOTIFY_SOCKET`: a bound datagram socket.
fn fake_notify_socket(dir: &TempDir) -> (PathBuf, UnixDatagram) {
    let path = dir.path("notify");
    let sock = UnixDatagram::bind(&path).expect("bind notify socket");
    sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    (path, sock)
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a datagram");
    String::from_utf8(buf[..n].to_vec()).expect("utf-8")
}

#[test]
fn notify_sends_the_exact_datagrams() {
    let dir = TempDir::new("notify");
    let (path, sock) = fake_notify_socket(&dir);
    let n = Notifier::new(&path).expect("notifier");
    n.ready();
    assert_eq!(recv(&sock), "READY=1");
    n.status("serving: 4 workers\nall fine");
    assert_eq!(recv(&sock), "STATUS=serving: 4 workers all fine");
    let before = forkloop::sys::monotonic_usec();
    n.reloading();
    let after = forkloop::sys::monotonic_usec();
    let got = recv(&sock);
    let usec: u64 = got
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{got:?}"))
        .parse()
        .expect("a number");
    assert!(before <= usec && usec <= after, "CLOCK_MONOTONIC now");
    n.stopping();
    assert_eq!(recv(&sock), "STOPPING=1");
    n.watchdog();
    assert_eq!(recv(&sock), "WATCHDOG=1");
    n.main_pid(4242);
    assert_eq!(recv(&sock), "MAINPID=4242");
    n.extend_timeout(Duration::from_secs(5));
    assert_eq!(recv(&sock), "EXTEND_TIMEOUT_USEC=5000000");
    n.notify("READY=1\nSTATUS=up").expect("raw");
    assert_eq!(recv(&sock), "READY=1\nSTATUS=up");
}

#[cfg(target_os = "linux")]
#[test]
fn notify_to_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("forkloop-sd-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let n = Notifier::new(format!("@{name}")).expect("notifier");
    n.ready();
    assert_eq!(recv(&sock), "READY=1");
}

#[test]
fn notify_failures_are_not_fatal() {
    let dir = TempDir::new("gone");
    let n = Notifier::new(dir.path("nobody-listens")).expect("notifier");
    n.ready(); // logged, no panic
    n.watchdog();
    assert!(n.notify("READY=1").is_err(), "the raw call reports it");
    assert!(Notifier::new("").is_err());
}

#[test]
fn notifier_from_env_in_a_child() {
    if std::env::var_os(SUB_ENV).is_some() {
        let n = Notifier::from_env().expect("NOTIFY_SOCKET set");
        n.ready();
        n.status("from the child");
        return;
    }
    let dir = TempDir::new("env");
    let (path, sock) = fake_notify_socket(&dir);
    let child = Command::new(std::env::current_exe().unwrap())
        .args(args_for("notifier_from_env_in_a_child"))
        .env(SUB_ENV, "1")
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut guard = ChildGuard(child);
    assert_eq!(recv(&sock), "READY=1");
    assert_eq!(recv(&sock), "STATUS=from the child");
    assert!(guard.0.wait().expect("wait").success());
}

#[test]
fn watchdog_interval_is_half_of_watchdog_usec() {
    let me = std::process::id();
    let half = |usec, pid| parse_watchdog(usec, pid, me);
    assert_eq!(half(Some("30000000"), None), Some(Duration::from_secs(15)));
    let mine = me.to_string();
    assert_eq!(
        half(Some("3000"), Some(mine.as_str())),
        Some(Duration::from_micros(1500))
    );
    let other = me.wrapping_add(1).to_string();
    assert_eq!(half(Some("3000"), Some(other.as_str())), None, "not ours");
    assert_eq!(half(Some("1"), None), Some(Duration::from_micros(1)));
    assert_eq!(half(Some("0"), None), None, "off");
    assert_eq!(half(None, None), None);
    assert_eq!(half(Some("soon"), None), None);
    assert_eq!(half(Some("3000"), Some("pid")), None);
}

#[test]
fn watchdog_pings_from_the_loop() {
    let dir = TempDir::new("ping");
    let (path, sock) = fake_notify_socket(&dir);
    let n = Notifier::new(&path).expect("notifier");
    let mut lp = EventLoop::new().expect("loop");
    let id = n.start_watchdog(&mut lp, Duration::from_millis(20));
    lp.set_timeout(130, move |lp| {
        lp.clear_interval(id);
    });
    let t = Instant::now();
    lp.run().expect("run");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the ping timer is unref'd"
    );
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut pings = 0;
    let mut buf = [0u8; 64];
    while let Ok(len) = sock.recv(&mut buf) {
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        pings += 1;
    }
    assert!(pings >= 3, "one at once, then one every 20 ms: got {pings}");
}

// --- socket activation, end to end --------------------------------------------------

const TCP_ENV: &str = "FORKLOOP_TEST_SD_TCP";
const UNIX_ENV: &str = "FORKLOOP_TEST_SD_UNIX";

/// The worker: listens on both endpoints through the primary and answers each connection
/// with `hello tcp` / `hello unix`, reporting every answer to the primary.
fn activated_worker(lp: &mut EventLoop, w: &Worker) {
    let env_clean = std::env::var_os("LISTEN_FDS").is_none()
        && std::env::var_os("LISTEN_PID").is_none()
        && std::env::var_os("LISTEN_FDNAMES").is_none();
    let _ = w.send(
        lp,
        if env_clean {
            b"env clean"
        } else {
            b"env dirty"
        },
    );
    let answer = |w: &Worker, what: &'static str| {
        let w = w.clone();
        move |lp: &mut EventLoop, _: &forkloop::worker::Server, conn: Stream| {
            let w = w.clone();
            conn.on_data(lp, move |lp, c, _| {
                c.write(lp, format!("hello {what}").as_bytes());
                c.end(lp);
                let _ = w.send(lp, format!("served {what}").as_bytes());
            });
        }
    };
    let tcp: SocketAddr = std::env::var(TCP_ENV).unwrap().parse().unwrap();
    let path = std::env::var(UNIX_ENV).unwrap();
    w.listen_tcp(lp, tcp, answer(w, "tcp"));
    w.listen_unix(lp, path, answer(w, "unix"));
}

/// The sub-primary, started by `sh` with `LISTEN_PID=$$`: adopts what systemd would
/// pass, prints what it sees, and disconnects its worker once both endpoints served.
fn activated_primary() {
    let passed = systemd::listen_fds_with_names().expect("listen_fds");
    let names: Vec<&str> = passed.iter().map(|(_, n)| n.as_str()).collect();
    println!("names {}", names.join(","));
    let again = systemd::listen_fds().map_err(|e| e.kind());
    println!(
        "taken once {}",
        again.err() == Some(std::io::ErrorKind::AlreadyExists)
    );
    let (mut lp, p) = primary("socket_activation_end_to_end");
    p.adopt_listeners(passed.into_iter().map(|(fd, _)| fd).collect());
    let served = Rc::new(Cell::new(0));
    p.on(move |lp, p, ev| {
        let mut out = std::io::stdout().lock();
        match ev {
            Event::Listening { address, .. } => match address {
                Endpoint::Tcp(a) => writeln!(out, "listening tcp {a}").unwrap(),
                Endpoint::Unix(path) => writeln!(out, "listening unix {}", path.display()).unwrap(),
                Endpoint::Udp(a) => writeln!(out, "listening udp {a}").unwrap(),
            },
            Event::Message { data, .. } => {
                let text = String::from_utf8_lossy(data);
                writeln!(out, "{text}").unwrap();
                if text.starts_with("served") {
                    served.set(served.get() + 1);
                    if served.get() == 2 {
                        writeln!(out, "listeners {}", p.listener_count()).unwrap();
                        p.disconnect(lp, |_, _| {});
                    }
                }
            }
            _ => {}
        }
        out.flush().unwrap();
    });
    p.fork(&mut lp).expect("fork");
    run(&mut lp);
}

/// Starts this test binary as systemd would start a socket-activated service: `fds` at 3,
/// 4, … and `LISTEN_PID` set to the service's own pid (by `sh`, which then `exec`s it).
fn spawn_activated(test: &str, fds: &[i32], names: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(std::env::current_exe().unwrap())
        .args(args_for(test))
        .env(SUB_ENV, "1")
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    let fds = fds.to_vec();
    // SAFETY: runs in the forked child before exec; only fcntl, dup2 and close, which are
    // async-signal-safe, on a Vec allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            use nix::libc;
            // Move every source out of the way first, so 3, 4, … never clobber a source.
            let mut high = [0; 8];
            for (i, &fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD, 100);
                if high[i] == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in high[..fds.len()].iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            Ok(())
        });
    }
    cmd
}

fn expect_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let end = Instant::now() + TIMEOUT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
}

fn fetch(mut s: impl Read + Write) -> String {
    s.write_all(b"x").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let end = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < end, "the sub-primary did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn socket_activation_end_to_end() {
    worker(activated_worker);
    if std::env::var_os(SUB_ENV).is_some() {
        activated_primary();
        return;
    }
    let dir = TempDir::new("activation");
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let tcp_addr = tcp.local_addr().unwrap();
    let path = dir.path("web.sock");
    let unix = UnixListener::bind(&path).expect("bind unix");
    let mut cmd = spawn_activated(
        "socket_activation_end_to_end",
        &[tcp.as_raw_fd(), unix.as_raw_fd()],
        "web:admin",
        &[
            (TCP_ENV, &tcp_addr.to_string()),
            (UNIX_ENV, path.to_str().unwrap()),
        ],
    );
    let mut child = ChildGuard(cmd.spawn().expect("spawn"));
    // Only the sub-primary holds the sockets now: had it bound anew, the address would
    // be taken and its worker's listen would fail.
    drop((tcp, unix));
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    assert_eq!(expect_line(&rx, "names "), "web,admin");
    assert_eq!(expect_line(&rx, "taken once "), "true");
    assert_eq!(
        expect_line(&rx, "env "),
        "clean",
        "workers never see LISTEN_*"
    );
    let mut tcp_seen = None;
    let mut unix_seen = None;
    while tcp_seen.is_none() || unix_seen.is_none() {
        let line = expect_line(&rx, "listening ");
        if let Some(a) = line.strip_prefix("tcp ") {
            tcp_seen = Some(a.parse::<SocketAddr>().unwrap());
        } else if let Some(p) = line.strip_prefix("unix ") {
            unix_seen = Some(PathBuf::from(p));
        }
    }
    assert_eq!(
        tcp_seen,
        Some(tcp_addr),
        "the pre-bound port, not a new one"
    );
    assert_eq!(unix_seen.as_deref(), Some(path.as_path()));

    let s = TcpStream::connect_timeout(&tcp_addr, TIMEOUT).expect("connect tcp");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(fetch(s), "hello tcp");
    let u = UnixStream::connect(&path).expect("connect unix");
    u.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(fetch(u), "hello unix");

    assert_eq!(expect_line(&rx, "listeners "), "2");
    assert!(wait_exit(&mut child.0).success());
    assert!(
        Path::new(&path).exists(),
        "the service manager's socket file is never removed"
    );
}
