//! Listening sockets and how accepts are spread over shards.
//!
//! * Bound by us: every shard gets its own socket on the same address with
//!   `SO_REUSEPORT`; the kernel hashes each incoming connection (4-tuple) to
//!   one of them, so accepts spread with no cross-shard coordination. For
//!   port 0 the first socket is bound to the requested address and the others
//!   to the port it received.
//! * Inherited (systemd socket activation): the kernel gave us one socket per
//!   address and we cannot re-bind it. Every shard accepts on every inherited
//!   socket, and the kernel wakes one waiter per connection:
//!   - epoll registers it with `EPOLLEXCLUSIVE`: one incoming connection wakes
//!     one shard blocked in `epoll_wait` rather than all of them (no
//!     thundering herd); a busy shard is passed over, so idle shards take the
//!     work;
//!   - io_uring keeps a *one-shot* accept on it per shard and re-arms it after
//!     each connection. Accept polls are exclusive wake-ups delivered to the
//!     first waiter in the socket's wait queue; a multishot accept stays in
//!     the queue, so one shard would take every connection (measured: 196 of
//!     200), whereas a re-armed one-shot accept rejoins at the tail and the
//!     shards take turns (measured: 98 / 102).
//!
//!   (The alternative, one acceptor passing fds through the mailboxes, costs a
//!   cross-shard hop per connection and makes one shard special.)

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
