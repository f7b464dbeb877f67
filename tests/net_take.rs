//! A listener taken off the loop is a plain standard-library listener, still listening.

use std::io::{Read, Write};

use forkloop::EventLoop;
use forkloop::net::tcp;

#[test]
fn a_taken_tcp_listener_still_accepts() {
    let mut lp = EventLoop::new().unwrap();
    let l = tcp::listen(&mut lp, "127.0.0.1:0".parse().unwrap(), |lp, c| {
        c.destroy(lp)
    })
    .unwrap();
    let addr = l.local_addr(&lp).unwrap();
    let std_listener = l.take_tcp(&mut lp).expect("a TCP listener");
    assert!(l.take_tcp(&mut lp).is_none(), "taken once");
    std_listener.set_nonblocking(false).unwrap();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    let (mut conn, _) = std_listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(lp.run().unwrap(), 0, "nothing left on the loop");
}
