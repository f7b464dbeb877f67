//! Raw IPC peer: the physical limit of parent <-> child messaging over an
//! AF_UNIX SOCK_STREAM socketpair, with a child made by fork(2).
//!
//! Modes (all blocking I/O, one line of `key=value` results on stdout):
//!   pingpong <size> <iters>   length-prefixed (u32 LE) message of <size> bytes to the
//!                             child, the child echoes it back; round trips/s, mean/p50/p99.
//!   oneway <size> <count>     parent writes <count> length-prefixed messages (one write
//!                             per message); the child reads them through a 64 KiB buffered
//!                             reader and acks once at the end; messages/s.
//!   fdpass-pingpong <iters>   parent sends a 16-byte message carrying one fd (SCM_RIGHTS);
//!                             the child receives it, closes the fd, replies one byte; fds/s.
//!   fdpass-stream <count> [window]
//!                             same, but without a per-fd reply: the child acks every 64
//!                             fds and the parent keeps at most <window> (default 256) in flight.
//!
//! The fd sent is an unconnected AF_INET stream socket (no traffic), standing in
//! for an accepted connection. Each mode does a short warm-up first.
//!
//! Env PIN=same pins parent and child to CPU 0; PIN=split pins the parent to CPU 0 and
//! the child to CPU 1; unset leaves placement to the scheduler.

use std::io::{self, BufReader, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

fn die(msg: &str) -> ! {
    eprintln!("ipc-bench: {msg}");
    eprintln!(
        "usage: ipc-bench pingpong <size> <iters> | oneway <size> <count> | \
         fdpass-pingpong <iters> | fdpass-stream <count> [window]"
    );
    std::process::exit(2)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Fork a child that runs `child` on its end of a fresh socketpair.
/// Returns the parent's end and the child's pid.
fn pin_to(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("sched_setaffinity({cpu}): {}", io::Error::last_os_error());
        }
    }
}

/// CPUs for (parent, child) from env PIN.
fn pinning() -> Option<(usize, usize)> {
    match std::env::var("PIN").as_deref() {
        Ok("same") => Some((0, 0)),
        Ok("split") => Some((0, 1)),
        Ok("") | Err(_) => None,
        Ok(other) => die(&format!("PIN must be same or split, not {other}")),
    }
}

fn fork_with_socketpair(
    child: impl FnOnce(UnixStream) -> io::Result<()>,
) -> io::Result<(UnixStream, libc::pid_t)> {
    let pin = pinning();
    let mut fds = [0 as RawFd; 2];
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        if let Some((_, c)) = pin {
            pin_to(c);
        }
        unsafe { libc::close(fds[0]) };
        let s = unsafe { UnixStream::from_raw_fd(fds[1]) };
        let code = match child(s) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("child: {e}");
                1
            }
        };
        unsafe { libc::_exit(code) };
    }
    if let Some((p, _)) = pin {
        pin_to(p);
    }
    unsafe { libc::close(fds[1]) };
    Ok((unsafe { UnixStream::from_raw_fd(fds[0]) }, pid))
}

fn wait_child(pid: libc::pid_t) {
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        eprintln!("child exited abnormally (status {status})");
        std::process::exit(1);
    }
}

fn frame(size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + size);
    v.extend_from_slice(&(size as u32).to_le_bytes());
    v.extend((0..size).map(|i| (i % 251) as u8));
    v
}

/// Echo child: read one frame, write it back, until EOF.
fn echo_child(mut s: UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; 4];
    loop {
        if let Err(e) = s.read_exact(&mut buf[..4]) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                return Ok(());
            }
            return Err(e);
        }
        let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
        if buf.len() < 4 + len {
            buf.resize(4 + len, 0);
        }
        s.read_exact(&mut buf[4..4 + len])?;
        s.write_all(&buf[..4 + len])?;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn pingpong(size: usize, iters: usize) -> io::Result<()> {
    let (mut s, pid) = fork_with_socketpair(echo_child)?;
    let msg = frame(size);
    let mut back = vec![0u8; 4 + size];
    let mut one = |s: &mut UnixStream| -> io::Result<()> {
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        Ok(())
    };
    let warm = (iters / 10).max(100);
    for _ in 0..warm {
        one(&mut s)?;
    }
    let mut lat = Vec::with_capacity(iters);
    let t0 = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        one(&mut s)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let secs = t0.elapsed().as_secs_f64();
    if back != msg {
        return Err(io::Error::other("echo mismatch"));
    }
    drop(s);
    wait_child(pid);
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "mode=pingpong size={size} iters={iters} secs={secs:.3} rate_per_s={:.0} mean_us={:.2} p50_us={:.2} p99_us={:.2}",
        iters as f64 / secs,
        secs * 1e6 / iters as f64,
        pct(&lat, 50.0),
        pct(&lat, 99.0)
    );
    Ok(())
}

fn oneway(size: usize, count: usize) -> io::Result<()> {
    let warm = (count / 10).max(100);
    let total = warm + count;
    let (mut s, pid) = fork_with_socketpair(move |s| {
        let mut w = s.try_clone()?;
        let mut r = BufReader::with_capacity(64 * 1024, s);
        let mut buf = vec![0u8; 4 + size];
        for i in 0..total {
            r.read_exact(&mut buf[..4])?;
            let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
            if buf.len() < 4 + len {
                buf.resize(4 + len, 0);
            }
            r.read_exact(&mut buf[4..4 + len])?;
            if i + 1 == warm || i + 1 == total {
                w.write_all(&[1])?; // ack end of warm-up and end of run
            }
        }
        Ok(())
    })?;
    let msg = frame(size);
    let mut ack = [0u8; 1];
    for _ in 0..warm {
        s.write_all(&msg)?;
    }
    s.read_exact(&mut ack)?;
    let t0 = Instant::now();
    for _ in 0..count {
        s.write_all(&msg)?;
    }
    s.read_exact(&mut ack)?;
    let secs = t0.elapsed().as_secs_f64();
    drop(s);
    wait_child(pid);
    println!(
        "mode=oneway size={size} count={count} secs={secs:.3} rate_per_s={:.0} mean_us={:.3} MiB_per_s={:.1}",
        count as f64 / secs,
        secs * 1e6 / count as f64,
        (count * (size + 4)) as f64 / secs / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Send `payload` with one fd attached as SCM_RIGHTS.
fn send_fd(sock: RawFd, payload: &[u8], fd: RawFd) -> io::Result<()> {
    // Room for CMSG_SPACE(sizeof(int)); u64 array keeps cmsghdr alignment.
    let mut cbuf = [0u64; 4];
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    assert!(space <= std::mem::size_of_val(&cbuf));
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: payload.len(),
    };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut _;
    msg.msg_controllen = space as _;
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::c_int, fd);
    }
    loop {
        let n = unsafe { libc::sendmsg(sock, &msg, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize != payload.len() {
            return Err(io::Error::other("short sendmsg"));
        }
        return Ok(());
    }
}

/// Receive exactly `buf.len()` bytes; returns the fd that came with them, if any.
fn recv_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<Option<RawFd>> {
    let mut cbuf = [0u64; 4];
    let mut got = 0usize;
    let mut fd = None;
    while got < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr() as *mut _,
            iov_len: buf.len() - got,
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut _;
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("control data truncated"));
        }
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data_len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let nfds = data_len / std::mem::size_of::<libc::c_int>();
                    for k in 0..nfds {
                        let f = std::ptr::read_unaligned(
                            (libc::CMSG_DATA(c) as *const libc::c_int).add(k),
                        );
                        if fd.is_none() {
                            fd = Some(f);
                        } else {
                            libc::close(f); // not expected: one fd per message
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        got += n as usize;
    }
    Ok(fd)
}

fn test_fd() -> io::Result<RawFd> {
    cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })
}

fn fdpass_pingpong(iters: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let warm = (iters / 10).max(100);
    let total = warm + iters;
    let (mut s, pid) = fork_with_socketpair(move |mut s| {
        let raw = s.as_raw_fd();
        let mut buf = [0u8; 16];
        for _ in 0..total {
            match recv_fd(raw, &mut buf)? {
                Some(f) => unsafe {
                    libc::close(f);
                },
                None => return Err(io::Error::other("message without fd")),
            }
            s.write_all(&[1])?;
        }
        Ok(())
    })?;
    let fd = test_fd()?;
    let raw = s.as_raw_fd();
    let payload = [7u8; 16];
    let mut ack = [0u8; 1];
    for _ in 0..warm {
        send_fd(raw, &payload, fd)?;
        s.read_exact(&mut ack)?;
    }
    let t0 = Instant::now();
    for _ in 0..iters {
        send_fd(raw, &payload, fd)?;
        s.read_exact(&mut ack)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    drop(s);
    wait_child(pid);
    println!(
        "mode=fdpass-pingpong iters={iters} secs={secs:.3} fds_per_s={:.0} mean_us={:.2}",
        iters as f64 / secs,
        secs * 1e6 / iters as f64
    );
    Ok(())
}

fn fdpass_stream(count: usize, window: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const ACK_EVERY: usize = 64;
    let window = window.max(ACK_EVERY);
    let warm = ((count / 10).max(1000) / ACK_EVERY) * ACK_EVERY;
    let count = (count / ACK_EVERY).max(1) * ACK_EVERY;
    let total = warm + count;
    let (mut s, pid) = fork_with_socketpair(move |mut s| {
        let raw = s.as_raw_fd();
        let mut buf = [0u8; 16];
        for i in 0..total {
            match recv_fd(raw, &mut buf)? {
                Some(f) => unsafe {
                    libc::close(f);
                },
                None => return Err(io::Error::other("message without fd")),
            }
            if (i + 1) % ACK_EVERY == 0 {
                s.write_all(&[1])?;
            }
        }
        Ok(())
    })?;
    let fd = test_fd()?;
    let raw = s.as_raw_fd();
    let payload = [7u8; 16];
    let mut ack = [0u8; 1];
    let mut sent = 0usize;
    let mut acked = 0usize; // in fds
    let mut run =
        |n: usize, s: &mut UnixStream, sent: &mut usize, acked: &mut usize| -> io::Result<()> {
            let target = *sent + n;
            while *sent < target {
                if *sent - *acked >= window {
                    s.read_exact(&mut ack)?;
                    *acked += ACK_EVERY;
                }
                send_fd(raw, &payload, fd)?;
                *sent += 1;
            }
            while *acked < *sent {
                s.read_exact(&mut ack)?;
                *acked += ACK_EVERY;
            }
            Ok(())
        };
    run(warm, &mut s, &mut sent, &mut acked)?;
    let t0 = Instant::now();
    run(count, &mut s, &mut sent, &mut acked)?;
    let secs = t0.elapsed().as_secs_f64();
    drop(s);
    wait_child(pid);
    println!(
        "mode=fdpass-stream count={count} window={window} secs={secs:.3} fds_per_s={:.0} mean_us={:.2}",
        count as f64 / secs,
        secs * 1e6 / count as f64
    );
    Ok(())
}

fn num(a: Option<String>, what: &str) -> usize {
    a.unwrap_or_else(|| die(&format!("missing {what}")))
        .parse()
        .unwrap_or_else(|_| die(&format!("bad {what}")))
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| die("missing mode"));
    match mode.as_str() {
        "pingpong" => {
            let size = num(args.next(), "size");
            let iters = num(args.next(), "iters");
            pingpong(size, iters)
        }
        "oneway" => {
            let size = num(args.next(), "size");
            let count = num(args.next(), "count");
            oneway(size, count)
        }
        "fdpass-pingpong" => fdpass_pingpong(num(args.next(), "iters")),
        "fdpass-stream" => {
            let count = num(args.next(), "count");
            let window = args
                .next()
                .map(|w| w.parse().unwrap_or_else(|_| die("bad window")))
                .unwrap_or(256);
            fdpass_stream(count, window)
        }
        other => die(&format!("unknown mode {other}")),
    }
}
