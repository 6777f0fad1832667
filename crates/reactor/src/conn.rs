//! Connection handles and the per-shard connection table.
//!
//! The table is a `slab::Slab` (dense, O(1) insert/remove, indices reused).
//! Reused indices are why a [`Conn`] also carries a generation: every accepted
//! connection gets the next value of a per-shard 64-bit counter, and a handle
//! whose generation does not match the slot is stale and ignored. A 64-bit
//! counter cannot wrap in practice, so ids are never reused within a shard.
//!
//! An entry can outlive its handler-visible life: on io_uring the slot (and
//! its socket) stays reserved until every operation that names it has posted
//! its completion, so a CQE can never be matched to a newer connection. Such
//! entries are `dead`: invisible to the handler and to [`Ctx`](crate::Ctx).

use crate::handler::CloseReason;
use crate::outq::OutQueue;
use crate::timer::TimerId;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// A connection on one shard: slab index + generation. Stale handles are
/// ignored safely by every `Ctx` method.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
pub struct Conn {
    pub(crate) idx: u32,
    pub(crate) gen: u64,
}

impl Conn {
    /// Slot index in the shard's connection table (reused after close; use it
    /// to index per-connection arrays in the handler).
    pub fn index(&self) -> usize {
        self.idx as usize
    }

    /// A per-shard id that is never reused while the shard runs.
    pub fn id(&self) -> u64 {
        self.gen
    }
}

/// Lifecycle flags of an entry (bit set).
pub(crate) mod st {
    /// EOF or error seen on the read side: no more `on_data`.
    pub const READ_DONE: u16 = 1 << 0;
    /// `close` requested: flush, then close.
    pub const CLOSING: u16 = 1 << 1;
    /// `shutdown_write` requested: flush, then `shutdown(SHUT_WR)`.
    pub const SHUT_WR_REQ: u16 = 1 << 2;
    /// `shutdown(SHUT_WR)` done.
    pub const SHUT_WR_DONE: u16 = 1 << 3;
    /// In `Core::flush_list`.
    pub const IN_FLUSH: u16 = 1 << 4;
    /// In `Core::close_list` (close now).
    pub const IN_CLOSE: u16 = 1 << 5;
    /// `on_close` delivered; the handler can no longer see this entry.
    pub const DEAD: u16 = 1 << 6;
    /// EOF observed (for `CloseReason::PeerEof`).
    pub const EOF_SEEN: u16 = 1 << 7;
}

/// Backend-owned per-connection I/O state (plain data; buffers the kernel may
/// touch are owned by the backend itself, never by the table).
#[derive(Debug, Default)]
pub(crate) struct IoState {
    /// io_uring: operations submitted and not yet fully completed.
    pub ops: u16,
    /// Backend-specific flag bits.
    pub flags: u16,
    /// io_uring: key of the in-flight send op in the backend's send table.
    pub send_slot: Option<u32>,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub gen: u64,
    pub fd: Option<OwnedFd>,
    pub peer: SocketAddr,
    pub out: OutQueue,
    pub st: u16,
    pub reason: Option<CloseReason>,
    pub linger: Option<TimerId>,
    pub io: IoState,
}

impl Entry {
    pub fn new(gen: u64, fd: OwnedFd, peer: SocketAddr) -> Self {
        Entry {
            gen,
            fd: Some(fd),
            peer,
            out: OutQueue::default(),
            st: 0,
            reason: None,
            linger: None,
            io: IoState::default(),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    pub fn has(&self, bits: u16) -> bool {
        self.st & bits != 0
    }

    /// Visible to the handler (not yet closed from its point of view).
    pub fn visible(&self) -> bool {
        !self.has(st::DEAD)
    }

    /// Accepts new output.
    pub fn writable(&self) -> bool {
        !self.has(st::DEAD | st::CLOSING | st::IN_CLOSE | st::SHUT_WR_REQ | st::SHUT_WR_DONE)
    }

    /// Wants `on_data`.
    pub fn reading(&self) -> bool {
        !self.has(st::DEAD | st::IN_CLOSE | st::READ_DONE | st::CLOSING)
    }
}
