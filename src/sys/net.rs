//! Socket setup the standard library does not offer: binding with chosen options and
//! backlog, `SO_REUSEPORT`, and `accept4` without fetching the peer address.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage,
    UnixAddr, sockopt,
};

/// Whether `SO_REUSEPORT` spreads connections across the sockets of a group (Linux).
/// Elsewhere the reuseport policy falls back to round-robin.
pub const REUSEPORT_BALANCES: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Whether the kernel moves queued connections from a closing `SO_REUSEPORT` listener to
/// another one of its group (`net.ipv4.tcp_migrate_req`); `None` where it cannot be told.
pub fn reuseport_migrates() -> Option<bool> {
    let v = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").ok()?;
    Some(v.trim() != "0")
}

/// How to bind a TCP or UDP socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Set `SO_REUSEPORT` (join a group of sockets on the same address).
    pub reuse_port: bool,
    /// IPv6 sockets only: refuse IPv4-mapped traffic.
    pub ipv6_only: bool,
    /// TCP: `listen()` with this backlog after binding; `None` binds only.
    pub listen: Option<i32>,
}

fn family(addr: &SocketAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn bind_to(fd: &OwnedFd, addr: &SocketAddr) -> io::Result<()> {
    match addr {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*a))?,
        SocketAddr::V6(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*a))?,
    }
    Ok(())
}

fn new_socket(addr: &SocketAddr, ty: SockType) -> io::Result<OwnedFd> {
    let flags = cloexec_nonblock();
    let fd = socket::socket(family(addr), ty, flags, None)?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        super::set_cloexec(fd.as_fd(), true)?;
        super::set_nonblocking(fd.as_fd(), true)?;
    }
    Ok(fd)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn cloexec_nonblock() -> SockFlag {
    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn cloexec_nonblock() -> SockFlag {
    SockFlag::empty()
}

/// A non-blocking, close-on-exec TCP socket bound to `addr` (with `SO_REUSEADDR`, as std
/// does), listening if `opts.listen` says so.
///
/// # Errors
///
/// `socket`, `setsockopt`, `bind` or `listen` fail (e.g. `EADDRINUSE`, `EACCES`).
pub fn bind_tcp(addr: SocketAddr, opts: BindOptions) -> io::Result<OwnedFd> {
    let fd = new_socket(&addr, SockType::Stream)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if opts.reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    if addr.is_ipv6() && opts.ipv6_only {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind_to(&fd, &addr)?;
    if let Some(backlog) = opts.listen {
        listen(&fd, backlog)?;
    }
    Ok(fd)
}

/// A non-blocking, close-on-exec UDP socket bound to `addr`.
///
/// # Errors
///
/// `socket`, `setsockopt` or `bind` fail.
pub fn bind_udp(addr: SocketAddr, opts: BindOptions) -> io::Result<OwnedFd> {
    let fd = new_socket(&addr, SockType::Datagram)?;
    if opts.reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    if addr.is_ipv6() && opts.ipv6_only {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind_to(&fd, &addr)?;
    Ok(fd)
}

/// A non-blocking, close-on-exec Unix stream socket bound to `path` and listening.
///
/// # Errors
///
/// `socket`, `bind` or `listen` fail (e.g. the path exists: `EADDRINUSE`).
pub fn bind_unix(path: &Path, backlog: i32) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        cloexec_nonblock(),
        None,
    )?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        super::set_cloexec(fd.as_fd(), true)?;
        super::set_nonblocking(fd.as_fd(), true)?;
    }
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    listen(&fd, backlog)?;
    Ok(fd)
}

/// (Re-)issues `listen()`; on a listening socket this changes the backlog.
///
/// # Errors
///
/// `listen` fails.
pub fn listen(fd: &impl AsFd, backlog: i32) -> io::Result<()> {
    let backlog = Backlog::new(backlog.clamp(1, i32::MAX))?;
    socket::listen(fd, backlog)?;
    Ok(())
}

/// The local address of an IP socket.
///
/// # Errors
///
/// `getsockname` fails or the socket is not an IP socket.
pub fn local_addr(fd: &impl AsFd) -> io::Result<SocketAddr> {
    let ss: SockaddrStorage = socket::getsockname(fd.as_fd().as_raw_fd())?;
    if let Some(a) = ss.as_sockaddr_in() {
        return Ok(SocketAddr::V4((*a).into()));
    }
    if let Some(a) = ss.as_sockaddr_in6() {
        return Ok(SocketAddr::V6((*a).into()));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "not an IP socket",
    ))
}

/// Accepts one connection: non-blocking and close-on-exec, without the peer address.
///
/// # Errors
///
/// `WouldBlock` when none is waiting; any other `accept` error.
pub fn accept(listener: &impl AsFd) -> io::Result<OwnedFd> {
    loop {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let r = socket::accept4(listener.as_fd().as_raw_fd(), cloexec_nonblock());
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let r = socket::accept(listener.as_fd().as_raw_fd());
        match r {
            // SAFETY: accept returned a new descriptor that nothing else owns.
            Ok(raw) => {
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                #[cfg(not(any(target_os = "linux", target_os = "android")))]
                {
                    super::set_cloexec(fd.as_fd(), true)?;
                    super::set_nonblocking(fd.as_fd(), true)?;
                }
                return Ok(fd);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `fd` is a stream socket (`SOCK_STREAM`) rather than a datagram one.
///
/// # Errors
///
/// `getsockopt(SO_TYPE)` fails (e.g. `fd` is not a socket).
pub fn is_stream_socket(fd: &impl AsFd) -> io::Result<bool> {
    Ok(socket::getsockopt(fd, sockopt::SockType)? == SockType::Stream)
}

/// The path a Unix-domain socket is bound to; `None` for an unnamed or abstract one.
///
/// # Errors
///
/// `getsockname` fails or the socket is not a Unix-domain one.
pub fn unix_local_path(fd: &impl AsFd) -> io::Result<Option<std::path::PathBuf>> {
    let addr: UnixAddr = socket::getsockname(fd.as_fd().as_raw_fd())?;
    Ok(addr.path().map(Path::to_path_buf))
}

/// An `AF_UNIX` address written the way systemd writes them: a path, or `@name` for an
/// abstract address (Linux only).
///
/// # Errors
///
/// `InvalidInput` for an empty string or a path that is too long; `Unsupported` for an
/// abstract address outside Linux.
pub fn unix_socket_addr(s: &std::ffi::OsStr) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    match s.as_bytes() {
        [] => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty unix socket address",
        )),
        [b'@', name @ ..] => super::imp::abstract_unix_addr(name),
        _ => std::os::unix::net::SocketAddr::from_pathname(Path::new(s)),
    }
}
