//! The epoll backend: edge-triggered readiness, nonblocking syscalls.
//!
//! * Connections are registered once, edge-triggered, for
//!   `EPOLLIN | EPOLLOUT | EPOLLRDHUP`. An edge means "state changed", so the
//!   socket is read until `EAGAIN` — or until a per-event budget runs out, in
//!   which case it goes on a ready list and is resumed next pass without
//!   waiting (no other edge would come). Writes are attempted directly when
//!   output is queued; only after `EAGAIN` do we wait for the `EPOLLOUT` edge.
//! * Reads go into one per-shard read buffer (`buf_size`), and the handler
//!   consumes the data during `on_input`; an idle connection therefore holds
//!   no receive buffer at all, only its kernel socket buffers. If the handler
//!   keeps part of it (`Input::split`), reads move on to another buffer of
//!   the shard's `max_lent_buffers + 1` until that one comes back.
//! * Writes use `sendmsg` with an iovec batch (up to 64 queued `Bytes`), which
//!   is `writev` plus flags: `MSG_NOSIGNAL` stops a closed peer from raising
//!   `SIGPIPE` (we get `EPIPE` instead).
//! * Listening sockets are level-triggered (so a budget-limited accept loop is
//!   simply reported again), with `EPOLLEXCLUSIVE` when shared by all shards
//!   (which shard then serves the connection: `Core::hand_out`).
//!   `EMFILE`/`ENFILE` take the listener out of the set for 50 ms instead of
//!   spinning on a backlog we cannot drain.

use crate::config::ShardConfig;
use crate::conn::st;
use crate::handler::{CloseReason, Handler};
use crate::lend::{Input, Region};
use crate::listener::Listener;
use crate::mailbox::Accepted;
use crate::outq::MAX_IOV;
use crate::shard::{Driver, Shard};
use crate::sys::{self, errno_io};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{self, MsgFlags, SockFlag, SockaddrStorage};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN_LISTENER: u64 = 1 << 63;
const TOKEN_WAKER: u64 = 1 << 62;
const GEN_MASK: u64 = (1 << 30) - 1;
/// Reads of `buf_size` per connection per pass before yielding to others.
const READ_BUDGET: usize = 8;
/// Accepts per listener per pass.
const ACCEPT_BUDGET: usize = 128;
const EVENTS: usize = 1024;
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// `IoState::flags` bits for this backend.
const WRITE_BLOCKED: u16 = 1;
const READ_PENDING: u16 = 2;

fn conn_token(idx: u32, gen: u64) -> u64 {
    ((gen & GEN_MASK) << 32) | idx as u64
}

pub(crate) struct EpollDriver {
    ep: Epoll,
    events: Vec<EpollEvent>,
    /// Read buffers: `cur` is read into; the others are in `free` or lent.
    /// See `crate::lend`.
    bufs: Arc<Region>,
    cur: u16,
    free: Vec<u16>,
    listeners: Vec<Option<Listener>>,
    /// Listener taken out of the set after EMFILE, re-added at this time.
    accept_retry: Option<Instant>,
    paused: Vec<usize>,
    read_ready: Vec<(u32, u64)>,
    waker: RawFd,
}

impl EpollDriver {
    pub fn new(listeners: Vec<Listener>, waker: RawFd, cfg: &ShardConfig) -> io::Result<Self> {
        let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(errno_io)?;
        // SAFETY: `waker` is the shard mailbox's eventfd, owned by `Shared`, which
        // outlives this driver (the shard thread holds an Arc to it).
        let wfd = unsafe { BorrowedFd::borrow_raw(waker) };
        ep.add(wfd, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKER))
            .map_err(errno_io)?;
        let d = EpollDriver {
            ep,
            events: vec![EpollEvent::empty(); EVENTS],
            // One more than may be lent, so there is always one to read into.
            bufs: Region::new(cfg.max_lent_buffers + 1, cfg.buf_size)?,
            cur: 0,
            free: (1..=cfg.max_lent_buffers).rev().collect(),
            listeners: listeners.into_iter().map(Some).collect(),
            accept_retry: None,
            paused: Vec::new(),
            read_ready: Vec::new(),
            waker,
        };
        for i in 0..d.listeners.len() {
            d.register_listener(i)?;
        }
        Ok(d)
    }

    fn register_listener(&self, i: usize) -> io::Result<()> {
        if let Some(l) = &self.listeners[i] {
            let mut fl = EpollFlags::EPOLLIN;
            if l.is_shared() {
                fl |= EpollFlags::EPOLLEXCLUSIVE;
            }
            self.ep
                .add(l.as_fd(), EpollEvent::new(fl, TOKEN_LISTENER | i as u64))
                .map_err(errno_io)?;
        }
        Ok(())
    }

    fn accept<H: Handler>(&mut self, sh: &mut Shard<H>, i: usize) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(l) = &self.listeners[i] else { return };
            let shared = l.is_shared();
            match socket::accept4(l.raw(), SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    if let Some(a) = sh.accepted(fd, shared) {
                        self.adopt(sh, a);
                    }
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO | Errno::EPERM) => continue,
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    tracing::warn!(shard = sh.core.shard, error = %e, "accept failed; pausing accepts for 50 ms");
                    if let Some(l) = &self.listeners[i] {
                        let _ = self.ep.delete(l.as_fd());
                    }
                    self.paused.push(i);
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
                Err(e) => {
                    tracing::warn!(shard = sh.core.shard, error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    /// Reads until the socket is drained, EOF or the budget. `until_eagain`:
    /// keep reading after a short read (the event reported a hang-up, so an
    /// EOF may follow the data). Otherwise a read that did not fill the
    /// buffer means the receive queue was emptied: data that arrives later
    /// raises a new edge, so the `EAGAIN` read that would confirm it (one
    /// syscall per event) is skipped.
    fn read<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32, until_eagain: bool) {
        for _ in 0..READ_BUDGET {
            let Some(e) = sh.core.conns.get(idx as usize) else {
                return;
            };
            if e.has(st::DEAD | st::IN_CLOSE | st::READ_DONE) {
                return;
            }
            let fd = e.raw_fd();
            let (bufs, cur) = (&self.bufs, self.cur);
            // SAFETY: `cur` is never lent while it is `cur` (a lent buffer is
            // replaced below before the next read) and nothing else slices it.
            let buf = unsafe { bufs.hold(cur, bufs.size()) };
            let got = socket::recv(fd, buf, MsgFlags::MSG_DONTWAIT);
            if let Ok(n @ 1..) = got {
                let data = &mut buf[..n];
                let input = if self.free.is_empty() {
                    Input::plain(data)
                } else {
                    Input::lendable(data, bufs, cur)
                };
                sh.data(idx, input);
            }
            if !self.bufs.release(cur) {
                self.next_buffer(sh);
            }
            match got {
                Ok(0) => {
                    sh.eof(idx);
                    return;
                }
                Ok(n) => {
                    if n < self.bufs.size() && !until_eagain {
                        return;
                    }
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    sh.fail(idx, sys::close_reason(e));
                    return;
                }
            }
        }
        // Budget spent with data possibly left: resume next pass.
        if let Some(e) = sh.core.conns.get_mut(idx as usize) {
            if e.io.flags & READ_PENDING == 0 {
                e.io.flags |= READ_PENDING;
                self.read_ready.push((idx, e.gen));
            }
        }
    }

    /// The read buffer was lent: read into a free one from now on.
    fn next_buffer<H: Handler>(&mut self, sh: &mut Shard<H>) {
        self.reclaim(sh);
        // Lending is offered only while one is free (see `read`).
        self.cur = self.free.pop().expect("a free read buffer");
    }

    fn write<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32) {
        let Some(e) = sh.core.conns.get_mut(idx as usize) else {
            return;
        };
        if e.has(st::DEAD | st::IN_CLOSE) {
            return;
        }
        if e.io.flags & WRITE_BLOCKED == 0 {
            let fd = e.raw_fd();
            while e.out.len() > 0 {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = e.out.io_slices(&mut iov);
                let offered: usize = iov[..n].iter().map(|s| s.len()).sum();
                let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
                match socket::sendmsg::<SockaddrStorage>(fd, &iov[..n], &[], flags, None) {
                    Ok(w) => {
                        e.out.advance(w);
                        if w < offered {
                            sh.core.stats.partial_writes += 1;
                        }
                    }
                    Err(Errno::EAGAIN) => {
                        e.io.flags |= WRITE_BLOCKED;
                        break;
                    }
                    Err(Errno::EINTR) => {}
                    Err(err) => {
                        sh.fail(idx, sys::close_reason(err));
                        return;
                    }
                }
            }
        }
        if sh.core.after_write(idx) {
            if let Some(e) = sh.core.conns.get(idx as usize) {
                if let Err(err) = socket::shutdown(e.raw_fd(), socket::Shutdown::Write) {
                    sh.fail(idx, sys::close_reason(err));
                }
            }
        }
    }

    fn conn_event<H: Handler>(&mut self, sh: &mut Shard<H>, token: u64, ev: EpollFlags) {
        let idx = (token & 0xffff_ffff) as u32;
        let gen = token >> 32;
        let Some(e) = sh.core.conns.get_mut(idx as usize) else {
            return;
        };
        if e.gen & GEN_MASK != gen || e.has(st::DEAD) {
            return;
        }
        if ev.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            let had_blocked = e.io.flags & WRITE_BLOCKED != 0;
            e.io.flags &= !WRITE_BLOCKED;
            if had_blocked || e.out.len() > 0 {
                self.write(sh, idx);
            }
        }
        let hangup =
            ev.intersects(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP);
        if hangup || ev.contains(EpollFlags::EPOLLIN) {
            self.read(sh, idx, hangup);
        }
    }
}

fn epoll_timeout(t: Option<Duration>) -> EpollTimeout {
    match t {
        None => EpollTimeout::NONE,
        Some(d) => {
            // Round up: a timer due in 0.3 ms must not become a 0 ms busy poll.
            let ms = d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
            EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
        }
    }
}

impl Driver for EpollDriver {
    fn poll<H: Handler>(&mut self, sh: &mut Shard<H>, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if self.read_ready.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let n = match self.ep.wait(&mut self.events, epoll_timeout(timeout)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(errno_io(e)),
        };
        sh.core.now = Instant::now();
        for k in 0..n {
            let ev = self.events[k];
            let token = ev.data();
            if token & TOKEN_LISTENER != 0 {
                self.accept(sh, (token & !TOKEN_LISTENER) as usize);
            } else if token == TOKEN_WAKER {
                // SAFETY-free: reading the eventfd just resets its counter.
                let _ = nix::unistd::read(self.waker, &mut [0u8; 8]);
            } else {
                self.conn_event(sh, token, ev.events());
            }
        }
        // Resume connections whose read budget ran out last pass.
        if !self.read_ready.is_empty() {
            let ready = std::mem::take(&mut self.read_ready);
            for (idx, gen) in ready {
                if let Some(e) = sh.core.conns.get_mut(idx as usize) {
                    if e.gen == gen && e.io.flags & READ_PENDING != 0 {
                        e.io.flags &= !READ_PENDING;
                        // The event that started this may have reported a
                        // hang-up: read to EAGAIN or EOF.
                        self.read(sh, idx, true);
                    }
                }
            }
        }
        if self.accept_retry.is_some_and(|t| sh.core.now >= t) {
            self.accept_retry = None;
            for i in std::mem::take(&mut self.paused) {
                if let Err(e) = self.register_listener(i) {
                    tracing::warn!(error = %e, "re-arming listener failed");
                }
            }
        }
        Ok(())
    }

    fn adopt<H: Handler>(&mut self, sh: &mut Shard<H>, a: Accepted) {
        let raw = a.fd.as_raw_fd();
        let Some(conn) = sh.insert(a.fd, a.peer) else {
            return;
        };
        let ev = EpollEvent::new(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLOUT
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLET,
            conn_token(conn.idx, conn.gen),
        );
        // SAFETY: the fd is owned by the table entry we just inserted.
        let bfd = unsafe { BorrowedFd::borrow_raw(raw) };
        // Registering also reports data that arrived before it (a handed-over
        // socket may have some): epoll checks readiness when a file is added.
        if let Err(e) = self.ep.add(bfd, ev) {
            sh.fail(conn.idx, CloseReason::Error(errno_io(e).kind()));
        }
        sh.opened(conn);
    }

    fn flush<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32) {
        self.write(sh, idx);
    }

    fn close<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32) {
        if let Some(e) = sh.core.conns.get_mut(idx as usize) {
            if let Some(fd) = e.fd.take() {
                let _ = self.ep.delete(&fd);
                drop(fd);
            }
        }
        sh.closed(idx);
        sh.core.remove(idx);
    }

    fn stop_accepting(&mut self) {
        for l in self.listeners.iter_mut() {
            if let Some(l) = l.take() {
                let _ = self.ep.delete(&l);
            }
        }
        self.paused.clear();
        self.accept_retry = None;
    }

    fn reclaim<H: Handler>(&mut self, sh: &mut Shard<H>) {
        let free = &mut self.free;
        self.bufs.drain(|bid| free.push(bid));
        // Neither read into nor free: lent.
        sh.core.stats.lent_buffers = (self.bufs.count() as usize - 1 - self.free.len()) as u64;
    }

    fn has_ready(&self) -> bool {
        !self.read_ready.is_empty()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.accept_retry
    }

    fn finish<H: Handler>(&mut self, sh: &mut Shard<H>) -> io::Result<()> {
        self.stop_accepting();
        // Nothing of ours is in the kernel's hands; close whatever is left.
        let idxs: Vec<u32> = sh.core.conns.iter().map(|(i, _)| i as u32).collect();
        for idx in idxs {
            self.close(sh, idx);
        }
        Ok(())
    }
}
