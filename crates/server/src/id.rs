//! Connection ids.
//!
//! A [`ConnId`] is a `u64` laid out as
//!
//! ```text
//!  63        54 53        44 43                                  0
//! +------------+------------+-------------------------------------+
//! |  node (10) | shard (10) |              seq (44)               |
//! +------------+------------+-------------------------------------+
//! ```
//!
//! `seq` is the reactor's per-shard connection counter, which starts at 1 and
//! never repeats while the process runs (2^44 connections per shard is more
//! than 5 years at 100 000 new connections per second; past that the shard
//! refuses upgrades rather than reuse an id). So an id names one connection
//! for the life of the process, and with distinct node ids, across a cluster.

use std::fmt;

const SEQ_BITS: u32 = 44;
const SHARD_BITS: u32 = 10;
const NODE_BITS: u32 = 10;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const SHARD_MASK: u64 = (1 << SHARD_BITS) - 1;

/// Largest shard count an id can carry.
pub const MAX_SHARDS: usize = 1 << SHARD_BITS;
/// Largest node id.
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

/// A connection, unique for the life of the process (see the module docs for
/// the bit layout).
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// Builds an id; `None` if a part does not fit its field.
    pub fn new(node: u16, shard: usize, seq: u64) -> Option<ConnId> {
        if node > MAX_NODE || shard >= MAX_SHARDS || seq > SEQ_MASK {
            return None;
        }
        Some(ConnId(
            (u64::from(node) << (SEQ_BITS + SHARD_BITS)) | ((shard as u64) << SEQ_BITS) | seq,
        ))
    }

    /// The raw `u64` (stable; suitable for logs and the wire).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Rebuilds an id from [`as_u64`](Self::as_u64).
    pub fn from_u64(v: u64) -> ConnId {
        ConnId(v)
    }

    /// The node (server process) the connection lives on.
    pub fn node(self) -> u16 {
        (self.0 >> (SEQ_BITS + SHARD_BITS)) as u16
    }

    /// The shard (event-loop thread) that owns the connection.
    pub fn shard(self) -> usize {
        ((self.0 >> SEQ_BITS) & SHARD_MASK) as usize
    }

    /// Per-shard sequence number.
    pub fn seq(self) -> u64 {
        self.0 & SEQ_MASK
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({}:{}:{})", self.node(), self.shard(), self.seq())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips() {
        let id = ConnId::new(7, 3, 12345).unwrap();
        assert_eq!((id.node(), id.shard(), id.seq()), (7, 3, 12345));
        assert_eq!(ConnId::from_u64(id.as_u64()), id);
        let max = ConnId::new(MAX_NODE, MAX_SHARDS - 1, SEQ_MASK).unwrap();
        assert_eq!(
            (max.node(), max.shard(), max.seq()),
            (MAX_NODE, MAX_SHARDS - 1, SEQ_MASK)
        );
        assert!(ConnId::new(0, MAX_SHARDS, 1).is_none());
        assert!(ConnId::new(MAX_NODE + 1, 0, 1).is_none());
        assert!(ConnId::new(0, 0, SEQ_MASK + 1).is_none());
    }
}
