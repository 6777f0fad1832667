//! Where a connection id lives: the one router by connection id.
//!
//! A [`ConnId`] names its node and shard (see `id`), so finding a
//! connection needs no lookup table: this shard's table, another shard's
//! mailbox, or the backplane to another node. Every path that acts on a
//! connection by id (push, close, subscribe, notices, the backplane's
//! inbound pushes) asks [`Router::route`], so the rules live here once.

#[cfg(feature = "cluster")]
use crate::backplane::SendError;
use crate::id::ConnId;

/// Where to send something addressed to a connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    /// On the shard asking (look it up in its table).
    Here,
    /// On shard `n` of this node (mail it there).
    Shard(usize),
    /// On another node (through the backplane, if there is one).
    Node(u16),
    /// On this node, but no such shard: the id cannot be ours.
    Gone,
}

/// Routes ids for one node, as seen from one shard (or from no shard: a
/// user thread or the backplane thread).
#[derive(Copy, Clone, Debug)]
pub(crate) struct Router {
    pub node: u16,
    pub shards: usize,
    /// The shard asking, if any.
    pub here: Option<usize>,
}

impl Router {
    pub fn route(&self, id: ConnId) -> Dest {
        if id.node() != self.node {
            return Dest::Node(id.node());
        }
        match id.shard() {
            s if s >= self.shards => Dest::Gone,
            s if Some(s) == self.here => Dest::Here,
            s => Dest::Shard(s),
        }
    }

    /// The shard of this node that owns `id`, if any.
    pub fn local_shard(&self, id: ConnId) -> Option<usize> {
        match self.route(id) {
            Dest::Here => self.here,
            Dest::Shard(s) => Some(s),
            Dest::Node(_) | Dest::Gone => None,
        }
    }
}

/// Why a push was not handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError {
    /// No such connection (or no way to reach its node).
    Gone,
    /// The backplane did not take it.
    #[cfg(feature = "cluster")]
    Backplane(SendError),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Gone => f.write_str("not connected"),
            #[cfg(feature = "cluster")]
            PushError::Backplane(e) => write!(f, "cannot reach it: {e}"),
        }
    }
}

impl std::error::Error for PushError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_node_then_shard() {
        let r = Router {
            node: 3,
            shards: 4,
            here: Some(1),
        };
        let id = |node, shard| ConnId::new(node, shard, 9).unwrap();
        assert_eq!(r.route(id(3, 1)), Dest::Here);
        assert_eq!(r.route(id(3, 2)), Dest::Shard(2));
        assert_eq!(r.route(id(3, 4)), Dest::Gone);
        assert_eq!(r.route(id(5, 1)), Dest::Node(5));
        assert_eq!(r.local_shard(id(3, 1)), Some(1));
        assert_eq!(r.local_shard(id(3, 0)), Some(0));
        assert_eq!(r.local_shard(id(5, 0)), None);
        // From a thread that is no shard, nothing is "here".
        let outside = Router { here: None, ..r };
        assert_eq!(outside.route(id(3, 1)), Dest::Shard(1));
    }
}
