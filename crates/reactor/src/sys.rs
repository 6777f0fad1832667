//! Thin OS helpers (via `nix`): CPU affinity, listening sockets, addresses.

use nix::errno::Errno;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::socket::{
    self, bind, getpeername, getsockname, getsockopt, listen, setsockopt, sockopt, AddressFamily,
    Backlog, SockFlag, SockType, SockaddrStorage,
};
use nix::unistd::Pid;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

pub(crate) fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// CPUs in this process's affinity mask, ascending.
pub(crate) fn affinity_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(errno_io)?;
    Ok((0..CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .collect())
}

/// Pin the calling thread to `cpu`.
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(errno_io)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(errno_io)
}

pub(crate) fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(SocketAddr::V6(SocketAddrV6::from(*v6)));
    }
    None
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

pub(crate) fn peer_addr(fd: RawFd) -> SocketAddr {
    getpeername::<SockaddrStorage>(fd)
        .ok()
        .and_then(|a| to_std(&a))
        .unwrap_or_else(unspecified)
}

pub(crate) fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    let a = getsockname::<SockaddrStorage>(fd).map_err(errno_io)?;
    to_std(&a).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

/// A TCP listening socket bound to `addr` with `SO_REUSEADDR` and
/// `SO_REUSEPORT` (so each shard can own one and the kernel hashes incoming
/// connections across them).
pub(crate) fn reuseport_listener(
    addr: SocketAddr,
    backlog: u32,
    nonblocking: bool,
) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    let fd = socket::socket(family, SockType::Stream, flags, None).map_err(errno_io)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(errno_io)?;
    setsockopt(&fd, sockopt::ReusePort, &true).map_err(errno_io)?;
    let sa = SockaddrStorage::from(addr);
    bind(fd.as_raw_fd(), &sa)
        .map_err(|e| io::Error::new(errno_io(e).kind(), format!("bind {addr}: {}", errno_io(e))))?;
    let bl = Backlog::new(backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
    listen(&fd, bl).map_err(errno_io)?;
    Ok(fd)
}

/// Validate an inherited socket (must be a listening stream socket) and set
/// its blocking mode for the backend.
pub(crate) fn prepare_inherited(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(|e| {
        io::Error::new(
            errno_io(e).kind(),
            format!("inherited fd {}: not a socket ({e})", fd.as_raw_fd()),
        )
    })?;
    if !listening {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited fd {} is not a listening socket", fd.as_raw_fd()),
        ));
    }
    set_nonblocking(fd, nonblocking)
}

pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let cur = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(errno_io)?;
    let mut fl = OFlag::from_bits_truncate(cur);
    fl.set(OFlag::O_NONBLOCK, on);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl)).map_err(errno_io)?;
    Ok(())
}

/// Per-connection socket options applied at accept.
pub(crate) fn configure_accepted<F: AsFd>(fd: &F, nodelay: bool) {
    if nodelay {
        // Failure (e.g. a Unix socket inherited by mistake) is harmless.
        let _ = setsockopt(fd, sockopt::TcpNoDelay, &true);
    }
}

/// Map a socket errno to a close reason.
pub(crate) fn close_reason(e: Errno) -> crate::CloseReason {
    match e {
        Errno::ECONNRESET | Errno::EPIPE | Errno::ECONNABORTED => crate::CloseReason::Reset,
        other => crate::CloseReason::Error(errno_io(other).kind()),
    }
}

/// Kernel release (major, minor), from /proc/sys/kernel/osrelease.
pub(crate) fn kernel_version() -> Option<(u32, u32)> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}
