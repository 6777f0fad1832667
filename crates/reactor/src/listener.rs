//! Listening sockets and how accepts are spread over shards.
//!
//! * Bound by us: every shard gets its own socket on the same address with
//!   `SO_REUSEPORT`; the kernel hashes each incoming connection (4-tuple) to
//!   one of them, so accepts spread with no cross-shard coordination. For
//!   port 0 the first socket is bound to the requested address and the others
//!   to the port it received.
//! * Inherited (systemd socket activation): the kernel gave us one socket per
//!   address and we cannot re-bind it, so the kernel cannot spread the
//!   connections. Every shard accepts on every inherited socket (epoll:
//!   `EPOLLEXCLUSIVE`, one wake-up per connection; io_uring: a one-shot
//!   accept per shard, re-armed per connection, so the shards take turns),
//!   and the accepting shard then hands each connection to the shard whose
//!   turn it is in a reactor-wide round robin (`Core::hand_out`), itself
//!   included. The spread is thus exact however the kernel picked the
//!   acceptor. See docs/reactor.md §3 for the edge cases and why no single
//!   shard does all the accepting.

use crate::sys;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

pub(crate) enum Listener {
    /// This shard's own `SO_REUSEPORT` socket.
    Own(OwnedFd),
    /// An inherited socket shared by all shards (closed when the last shard lets go).
    Shared(Arc<OwnedFd>),
}

impl Listener {
    pub fn raw(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Listener::Shared(_))
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Own(fd) => fd.as_fd(),
            Listener::Shared(fd) => fd.as_fd(),
        }
    }
}

/// Build the listener set of every shard. Errors (EADDRINUSE, EACCES, a
/// non-listening inherited fd) surface here, before any thread starts.
pub(crate) fn build(
    shards: usize,
    listen: SocketAddr,
    inherited: Vec<OwnedFd>,
    backlog: u32,
    nonblocking: bool,
) -> io::Result<(Vec<Vec<Listener>>, Vec<SocketAddr>)> {
    let mut per_shard: Vec<Vec<Listener>> = (0..shards).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    if inherited.is_empty() {
        let mut addr = listen;
        for (i, set) in per_shard.iter_mut().enumerate() {
            let fd = sys::reuseport_listener(addr, backlog, nonblocking)?;
            if i == 0 {
                addr = sys::local_addr(fd.as_raw_fd())?;
                addrs.push(addr);
            }
            set.push(Listener::Own(fd));
        }
    } else {
        for fd in inherited {
            sys::prepare_inherited(fd.as_fd(), nonblocking)?;
            if let Ok(a) = sys::local_addr(fd.as_raw_fd()) {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
            let fd = Arc::new(fd);
            for set in per_shard.iter_mut() {
                set.push(Listener::Shared(fd.clone()));
            }
        }
    }
    Ok((per_shard, addrs))
}
