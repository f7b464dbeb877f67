//! Flow control of loop streams over real loopback sockets: back-pressure from a peer that
//! does not read, latency-safe defaults (TCP_NODELAY, corked writes in a data callback),
//! reading and EOF without a data callback, and what keeps the loop alive.

mod util_loop;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use forkloop::net::{DEFAULT_BACKPRESSURE, StreamOptions, tcp};
use forkloop::rt::EventLoop;
use util_loop::guard;

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Bytes the client writes without reading: far more than loopback socket buffers hold.
const FLOOD: usize = 48 << 20;

/// The server answers every chunk with twice its size.
const ANSWER_FACTOR: usize = 2;

/// One read of the server (64 KiB) answered: what may be queued on top of the mark.
const ONE_READ_ANSWER: usize = ANSWER_FACTOR * 64 * 1024;

#[test]
fn a_client_that_never_reads_stops_being_read_until_it_reads() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 60_000);
    let received = Rc::new(Cell::new(0usize));
    let max_queued = Rc::new(Cell::new(0usize));
    let conn_slot = Rc::new(Cell::new(None));
    let (r, m, c) = (received.clone(), max_queued.clone(), conn_slot.clone());
    let server = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        c.set(Some(conn));
        let (r, m) = (r.clone(), m.clone());
        conn.on_data(lp, move |lp, conn, data| {
            r.set(r.get() + data.len());
            conn.write(lp, &vec![b'a'; ANSWER_FACTOR * data.len()]);
            m.set(m.get().max(conn.buffered(lp)));
        });
    })
    .unwrap();
    let addr = server.local_addr(&lp).unwrap();

    // The client: one thread writes FLOOD bytes; another reads only once told to.
    let (start_reading, may_read) = mpsc::channel::<()>();
    let read_all = Arc::new(AtomicBool::new(false));
    let client = TcpStream::connect(addr).unwrap();
    let mut writer = client.try_clone().unwrap();
    let mut reader = client;
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    writer
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let w = std::thread::spawn(move || {
        let chunk = vec![b'q'; 64 * 1024];
        let mut sent = 0;
        while sent < FLOOD {
            writer.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
    });
    let done = read_all.clone();
    let rd = std::thread::spawn(move || {
        if may_read.recv().is_err() {
            return 0;
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < ANSWER_FACTOR * FLOOD {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        done.store(true, Ordering::SeqCst);
        got
    });

    // Phase 1: wait until the server stopped reading (no progress for 300 ms), then check
    // that it did so because of back-pressure and with bounded output. Phase 2: let the
    // client read; the server must read again and take the whole flood.
    let stalled_at = Rc::new(Cell::new(None::<usize>));
    let last = Rc::new(Cell::new((0usize, 0u32)));
    let (r, s, c) = (received.clone(), stalled_at.clone(), conn_slot.clone());
    let mut start_reading = Some(start_reading);
    let t = lp.set_interval(50, move |lp| {
        let now = r.get();
        let (before, still) = last.get();
        let still = if now == before { still + 1 } else { 0 };
        last.set((now, still));
        if s.get().is_none() {
            assert!(
                now < FLOOD,
                "the server read all {FLOOD} bytes without stalling"
            );
            let conn = c.get();
            if still >= 6 && conn.is_some_and(|c| c.is_stalled(lp)) {
                assert!(conn.is_some_and(|c| c.buffered(lp) > DEFAULT_BACKPRESSURE.low));
                s.set(Some(now));
                if let Some(tx) = start_reading.take() {
                    tx.send(()).unwrap();
                }
            }
        }
        if now == FLOOD && read_all.load(Ordering::SeqCst) {
            let conn = c.get().expect("a connection");
            assert!(!conn.is_stalled(lp));
            conn.destroy(lp);
            server.close(lp, |_| {});
            lp.exit(0);
        }
    });
    let _ = t;
    assert_eq!(lp.run().unwrap(), 0);
    w.join().unwrap();
    let answered = rd.join().unwrap();

    let stalled = stalled_at.get().expect("the server never stopped reading");
    assert!(
        stalled < FLOOD,
        "the server read all {FLOOD} bytes before stalling"
    );
    let bound = DEFAULT_BACKPRESSURE.high + ONE_READ_ANSWER;
    assert!(
        max_queued.get() <= bound,
        "queued output reached {} bytes (bound {bound})",
        max_queued.get()
    );
    assert_eq!(received.get(), FLOOD, "reading did not resume");
    assert_eq!(answered, ANSWER_FACTOR * FLOOD);
}

#[test]
fn a_stream_without_back_pressure_queues_without_bound() {
    // The control for the test above: with back-pressure off the same client makes the
    // server queue far beyond the mark (what the default prevents).
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 60_000);
    let max_queued = Rc::new(Cell::new(0usize));
    let m = max_queued.clone();
    let server = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        conn.set_backpressure(lp, None);
        let m = m.clone();
        conn.on_data(lp, move |lp, conn, data| {
            conn.write(lp, &vec![b'a'; ANSWER_FACTOR * data.len()]);
            m.set(m.get().max(conn.buffered(lp)));
            if m.get() > 4 * (DEFAULT_BACKPRESSURE.high + ONE_READ_ANSWER) {
                conn.destroy(lp);
                lp.exit(0);
            }
        });
    })
    .unwrap();
    let addr = server.local_addr(&lp).unwrap();
    let w = std::thread::spawn(move || {
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let chunk = vec![b'q'; 64 * 1024];
        let mut sent = 0;
        // Stops when the server closes (or after FLOOD bytes).
        while sent < FLOOD && client.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
    });
    assert_eq!(lp.run().unwrap(), 0);
    w.join().unwrap();
    assert!(max_queued.get() > 4 * (DEFAULT_BACKPRESSURE.high + ONE_READ_ANSWER));
}

#[test]
fn a_stream_without_a_data_callback_sees_the_peer_end_and_lets_the_loop_finish() {
    let mut lp = EventLoop::new().unwrap();
    let failed = Rc::new(Cell::new(false));
    let f = failed.clone();
    let t = lp.set_timeout(5000, move |lp| {
        f.set(true);
        lp.exit(1);
    });
    lp.unref(t);
    let ended = Rc::new(Cell::new(false));
    let closed = Rc::new(Cell::new(false));
    let (e, c) = (ended.clone(), closed.clone());
    let server = Rc::new(Cell::new(None));
    let s = server.clone();
    let l = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        let (e, c) = (e.clone(), c.clone());
        conn.on_end(lp, move |_, _| e.set(true));
        conn.on_close(lp, move |_, _| c.set(true));
        if let Some(l) = s.take() {
            forkloop::net::Listener::close(l, lp, |_| {});
        }
    })
    .unwrap();
    server.set(Some(l));
    let addr = l.local_addr(&lp).unwrap();
    let client = std::thread::spawn(move || {
        let c = TcpStream::connect(addr).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut c = c;
        let mut b = [0u8; 8];
        // The server ends its side in turn.
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read(&mut b).unwrap()
    });
    assert_eq!(lp.run().unwrap(), 0);
    assert!(!failed.get(), "the loop was kept alive");
    assert!(ended.get() && closed.get());
    assert_eq!(client.join().unwrap(), 0);
}

#[test]
fn data_read_before_the_data_callback_is_delivered_then_the_end() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Rc::new(RefCell::new(Vec::<String>::new()));
    let lg = log.clone();
    let l = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        let l2 = lg.clone();
        conn.on_end(lp, move |_, _| l2.borrow_mut().push("end".into()));
        let lg = lg.clone();
        // The data callback comes late: the bytes and the FIN have arrived by then.
        lp.set_timeout(200, move |lp| {
            assert!(conn.is_open(lp));
            conn.on_data(lp, move |_, _, d| {
                lg.borrow_mut()
                    .push(String::from_utf8_lossy(d).into_owned());
            });
        });
    })
    .unwrap();
    let addr = l.local_addr(&lp).unwrap();
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"early bytes").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut b = [0u8; 8];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read(&mut b).unwrap()
    });
    lp.set_timeout(1000, move |lp| l.close(lp, |_| {}));
    assert_eq!(lp.run().unwrap(), 0);
    assert_eq!(*log.borrow(), ["early bytes", "end"]);
    assert_eq!(client.join().unwrap(), 0);
}

fn kinds(lp: &EventLoop) -> Vec<&'static str> {
    let mut k: Vec<_> = lp.active_handles().iter().map(|h| h.kind()).collect();
    k.sort_unstable();
    k
}

#[test]
fn active_handles_lists_what_keeps_the_loop_alive_by_kind() {
    let mut lp = EventLoop::new().unwrap();
    assert!(lp.active_handles().is_empty() && !lp.alive());
    let timer = lp.set_timeout(60_000, |_| {});
    let quiet = lp.set_timeout(60_000, |_| {});
    lp.unref(quiet);
    lp.set_immediate(|_| {});
    let server = tcp::listen(&mut lp, any_port(), |_, _| {}).unwrap();
    let addr = server.local_addr(&lp).unwrap();
    let client = tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    assert_eq!(
        kinds(&lp),
        ["Immediate", "TcpListener", "TcpStream", "Timeout"]
    );
    assert!(
        lp.active_handles()
            .contains(&forkloop::rt::ActiveHandle::Timer(timer))
    );
    assert!(
        lp.active_handles()
            .iter()
            .any(|h| matches!(h, forkloop::rt::ActiveHandle::Io { id, .. } if *id == server.id()))
    );

    // What is listed is what keeps the loop alive: take the items away one by one.
    lp.clear_timeout(timer);
    lp.unref(server.id());
    lp.run_mode(forkloop::RunMode::NoWait).unwrap();
    // The immediate ran; the client connected (or is connecting): still a stream. The
    // accepted stream (no data callback, but reading) is listed too once accepted.
    let k = kinds(&lp);
    assert!(k.iter().all(|k| *k == "TcpStream"), "{k:?}");
    client.destroy(&mut lp);
    assert!(kinds(&lp).contains(&"Closing"));
    lp.set_timeout(200, move |lp| server.close(lp, |_| {}));
    assert_eq!(lp.run().unwrap(), 0);
    assert!(lp.active_handles().is_empty() && !lp.alive());
}

#[test]
fn a_paused_stream_is_not_an_active_handle() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let server =
        tcp::listen(&mut lp, any_port(), |lp, conn| {
            conn.pause(lp);
            assert!(
                lp.active_handles().iter().all(
                    |h| !matches!(h, forkloop::rt::ActiveHandle::Io { id, .. } if *id == conn.id())
                ),
                "a paused stream with nothing queued is listed"
            );
            conn.resume(lp);
            assert!(lp.active_handles().iter().any(
                |h| matches!(h, forkloop::rt::ActiveHandle::Io { id, .. } if *id == conn.id())
            ));
            conn.destroy(lp);
        })
        .unwrap();
    let addr = server.local_addr(&lp).unwrap();
    let c = TcpStream::connect(addr).unwrap();
    lp.set_timeout(100, move |lp| server.close(lp, |_| {}));
    assert_eq!(lp.run().unwrap(), 0);
    drop(c);
}

#[test]
fn a_server_gives_its_connections_its_stream_options() {
    use forkloop::worker::Server;
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let server = Server::bind(&mut lp, any_port(), move |lp, _, conn| {
        s.borrow_mut()
            .push((conn.backpressure(lp), conn.nodelay(lp).unwrap()));
        conn.destroy(lp);
    })
    .unwrap();
    let addr = server.address().unwrap();
    let _first = TcpStream::connect(addr).unwrap();
    let srv = server.clone();
    lp.set_timeout(100, move |lp| {
        // Opt out for the connections from now on.
        srv.set_stream_options(
            lp,
            StreamOptions {
                no_delay: false,
                backpressure: None,
            },
        );
        let second = TcpStream::connect(addr).unwrap();
        let srv = srv.clone();
        lp.set_timeout(100, move |lp| {
            drop(second);
            srv.close(lp, |_| {});
        });
    });
    assert_eq!(lp.run().unwrap(), 0);
    assert_eq!(
        *seen.borrow(),
        [(Some(DEFAULT_BACKPRESSURE), true), (None, false)]
    );
}

#[test]
fn close_when_written_sends_the_queue_then_closes_without_waiting_for_the_peer() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let closed = Rc::new(Cell::new(false));
    let c = closed.clone();
    let l = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        let c = c.clone();
        conn.on_close(lp, move |_, _| c.set(true));
        conn.on_data(lp, move |lp, conn, _| {
            // Corked inside the callback: the close waits for these bytes to go out.
            conn.write(lp, &[b'x'; 100_000]);
            conn.close_when_written(lp);
            assert!(!conn.write(lp, b"late"), "writing after it fails");
        });
    })
    .unwrap();
    let addr = l.local_addr(&lp).unwrap();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"bye").unwrap();
        // The client never ends its side: the server must not wait for it.
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.len()
    });
    lp.set_timeout(300, move |lp| l.close(lp, |_| {}));
    assert_eq!(lp.run().unwrap(), 0);
    assert_eq!(
        client.join().unwrap(),
        100_000,
        "every queued byte, then EOF"
    );
    assert!(closed.get());
}
