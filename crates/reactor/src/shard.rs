//! The shard event loop, shared by both backends.
//!
//! One iteration:
//! 1. wait for I/O (the backend's `poll`), bounded by the next timer, the
//!    drain deadline and any backend deadline; zero if work is already pending;
//! 2. register connections handed over by other shards, then deliver
//!    inbound mail (at most a budget per pass, so a flood of mail cannot
//!    starve I/O);
//! 3. fire due timers; 4. `on_tick`; 5. handle a stop request / drain;
//! 6. push outboxes into other shards' mailboxes and wake them (once each).
//!
//! After every step, [`settle`] carries out what the handler asked for:
//! writes, closes and the notifications these produce, until nothing is left.

use crate::conn::{st, Conn};
use crate::core::Core;
use crate::ctx::Ctx;
use crate::handler::{CloseReason, Handler};
use crate::lend::Input;
use crate::mailbox::{Accepted, HANDOFF_CAPACITY};
use crate::sys;
use crate::timer::Payload;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Most mail messages delivered per loop pass.
const MAIL_BUDGET: usize = 4096;

/// What each backend provides to the shared loop.
pub(crate) trait Driver {
    /// Wait up to `timeout` (None = indefinitely) and dispatch I/O into `sh`.
    fn poll<H: Handler>(&mut self, sh: &mut Shard<H>, timeout: Option<Duration>) -> io::Result<()>;
    /// Register an accepted socket (start reading it) and deliver `on_open`.
    fn adopt<H: Handler>(&mut self, sh: &mut Shard<H>, a: Accepted);
    /// Write what `idx` has queued (or finish its close / shutdown_write).
    fn flush<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32);
    /// Close `idx` now: stop its I/O, deliver `on_close` (via `Shard::closed`)
    /// and free the slot once the kernel no longer references it.
    fn close<H: Handler>(&mut self, sh: &mut Shard<H>, idx: u32);
    /// Stop accepting and close listening sockets.
    fn stop_accepting(&mut self);
    /// Work is ready without waiting (so the next poll must not block).
    fn has_ready(&self) -> bool;
    /// A backend deadline (e.g. accept retry after EMFILE).
    fn next_deadline(&self) -> Option<Instant>;
    /// Shard is exiting: wait until the kernel holds no references to our memory.
    fn finish<H: Handler>(&mut self, sh: &mut Shard<H>) -> io::Result<()>;
    /// Takes back lent receive buffers whose last `Bytes` is gone (see
    /// `crate::lend`) and records how many are still out in the stats.
    fn reclaim<H: Handler>(&mut self, sh: &mut Shard<H>);
}

pub(crate) struct Shard<H: Handler> {
    pub h: H,
    pub core: Core<H::Mail>,
}

impl<H: Handler> Shard<H> {
    fn ctx(&mut self) -> (&mut H, Ctx<'_, H::Mail>) {
        (
            &mut self.h,
            Ctx {
                core: &mut self.core,
            },
        )
    }

    /// This shard's backend accepted `fd` on a listener (`shared`: an
    /// inherited one every shard accepts on). Applies the socket options and
    /// decides where the connection goes (`Core::hand_out`); `Some` if the
    /// backend should `adopt` it here.
    pub fn accepted(&mut self, fd: OwnedFd, shared: bool) -> Option<Accepted> {
        sys::configure_accepted(&fd, self.core.cfg.tcp_nodelay);
        let peer = sys::peer_addr(fd.as_raw_fd());
        let a = Accepted { fd, peer };
        if shared {
            self.core.hand_out(a)
        } else {
            Some(a)
        }
    }

    /// Add a socket to the table (the backend registers it before calling
    /// `opened`). None if refused (table full; socket closed).
    pub fn insert(&mut self, fd: OwnedFd, peer: SocketAddr) -> Option<Conn> {
        self.core.insert(fd, peer)
    }

    /// Deliver `on_open`.
    pub fn opened(&mut self, conn: Conn) {
        let Some(e) = self.core.get(conn) else { return };
        let peer = e.peer;
        let (h, mut ctx) = self.ctx();
        h.on_open(&mut ctx, conn, peer);
    }

    /// Whether received bytes for `idx` go to the handler.
    pub fn wants_data(&self, idx: u32) -> bool {
        self.core
            .conns
            .get(idx as usize)
            .is_some_and(|e| e.reading())
    }

    /// Received bytes (dropped if the handler no longer reads this connection).
    pub fn data(&mut self, idx: u32, data: Input<'_>) {
        let Some(e) = self.core.conns.get(idx as usize) else {
            return;
        };
        if !e.reading() {
            return;
        }
        let conn = Conn { idx, gen: e.gen };
        let (h, mut ctx) = self.ctx();
        h.on_input(&mut ctx, conn, data);
    }

    /// The peer closed its write side. `on_eof` is delivered unless the
    /// handler already stopped reading (closing); either way no more reads.
    pub fn eof(&mut self, idx: u32) {
        let Some(e) = self.core.conns.get_mut(idx as usize) else {
            return;
        };
        if e.has(st::READ_DONE | st::DEAD) {
            return;
        }
        let deliver = e.reading();
        e.st |= st::READ_DONE | st::EOF_SEEN;
        let conn = Conn { idx, gen: e.gen };
        if deliver {
            let (h, mut ctx) = self.ctx();
            h.on_eof(&mut ctx, conn);
        }
    }

    /// A read or write failed: close now.
    pub fn fail(&mut self, idx: u32, why: CloseReason) {
        if let Some(e) = self.core.conns.get_mut(idx as usize) {
            e.st |= st::READ_DONE;
        }
        self.core.request_close(idx, why);
    }

    /// Deliver `on_close` for `idx` (the backend has stopped its I/O).
    pub fn closed(&mut self, idx: u32) {
        if let Some((conn, why)) = self.core.kill(idx) {
            let (h, mut ctx) = self.ctx();
            h.on_close(&mut ctx, conn, why);
        }
    }

    /// Deliver `on_start` once, before the loop runs.
    pub fn start<D: Driver>(&mut self, drv: &mut D) {
        self.core.now = Instant::now();
        let (h, mut ctx) = self.ctx();
        h.on_start(&mut ctx);
        settle(self, drv);
    }

    /// Register connections other shards handed over (`Core::hand_out`).
    /// Once draining, close them instead: the handler has had its
    /// `on_shutdown` and would not know to close them.
    fn adopt_handoffs<D: Driver>(&mut self, drv: &mut D) {
        let shared = self.core.shared.clone();
        let mb = &shared.mailboxes[self.core.shard];
        for _ in 0..HANDOFF_CAPACITY {
            let Some(a) = mb.take_handoff() else { break };
            if self.core.draining {
                self.core.stats.rejected += 1;
                drop(a);
            } else {
                drv.adopt(self, a);
            }
        }
        settle(self, drv);
    }

    fn deliver_mail(&mut self) {
        let shared = self.core.shared.clone();
        let mb = &shared.mailboxes[self.core.shard];
        let n = mb.len().min(MAIL_BUDGET);
        for _ in 0..n {
            let Some(m) = mb.pop() else { break };
            let (h, mut ctx) = self.ctx();
            h.on_mail(&mut ctx, m);
        }
        if n > 0 {
            // We made room: wake shards whose outboxes wait on us.
            let me = self.core.shard;
            mb.take_room_wanted(|s| {
                if s != me {
                    shared.mailboxes[s].force_wake();
                }
            });
        }
    }

    fn fire_timers<D: Driver>(&mut self, drv: &mut D) {
        self.core.timers.advance(self.core.now);
        while let Some((id, payload)) = self.core.timers.pop_expired() {
            match payload {
                Payload::User(data) => {
                    let (h, mut ctx) = self.ctx();
                    h.on_timer(&mut ctx, id, data);
                }
                Payload::Linger(idx, gen) => {
                    if self
                        .core
                        .conns
                        .get(idx as usize)
                        .is_some_and(|e| e.gen == gen)
                    {
                        let conn = Conn { idx, gen };
                        if let Some(e) = self.core.conns.get_mut(idx as usize) {
                            e.linger = None;
                        }
                        self.core
                            .abort(conn, CloseReason::Error(io::ErrorKind::TimedOut));
                    }
                }
            }
            self.core.timers.finish(id);
            settle(self, drv);
        }
    }

    fn begin_drain<D: Driver>(&mut self, drv: &mut D) {
        self.core.draining = true;
        self.core.drain_deadline = Some(self.core.now + self.core.shared.drain());
        stop_accepting(self, drv);
        let (h, mut ctx) = self.ctx();
        h.on_shutdown(&mut ctx);
        settle(self, drv);
    }

    fn abort_all<D: Driver>(&mut self, drv: &mut D) {
        for idx in self.core.visible_idxs() {
            if let Some(c) = self.core.conn_of(idx) {
                self.core.abort(c, CloseReason::Shutdown);
            }
        }
        settle(self, drv);
    }
}

/// Closes the listeners, once.
fn stop_accepting<H: Handler, D: Driver>(sh: &mut Shard<H>, drv: &mut D) {
    if !sh.core.accept_stopped {
        sh.core.accept_stopped = true;
        drv.stop_accepting();
    }
}

/// Carry out recorded intents until none are left.
pub(crate) fn settle<H: Handler, D: Driver>(sh: &mut Shard<H>, drv: &mut D) {
    // A handler that saw the stop request in this pass (`Ctx::is_draining`,
    // e.g. a health check answering "draining") may have queued an answer:
    // the listeners close before it goes out, so a client told "draining"
    // is not accepted here any more. The drain itself begins at the end of
    // the pass.
    if sh.core.shared.stop_requested() {
        stop_accepting(sh, drv);
    }
    let mut list = Vec::new();
    loop {
        let mut did = false;
        if !sh.core.flush_list.is_empty() {
            did = true;
            std::mem::swap(&mut list, &mut sh.core.flush_list);
            for idx in list.drain(..) {
                if let Some(e) = sh.core.conns.get_mut(idx as usize) {
                    e.st &= !st::IN_FLUSH;
                    if !e.has(st::DEAD | st::IN_CLOSE) {
                        drv.flush(sh, idx);
                    }
                }
            }
        }
        if !sh.core.close_list.is_empty() {
            did = true;
            std::mem::swap(&mut list, &mut sh.core.close_list);
            for idx in list.drain(..) {
                if sh
                    .core
                    .conns
                    .get(idx as usize)
                    .is_some_and(|e| !e.has(st::DEAD))
                {
                    drv.close(sh, idx);
                }
            }
        }
        if !did {
            break;
        }
    }
}

/// Run the loop until the shard has drained after a stop request.
pub(crate) fn run<H: Handler, D: Driver>(sh: &mut Shard<H>, drv: &mut D) -> io::Result<()> {
    let shared = sh.core.shared.clone();
    let mb = &shared.mailboxes[sh.core.shard];
    loop {
        // ---- 1. wait ----
        let now = Instant::now();
        let busy = drv.has_ready()
            || sh.core.timers.has_expired()
            || !mb.is_empty()
            || (shared.stop_requested() && !sh.core.draining);
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            let mut deadline = sh.core.timers.next_deadline();
            let mut consider = |d: Option<Instant>| {
                if let Some(d) = d {
                    deadline = Some(deadline.map_or(d, |x| x.min(d)));
                }
            };
            consider(sh.core.drain_deadline);
            consider(drv.next_deadline());
            if sh.core.outbox_pending() > 0 {
                // A full target wakes us when it makes room (room_wanted);
                // this slow retry is only a safety net.
                consider(Some(now + Duration::from_millis(10)));
            }
            deadline.map(|d| d.saturating_duration_since(now))
        };
        let sleeping = timeout != Some(Duration::ZERO);
        if sleeping && !mb.prepare_sleep() {
            drv.poll(sh, Some(Duration::ZERO))?;
        } else {
            drv.poll(sh, timeout)?;
        }
        if sleeping {
            mb.awake();
        }
        sh.core.now = Instant::now();
        settle(sh, drv);

        // ---- 2. handed-over connections, mail ----
        sh.adopt_handoffs(drv);
        sh.deliver_mail();
        settle(sh, drv);

        // ---- 3. timers ----
        sh.fire_timers(drv);

        // ---- 4. tick ----
        {
            let (h, mut ctx) = sh.ctx();
            h.on_tick(&mut ctx);
        }
        settle(sh, drv);

        // ---- 5. stop / drain ----
        if !sh.core.draining && shared.stop_requested() {
            sh.begin_drain(drv);
        }
        let mut exit = false;
        if sh.core.draining {
            if sh.core.live == 0 {
                exit = true;
            } else if sh.core.drain_deadline.is_some_and(|d| sh.core.now >= d) {
                sh.abort_all(drv);
                exit = true;
            }
        }

        // ---- 6. outboxes ----
        sh.core.flush_outboxes();
        // What this pass sent or dropped may have freed lent buffers.
        drv.reclaim(sh);
        sh.core.publish_stats();
        if exit {
            break;
        }
    }
    mb.close();
    let res = drv.finish(sh);
    sh.core.discard_outboxes();
    sh.core.stats.exited = true;
    sh.core.publish_stats();
    res
}
