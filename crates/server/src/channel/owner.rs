//! The owner side of channels: the one shard per channel that counts its
//! members, numbers its events and renders each once.
//!
//! Single node: the owner orders everything itself ([`Channels::sequence`]).
//! Cluster mode: Redis orders, and the owner fans out what comes back
//! (`cluster.rs`).

use bytes::Bytes;

#[cfg(feature = "cluster")]
use super::cluster::Pending;
use super::directory::Presence;
use super::{ChannelEvent, ChannelInfo, ChannelMail, Channels, Event, Port, Topic};
use crate::id::ConnId;

/// Owner-side state of a channel.
pub(crate) struct Owned {
    /// Subscriptions on this node (pending ones included).
    pub members: usize,
    /// Presence members among them.
    pub presence: usize,
    pub per_shard: Box<[u32]>,
    /// Last sequence number (cluster mode: the last one seen from Redis).
    pub seq: u64,
    /// Cluster mode: presence joins waiting for their own join event.
    #[cfg(feature = "cluster")]
    pub pending: Vec<Pending>,
    /// Cluster mode: presence members the backplane refused (queue full);
    /// they are members on this node only.
    #[cfg(feature = "cluster")]
    pub local_only: Vec<ConnId>,
    /// Cluster mode, plain subscriptions: the backplane holds ours.
    #[cfg(feature = "cluster")]
    pub subscribed: bool,
    /// Cluster mode: the last cluster-wide member count seen.
    #[cfg(feature = "cluster")]
    pub cluster_members: usize,
}

impl Owned {
    fn new(shards: usize) -> Owned {
        Owned {
            members: 0,
            presence: 0,
            per_shard: vec![0; shards].into_boxed_slice(),
            seq: 0,
            #[cfg(feature = "cluster")]
            pending: Vec::new(),
            #[cfg(feature = "cluster")]
            local_only: Vec::new(),
            #[cfg(feature = "cluster")]
            subscribed: false,
            #[cfg(feature = "cluster")]
            cluster_members: 0,
        }
    }

    /// Presence members as far as this owner knows: in cluster mode the
    /// last cluster-wide count Redis gave (an event without a count, an app
    /// message, shows that one too).
    pub fn member_count(&self) -> usize {
        #[cfg(feature = "cluster")]
        return self.cluster_members.max(self.presence);
        #[cfg(not(feature = "cluster"))]
        self.presence
    }

    fn info(&self) -> ChannelInfo {
        ChannelInfo {
            subscriptions: self.members,
            members: self.presence,
        }
    }
}

impl Channels {
    /// Owner: `conn` on shard `from` subscribes. Single node: it is let in
    /// (`Activate`) and its join is sequenced at once. Cluster: see
    /// `cluster_subscribe`.
    pub(super) fn owner_subscribe(
        &mut self,
        port: &mut dyn Port,
        topic: Topic,
        from: usize,
        conn: ConnId,
        gen: u32,
        presence: Option<Bytes>,
    ) {
        let shards = port.shards();
        let room = self
            .owned
            .entry(topic.clone())
            .or_insert_with(|| Owned::new(shards));
        room.members += 1;
        room.per_shard[from] += 1;
        if presence.is_some() {
            room.presence += 1;
            if room.presence == 1 {
                self.presence_channels += 1;
            }
        }
        port.set_presence_channels(self.presence_channels);
        let change = presence.as_ref().map(|p| Presence::Joined(conn, p));
        self.record(port, &topic, change);
        #[cfg(feature = "cluster")]
        if port.backplane().is_some() {
            return self.cluster_subscribe(port, topic, from, conn, gen, presence);
        }
        // Activate first: the member must see the events sequenced from
        // here on, its own join included.
        self.let_in(port, &topic, from, conn, gen);
        if let Some(payload) = presence {
            self.sequence(port, &topic, Event::Join { conn, payload });
        }
    }

    /// Owner: `conn` on shard `from` left (its shard already stopped
    /// delivering to it).
    pub(super) fn owner_unsubscribe(
        &mut self,
        port: &mut dyn Port,
        topic: Topic,
        from: usize,
        conn: ConnId,
        presence: Option<Bytes>,
    ) {
        let Some(room) = self.owned.get_mut(&topic) else {
            return;
        };
        room.members = room.members.saturating_sub(1);
        room.per_shard[from] = room.per_shard[from].saturating_sub(1);
        if presence.is_some() && room.presence > 0 {
            room.presence -= 1;
            if room.presence == 0 {
                self.presence_channels -= 1;
                port.set_presence_channels(self.presence_channels);
            }
        }
        #[cfg(feature = "cluster")]
        let left = super::cluster::Left::of(room, port, conn);
        let empty = room.members == 0;
        self.record(
            port,
            &topic,
            presence.is_some().then_some(Presence::Left(conn)),
        );
        if empty {
            let _gone = self.owned.remove(&topic);
            #[cfg(feature = "cluster")]
            if let Some(gone) = _gone {
                self.pending -= gone.pending.len();
            }
        }
        #[cfg(feature = "cluster")]
        if self.cluster_unsubscribe(port, &topic, conn, &presence, left, empty) {
            return;
        }
        if let (Some(payload), false) = (presence, empty) {
            self.sequence(port, &topic, Event::Leave { conn, payload })
        }
    }

    /// Owner: a message. Single node: sequenced here. Cluster: Redis
    /// orders it; it is delivered when it comes back.
    pub(super) fn owner_publish(&mut self, port: &mut dyn Port, topic: Topic, event: Event) {
        #[cfg(feature = "cluster")]
        if port.backplane().is_some() {
            return self.cluster_publish(port, topic, event);
        }
        self.sequence(port, &topic, event)
    }

    /// The owner orders one event of `topic`: numbers it, renders it once
    /// and hands the shared frame to every shard with members. This is the
    /// single place a channel's order is decided on a single node (in
    /// cluster mode Redis decides and `on_remote` passes its numbers to
    /// `sequence_as`).
    pub(super) fn sequence(&mut self, port: &mut dyn Port, topic: &Topic, event: Event) {
        self.sequence_as(port, topic, event, None, None);
    }

    /// Numbers `event` with `seq` (or the next local number), renders an app
    /// event with `members` (or the local count) and hands the one frame to
    /// every shard with members (one mail per shard).
    pub(super) fn sequence_as(
        &mut self,
        port: &mut dyn Port,
        topic: &Topic,
        event: Event,
        seq: Option<u64>,
        members: Option<usize>,
    ) {
        let Some(room) = self.owned.get_mut(topic) else {
            return; // no subscribers here
        };
        // Redis's numbers are taken as they come (a forged one cannot
        // overflow ours).
        room.seq = seq.unwrap_or(room.seq.saturating_add(1));
        #[cfg(feature = "cluster")]
        if let Some(n) = members {
            room.cluster_members = n;
        }
        let frame = match event {
            Event::Frame(f) => f,
            ev => {
                let Some(kind) = ev.kind() else { return };
                let ev = ChannelEvent {
                    channel: topic,
                    seq: room.seq,
                    members: members.unwrap_or_else(|| room.member_count()),
                    kind,
                };
                match port.render(&ev) {
                    Some(f) => f,
                    None => return,
                }
            }
        };
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        targets.extend(
            room.per_shard
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(s, _)| s),
        );
        for &shard in &targets {
            if shard == port.shard() {
                self.deliver(port, topic, &frame);
            } else {
                let m = ChannelMail::Deliver {
                    topic: topic.clone(),
                    frame: frame.clone(),
                };
                port.mail(shard, m);
            }
        }
        self.targets = targets;
    }

    /// Lets subscription `gen` of `conn` (on shard `from`) in: from now on
    /// its shard delivers this channel's events to it.
    pub(super) fn let_in(
        &mut self,
        port: &mut dyn Port,
        topic: &Topic,
        from: usize,
        conn: ConnId,
        gen: u32,
    ) {
        let m = ChannelMail::Activate {
            topic: topic.clone(),
            conn,
            gen,
        };
        self.send_to_shard(port, from, m);
    }

    /// Publishes `topic`'s counts (and a member change) for queries.
    fn record(&self, port: &dyn Port, topic: &Topic, change: Option<Presence>) {
        let info = self.owned.get(topic).map(Owned::info).unwrap_or_default();
        self.directory.record(port.shard(), topic, info, change);
    }
}
