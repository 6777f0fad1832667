//! What channel queries read: per channel, its counts and presence members
//! on this node, kept by the channel's owner shard.
//!
//! One map per shard, each behind its own mutex and written only by that
//! shard when a member joins or leaves one of its channels (never on the
//! message path). A query for one channel locks only its owner's map; a
//! listing locks each map in turn, so it sees every channel that was
//! occupied throughout, and may miss or include one that changed meanwhile.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

use super::{owner, ChannelInfo, Topic};
use crate::id::ConnId;

#[derive(Default)]
struct Entry {
    info: ChannelInfo,
    members: HashMap<ConnId, Bytes>,
}

/// The process's channel directory.
pub(crate) struct Directory {
    shards: Box<[Mutex<HashMap<Topic, Entry>>]>,
}

/// A change of one channel's presence members.
pub(crate) enum Presence<'a> {
    Joined(ConnId, &'a Bytes),
    Left(ConnId),
}

impl Directory {
    pub fn new(shards: usize) -> Directory {
        Directory {
            shards: (0..shards.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    fn map(&self, shard: usize) -> MutexGuard<'_, HashMap<Topic, Entry>> {
        // A panic while holding it leaves consistent counts (plain stores).
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The owner shard records `topic`'s counts after a change; a channel
    /// with no subscriptions left is removed.
    pub fn record(&self, shard: usize, topic: &Topic, info: ChannelInfo, change: Option<Presence>) {
        let mut map = self.map(shard);
        if info.subscriptions == 0 {
            map.remove(topic);
            return;
        }
        let e = map.entry(topic.clone()).or_default();
        e.info = info;
        match change {
            Some(Presence::Joined(conn, payload)) => {
                e.members.insert(conn, payload.clone());
            }
            Some(Presence::Left(conn)) => {
                e.members.remove(&conn);
            }
            None => {}
        }
    }

    /// The counts of one channel, if it has subscribers on this node.
    pub fn info(&self, channel: &str) -> Option<ChannelInfo> {
        let map = self.map(owner(channel, self.shards.len()));
        map.get(channel).map(|e| e.info)
    }

    /// The presence members of a channel: (connection, payload it joined
    /// with), sorted by connection id.
    pub fn members(&self, channel: &str) -> Vec<(ConnId, Bytes)> {
        let mut out = {
            let map = self.map(owner(channel, self.shards.len()));
            map.get(channel).map_or_else(Vec::new, |e| {
                e.members.iter().map(|(c, p)| (*c, p.clone())).collect()
            })
        };
        out.sort_unstable_by_key(|(c, _)| *c);
        out
    }

    /// Occupied channels whose name starts with `prefix`, sorted by name.
    pub fn channels(&self, prefix: &str) -> Vec<(String, ChannelInfo)> {
        let mut out = Vec::new();
        for shard in 0..self.shards.len() {
            let map = self.map(shard);
            out.extend(
                map.iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, e)| (k.to_string(), e.info)),
            );
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(subscriptions: usize, members: usize) -> ChannelInfo {
        ChannelInfo {
            subscriptions,
            members,
        }
    }

    #[test]
    fn records_counts_and_members_until_empty() {
        let d = Directory::new(3);
        let t: Topic = "presence-a".into();
        let o = owner(&t, 3);
        let (a, b) = (ConnId::new(0, 1, 1).unwrap(), ConnId::new(0, 2, 2).unwrap());
        let ann = Bytes::from_static(b"ann");
        d.record(o, &t, info(1, 1), Some(Presence::Joined(a, &ann)));
        d.record(o, &t, info(2, 2), Some(Presence::Joined(b, &ann)));
        d.record(o, &"plain".into(), info(1, 0), None);
        assert_eq!(d.info("presence-a"), Some(info(2, 2)));
        // Sorted by connection id, whatever the map's order.
        assert_eq!(
            d.members("presence-a"),
            vec![(a, ann.clone()), (b, ann.clone())]
        );
        assert_eq!(d.channels("presence-").len(), 1);
        assert_eq!(
            d.channels("")
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            ["plain", "presence-a"]
        );
        d.record(o, &t, info(1, 1), Some(Presence::Left(a)));
        assert_eq!(d.members("presence-a"), vec![(b, ann)]);
        d.record(o, &t, info(0, 0), Some(Presence::Left(b)));
        assert_eq!(d.info("presence-a"), None);
        assert!(d.members("presence-a").is_empty());
        assert_eq!(d.info("nobody"), None);
    }
}
