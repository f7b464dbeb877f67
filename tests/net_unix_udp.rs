//! Unix streams and UDP sockets over real local sockets.

mod util_loop;

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use forkloop::net::{udp, unix};
use forkloop::rt::EventLoop;
use util_loop::{Log, guard, sock_path};

#[test]
fn unix_echo_round_trip() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let path = sock_path("echo");
    let server = unix::listen(&mut lp, &path, |lp, conn| {
        conn.on_data(lp, |lp, c, d| {
            c.write(lp, d);
        });
    })
    .unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    let c = unix::connect(&mut lp, &path, |lp, c, r| {
        r.unwrap();
        c.write(lp, b"over unix");
    })
    .unwrap();
    c.on_data(&mut lp, move |lp, c, d| {
        g.borrow_mut().extend_from_slice(d);
        if g.borrow().len() == 9 {
            c.destroy(lp);
            server.close(lp, |_| {});
        }
    });
    lp.run().unwrap();
    assert_eq!(&*got.borrow(), b"over unix");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn unix_connect_error_is_delivered_in_the_pending_phase() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    lp.set_immediate(log.cb("immediate"));
    let l = log.clone();
    let s = unix::connect(&mut lp, sock_path("missing"), move |_, _, r| {
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
        l.push("connect-error");
    })
    .unwrap();
    let l = log.clone();
    s.on_close(&mut lp, move |_, _| l.push("close"));
    log.push("main");
    lp.run().unwrap();
    log.expect(&["main", "connect-error", "immediate", "close"]);
}

#[test]
fn udp_ping_pong() {
    let mut lp = EventLoop::new().unwrap();
    guard(&mut lp, 5000);
    let log = Log::new();
    let any = "127.0.0.1:0".parse().unwrap();
    let l = log.clone();
    let a = udp::bind(&mut lp, any, move |lp, sock, data, from| {
        l.push(format!("a got {}", String::from_utf8_lossy(data)));
        sock.send_to(lp, b"pong", from).unwrap();
        sock.close(lp, |_| {});
    })
    .unwrap();
    let l = log.clone();
    let b = udp::bind(&mut lp, any, move |lp, sock, data, _| {
        l.push(format!("b got {}", String::from_utf8_lossy(data)));
        sock.close(lp, |_| {});
    })
    .unwrap();
    let a_addr = a.local_addr(&lp).unwrap();
    b.send_to(&mut lp, b"ping", a_addr).unwrap();
    lp.run().unwrap();
    log.expect(&["a got ping", "b got pong"]);
}
