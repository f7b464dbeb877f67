//! TCP streams and listeners over real loopback sockets.

mod util_loop;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use forkloop::net::{Stream, tcp};
use forkloop::rt::EventLoop;
use util_loop::{Log, MapArgs, guard};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn echo_round_trip_then_both_sides_close() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    let l = log.clone();
    let server = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        let l2 = l.clone();
        conn.on_data(lp, |lp, c, data| {
            c.write(lp, data);
        });
        conn.on_close(lp, move |_, _| l2.push("server-close"));
    })
    .unwrap();
    let addr = server.local_addr(&lp).unwrap();
    let l = log.clone();
    let client = tcp::connect(&mut lp, addr, move |lp, c, r| {
        r.unwrap();
        l.push("connected");
        assert!(c.write(lp, b"hello"));
    })
    .unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    client.on_data(&mut lp, move |lp, c, data| {
        g.borrow_mut().extend_from_slice(data);
        if g.borrow().len() == 5 {
            c.end(lp);
            server.close(lp, |_| {});
        }
    });
    let l = log.clone();
    client.on_end(&mut lp, move |_, _| l.push("client-end"));
    let l = log.clone();
    client.on_close(&mut lp, move |_, _| l.push("client-close"));
    assert_eq!(lp.run().unwrap(), 0);
    assert_eq!(&*got.borrow(), b"hello");
    let mut got_log = log.get();
    got_log.sort();
    assert_eq!(
        got_log,
        ["client-close", "client-end", "connected", "server-close"]
    );
}

#[test]
fn write_reports_high_water_mark_and_drain_fires_after_flush() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let received = Rc::new(Cell::new(0usize));
    let ended_with = Rc::new(Cell::new(0usize));
    let server_conn = Rc::new(Cell::new(None::<Stream>));
    let (r, e, sc) = (received.clone(), ended_with.clone(), server_conn.clone());
    let listener = Rc::new(Cell::new(None));
    let li = listener.clone();
    let server = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        let r1 = r.clone();
        conn.on_data(lp, move |_, _, data| r1.set(r1.get() + data.len()));
        conn.pause(lp); // let the client's queue build up
        let (r, e, li) = (r.clone(), e.clone(), li.clone());
        conn.on_end(lp, move |lp, _| {
            e.set(r.get());
            if let Some(l) = li.get() {
                forkloop::net::Listener::close(l, lp, |_| {});
            }
        });
        sc.set(Some(conn));
    })
    .unwrap();
    listener.set(Some(server));
    let addr = server.local_addr(&lp).unwrap();
    let client = tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    client.on_data(&mut lp, |_, _, _| {});
    client.set_high_water_mark(&mut lp, 64 * 1024);
    let chunk = vec![7u8; 16 * 1024];
    // Before the connect completes everything is queued: the fourth chunk hits the mark.
    let mut total = 0;
    for i in 0..4 {
        let below = client.write(&mut lp, &chunk);
        total += chunk.len();
        assert_eq!(below, i < 3, "chunk {i}");
    }
    // Keep writing until the kernel buffers are full too.
    assert_eq!(client.buffered(&lp), 64 * 1024);
    let drained = Rc::new(Cell::new(false));
    let d = drained.clone();
    client.on_drain(&mut lp, move |lp, c| {
        d.set(true);
        assert_eq!(c.buffered(lp), 0);
        c.end(lp);
    });
    let sc = server_conn.clone();
    lp.set_timeout(20, move |lp| {
        if let Some(c) = sc.get() {
            c.resume(lp);
        }
    });
    assert_eq!(lp.run().unwrap(), 0);
    assert!(drained.get());
    assert_eq!(received.get(), total);
    assert_eq!(ended_with.get(), total);
}

#[test]
fn end_half_closes_after_flush_and_the_peer_can_still_answer() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    const N: usize = 1 << 20;
    let server_got = Rc::new(Cell::new(0usize));
    let sg = server_got.clone();
    let listener = Rc::new(Cell::new(None));
    let li = listener.clone();
    let server = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        let sg1 = sg.clone();
        conn.on_data(lp, move |_, _, d| sg1.set(sg1.get() + d.len()));
        let (sg, li) = (sg.clone(), li.clone());
        conn.on_end(lp, move |lp, c| {
            assert_eq!(sg.get(), N);
            c.write(lp, b"bye");
            if let Some(l) = li.get() {
                forkloop::net::Listener::close(l, lp, |_| {});
            }
        });
    })
    .unwrap();
    listener.set(Some(server));
    let addr = server.local_addr(&lp).unwrap();
    let client = tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    client.write(&mut lp, &vec![1u8; N]);
    client.end(&mut lp);
    let reply = Rc::new(RefCell::new(Vec::new()));
    let rp = reply.clone();
    client.on_data(&mut lp, move |_, _, d| rp.borrow_mut().extend_from_slice(d));
    let closed = Rc::new(Cell::new(false));
    let cl = closed.clone();
    client.on_close(&mut lp, move |_, _| cl.set(true));
    assert_eq!(lp.run().unwrap(), 0);
    assert_eq!(server_got.get(), N);
    assert_eq!(&*reply.borrow(), b"bye");
    assert!(closed.get());
}

#[test]
fn connect_refused_reports_the_error_then_closes() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    let l = log.clone();
    let s = tcp::connect(&mut lp, port, move |_, _, r| {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        l.push("refused");
    })
    .unwrap();
    s.on_close(&mut lp, log.cb("close").map_args());
    lp.run().unwrap();
    log.expect(&["refused", "close"]);
    assert!(!s.is_open(&lp));
}

#[test]
fn write_after_end_fails_in_the_pending_phase() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    let l = log.clone();
    let server = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        conn.on_data(lp, |_, _, _| {});
        let l = l.clone();
        conn.on_close(lp, move |_, _| l.push("server-conn-close"));
    })
    .unwrap();
    let addr = server.local_addr(&lp).unwrap();
    let l = log.clone();
    tcp::connect(&mut lp, addr, move |lp, c, r| {
        r.unwrap();
        c.end(lp);
        let l2 = l.clone();
        c.on_error(lp, move |_, _, e| {
            assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
            l2.push("error");
        });
        assert!(!c.write(lp, b"late"));
        lp.set_immediate(l.cb("immediate"));
        lp.next_tick(l.cb("tick"));
        server.close(lp, |_| {});
    })
    .unwrap();
    lp.run().unwrap();
    let got = log.get();
    // The error is deferred: after this callback's tick, in the pending phase right after
    // poll, before the check phase's immediate.
    assert_eq!(&got[..3], ["tick", "error", "immediate"]);
}

#[test]
fn destroy_in_a_data_callback_closes_after_the_check_phase() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    let l = log.clone();
    let server = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        let l = l.clone();
        conn.on_data(lp, move |lp, c, _| {
            c.on_close(lp, l.cb("close").map_args());
            c.destroy(lp);
            lp.set_immediate(l.cb("immediate"));
            lp.set_timeout(0, l.cb("timeout"));
        });
    })
    .unwrap();
    let addr = server.local_addr(&lp).unwrap();
    let c = tcp::connect(&mut lp, addr, |_, _, r| r.unwrap()).unwrap();
    c.write(&mut lp, b"x");
    c.on_data(&mut lp, |_, _, _| {});
    let l = log.clone();
    c.on_close(&mut lp, move |lp, _| {
        l.push("client-close");
        server.close(lp, |_| {});
    });
    lp.run().unwrap();
    let got = log.get();
    let pos = |s: &str| got.iter().position(|x| x == s).unwrap();
    assert!(
        pos("immediate") < pos("close") && pos("close") < pos("timeout"),
        "{got:?}"
    );
}

#[test]
fn accepts_every_queued_connection_and_unref_lets_the_loop_end() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    const N: usize = 300;
    let accepted = Rc::new(Cell::new(0usize));
    let a = accepted.clone();
    let server = tcp::listen(&mut lp, any_port(), move |lp, conn| {
        a.set(a.get() + 1);
        conn.destroy(lp);
    })
    .unwrap();
    let addr = server.local_addr(&lp).unwrap();
    // Connect all before the loop runs: one readiness edge, many queued connections.
    let clients: Vec<_> = (0..N)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    assert!(N < forkloop::net::DEFAULT_BACKLOG as usize);
    lp.unref(server.id());
    assert!(!lp.alive());
    let a = accepted.clone();
    lp.set_interval(1, move |lp| {
        if a.get() == N {
            lp.exit(0);
        }
    });
    assert_eq!(lp.run().unwrap(), 0);
    assert_eq!(accepted.get(), N);
    drop(clients);

    // An unref'd listener alone does not keep the loop alive.
    let mut lp = EventLoop::new().unwrap();
    let l = tcp::listen(&mut lp, any_port(), |_, _| {}).unwrap();
    lp.unref(l.id());
    assert_eq!(lp.run().unwrap(), 0);
}

#[test]
fn a_short_read_still_sees_a_later_or_simultaneous_end() {
    // Reads that come back short skip the confirming read; the client's FIN must still be
    // seen, whether it arrives with the request or a while after it.
    for delay_ms in [0u64, 50] {
        let mut lp = EventLoop::new().unwrap();
        guard(&mut lp, 5000);
        let listener = Rc::new(Cell::new(None));
        let li = listener.clone();
        let server = tcp::listen(&mut lp, any_port(), move |lp, conn| {
            conn.on_data(lp, |lp, c, d| {
                c.write(lp, d);
            });
            let li = li.clone();
            conn.on_end(lp, move |lp, c| {
                c.write(lp, b"/end");
                c.end(lp);
                if let Some(l) = li.get() {
                    forkloop::net::Listener::close(l, lp, |_| {});
                }
            });
        })
        .unwrap();
        listener.set(Some(server));
        let addr = server.local_addr(&lp).unwrap();
        let client = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            s.write_all(b"req").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).map(|_| got)
        });
        assert_eq!(lp.run().unwrap(), 0);
        let got = client.join().unwrap().unwrap();
        assert_eq!(got, b"req/end", "FIN {delay_ms} ms after the request");
    }
}

#[test]
fn a_server_error_with_no_handler_is_not_lost() {
    // The port is taken: with no error handler the failure ends the loop with code 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut lp = EventLoop::new().unwrap();
    let _server = forkloop::worker::listen_tcp(&mut lp, None, addr, |_, _, _| {});
    assert_eq!(lp.run().unwrap(), 1);
    // With a handler, the handler decides.
    let mut lp = EventLoop::new().unwrap();
    let server = forkloop::worker::listen_tcp(&mut lp, None, addr, |_, _, _| {});
    let seen = std::rc::Rc::new(std::cell::Cell::new(false));
    let s = seen.clone();
    server.on_error(move |_, _, e| s.set(e.kind() == std::io::ErrorKind::AddrInUse));
    assert_eq!(lp.run().unwrap(), 0);
    assert!(seen.get());
}
