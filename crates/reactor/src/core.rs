//! Backend-independent shard state: the connection table, the intents a
//! handler callback records (writes to flush, connections to close), timers
//! and the mail outboxes.
//!
//! Handler callbacks only *record* intents here; the shard loop carries them
//! out through the backend after the callback returns (`shard::settle`). That
//! keeps callbacks non-re-entrant and lets several `send`s to one connection
//! go out in a single `sendmsg`.

use crate::config::{Backend, ShardConfig};
use crate::conn::{st, Conn, Entry};
use crate::handler::CloseReason;
use crate::mailbox::Accepted;
use crate::shared::Shared;
use crate::stats::ShardStats;
use crate::timer::{Payload, TimerId, Wheel};
use bytes::Bytes;
use slab::Slab;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Core<M> {
    pub shard: usize,
    pub shared: Arc<Shared<M>>,
    pub cfg: ShardConfig,
    pub backend: Backend,
    pub now: Instant,
    pub conns: Slab<Entry>,
    next_gen: u64,
    /// Handler-visible connections.
    pub live: usize,
    pub flush_list: Vec<u32>,
    pub close_list: Vec<u32>,
    pub timers: Wheel,
    outboxes: Vec<VecDeque<M>>,
    outbox_len: usize,
    /// Targets pushed to since the last `flush_outboxes` (to notify once).
    touched: Vec<bool>,
    pub draining: bool,
    /// The listeners were told to stop (once: see `settle`).
    pub accept_stopped: bool,
    pub drain_deadline: Option<Instant>,
    pub stats: ShardStats,
}

impl<M: Send + 'static> Core<M> {
    pub fn new(shard: usize, shared: Arc<Shared<M>>, cfg: ShardConfig, backend: Backend) -> Self {
        let now = Instant::now();
        let n = shared.shards();
        Core {
            shard,
            shared,
            cfg,
            backend,
            now,
            conns: Slab::new(),
            next_gen: 1,
            live: 0,
            flush_list: Vec::new(),
            close_list: Vec::new(),
            timers: Wheel::new(now),
            outboxes: (0..n).map(|_| VecDeque::new()).collect(),
            outbox_len: 0,
            touched: vec![false; n],
            draining: false,
            accept_stopped: false,
            drain_deadline: None,
            stats: ShardStats::default(),
        }
    }

    // ---------- table ----------

    /// Add an accepted socket; `None` (socket dropped = closed) at `max_connections`.
    /// The limit counts table slots, including just-closed io_uring
    /// connections whose cancellation has not completed (usually within one
    /// loop pass); that keeps the completion-queue bound exact.
    pub fn insert(&mut self, fd: OwnedFd, peer: SocketAddr) -> Option<Conn> {
        if self.conns.len() >= self.cfg.max_connections {
            self.stats.rejected += 1;
            return None;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        let idx = self.conns.insert(Entry::new(gen, fd, peer)) as u32;
        self.live += 1;
        self.stats.accepted += 1;
        Some(Conn { idx, gen })
    }

    /// Place a connection this shard accepted on a listener shared by all
    /// shards (an inherited one): the shard whose turn it is in the
    /// reactor-wide round robin (`Shared::next_turn`) gets it, this one
    /// included. Returns it if it stays here.
    ///
    /// A shard whose table was full when it last published its stats is
    /// passed over for the next one, so the total capacity is usable; if all
    /// are full, the connection stays here and `insert` refuses it. A target
    /// that has exited or whose handoff queue is full is passed over too.
    /// Once a stop was requested nothing is handed off: this shard drains
    /// what it accepted like any other connection.
    pub fn hand_out(&mut self, mut a: Accepted) -> Option<Accepted> {
        let n = self.shared.shards();
        if n == 1 || self.shared.stop_requested() {
            return Some(a);
        }
        let max = self.cfg.max_connections;
        let first = self.shared.next_turn();
        for k in 0..n {
            let t = (first + k) % n;
            if t == self.shard {
                if self.conns.len() < max {
                    return Some(a);
                }
            } else if (self.shared.stats[t].slots.load(Ordering::Relaxed) as usize) < max {
                match self.shared.mailboxes[t].hand_off(a) {
                    Ok(()) => {
                        // Woken with this pass's mail (`flush_outboxes`).
                        self.touched[t] = true;
                        self.stats.handed_off += 1;
                        return None;
                    }
                    Err(back) => a = back,
                }
            }
        }
        Some(a)
    }

    pub fn conn_of(&self, idx: u32) -> Option<Conn> {
        self.conns
            .get(idx as usize)
            .map(|e| Conn { idx, gen: e.gen })
    }

    /// Slots of every handler-visible connection, collected so the caller
    /// may close them while iterating.
    pub fn visible_idxs(&self) -> Vec<u32> {
        self.conns
            .iter()
            .filter(|(_, e)| e.visible())
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Handler-visible entry for `c`.
    pub fn get(&self, c: Conn) -> Option<&Entry> {
        self.conns
            .get(c.idx as usize)
            .filter(|e| e.gen == c.gen && e.visible())
    }

    pub fn get_mut(&mut self, c: Conn) -> Option<&mut Entry> {
        self.conns
            .get_mut(c.idx as usize)
            .filter(|e| e.gen == c.gen && e.visible())
    }

    /// Free a slot once the backend no longer references it (closes the fd).
    pub fn remove(&mut self, idx: u32) {
        if self.conns.contains(idx as usize) {
            let e = self.conns.remove(idx as usize);
            debug_assert!(e.has(st::DEAD));
            drop(e);
        }
    }

    // ---------- intents ----------

    pub fn mark_flush(&mut self, idx: u32) {
        if let Some(e) = self.conns.get_mut(idx as usize) {
            if !e.has(st::IN_FLUSH | st::DEAD) {
                e.st |= st::IN_FLUSH;
                self.flush_list.push(idx);
            }
        }
    }

    /// Close now (abort semantics: whatever is queued is dropped by the backend).
    pub fn request_close(&mut self, idx: u32, why: CloseReason) {
        if let Some(e) = self.conns.get_mut(idx as usize) {
            if e.has(st::IN_CLOSE | st::DEAD) {
                return;
            }
            // A pending graceful close (Local) is overridden by a hard error.
            if e.reason.is_none()
                || (e.reason == Some(CloseReason::Local) && why != CloseReason::Local)
            {
                e.reason = Some(why);
            }
            e.st |= st::IN_CLOSE;
            self.close_list.push(idx);
        }
    }

    /// Queues `parts` (moved in: cloning a `Bytes` made from a `Vec` would
    /// allocate its shared header). Unbounded on purpose: how much a
    /// connection may have queued is the handler's policy, decided from
    /// `queued_bytes` before it sends.
    pub fn send(&mut self, c: Conn, parts: impl IntoIterator<Item = Bytes>) -> bool {
        let Some(e) = self.get_mut(c) else {
            return false;
        };
        if !e.writable() {
            return false;
        }
        for p in parts {
            e.out.push(p);
        }
        self.mark_flush(c.idx);
        true
    }

    /// The backend wrote the whole queue and has no send in flight: finish
    /// a pending close / shutdown_write. Returns true if `shutdown(SHUT_WR)`
    /// should be issued now.
    pub fn after_write(&mut self, idx: u32) -> bool {
        let Some(e) = self.conns.get_mut(idx as usize) else {
            return false;
        };
        if e.has(st::DEAD) || e.out.len() > 0 {
            return false;
        }
        if e.has(st::CLOSING) {
            let why = if e.has(st::EOF_SEEN) {
                CloseReason::PeerEof
            } else {
                CloseReason::Local
            };
            self.request_close(idx, why);
            return false;
        }
        if e.has(st::SHUT_WR_REQ) && !e.has(st::SHUT_WR_DONE) {
            e.st |= st::SHUT_WR_DONE;
            return true;
        }
        false
    }

    pub fn close(&mut self, c: Conn) {
        let now = self.now;
        let linger = self.cfg.close_timeout;
        let Some(e) = self.get_mut(c) else { return };
        if e.has(st::CLOSING | st::IN_CLOSE) {
            return;
        }
        e.st |= st::CLOSING;
        if e.out.len() == 0 && e.io.send_slot.is_none() {
            let why = if e.has(st::EOF_SEEN) {
                CloseReason::PeerEof
            } else {
                CloseReason::Local
            };
            self.request_close(c.idx, why);
        } else {
            let id = self.timers.add(now, linger, Payload::Linger(c.idx, c.gen));
            if let Some(e) = self.conns.get_mut(c.idx as usize) {
                e.linger = Some(id);
            }
            self.mark_flush(c.idx);
        }
    }

    pub fn abort(&mut self, c: Conn, why: CloseReason) {
        let Some(e) = self.get_mut(c) else { return };
        e.out.clear();
        self.request_close(c.idx, why);
    }

    pub fn shutdown_write(&mut self, c: Conn) {
        let Some(e) = self.get_mut(c) else { return };
        if e.has(st::SHUT_WR_REQ | st::CLOSING | st::IN_CLOSE) {
            return;
        }
        e.st |= st::SHUT_WR_REQ;
        self.mark_flush(c.idx);
    }

    /// Mark `idx` closed from the handler's view; returns the handle and reason
    /// for `on_close`.
    pub fn kill(&mut self, idx: u32) -> Option<(Conn, CloseReason)> {
        let e = self.conns.get_mut(idx as usize)?;
        if e.has(st::DEAD) {
            return None;
        }
        e.st |= st::DEAD;
        e.out.clear();
        let why = e.reason.unwrap_or(CloseReason::Local);
        let conn = Conn { idx, gen: e.gen };
        if let Some(t) = e.linger.take() {
            self.timers.cancel(t);
        }
        self.live -= 1;
        self.stats.closed += 1;
        Some((conn, why))
    }

    // ---------- timers ----------

    pub fn timer(&mut self, after: Duration, data: u64) -> TimerId {
        self.timers.add(self.now, after, Payload::User(data))
    }

    // ---------- mail ----------

    pub fn mail(&mut self, target: usize, m: M) -> Result<(), M> {
        if target >= self.outboxes.len() {
            return Err(m);
        }
        let ob = &mut self.outboxes[target];
        if ob.is_empty() {
            match self.shared.mailboxes[target].push(m) {
                Ok(()) => {
                    self.touched[target] = true;
                    return Ok(());
                }
                Err(m) => {
                    if self.cfg.outbox_capacity == 0 {
                        return Err(m);
                    }
                    ob.push_back(m);
                    self.outbox_len += 1;
                    return Ok(());
                }
            }
        }
        if ob.len() >= self.cfg.outbox_capacity {
            return Err(m);
        }
        ob.push_back(m);
        self.outbox_len += 1;
        Ok(())
    }

    pub fn outbox_pending(&self) -> usize {
        self.outbox_len
    }

    /// Move outbox contents into target mailboxes (FIFO, stopping at the first
    /// full one) and wake every target that got something.
    pub fn flush_outboxes(&mut self) {
        if self.outbox_len > 0 {
            for (t, ob) in self.outboxes.iter_mut().enumerate() {
                let mb = &self.shared.mailboxes[t];
                while let Some(m) = ob.pop_front() {
                    let r = match mb.push(m) {
                        Ok(()) => Ok(()),
                        // Full: ask to be woken when it has room (and retry once).
                        Err(m) => mb.push_or_want_room(self.shard, m),
                    };
                    match r {
                        Ok(()) => {
                            self.outbox_len -= 1;
                            self.touched[t] = true;
                        }
                        Err(m) => {
                            ob.push_front(m);
                            break;
                        }
                    }
                }
            }
        }
        for (t, flag) in self.touched.iter_mut().enumerate() {
            if std::mem::take(flag) && t != self.shard {
                self.shared.mailboxes[t].notify();
            }
        }
    }

    /// Drop undeliverable outbox contents at exit.
    pub fn discard_outboxes(&mut self) {
        for ob in self.outboxes.iter_mut() {
            ob.clear();
        }
        self.outbox_len = 0;
    }

    pub fn publish_stats(&mut self) {
        self.stats.connections = self.live as u64;
        self.stats.slots = self.conns.len() as u64;
        self.stats.outbox_pending = self.outbox_len as u64;
        self.stats.loops += 1;
        self.shared.stats[self.shard].publish(&self.stats);
    }
}
