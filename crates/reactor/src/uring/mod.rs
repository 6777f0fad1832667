//! The io_uring backend (built on the `io-uring` crate).
//!
//! Per shard: one ring, one provided-buffer ring, and these operations:
//!
//! * **multishot accept** per listening socket: one SQE yields a CQE per
//!   accepted connection until it ends (re-armed whenever a CQE lacks `MORE`);
//! * **multishot recv** per connection with `IOSQE_BUFFER_SELECT` from the
//!   shard's buffer ring: the kernel takes a buffer only when data arrives, so
//!   idle connections hold none. A multishot recv ends (CQE without `MORE`) on
//!   EOF, error, `ENOBUFS` (ring empty) or at the kernel's discretion; we
//!   re-arm on anything but EOF/error. `ENOBUFS` puts the connection on a
//!   *starved* list that is re-armed once buffers have come back (see
//!   [`UringDriver::rearm_starved`]), with a 10 ms backstop for the case
//!   that accounting misses (`STARVED_RETRY`). Data that arrives
//!   meanwhile waits in the socket, so nothing is lost or reordered: one
//!   connection's CQEs arrive in order and a new recv is only armed after the
//!   previous one has ended. A buffer the handler lent from
//!   (`Input::split`) goes back to the ring only when its last lent `Bytes`
//!   is dropped (see `crate::lend`);
//! * **sendmsg** with up to 64 iovecs from the output queue, at most one in
//!   flight per connection; short writes put the rest back at the queue front;
//! * **async cancel** (by user_data, one per armed recv or send) when a
//!   connection closes; its slot and socket are kept until every operation
//!   that names it has completed;
//! * one 8-byte **read on the shard's eventfd**, the cross-shard wake-up.
//!
//! Memory safety rule: every buffer handed to the kernel (send `msghdr` +
//! iovecs + `Bytes`, the buffer ring, the eventfd read buffer) is owned by
//! this driver and is released only after the CQE that ends its operation
//! has been reaped. At exit all operations are cancelled and reaped; if that
//! cannot be confirmed the memory is leaked rather than freed.

mod bufring;
mod sendop;
mod setup;
mod token;

use self::bufring::BufRing;
use self::sendop::SendOp;
use self::token::{decode, encode, Kind};
use crate::config::ShardConfig;
use crate::conn::st;
use crate::handler::{CloseReason, Handler};
use crate::lend::Input;
use crate::listener::Listener;
use crate::mailbox::Accepted;
use crate::shard::{Driver, Shard};
use crate::sys;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use nix::errno::Errno;
use slab::Slab;
use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub(crate) use self::setup::Mode;

/// Can this process use the io_uring backend? `Err` explains why not.
pub(crate) fn probe(cfg: &ShardConfig) -> Result<Mode, String> {
    setup::probe(cfg)
}

/// `IoState::flags` bits for this backend.
const RECV_ARMED: u16 = 1;
const STARVED: u16 = 2;
const CANCELLED: u16 = 4;

const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Backstop for receives starved by ENOBUFS: if some are still waiting this
/// long after the last re-arm round, re-arm them all. The accounting in
/// `rearm_starved` normally re-arms them as buffers come back; under heavy
/// CPU contention a starved receive was seen waiting forever (3–6 runs in
/// 40 of the `buffer_ring_exhaustion` test with another process spinning),
/// so a quiet shard must not rely on it alone.
const STARVED_RETRY: Duration = Duration::from_millis(10);
/// Provided buffers put into circulation at start; more (doubling, up to
/// `buf_count`) when the ring runs dry often. See `account_buffer_use`.
const INITIAL_BUFFERS: u16 = 64;
const GROWTH_WINDOW: u64 = 1024;
/// Recycled send ops kept (a few hundred bytes each). A broadcast has one
/// send in flight per connection; with only 256 kept, a 10,000-connection
/// broadcast allocated and freed ~10,000 ops (3 KiB each then) per round.
const SEND_POOL_MAX: usize = 16 * 1024;
const QUIESCE_PATIENCE: Duration = Duration::from_secs(10);

struct ListenerState {
    l: Option<Listener>,
    armed: bool,
    retry: bool,
}

pub(crate) struct UringDriver {
    // Dropped explicitly in `Drop`, ring first; see there.
    ring: ManuallyDrop<IoUring>,
    bufs: ManuallyDrop<BufRing>,
    /// In-flight sends, keyed by `IoState::send_slot`.
    sends: ManuallyDrop<Slab<Box<SendOp>>>,
    wake_buf: ManuallyDrop<Box<[u8; 8]>>,
    /// Idle send ops for reuse (never in the kernel's hands). Boxed on
    /// purpose: the box is what gets lent to the kernel, so reusing it saves
    /// an allocation per send.
    #[allow(clippy::vec_box)]
    send_pool: Vec<Box<SendOp>>,
    /// SQEs that did not fit in the SQ yet (submitted in order before waiting).
    backlog: VecDeque<squeue::Entry>,
    waker: RawFd,
    listeners: Vec<ListenerState>,
    accept_retry: Option<Instant>,
    /// When to re-arm every starved receive regardless (see `STARVED_RETRY`).
    starved_retry: Option<Instant>,
    stopping: bool,
    finishing: bool,
    starved: VecDeque<(u32, u64)>,
    cqes: Vec<cqueue::Entry>,
    /// Operations submitted (or queued) whose final CQE has not been reaped.
    inflight: usize,
    recv_armed: usize,
    recycled_prev: u64,
    recycled_now: u64,
    /// Ring growth accounting (see `maybe_grow_ring`).
    enobufs_since_growth: u64,
    uses_since_growth: u64,
    cq_full: bool,
    /// Buffers lent past `on_data` and not back yet, and the most allowed
    /// (also never more than half of those circulating).
    lent: u16,
    max_lent: u16,
}

impl UringDriver {
    pub fn new(listeners: Vec<Listener>, waker: RawFd, cfg: &ShardConfig) -> io::Result<Self> {
        let (cq, exact) = setup::cq_entries(cfg, listeners.len());
        if !exact {
            // Info, not a warning: any large max_connections gets here, and
            // nothing is lost when it happens.
            tracing::info!(
                cq,
                "buf_count + 4 x max_connections + backlog exceeds the kernel's CQ limit; \
                 if every connection closes at once the CQ may overflow (the kernel keeps \
                 the completions and multishot requests are re-armed, but throughput suffers)"
            );
        }
        let (ring, mode) = setup::build_ring(cfg.ring_entries, cq)
            .map_err(|e| io::Error::new(e.kind(), setup::explain_setup_error(&e)))?;
        let bufs = BufRing::new(cfg.buf_count, cfg.buf_size, 0)?;
        let mut d = UringDriver {
            ring: ManuallyDrop::new(ring),
            bufs: ManuallyDrop::new(bufs),
            sends: ManuallyDrop::new(Slab::new()),
            wake_buf: ManuallyDrop::new(Box::new([0u8; 8])),
            send_pool: Vec::new(),
            backlog: VecDeque::new(),
            waker,
            listeners: listeners
                .into_iter()
                .map(|l| ListenerState {
                    l: Some(l),
                    armed: false,
                    retry: false,
                })
                .collect(),
            accept_retry: None,
            starved_retry: None,
            stopping: false,
            finishing: false,
            starved: VecDeque::new(),
            cqes: Vec::with_capacity(1024),
            inflight: 0,
            recv_armed: 0,
            recycled_prev: 0,
            recycled_now: 0,
            enobufs_since_growth: 0,
            uses_since_growth: 0,
            cq_full: false,
            lent: 0,
            max_lent: cfg.max_lent_buffers,
        };
        d.bufs
            .register(&d.ring.submitter(), INITIAL_BUFFERS)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("registering the provided-buffer ring: {e}"),
                )
            })?;
        d.arm_wake();
        for i in 0..d.listeners.len() {
            d.arm_accept(i);
        }
        tracing::debug!(mode = mode.describe(), cq, "io_uring shard ready");
        Ok(d)
    }

    /// Queue an SQE (submitted with the next `io_uring_enter`).
    ///
    /// # Safety
    /// Every user-memory pointer in `sqe` must stay valid until the CQE that
    /// ends the operation is reaped; the SQE may reach the kernel later than
    /// this call (via `backlog`), never earlier.
    unsafe fn push(&mut self, sqe: squeue::Entry) {
        if self.backlog.is_empty() {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            let _ = self.ring.submit();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(sqe);
    }

    /// Move backlogged SQEs into the SQ (submitting as needed), in order.
    fn flush_backlog(&mut self) {
        while let Some(sqe) = self.backlog.front() {
            // SAFETY: every backlogged SQE was queued through `push`, whose
            // callers guarantee its memory until its CQE (which cannot come
            // before it is submitted here).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.backlog.pop_front();
            } else if self.ring.submit().is_err() || self.ring.submission().is_full() {
                // The kernel took nothing: try again before the next wait.
                break;
            }
        }
    }

    fn arm_wake(&mut self) {
        if self.finishing {
            return;
        }
        let buf = self.wake_buf.as_mut_ptr();
        let sqe = opcode::Read::new(types::Fd(self.waker), buf, 8)
            .build()
            .user_data(encode(Kind::Wake, 0, 0));
        self.inflight += 1;
        // SAFETY: `buf` is the boxed `wake_buf`, owned by this driver and freed
        // only in `Drop` after every operation (this read included) has been
        // reaped, or leaked. Only one wake read is ever in flight.
        unsafe { self.push(sqe) };
    }

    fn arm_accept(&mut self, i: usize) {
        if self.finishing || self.stopping {
            return;
        }
        let ls = &mut self.listeners[i];
        let Some(l) = &ls.l else { return };
        if ls.armed {
            return;
        }
        ls.armed = true;
        ls.retry = false;
        let ud = encode(Kind::Accept, i as u32, 0);
        // Our own SO_REUSEPORT socket: multishot. A socket shared by every
        // shard (inherited): one-shot, re-armed per connection. Which shard
        // *serves* a connection is the round robin's choice (`Core::hand_out`);
        // this spreads the accept *work*. Accept polls are exclusive wake-ups
        // that go to the first waiter in the socket's wait queue; a multishot
        // accept never leaves it, so one shard would do every accept, while a
        // one-shot accept leaves with each connection and rejoins at the tail
        // when its shard re-arms it, so the shards take turns.
        let sqe = if l.is_shared() {
            opcode::Accept::new(
                types::Fd(l.raw()),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud)
        } else {
            opcode::AcceptMulti::new(types::Fd(l.raw()))
                .flags(libc::SOCK_CLOEXEC)
                .build()
                .user_data(ud)
        };
        self.inflight += 1;
        // SAFETY: the accept is given no user memory (null sockaddr/len pointers).
        unsafe { self.push(sqe) };
    }

    fn arm_recv<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32) {
        if self.finishing {
            return;
        }
        let bgid = self.bufs.bgid();
        let Some(e) = sh.core.conns.get_mut(idx as usize) else {
            return;
        };
        if e.io.flags & RECV_ARMED != 0 || e.has(st::DEAD | st::IN_CLOSE | st::READ_DONE) {
            return;
        }
        e.io.flags |= RECV_ARMED;
        e.io.ops += 1;
        let sqe = opcode::RecvMulti::new(types::Fd(e.raw_fd()), bgid)
            .build()
            .user_data(encode(Kind::Recv, idx, e.gen));
        self.inflight += 1;
        self.recv_armed += 1;
        // SAFETY: a buffer-select recv writes only into buffers of our
        // registered ring (`self.bufs`), which stays mapped until every recv
        // has posted its final CQE (see `finish` / `Drop`).
        unsafe { self.push(sqe) };
    }

    /// Free a closed connection's slot once no operation names it.
    fn maybe_free<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32) {
        if let Some(e) = sh.core.conns.get(idx as usize) {
            if e.has(st::DEAD) && e.io.ops == 0 {
                sh.core.remove(idx);
            }
        }
    }

    /// Re-arm receives that stopped on ENOBUFS, once buffers have come back.
    ///
    /// An ENOBUFS posted at kernel time T means the ring was empty at T: every
    /// buffer was in a CQE posted before T. Such CQEs are read in the batch
    /// that holds the ENOBUFS or the one before (a CQE read earlier had its
    /// buffer recycled before T — unless it was taken again, by a CQE that is
    /// again in one of those two batches). So if buffers were recycled while
    /// processing this batch or the previous one, they came back after T. If
    /// no recv is armed at all, nothing can hold a buffer: the ring is full.
    ///
    /// We re-arm, oldest first, as many starved connections as buffers came
    /// back (all of them when no recv is armed). Each re-armed connection has
    /// data waiting, so it either consumes a buffer (recycled next batch,
    /// funding the next re-arm) or hits ENOBUFS again because others took the
    /// buffers (which they will recycle). Either way the list drains without
    /// a timer and without re-arming hundreds of receives per returned buffer.
    fn rearm_starved<H: Handler>(&mut self, sh: &mut Shard<H>) {
        let came_back = (self.recycled_now + self.recycled_prev) as usize;
        let backstop = self.starved_retry.is_some_and(|t| sh.core.now >= t);
        if self.starved.is_empty() || (came_back == 0 && self.recv_armed > 0 && !backstop) {
            self.arm_starved_retry();
            return;
        }
        self.starved_retry = None;
        let mut budget = if self.recv_armed == 0 || backstop {
            usize::MAX
        } else {
            came_back
        };
        while budget > 0 {
            let Some((idx, gen)) = self.starved.pop_front() else {
                break;
            };
            if let Some(e) = sh.core.conns.get_mut(idx as usize) {
                if e.gen == gen && e.io.flags & STARVED != 0 {
                    e.io.flags &= !STARVED;
                    self.arm_recv(sh, idx);
                    budget -= 1;
                }
            }
        }
        self.arm_starved_retry();
    }

    /// Starts the backstop clock while receives are starved.
    fn arm_starved_retry(&mut self) {
        if self.starved.is_empty() {
            self.starved_retry = None;
        } else if self.starved_retry.is_none() {
            self.starved_retry = Some(Instant::now() + STARVED_RETRY);
        }
    }

    /// Ring growth policy, evaluated once per window of 1,024 buffer uses:
    /// if more than one recv in 8 (relative to buffer uses) ended in ENOBUFS
    /// during the window, double the buffers in circulation (up to
    /// `buf_count`). Occasional ENOBUFS are cheap (the recv is re-armed next
    /// batch), while every extra buffer in the FIFO ring enlarges the cache
    /// working set: with 16 KiB echo, 128 buffers gave ~30 % more MB per
    /// CPU-second than 4,096 (docs/reactor.md §13). Judging over a window
    /// keeps a start-up burst from growing the ring for good. New buffers
    /// count as buffers that came back (for `rearm_starved`).
    fn account_buffer_use(&mut self) {
        self.uses_since_growth += 1;
        if self.uses_since_growth < GROWTH_WINDOW {
            return;
        }
        if self.enobufs_since_growth * 8 > self.uses_since_growth {
            let circulating = self.bufs.provided();
            let added = self.bufs.grow(circulating);
            self.recycled_now += added as u64;
        }
        self.enobufs_since_growth = 0;
        self.uses_since_growth = 0;
    }

    fn dispatch<H: Handler>(&mut self, sh: &mut Shard<H>, c: &cqueue::Entry) -> io::Result<()> {
        let (kind, idx, _gen) = decode(c.user_data());
        let res = c.result();
        let flags = c.flags();
        match kind {
            Some(Kind::Recv) => self.on_recv(sh, idx, res, flags),
            Some(Kind::Send) => self.on_send(sh, idx, res),
            Some(Kind::Accept) => self.on_accept(sh, idx as usize, res, flags),
            Some(Kind::Cancel) => {
                self.inflight -= 1;
                if let Some(e) = sh.core.conns.get_mut(idx as usize) {
                    e.io.ops -= 1;
                }
                self.maybe_free(sh, idx);
            }
            Some(Kind::CancelOther) => self.inflight -= 1,
            Some(Kind::Wake) => {
                self.inflight -= 1;
                if res < 0 && res != -libc::EINTR && res != -libc::ECANCELED && res != -libc::EAGAIN
                {
                    return Err(io::Error::other(format!(
                        "read on the wake eventfd failed: {}",
                        io::Error::from_raw_os_error(-res)
                    )));
                }
                self.arm_wake();
            }
            None => tracing::error!(
                user_data = c.user_data(),
                "completion with unknown user_data"
            ),
        }
        Ok(())
    }

    fn on_recv<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let Some(e) = sh.core.conns.get_mut(idx as usize) else {
            // Cannot happen (slots outlive their operations); keep the buffer circulating.
            if let Some(b) = bid {
                self.bufs.recycle(b);
            }
            return;
        };
        if !more {
            e.io.ops -= 1;
            e.io.flags &= !RECV_ARMED;
            self.inflight -= 1;
            self.recv_armed -= 1;
        }
        if res > 0 {
            if let Some(b) = bid {
                let mut back = true;
                if sh.wants_data(idx) {
                    let region = self.bufs.region();
                    // SAFETY: the CQE hands buffer `b` back to us: the kernel
                    // will not touch it before we recycle it, and nothing is
                    // lent from it (lent buffers are recycled only once
                    // returned, through `reclaim`).
                    let data = unsafe { region.hold(b, res as usize) };
                    // At most half of the circulating buffers are lent, so
                    // frames held by clients that stopped reading can never
                    // starve the shard's receives.
                    let cap = self.max_lent.min(self.bufs.provided() / 2);
                    let input = if self.lent < cap {
                        Input::lendable(data, region, b)
                    } else {
                        Input::plain(data)
                    };
                    sh.data(idx, input);
                    back = region.release(b);
                }
                if back {
                    self.bufs.recycle(b);
                    self.recycled_now += 1;
                } else {
                    self.lent += 1;
                }
                self.account_buffer_use();
            }
            if !more {
                self.arm_recv(sh, idx);
            }
        } else {
            if let Some(b) = bid {
                self.bufs.recycle(b);
                self.recycled_now += 1;
            }
            match -res {
                0 => sh.eof(idx),
                libc::ENOBUFS => {
                    sh.core.stats.enobufs += 1;
                    // The ring ran dry: put more buffers into circulation if
                    // any are left (they count as buffers that came back).
                    self.enobufs_since_growth += 1;
                    if let Some(e) = sh.core.conns.get_mut(idx as usize) {
                        if !more
                            && e.io.flags & STARVED == 0
                            && !e.has(st::DEAD | st::IN_CLOSE | st::READ_DONE)
                        {
                            e.io.flags |= STARVED;
                            self.starved.push_back((idx, e.gen));
                        }
                    }
                }
                libc::ECANCELED => {}
                err => sh.fail(idx, sys::close_reason(Errno::from_raw(err))),
            }
        }
        if !more {
            self.maybe_free(sh, idx);
        }
    }

    fn on_send<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32, res: i32) {
        let Some(e) = sh.core.conns.get_mut(idx as usize) else {
            return;
        };
        e.io.ops -= 1;
        self.inflight -= 1;
        let Some(key) = e.io.send_slot.take() else {
            return;
        };
        let mut op = self.sends.remove(key as usize);
        let live = !e.has(st::DEAD | st::IN_CLOSE);
        let lent: usize = op.bufs.iter().map(|b| b.len()).sum();
        if live && res >= 0 {
            e.out.requeue_front(&mut op.bufs, res as usize);
            if (res as usize) < lent {
                sh.core.stats.partial_writes += 1;
            }
        }
        // The kernel is done with this op's memory: recycle it.
        op.reset();
        if self.send_pool.len() < SEND_POOL_MAX {
            self.send_pool.push(op);
        }
        if !live {
            self.maybe_free(sh, idx);
            return;
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                sh.fail(idx, sys::close_reason(Errno::from_raw(-res)));
            }
            return;
        }
        if res == 0 && lent > 0 {
            sh.fail(idx, CloseReason::Error(io::ErrorKind::WriteZero));
            return;
        }
        // Send the rest once the whole completion batch is handled (in
        // `settle`), so what later completions of this batch queue for the
        // connection goes out in the same sendmsg: a broadcast then costs
        // fewer, fuller sends.
        sh.core.mark_flush(idx);
    }

    fn on_accept<H: Handler>(&mut self, sh: &mut Shard<H>, li: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more {
            self.inflight -= 1;
            if let Some(ls) = self.listeners.get_mut(li) {
                ls.armed = false;
            }
        }
        let mut retry_later = false;
        if res >= 0 {
            // SAFETY: the kernel just created this descriptor for us; nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            // Accepted while stopping: dropped, i.e. closed.
            if !self.stopping {
                let shared = self
                    .listeners
                    .get(li)
                    .and_then(|ls| ls.l.as_ref())
                    .is_some_and(|l| l.is_shared());
                if let Some(a) = sh.accepted(fd, shared) {
                    self.adopt(sh, a);
                }
            }
        } else {
            match -res {
                libc::ECANCELED
                | libc::EINTR
                | libc::ECONNABORTED
                | libc::EAGAIN
                | libc::EPROTO => {}
                e => {
                    retry_later = true;
                    tracing::warn!(
                        shard = sh.core.shard,
                        error = %io::Error::from_raw_os_error(e),
                        "accept failed; retrying in 50 ms"
                    );
                }
            }
        }
        if !more {
            if self.stopping {
                if let Some(ls) = self.listeners.get_mut(li) {
                    ls.l = None;
                }
            } else if retry_later {
                if let Some(ls) = self.listeners.get_mut(li) {
                    ls.retry = true;
                }
                self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
            } else {
                self.arm_accept(li);
            }
        }
    }

    fn reap<H: Handler>(&mut self, sh: &mut Shard<H>) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        {
            let cq = self.ring.completion();
            self.cq_full = cq.len() >= cq.capacity();
            sh.core.stats.cq_overflow = cq.overflow() as u64;
            sh.core.stats.ring_buffers = self.bufs.provided() as u64;
            cqes.extend(cq);
        }
        let mut res = Ok(());
        for c in &cqes {
            if let Err(e) = self.dispatch(sh, c) {
                res = Err(e);
            }
        }
        self.cqes = cqes;
        // Frames sent while handling this batch may have freed their buffers.
        self.reclaim(sh);
        self.rearm_starved(sh);
        self.recycled_prev = self.recycled_now;
        self.recycled_now = 0;
        res
    }

    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.flush_backlog();
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Queue one ASYNC_CANCEL matching every operation in flight.
    fn cancel_everything(&mut self) {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(encode(Kind::CancelOther, u32::MAX, 0));
        self.inflight += 1;
        // SAFETY: a cancel request carries no user memory.
        unsafe { self.push(sqe) };
    }

    /// Cancel everything and reap until nothing is in flight (Drop path: no
    /// shard available, so only the accounting is done). True if quiescent.
    fn quiesce_raw(&mut self, patience: Duration) -> bool {
        self.finishing = true;
        if self.inflight == 0 {
            return true;
        }
        self.cancel_everything();
        let deadline = Instant::now() + patience;
        while self.inflight > 0 && Instant::now() < deadline {
            if self.enter(Some(Duration::from_millis(100))).is_err() {
                return false;
            }
            let cqes: Vec<cqueue::Entry> = self.ring.completion().collect();
            for c in cqes {
                let (kind, _, _) = decode(c.user_data());
                let terminal = match kind {
                    Some(Kind::Recv | Kind::Accept) => !cqueue::more(c.flags()),
                    _ => true,
                };
                if terminal {
                    self.inflight = self.inflight.saturating_sub(1);
                }
            }
        }
        self.inflight == 0
    }
}

impl Driver for UringDriver {
    fn poll<H: Handler>(&mut self, sh: &mut Shard<H>, timeout: Option<Duration>) -> io::Result<()> {
        self.enter(timeout)?;
        sh.core.now = Instant::now();
        self.reap(sh)?;
        if self.accept_retry.is_some_and(|t| sh.core.now >= t) {
            self.accept_retry = None;
            for i in 0..self.listeners.len() {
                if self.listeners[i].retry {
                    self.arm_accept(i);
                }
            }
        }
        Ok(())
    }

    fn adopt<H: Handler>(&mut self, sh: &mut Shard<H>, a: Accepted) {
        if let Some(conn) = sh.insert(a.fd, a.peer) {
            self.arm_recv(sh, conn.idx);
            sh.opened(conn);
        }
    }

    fn flush<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32) {
        let Some(e) = sh.core.conns.get_mut(idx as usize) else {
            return;
        };
        if e.has(st::DEAD | st::IN_CLOSE) || e.io.send_slot.is_some() {
            return;
        }
        if e.out.has_queued() {
            let mut op = self.send_pool.pop().unwrap_or_else(SendOp::new);
            e.out.take_front(&mut op.bufs);
            let hdr = op.prepare();
            let key = self.sends.insert(op);
            e.io.send_slot = Some(key as u32);
            e.io.ops += 1;
            let sqe = opcode::SendMsg::new(types::Fd(e.raw_fd()), hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(encode(Kind::Send, idx, e.gen));
            self.inflight += 1;
            // SAFETY: `hdr` points into the boxed SendOp just stored in
            // `self.sends` (moving the Box did not move its contents); it holds
            // the iovecs and owns the `Bytes` they point into. It is removed
            // from the table only in `on_send`, when this send's CQE is
            // reaped, or freed in `Drop` after quiescence is confirmed (else
            // leaked). At most one send per connection is in flight.
            unsafe { self.push(sqe) };
            return;
        }
        if sh.core.after_write(idx) {
            if let Some(e) = sh.core.conns.get(idx as usize) {
                if let Err(err) =
                    nix::sys::socket::shutdown(e.raw_fd(), nix::sys::socket::Shutdown::Write)
                {
                    sh.fail(idx, sys::close_reason(err));
                }
            }
        }
    }

    fn close<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32) {
        if let Some(e) = sh.core.conns.get_mut(idx as usize) {
            if e.io.ops > 0 && e.io.flags & CANCELLED == 0 {
                e.io.flags |= CANCELLED;
                // Cancel by user_data, one request per operation: the kernel
                // finds those through its cancel hash, whereas a cancel by fd
                // walks every armed request of the ring, which made closing
                // 10,000 connections quadratic (~60 µs per close).
                let mut targets = [None, None];
                if e.io.flags & RECV_ARMED != 0 {
                    targets[0] = Some(types::CancelBuilder::user_data(encode(
                        Kind::Recv,
                        idx,
                        e.gen,
                    )));
                }
                if e.io.send_slot.is_some() {
                    targets[1] = Some(types::CancelBuilder::user_data(encode(
                        Kind::Send,
                        idx,
                        e.gen,
                    )));
                }
                if targets.iter().all(Option::is_none) {
                    // An operation we do not track by kind: fall back to the fd.
                    targets[0] = Some(types::CancelBuilder::fd(types::Fd(e.raw_fd())));
                }
                for target in targets.into_iter().flatten() {
                    e.io.ops += 1;
                    let sqe = opcode::AsyncCancel2::new(target.all())
                        .build()
                        .user_data(encode(Kind::Cancel, idx, e.gen));
                    self.inflight += 1;
                    // SAFETY: a cancel request carries no user memory. (The fd
                    // it may name stays open until the slot is freed in
                    // `maybe_free`.)
                    unsafe { self.push(sqe) };
                }
            }
        }
        sh.closed(idx);
        self.maybe_free(sh, idx);
    }

    fn stop_accepting(&mut self) {
        self.stopping = true;
        self.accept_retry = None;
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                let sqe = opcode::AsyncCancel2::new(
                    types::CancelBuilder::user_data(encode(Kind::Accept, i as u32, 0)).all(),
                )
                .build()
                .user_data(encode(Kind::CancelOther, i as u32, 0));
                self.inflight += 1;
                // SAFETY: a cancel request carries no user memory.
                unsafe { self.push(sqe) };
            } else {
                self.listeners[i].l = None;
            }
        }
    }

    fn has_ready(&self) -> bool {
        self.cq_full
    }

    fn reclaim<H: Handler>(&mut self, sh: &mut Shard<H>) {
        let n = self.bufs.recycle_returned();
        self.lent -= n;
        self.recycled_now += n as u64;
        sh.core.stats.lent_buffers = self.lent as u64;
    }

    fn next_deadline(&self) -> Option<Instant> {
        match (self.accept_retry, self.starved_retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn finish<H: Handler>(&mut self, sh: &mut Shard<H>) -> io::Result<()> {
        if !self.stopping {
            self.stop_accepting();
        }
        // The loop exits with no visible connection; close any stragglers.
        for idx in sh.core.visible_idxs() {
            sh.core.request_close(idx, CloseReason::Shutdown);
            self.close(sh, idx);
        }
        self.finishing = true;
        if self.inflight > 0 {
            self.cancel_everything();
        }
        let deadline = Instant::now() + QUIESCE_PATIENCE;
        while self.inflight > 0 && Instant::now() < deadline {
            self.enter(Some(Duration::from_millis(100)))?;
            self.reap(sh)?;
        }
        if self.inflight > 0 {
            tracing::error!(
                shard = sh.core.shard,
                inflight = self.inflight,
                "io_uring operations did not complete after cancel; their memory will be leaked"
            );
        }
        // Every remaining slot is closed; dropping them closes their sockets.
        let rest: Vec<usize> = sh.core.conns.iter().map(|(i, _)| i).collect();
        for i in rest {
            if sh.core.conns[i].io.ops == 0 {
                sh.core.remove(i as u32);
            }
        }
        Ok(())
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        // Normal exit reaches here with nothing in flight; after a panic we
        // cancel and reap first. Only then may buffer memory be freed.
        let clean = self.inflight == 0 || self.quiesce_raw(QUIESCE_PATIENCE);
        if clean {
            let _ = self.ring.submitter().unregister_buf_ring(self.bufs.bgid());
        }
        // SAFETY: each ManuallyDrop field is dropped at most once, here, and
        // never used afterwards. The ring goes first. The buffer ring, send
        // ops and wake buffer are freed only if no operation is in flight
        // (`clean`): then the kernel holds no pointer into them. Otherwise
        // they are deliberately leaked.
        unsafe {
            ManuallyDrop::drop(&mut self.ring);
            if clean {
                ManuallyDrop::drop(&mut self.bufs);
                ManuallyDrop::drop(&mut self.sends);
                ManuallyDrop::drop(&mut self.wake_buf);
            } else {
                tracing::error!("leaking io_uring buffers: operations still in flight at teardown");
            }
        }
    }
}
