//! Minimal single-threaded HTTP/1.1 "hello world" server on raw mio (epoll).
//!
//! Purpose: a near-limit reference for what one process can serve on this machine
//! (scripts/http-compare.sh runs it as `mio-1`, and as `mio-2`: two processes sharing the
//! port with SO_REUSEPORT).
//! Every request gets `200 OK` with body `hello world\n`; keep-alive is honoured
//! (HTTP/1.1 default, `Connection: close` closes after the response), pipelined
//! requests are answered in order, request bodies with Content-Length are skipped.
//!
//! Usage: mio-http [--addr 127.0.0.1:18085] [--reuseport]
//!   --reuseport sets SO_REUSEPORT so several processes can bind the same port
//!   (the kernel then spreads new connections across them).

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::FromRawFd;

const LISTENER: Token = Token(usize::MAX);
const BODY: &[u8] = b"hello world\n";

struct Conn {
    sock: TcpStream,
    /// Bytes received but not yet parsed into a complete request.
    rbuf: Vec<u8>,
    /// Response bytes not yet accepted by the kernel.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Set once a request asked to close; we stop reading and close after flushing.
    closing: bool,
    /// Whether WRITABLE interest is currently registered.
    want_write: bool,
}

/// Cached `Date:` header line, refreshed when the wall-clock second changes.
struct DateCache {
    sec: libc::time_t,
    line: [u8; 37], // "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n" is 37 bytes
}

impl DateCache {
    fn new() -> Self {
        let mut d = DateCache {
            sec: -1,
            line: [0; 37],
        };
        d.refresh();
        d
    }

    fn refresh(&mut self) {
        let now = unsafe { libc::time(std::ptr::null_mut()) };
        if now == self.sec {
            return;
        }
        self.sec = now;
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe { libc::gmtime_r(&now, &mut tm) };
        const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let s = format!(
            "Date: {}, {:02} {} {:04} {:02}:{:02}:{:02} GMT\r\n",
            DAYS[tm.tm_wday as usize % 7],
            tm.tm_mday,
            MONTHS[tm.tm_mon as usize % 12],
            tm.tm_year + 1900,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        );
        let b = s.as_bytes();
        let n = b.len().min(self.line.len());
        self.line[..n].copy_from_slice(&b[..n]);
    }
}

fn push_response(out: &mut Vec<u8>, date: &DateCache, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n");
    out.extend_from_slice(&date.line);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(BODY);
}

fn push_bad_request(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

/// Create a listening socket by hand so SO_REUSEPORT can be set before bind.
fn bind_listener(addr: SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let v4 = match addr {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
        }
    };
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        let optlen = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let setopt = |opt| {
            if libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &one as *const _ as *const _,
                optlen,
            ) != 0
            {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        setopt(libc::SO_REUSEADDR)?;
        if reuseport {
            setopt(libc::SO_REUSEPORT)?;
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            &sin as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        if libc::listen(fd, 1024) != 0 {
            let e = io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpListener::from_std(std::net::TcpListener::from_raw_fd(
            fd,
        )))
    }
}

/// Parse every complete request in `conn.rbuf` and append the responses to `conn.wbuf`.
fn handle_requests(conn: &mut Conn, date: &DateCache) {
    let mut start = 0;
    while start < conn.rbuf.len() && !conn.closing {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&conn.rbuf[start..]) {
            Ok(httparse::Status::Complete(head_len)) => {
                let http11 = req.version == Some(1);
                let mut keep_alive = http11;
                let mut body_len = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("connection") {
                        if h.value.eq_ignore_ascii_case(b"close") {
                            keep_alive = false;
                        } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive = true;
                        }
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        body_len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|s| s.trim().parse().ok())
                            .unwrap_or(0);
                    }
                }
                let total = head_len + body_len;
                if conn.rbuf.len() - start < total {
                    break; // wait for the rest of the body
                }
                start += total;
                push_response(&mut conn.wbuf, date, !keep_alive);
                if !keep_alive {
                    conn.closing = true;
                }
            }
            Ok(httparse::Status::Partial) => break,
            Err(_) => {
                push_bad_request(&mut conn.wbuf);
                conn.closing = true;
                start = conn.rbuf.len();
            }
        }
    }
    if start == conn.rbuf.len() {
        conn.rbuf.clear();
    } else if start > 0 {
        conn.rbuf.drain(..start);
    }
}

/// Write pending output. Returns Ok(true) when everything was flushed.
fn flush(conn: &mut Conn) -> io::Result<bool> {
    while conn.wpos < conn.wbuf.len() {
        match conn.sock.write(&conn.wbuf[conn.wpos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    conn.wbuf.clear();
    conn.wpos = 0;
    Ok(true)
}

/// Drive one connection after a readiness event. Returns false if it must be closed.
fn drive(conn: &mut Conn, token: Token, poll: &Poll, scratch: &mut [u8], date: &DateCache) -> bool {
    // Read until the socket is drained. A short read means the receive queue was
    // empty at that moment; with edge-triggered epoll any later data raises a new
    // event, so we can skip the extra read() that would only return EAGAIN.
    if !conn.closing {
        loop {
            match conn.sock.read(scratch) {
                Ok(0) => return false, // peer closed
                Ok(n) => {
                    conn.rbuf.extend_from_slice(&scratch[..n]);
                    if n < scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        handle_requests(conn, date);
    }
    match flush(conn) {
        Err(_) => false,
        Ok(true) => {
            if conn.closing {
                return false;
            }
            if conn.want_write {
                conn.want_write = false;
                if poll
                    .registry()
                    .reregister(&mut conn.sock, token, Interest::READABLE)
                    .is_err()
                {
                    return false;
                }
            }
            true
        }
        Ok(false) => {
            if !conn.want_write {
                conn.want_write = true;
                if poll
                    .registry()
                    .reregister(
                        &mut conn.sock,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_err()
                {
                    return false;
                }
            }
            true
        }
    }
}

fn main() -> io::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:18085".parse().unwrap();
    let mut reuseport = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => {
                addr = args
                    .next()
                    .expect("--addr needs a value")
                    .parse()
                    .expect("bad addr")
            }
            "--reuseport" => reuseport = true,
            other => {
                eprintln!(
                    "unknown argument {other}\nusage: mio-http [--addr IP:PORT] [--reuseport]"
                );
                std::process::exit(2);
            }
        }
    }

    let mut listener = bind_listener(addr, reuseport)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!(
        "mio-http listening on {addr} pid {} reuseport={reuseport}",
        std::process::id()
    );

    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut date = DateCache::new();

    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        date.refresh();
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            let _ = sock.set_nodelay(true);
                            let idx = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            if poll
                                .registry()
                                .register(&mut sock, Token(idx), Interest::READABLE)
                                .is_err()
                            {
                                free.push(idx);
                                continue;
                            }
                            conns[idx] = Some(Conn {
                                sock,
                                rbuf: Vec::with_capacity(1024),
                                wbuf: Vec::with_capacity(1024),
                                wpos: 0,
                                closing: false,
                                want_write: false,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // EMFILE/ECONNABORTED etc.: drop this round, try again on next event.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let idx = ev.token().0;
            let keep = match conns.get_mut(idx).and_then(|c| c.as_mut()) {
                Some(conn) => drive(conn, ev.token(), &poll, &mut scratch, &date),
                None => continue,
            };
            if !keep {
                if let Some(mut conn) = conns[idx].take() {
                    let _ = poll.registry().deregister(&mut conn.sock);
                }
                free.push(idx);
            }
        }
    }
}
