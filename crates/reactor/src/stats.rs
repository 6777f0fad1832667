//! Per-shard counters, published once per loop iteration with relaxed stores
//! (one cache line per shard, written only by its shard) and readable from any
//! thread through [`Running::stats`](crate::Running::stats) /
//! [`Handle::stats`](crate::Handle::stats) for metrics and tests.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of one shard's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections visible to the handler.
    pub connections: u64,
    /// Connection-table slots in use, including closed connections whose
    /// io_uring operations have not all completed yet. 0 = nothing leaked.
    pub slots: u64,
    /// Connections registered on this shard since start: accepted here, or
    /// accepted by another shard on a shared (inherited) listener and handed
    /// over.
    pub accepted: u64,
    /// Connections accepted here on a shared listener and handed to another
    /// shard (counted in that shard's `accepted`).
    pub handed_off: u64,
    /// Connections closed unregistered: `max_connections` was reached, or a
    /// handed-over connection arrived after this shard began draining.
    pub rejected: u64,
    /// Connections closed (on_close delivered) since start.
    pub closed: u64,
    /// io_uring: multishot receives that ended with ENOBUFS (buffer ring empty).
    pub enobufs: u64,
    /// Sends that wrote only part of what was offered (short writes).
    pub partial_writes: u64,
    /// io_uring: provided buffers in circulation (starts at 64, doubles when
    /// ENOBUFS is frequent, up to `buf_count`).
    pub ring_buffers: u64,
    /// Receive buffers lent out past `on_data` (see `Input::split`) and not
    /// back yet; at most `max_lent_buffers`.
    pub lent_buffers: u64,
    /// io_uring: completions the kernel had to hold in its overflow list
    /// (should stay 0: the CQ is sized for the worst case).
    pub cq_overflow: u64,
    /// Messages waiting in this shard's local outboxes (target mailbox full).
    pub outbox_pending: u64,
    /// Loop iterations.
    pub loops: u64,
    /// The shard thread has exited.
    pub exited: bool,
}

#[repr(align(128))]
#[derive(Default)]
pub(crate) struct StatsCell {
    pub connections: AtomicU64,
    pub slots: AtomicU64,
    pub accepted: AtomicU64,
    pub handed_off: AtomicU64,
    pub rejected: AtomicU64,
    pub closed: AtomicU64,
    pub enobufs: AtomicU64,
    pub cq_overflow: AtomicU64,
    pub partial_writes: AtomicU64,
    pub ring_buffers: AtomicU64,
    pub lent_buffers: AtomicU64,
    pub outbox_pending: AtomicU64,
    pub loops: AtomicU64,
    pub exited: AtomicU64,
}

impl StatsCell {
    pub fn publish(&self, s: &ShardStats) {
        self.connections.store(s.connections, Relaxed);
        self.slots.store(s.slots, Relaxed);
        self.accepted.store(s.accepted, Relaxed);
        self.handed_off.store(s.handed_off, Relaxed);
        self.rejected.store(s.rejected, Relaxed);
        self.closed.store(s.closed, Relaxed);
        self.enobufs.store(s.enobufs, Relaxed);
        self.cq_overflow.store(s.cq_overflow, Relaxed);
        self.partial_writes.store(s.partial_writes, Relaxed);
        self.ring_buffers.store(s.ring_buffers, Relaxed);
        self.lent_buffers.store(s.lent_buffers, Relaxed);
        self.outbox_pending.store(s.outbox_pending, Relaxed);
        self.loops.store(s.loops, Relaxed);
        self.exited.store(s.exited as u64, Relaxed);
    }

    pub fn snapshot(&self) -> ShardStats {
        ShardStats {
            connections: self.connections.load(Relaxed),
            slots: self.slots.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            handed_off: self.handed_off.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            closed: self.closed.load(Relaxed),
            enobufs: self.enobufs.load(Relaxed),
            cq_overflow: self.cq_overflow.load(Relaxed),
            partial_writes: self.partial_writes.load(Relaxed),
            ring_buffers: self.ring_buffers.load(Relaxed),
            lent_buffers: self.lent_buffers.load(Relaxed),
            outbox_pending: self.outbox_pending.load(Relaxed),
            loops: self.loops.load(Relaxed),
            exited: self.exited.load(Relaxed) != 0,
        }
    }
}
