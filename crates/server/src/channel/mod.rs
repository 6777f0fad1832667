//! Channels: named groups of connections with one order per channel across
//! shards (and nodes), and optional presence.
//!
//! Every channel has an owner shard, `hash(channel) % shards`. Subscribes,
//! joins, leaves and publishes travel to the owner (by mailbox, FIFO from
//! each shard to each other shard), which counts members per shard, numbers
//! each event with the channel's `seq`, has it rendered once (a ready
//! [`Frame`](crate::Frame), or the app's renderer turning a
//! [`ChannelEvent`] into one) and sends one mail per shard that has
//! members, carrying that one shared buffer. Each shard then writes it to
//! its local subscribers. The owner is the only place that orders a
//! channel's events and every owner→shard path is FIFO, so all members see
//! the same order; sender→owner is FIFO, so each sender's messages keep
//! their order.
//!
//! A subscription becomes active on its shard when the owner's `Activate`
//! comes back, which the owner sends before any event it sequences after the
//! subscribe. So a member receives exactly the events sequenced after it
//! joined, starting with its own join event on a presence channel.
//!
//! A presence member joins with an opaque payload (a user id and info, a
//! display name): its join and leave become events, and queries list it.
//!
//! The pieces: `subscriber` (a connection's side: memberships, activation,
//! local fan-out), `owner` (ordering, counting, rendering), `cluster` (the
//! owner's side of the Redis backplane: Redis orders, the owner fans out
//! what comes back), `directory` (the counts and member lists that queries
//! read from any thread).

#[cfg(feature = "cluster")]
mod cluster;
mod directory;
mod owner;
mod subscriber;

use std::sync::Arc;

use bytes::Bytes;

use crate::api::Frame;
#[cfg(feature = "cluster")]
use crate::backplane::Inbound;
use crate::id::ConnId;

pub(crate) use directory::Directory;
pub(crate) use subscriber::{Members, Sub};

use std::collections::HashMap;
use std::time::Instant;

#[cfg(feature = "cluster")]
use crate::backplane::Backplane;

/// Channel names are shared between shards without copying.
pub(crate) type Topic = Arc<str>;

/// The owner shard of `channel`. FNV-1a: stable, cheap, no per-process seed
/// (every shard must agree, and so must a restarted process).
pub(crate) fn owner(channel: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// One numbered event of a channel, for the app's renderer (registered
/// with [`Server::on_channel_event`](crate::Server::on_channel_event)).
/// Rendered once, on the channel's owner shard; the frame is shared by
/// every recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelEvent<'a> {
    /// The channel's name.
    pub channel: &'a str,
    /// The channel's event number: 1, 2, 3, ... while it has members (in
    /// cluster mode, numbered by Redis for the whole cluster).
    pub seq: u64,
    /// Presence members after the event (cluster mode: on every node, once
    /// known).
    pub members: usize,
    /// What happened.
    pub kind: EventKind<'a>,
}

/// What a [`ChannelEvent`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind<'a> {
    /// `conn` joined with `payload` (see [`Ctx::join`](crate::Ctx::join)).
    /// Its own join is the first event it receives from the channel.
    Join { conn: ConnId, payload: &'a [u8] },
    /// `conn`, which had joined with `payload`, left (it receives nothing
    /// more).
    Leave { conn: ConnId, payload: &'a [u8] },
    /// An app message (see [`Ctx::publish_event`](crate::Ctx::publish_event)),
    /// from `origin` if a connection sent it.
    Message {
        origin: Option<ConnId>,
        payload: &'a [u8],
    },
    /// Cluster mode: the member count changed without a join or leave (a
    /// node stopped, or re-registered its members after a Redis outage).
    Members,
}

/// The counts of a channel, on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Connections subscribed (presence members included).
    pub subscriptions: usize,
    /// Presence members (connections that joined with a payload).
    pub members: usize,
}

/// What the channel engine needs from its shard: the connection table's
/// memberships, mail, delivery, and the app's renderer. The engine itself
/// holds no connection and does no I/O.
pub(crate) trait Port {
    /// This shard's index, and how many there are.
    fn shard(&self) -> usize;
    fn shards(&self) -> usize;
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))] // used by cluster mode
    fn now(&self) -> Instant;
    /// An open connection of this shard: its slot and memberships.
    fn subs(&mut self, conn: ConnId) -> Option<(u32, &mut Vec<Sub>)>;
    /// The memberships of the connection in `slot`.
    fn subs_at(&mut self, slot: u32) -> Option<&mut Vec<Sub>>;
    /// Mail to another shard (FIFO per target).
    fn mail(&mut self, shard: usize, m: ChannelMail);
    /// Writes `frame` to these local connections (slow-consumer policy
    /// applied, counted in the metrics).
    fn deliver(&mut self, slots: &[u32], frame: &Frame);
    /// Sends `frame` to one connection of this node.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))] // used by cluster mode
    fn push(&mut self, conn: ConnId, frame: Frame);
    /// Tells connection `conn` (any shard of this node) that something it
    /// asked for went wrong (the app's `on_notice`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))] // used by cluster mode
    fn notice(&mut self, conn: ConnId, text: String);
    /// The app's frame for an event; `None` drops it.
    fn render(&self, ev: &ChannelEvent<'_>) -> Option<Frame>;
    /// Cluster mode: the backplane.
    #[cfg(feature = "cluster")]
    fn backplane(&self) -> Option<&Backplane>;
    /// The `ringcast_rooms` gauge: presence channels this shard owns.
    fn set_presence_channels(&self, n: usize);
}

/// One shard's channel state: its subscribers' side and the channels it
/// owns.
pub(crate) struct Channels {
    /// Active local subscribers per channel.
    local: HashMap<Topic, Members>,
    next_gen: u32,
    /// Channels this shard owns.
    owned: HashMap<Topic, owner::Owned>,
    /// How many of them have presence members (the `ringcast_rooms` gauge).
    presence_channels: usize,
    /// Pending joins over all owned channels (the sweep skips them at 0).
    #[cfg(feature = "cluster")]
    pending: usize,
    /// API publishes the backplane refused (for the log; counted there).
    #[cfg(feature = "cluster")]
    unsent: u64,
    /// Reused target list for fan-out.
    targets: Vec<usize>,
    /// What queries read; this shard writes its owned channels' entries.
    directory: Arc<Directory>,
}

impl Channels {
    pub fn new(directory: Arc<Directory>) -> Channels {
        Channels {
            local: HashMap::new(),
            next_gen: 0,
            owned: HashMap::new(),
            presence_channels: 0,
            #[cfg(feature = "cluster")]
            pending: 0,
            #[cfg(feature = "cluster")]
            unsent: 0,
            targets: Vec::new(),
            directory,
        }
    }

    /// Reuses the shared name if this shard knows the channel.
    fn intern(&self, topic: &str) -> Topic {
        match self.local.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        }
    }

    /// Sends `m` to the owner of its channel (handled here if that is us).
    pub fn send_to_owner(&mut self, port: &mut dyn Port, m: ChannelMail) {
        let o = owner(m.topic().unwrap_or_default(), port.shards());
        self.send_to_shard(port, o, m);
    }

    fn send_to_shard(&mut self, port: &mut dyn Port, shard: usize, m: ChannelMail) {
        if shard == port.shard() {
            self.on_mail(port, m);
        } else {
            port.mail(shard, m);
        }
    }

    pub fn on_mail(&mut self, port: &mut dyn Port, m: ChannelMail) {
        match m {
            ChannelMail::Subscribe {
                topic,
                from,
                conn,
                gen,
                presence,
            } => self.owner_subscribe(port, topic, from, conn, gen, presence),
            ChannelMail::Unsubscribe {
                topic,
                from,
                conn,
                presence,
            } => self.owner_unsubscribe(port, topic, from, conn, presence),
            ChannelMail::Publish { topic, event } => self.owner_publish(port, topic, event),
            #[cfg(feature = "cluster")]
            ChannelMail::Remote(ev) => self.on_remote(port, *ev),
            ChannelMail::Activate { topic, conn, gen } => self.activate(port, topic, conn, gen),
            ChannelMail::Deliver { topic, frame } => self.deliver(port, &topic, &frame),
        }
    }
}

/// What the owner orders.
#[derive(Debug)]
pub(crate) enum Event {
    /// A ready frame (`publish`).
    Frame(Frame),
    /// Rendered by the app with the channel's number and count.
    Join {
        conn: ConnId,
        payload: Bytes,
    },
    Leave {
        conn: ConnId,
        payload: Bytes,
    },
    Message {
        origin: Option<ConnId>,
        payload: Bytes,
    },
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))] // used by cluster mode
    Members,
}

impl Event {
    fn kind(&self) -> Option<EventKind<'_>> {
        Some(match self {
            Event::Frame(_) => return None,
            Event::Join { conn, payload } => EventKind::Join {
                conn: *conn,
                payload,
            },
            Event::Leave { conn, payload } => EventKind::Leave {
                conn: *conn,
                payload,
            },
            Event::Message { origin, payload } => EventKind::Message {
                origin: *origin,
                payload,
            },
            Event::Members => EventKind::Members,
        })
    }
}

/// Channel traffic between shards.
#[derive(Debug)]
pub(crate) enum ChannelMail {
    /// To the owner: `conn` on shard `from` subscribes; `presence`: it
    /// joins as a member with that payload.
    Subscribe {
        topic: Topic,
        from: usize,
        conn: ConnId,
        gen: u32,
        presence: Option<Bytes>,
    },
    /// To the owner: `conn` on shard `from` left; `presence`: the payload
    /// it had joined with.
    Unsubscribe {
        topic: Topic,
        from: usize,
        conn: ConnId,
        presence: Option<Bytes>,
    },
    /// To the owner: number and fan out.
    Publish { topic: Topic, event: Event },
    /// To the owner, from the backplane thread (cluster mode): a channel
    /// event that came back from Redis, or one Redis did not take.
    #[cfg(feature = "cluster")]
    Remote(Box<Inbound>),
    /// From the owner: the subscription `gen` of `conn` now receives events.
    Activate {
        topic: Topic,
        conn: ConnId,
        gen: u32,
    },
    /// From the owner: write `frame` to the local subscribers.
    Deliver { topic: Topic, frame: Frame },
}

impl ChannelMail {
    /// The channel this mail is about (routes it to the owner shard).
    pub fn topic(&self) -> Option<&str> {
        match self {
            ChannelMail::Subscribe { topic, .. }
            | ChannelMail::Unsubscribe { topic, .. }
            | ChannelMail::Publish { topic, .. }
            | ChannelMail::Activate { topic, .. }
            | ChannelMail::Deliver { topic, .. } => Some(topic),
            #[cfg(feature = "cluster")]
            ChannelMail::Remote(ev) => remote_topic(ev),
        }
    }
}

/// The mail that publishes `frame` on `channel` (sent to the owner).
pub(crate) fn publish_mail(channel: &str, frame: Frame) -> ChannelMail {
    ChannelMail::Publish {
        topic: channel.into(),
        event: Event::Frame(frame),
    }
}

/// The channel a backplane event is about (routes it to the owner shard).
#[cfg(feature = "cluster")]
pub(crate) fn remote_topic(ev: &Inbound) -> Option<&str> {
    use crate::backplane::FailedOp;
    match ev {
        Inbound::Message { topic, .. } => Some(topic),
        Inbound::Member { room, .. } | Inbound::Count { room, .. } => Some(room),
        Inbound::Failed {
            op: FailedOp::Publish { .. },
            topic: Some(topic),
            ..
        } => Some(topic),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        for shards in 1..8 {
            for t in ["a", "lobby", "room:lobby", ""] {
                let o = owner(t, shards);
                assert!(o < shards);
                assert_eq!(o, owner(t, shards));
            }
        }
        // Fixed across processes and versions: nodes and restarts agree.
        assert_eq!(owner("lobby", 7), owner("lobby", 7));
        assert_ne!(
            (0..64).map(|i| owner(&format!("c{i}"), 4)).min(),
            (0..64).map(|i| owner(&format!("c{i}"), 4)).max(),
            "channels spread over the shards"
        );
    }

    #[test]
    fn events_show_their_kind_to_the_renderer() {
        let id = ConnId::new(1, 0, 5).unwrap();
        let join = Event::Join {
            conn: id,
            payload: Bytes::from_static(b"ann"),
        };
        assert_eq!(
            join.kind(),
            Some(EventKind::Join {
                conn: id,
                payload: b"ann"
            })
        );
        assert_eq!(Event::Frame(Frame::text("x")).kind(), None);
        assert_eq!(Event::Members.kind(), Some(EventKind::Members));
    }

    #[test]
    fn mail_names_its_channel() {
        let m = publish_mail("news", Frame::text("x"));
        assert_eq!(m.topic(), Some("news"));
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn remote_mail_names_its_channel_if_it_has_one() {
        let up = ChannelMail::Remote(Box::new(Inbound::Up { node: 1 }));
        assert_eq!(up.topic(), None);
    }
}
