//! Topics (and chat rooms, which are topics): one order per topic across
//! shards.
//!
//! Every topic has an owner shard, `hash(topic) % shards`. Subscribes,
//! unsubscribes and publishes travel to the owner (by mailbox, FIFO from each
//! shard to each other shard), which keeps the member count per shard, numbers
//! each event ([`Core::sequence`]), encodes its frame once and sends one
//! mail per shard that has members, carrying that one shared buffer. Each
//! shard then writes it to its local subscribers. Since the owner is the only
//! place that orders a topic's events and every owner→shard path is FIFO,
//! all members see the same order; since sender→owner is FIFO, each sender's
//! messages keep their order.
//!
//! A subscription becomes active on its shard when the owner's `Activate`
//! comes back, which the owner sends before any event it sequences after the
//! subscribe. So a member receives exactly the events sequenced after it
//! joined, starting with its own join announcement in a chat room.
//!
//! Cluster mode (`--redis`, docs/scaling.md): the owner stays the one place
//! per node that handles a topic, but the order is decided by Redis. The
//! owner hands joins, leaves and messages to the backplane and fans out what
//! comes back ([`TopicMail::Remote`]), its own events included; a chat
//! member is activated when its own join event returns. While Redis is
//! unreachable the backplane hands events back unsent and the owner
//! delivers them locally, numbered by its own counter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Frame;
use crate::backplane::{FailKind, FailedOp, Inbound};
use crate::chat::{self, RoomEvent};
use crate::id::ConnId;
use crate::shard::{Core, Io, Mail};

/// Cluster mode: how long a chat member waits for its own join event from
/// Redis before it is let in anyway (the event was lost with a broken Redis
/// connection). Far above any healthy round trip, so it never cuts one short.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Topic names are shared between shards without copying.
pub(crate) type Topic = Arc<str>;

/// The owner shard of `topic`. FNV-1a: stable, cheap, no per-process seed
/// (every shard must agree, and so must a restarted process).
pub(crate) fn owner(topic: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// The mail that publishes `frame` on `topic` (sent to the owner).
pub(crate) fn publish_mail(topic: &str, frame: Frame) -> Mail {
    Mail::Topic(TopicMail::Publish {
        topic: topic.into(),
        event: Event::Frame(frame),
        origin: None,
    })
}

/// What the owner sequences: a ready frame, or a chat event it renders with
/// the room's sequence number and member count.
#[derive(Debug)]
pub(crate) enum Event {
    Frame(Frame),
    Room(RoomEvent),
}

/// Topic traffic between shards.
#[derive(Debug)]
pub(crate) enum TopicMail {
    /// To the owner: `conn` on shard `from` joins; `event` announces it.
    Subscribe {
        topic: Topic,
        from: usize,
        conn: ConnId,
        gen: u32,
        event: Option<RoomEvent>,
    },
    /// To the owner: member `conn` on shard `from` left; `event` announces it.
    Unsubscribe {
        topic: Topic,
        from: usize,
        conn: ConnId,
        event: Option<RoomEvent>,
    },
    /// To the owner: number and fan out. `origin`: the chat member who sent
    /// it (told when it cannot be delivered).
    Publish {
        topic: Topic,
        event: Event,
        origin: Option<ConnId>,
    },
    /// To the owner, from the backplane thread (cluster mode): a topic
    /// event that came back from Redis, or one Redis did not take.
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

/// A dense list of connection slots with O(1) removal. Each member remembers
/// its position (swap-remove moves the last member into the hole).
#[derive(Debug, Default)]
pub(crate) struct Members {
    slots: Vec<u32>,
}

impl Members {
    /// Adds `slot`; returns its position.
    pub fn insert(&mut self, slot: u32) -> u32 {
        self.slots.push(slot);
        (self.slots.len() - 1) as u32
    }

    /// Removes the member at `pos`; returns the slot that moved into `pos`.
    pub fn remove(&mut self, pos: u32) -> Option<u32> {
        let pos = pos as usize;
        if pos >= self.slots.len() {
            return None;
        }
        self.slots.swap_remove(pos);
        self.slots.get(pos).copied()
    }

    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// One topic membership of a connection.
#[derive(Debug)]
pub(crate) struct Sub {
    pub topic: Topic,
    /// Matches the owner's `Activate` to this subscription.
    pub gen: u32,
    /// Position in the local member list once active.
    pub pos: Option<u32>,
    /// Chat display name (rooms only); announced on join and leave.
    pub name: Option<Box<str>>,
}

/// Owner-side state of a topic.
struct Owned {
    /// Members on this node (pending ones included).
    members: usize,
    per_shard: Box<[u32]>,
    /// Last sequence number (cluster mode: the last one seen from Redis).
    seq: u64,
    /// Cluster mode: chat joins waiting for their own join event.
    pending: Vec<Pending>,
    /// Cluster mode: chat members the backplane refused (queue full); they
    /// are members on this node only.
    local_only: Vec<ConnId>,
    /// Cluster mode, API topics: the backplane holds our subscription.
    subscribed: bool,
    /// Cluster mode: the last cluster-wide member count seen.
    cluster_members: usize,
}

impl Owned {
    fn new(shards: usize) -> Owned {
        Owned {
            members: 0,
            per_shard: vec![0; shards].into_boxed_slice(),
            seq: 0,
            pending: Vec::new(),
            local_only: Vec::new(),
            subscribed: false,
            cluster_members: 0,
        }
    }
}

/// A chat member whose join went to Redis and has not come back yet.
struct Pending {
    conn: ConnId,
    name: Box<str>,
    gen: u32,
    from: usize,
    since: Instant,
    /// Left before its join came back: the entry only absorbs that event
    /// (join events of one connection return in request order).
    left: bool,
}

/// Per-shard topic tables.
#[derive(Default)]
pub(crate) struct Topics {
    /// Active local subscribers per topic.
    local: HashMap<Topic, Members>,
    /// Topics this shard owns.
    owned: HashMap<Topic, Owned>,
    /// How many of them are chat rooms (the `ringcast_rooms` gauge).
    rooms: usize,
    /// Pending joins over all owned topics (the sweep skips them at 0).
    pending: usize,
    /// API publishes the backplane refused (for the log; counted there).
    unsent: u64,
    next_gen: u32,
    /// Reused target list for fan-out.
    targets: Vec<usize>,
}

impl Topics {
    /// Reuses the shared name if this shard knows the topic.
    fn intern(&self, topic: &str) -> Topic {
        match self.local.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        }
    }
}

impl<D: Default + 'static> Core<D> {
    /// Subscribes `conn` (on any shard) to `topic`. A `name` makes it a chat
    /// membership announced to the room.
    pub(crate) fn subscribe(
        &mut self,
        io: &mut dyn Io,
        conn: ConnId,
        topic: &str,
        name: Option<Box<str>>,
    ) -> bool {
        if !self.is_ours(conn) {
            if self.is_local_node(conn) && name.is_none() {
                self.mail(
                    io,
                    conn.shard(),
                    Mail::Subscribe {
                        conn,
                        topic: topic.into(),
                    },
                );
                return true;
            }
            return false;
        }
        let topic = self.topics.intern(topic);
        let gen = self.topics.next_gen;
        let Some(c) = self.table.open_mut(conn) else {
            return false;
        };
        if c.subs.iter().any(|s| *s.topic == *topic) {
            return false;
        }
        c.subs.push(Sub {
            topic: topic.clone(),
            gen,
            pos: None,
            name: name.clone(),
        });
        self.topics.next_gen = gen.wrapping_add(1);
        let event = name.map(|name| RoomEvent::Join { name, id: conn });
        let from = self.shard;
        self.send_to_owner(
            io,
            TopicMail::Subscribe {
                topic,
                from,
                conn,
                gen,
                event,
            },
        );
        true
    }

    /// Removes `conn` (on any shard) from `topic`.
    pub(crate) fn unsubscribe(&mut self, io: &mut dyn Io, conn: ConnId, topic: &str) -> bool {
        if !self.is_ours(conn) {
            if self.is_local_node(conn) {
                self.mail(
                    io,
                    conn.shard(),
                    Mail::Unsubscribe {
                        conn,
                        topic: topic.into(),
                    },
                );
                return true;
            }
            return false;
        }
        let Some(slot) = self.table.slot_of(conn) else {
            return false;
        };
        let Some(c) = self.table.get_mut(slot) else {
            return false;
        };
        let Some(i) = c.subs.iter().position(|s| &*s.topic == topic) else {
            return false;
        };
        let sub = c.subs.swap_remove(i);
        self.drop_sub(io, conn, sub);
        true
    }

    /// Leaves `sub` locally at once (nothing more is delivered to it) and
    /// tells the owner.
    pub(crate) fn drop_sub(&mut self, io: &mut dyn Io, conn: ConnId, sub: Sub) {
        if let Some(pos) = sub.pos {
            if let Some(members) = self.topics.local.get_mut(&sub.topic) {
                if let Some(moved) = members.remove(pos) {
                    if let Some(m) = self.table.get_mut(moved) {
                        if let Some(s) = m.subs.iter_mut().find(|s| s.topic == sub.topic) {
                            s.pos = Some(pos);
                        }
                    }
                }
                if members.is_empty() {
                    self.topics.local.remove(&sub.topic);
                }
            }
        }
        let event = sub.name.map(|name| RoomEvent::Leave { name });
        let from = self.shard;
        self.send_to_owner(
            io,
            TopicMail::Unsubscribe {
                topic: sub.topic,
                from,
                conn,
                event,
            },
        );
    }

    /// Publishes a ready frame on `topic`.
    pub(crate) fn publish(&mut self, io: &mut dyn Io, topic: &str, frame: Frame) {
        let topic = self.topics.intern(topic);
        self.send_to_owner(
            io,
            TopicMail::Publish {
                topic,
                event: Event::Frame(frame),
                origin: None,
            },
        );
    }

    /// Publishes a chat event of member `origin` on `topic` (the owner
    /// renders it).
    pub(crate) fn publish_room(
        &mut self,
        io: &mut dyn Io,
        topic: Topic,
        event: RoomEvent,
        origin: ConnId,
    ) {
        self.send_to_owner(
            io,
            TopicMail::Publish {
                topic,
                event: Event::Room(event),
                origin: Some(origin),
            },
        );
    }

    fn send_to_owner(&mut self, io: &mut dyn Io, m: TopicMail) {
        let topic = match &m {
            TopicMail::Subscribe { topic, .. }
            | TopicMail::Unsubscribe { topic, .. }
            | TopicMail::Publish { topic, .. }
            | TopicMail::Activate { topic, .. }
            | TopicMail::Deliver { topic, .. } => &**topic,
            TopicMail::Remote(ev) => remote_topic(ev).unwrap_or_default(),
        };
        let o = owner(topic, self.shards);
        self.send_to_shard(io, o, m);
    }

    fn send_to_shard(&mut self, io: &mut dyn Io, shard: usize, m: TopicMail) {
        if shard == self.shard {
            self.on_topic_mail(io, m);
        } else {
            self.mail(io, shard, Mail::Topic(m));
        }
    }

    pub(crate) fn on_topic_mail(&mut self, io: &mut dyn Io, m: TopicMail) {
        match m {
            TopicMail::Subscribe {
                topic,
                from,
                conn,
                gen,
                event,
            } => self.owner_subscribe(io, topic, from, conn, gen, event),
            TopicMail::Unsubscribe {
                topic,
                from,
                conn,
                event,
            } => self.owner_unsubscribe(io, topic, from, conn, event),
            TopicMail::Publish {
                topic,
                event,
                origin,
            } => self.owner_publish(io, topic, event, origin),
            TopicMail::Remote(ev) => self.on_remote(io, *ev),
            TopicMail::Activate { topic, conn, gen } => self.activate(topic, conn, gen),
            TopicMail::Deliver { topic, frame } => self.deliver_topic(io, &topic, &frame),
        }
    }

    /// Owner: a member joins. Single node: it is let in (`Activate`) and
    /// its join is sequenced at once. Cluster: an API topic member is let in
    /// at once too; a chat join goes to Redis and the member is let in when
    /// its join event comes back (`on_remote`).
    fn owner_subscribe(
        &mut self,
        io: &mut dyn Io,
        topic: Topic,
        from: usize,
        conn: ConnId,
        gen: u32,
        event: Option<RoomEvent>,
    ) {
        let shards = self.shards;
        let topics = &mut self.topics;
        let room = topics.owned.entry(topic.clone()).or_insert_with(|| {
            if topic.starts_with(chat::ROOM_PREFIX) {
                topics.rooms += 1;
            }
            Owned::new(shards)
        });
        room.members += 1;
        room.per_shard[from] += 1;
        self.metrics.set_rooms(self.topics.rooms);
        let activate = TopicMail::Activate {
            topic: topic.clone(),
            conn,
            gen,
        };
        let Some(bp) = self.shared.backplane() else {
            // Activate first: the member must see the events sequenced
            // from here on, its own join announcement included.
            self.send_to_shard(io, from, activate);
            if let Some(ev) = event {
                self.sequence(io, &topic, Event::Room(ev));
            }
            return;
        };
        let Some(RoomEvent::Join { name, id }) = event else {
            let room = self.topics.owned.get_mut(&topic).expect("inserted above");
            if !room.subscribed {
                match bp.subscribe(&topic) {
                    Ok(()) => room.subscribed = true,
                    // Retried with the next member; until then only local
                    // publishes reach this node's subscribers.
                    Err(e) => tracing::warn!(topic = &*topic, "cannot subscribe in Redis: {e}"),
                }
            }
            self.send_to_shard(io, from, activate);
            return;
        };
        match bp.join(&topic, conn.as_u64(), chat::wire::name(&name)) {
            Ok(()) => {
                let since = io.now();
                let room = self.topics.owned.get_mut(&topic).expect("inserted above");
                room.pending.push(Pending {
                    conn,
                    name,
                    gen,
                    from,
                    since,
                    left: false,
                });
                self.topics.pending += 1;
            }
            Err(e) => {
                // Let it in here only, rather than not at all.
                tracing::warn!(
                    room = &*topic,
                    "backplane refused a join ({e}); member is local-only"
                );
                let room = self.topics.owned.get_mut(&topic).expect("inserted above");
                room.local_only.push(conn);
                self.send_to_shard(io, from, activate);
                self.sequence(io, &topic, Event::Room(RoomEvent::Join { name, id }));
                let why =
                    format!("joined on this node only: the cluster backplane is unavailable ({e})");
                self.push(io, conn, chat::error(&why).into());
            }
        }
    }

    /// Owner: a member left (its shard already stopped delivering to it).
    fn owner_unsubscribe(
        &mut self,
        io: &mut dyn Io,
        topic: Topic,
        from: usize,
        conn: ConnId,
        event: Option<RoomEvent>,
    ) {
        let Some(room) = self.topics.owned.get_mut(&topic) else {
            return;
        };
        room.members = room.members.saturating_sub(1);
        room.per_shard[from] = room.per_shard[from].saturating_sub(1);
        let cluster = self.shared.backplane().is_some();
        let mut local_only = false;
        if cluster {
            if let Some(p) = room.pending.iter_mut().find(|p| p.conn == conn && !p.left) {
                p.left = true;
            }
            if let Some(i) = room.local_only.iter().position(|c| *c == conn) {
                room.local_only.swap_remove(i);
                local_only = true;
            }
        }
        let empty = room.members == 0;
        let subscribed = room.subscribed;
        if empty {
            if let Some(gone) = self.topics.owned.remove(&topic) {
                self.topics.pending -= gone.pending.len();
            }
            if topic.starts_with(chat::ROOM_PREFIX) {
                self.topics.rooms -= 1;
                self.metrics.set_rooms(self.topics.rooms);
            }
        }
        match (self.shared.backplane(), event) {
            // Every member's join went to Redis; so does its leave, whose
            // event (with the cluster-wide count) comes back to the others.
            (Some(bp), Some(RoomEvent::Leave { name })) if !local_only => {
                bp.leave(&topic, conn.as_u64(), chat::wire::name(&name));
            }
            (Some(bp), None) if empty && subscribed => bp.unsubscribe(&topic),
            (Some(_), None) => {}
            (_, Some(ev)) if !empty => self.sequence(io, &topic, Event::Room(ev)),
            _ => {}
        }
    }

    /// Owner: a message. Single node: sequenced here. Cluster: Redis
    /// orders it; it is delivered when it comes back.
    fn owner_publish(
        &mut self,
        io: &mut dyn Io,
        topic: Topic,
        event: Event,
        origin: Option<ConnId>,
    ) {
        let Some(bp) = self.shared.backplane() else {
            return self.sequence(io, &topic, event);
        };
        let local_only = origin.is_some_and(|o| {
            self.topics
                .owned
                .get(&topic)
                .is_some_and(|r| r.local_only.contains(&o))
        });
        if local_only {
            return self.sequence(io, &topic, event);
        }
        let sent = match &event {
            Event::Frame(f) => bp.publish(&topic, f.0.clone(), None),
            Event::Room(RoomEvent::Message { name, text }) => {
                let payload = chat::wire::message(name, text);
                bp.publish_room(&topic, payload, origin.map(ConnId::as_u64))
            }
            // Joins and leaves travel as subscribe/unsubscribe.
            Event::Room(_) => return self.sequence(io, &topic, event),
        };
        // Not even queued: counted by the backplane. Delivering it here now
        // could overtake earlier messages still queued, so it is not sent.
        if let Err(e) = sent {
            match origin {
                Some(o) => {
                    let why = format!("message not sent: {e}");
                    self.push(io, o, chat::error(&why).into());
                }
                None => {
                    self.topics.unsent += 1;
                    let n = self.topics.unsent;
                    if n.is_power_of_two() {
                        tracing::warn!(topic = &*topic, unsent = n, "publish not sent: {e}");
                    }
                }
            }
        }
    }

    /// Owner, cluster mode: an event from the backplane thread.
    fn on_remote(&mut self, io: &mut dyn Io, ev: Inbound) {
        match ev {
            Inbound::Message {
                topic,
                seq,
                payload,
                ..
            } => {
                let event = match seq {
                    // A chat room message, numbered by Redis.
                    Some(_) => match chat::wire::parse_message(&payload) {
                        Some((name, text)) => Event::Room(RoomEvent::Message { name, text }),
                        None => return bad_payload(&topic),
                    },
                    None => match Frame::from_wire(payload) {
                        Some(f) => Event::Frame(f),
                        None => return bad_payload(&topic),
                    },
                };
                if let Some(key) = self.owned_key(&topic) {
                    self.sequence_as(io, &key, event, seq, None);
                }
            }
            Inbound::Member {
                room: topic,
                conn,
                joined,
                members,
                seq,
                payload,
                ..
            } => {
                let Some(name) = chat::wire::parse_name(&payload) else {
                    return bad_payload(&topic);
                };
                let conn = ConnId::from_u64(conn);
                let Some(key) = self.owned_key(&topic) else {
                    return; // no members here (any more)
                };
                if joined {
                    self.admit_pending(io, &key, conn);
                }
                let event = if joined {
                    RoomEvent::Join { name, id: conn }
                } else {
                    RoomEvent::Leave { name }
                };
                let count = Some(members as usize);
                self.sequence_as(io, &key, Event::Room(event), seq, count);
            }
            Inbound::Count { room, members, seq } => {
                if let Some(key) = self.owned_key(&room) {
                    let count = Some(members as usize);
                    let event = Event::Room(RoomEvent::Members);
                    self.sequence_as(io, &key, event, Some(seq), count);
                }
            }
            Inbound::Failed {
                op: FailedOp::Publish,
                kind,
                origin,
                topic: Some(topic),
                reason,
                payload,
            } => {
                let origin = origin.map(ConnId::from_u64);
                // Redis is down: local delivery goes on, in the order the
                // backplane handed events back (joins/leaves the same way).
                if kind == FailKind::Down {
                    let event = match origin {
                        // Only chat messages carry their sender.
                        Some(_) => chat::wire::parse_message(&payload)
                            .map(|(name, text)| Event::Room(RoomEvent::Message { name, text })),
                        None => Frame::from_wire(payload).map(Event::Frame),
                    };
                    if let (Some(event), Some(key)) = (event, self.owned_key(&topic)) {
                        self.sequence(io, &key, event);
                    }
                }
                if let Some(o) = origin {
                    let why = match kind {
                        FailKind::Down => format!(
                            "delivered on this node only: the cluster backplane is unavailable ({reason})"
                        ),
                        _ => format!("message not delivered: {reason}"),
                    };
                    self.push(io, o, chat::error(&why).into());
                }
            }
            _ => {}
        }
    }

    /// The joiner's own join event is back: let it in before that event is
    /// fanned out (same FIFO path), so it is the first event it sees.
    fn admit_pending(&mut self, io: &mut dyn Io, topic: &Topic, conn: ConnId) {
        let Some(room) = self.topics.owned.get_mut(topic) else {
            return;
        };
        let Some(i) = room.pending.iter().position(|p| p.conn == conn) else {
            return;
        };
        let p = room.pending.remove(i);
        self.topics.pending -= 1;
        if !p.left {
            let m = TopicMail::Activate {
                topic: topic.clone(),
                conn,
                gen: p.gen,
            };
            self.send_to_shard(io, p.from, m);
        }
    }

    /// Cluster mode, from the sweep: lets in members whose join event never
    /// came back (lost with a Redis connection) and tells them they joined.
    pub(crate) fn expire_pending(&mut self, io: &mut dyn Io, now: Instant) {
        if self.topics.pending == 0 {
            return;
        }
        let mut late = Vec::new();
        for (topic, room) in &mut self.topics.owned {
            let (seq, count) = (room.seq, room.cluster_members.max(room.members));
            room.pending.retain_mut(|p| {
                if now.saturating_duration_since(p.since) < JOIN_TIMEOUT {
                    return true;
                }
                if !p.left {
                    let name = std::mem::take(&mut p.name);
                    late.push((topic.clone(), p.conn, p.gen, p.from, name, seq, count));
                }
                false
            });
        }
        self.topics.pending = self.topics.owned.values().map(|r| r.pending.len()).sum();
        for (topic, conn, gen, from, name, seq, members) in late {
            tracing::warn!(room = &*topic, conn = %conn, "join not confirmed by Redis in time; letting the member in");
            let room = topic.strip_prefix(chat::ROOM_PREFIX).unwrap_or(&topic);
            let join = chat::render(room, &RoomEvent::Join { name, id: conn }, seq, members);
            let activate = TopicMail::Activate {
                topic: topic.clone(),
                conn,
                gen,
            };
            self.send_to_shard(io, from, activate);
            // To the joiner only (after its Activate, same FIFO path): the
            // others never saw this join.
            self.push(io, conn, Frame::text(&join));
        }
    }

    /// The owner orders one event of `topic`: numbers it, encodes it once and
    /// hands the shared frame to every shard with members. This is the single
    /// place a topic's order is decided on a single node (in cluster mode
    /// Redis decides and `on_remote` passes its numbers to `sequence_as`).
    pub(crate) fn sequence(&mut self, io: &mut dyn Io, topic: &Topic, event: Event) {
        self.sequence_as(io, topic, event, None, None);
    }

    /// Numbers `event` with `seq` (or the next local number), renders a chat
    /// event with `members` (or the local count) and hands the one frame to
    /// every shard with members (one mail per shard).
    fn sequence_as(
        &mut self,
        io: &mut dyn Io,
        topic: &Topic,
        event: Event,
        seq: Option<u64>,
        members: Option<usize>,
    ) {
        let Some(room) = self.topics.owned.get_mut(topic) else {
            return; // no subscribers here
        };
        room.seq = seq.unwrap_or(room.seq + 1);
        if let Some(n) = members {
            room.cluster_members = n;
        }
        let frame = match event {
            Event::Frame(f) => f,
            Event::Room(ev) => {
                let name = topic.strip_prefix(chat::ROOM_PREFIX).unwrap_or(topic);
                let count = members.unwrap_or(room.members);
                Frame::text(&chat::render(name, &ev, room.seq, count))
            }
        };
        let mut targets = std::mem::take(&mut self.topics.targets);
        targets.clear();
        targets.extend(
            room.per_shard
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(s, _)| s),
        );
        for &shard in &targets {
            if shard == self.shard {
                self.deliver_topic(io, topic, &frame);
            } else {
                let m = TopicMail::Deliver {
                    topic: topic.clone(),
                    frame: frame.clone(),
                };
                self.mail(io, shard, Mail::Topic(m));
            }
        }
        self.topics.targets = targets;
    }

    /// The shared name of a topic this shard owns (events from the
    /// backplane name it by a string of their own).
    fn owned_key(&self, topic: &str) -> Option<Topic> {
        self.topics
            .owned
            .get_key_value(topic)
            .map(|(k, _)| k.clone())
    }

    fn activate(&mut self, topic: Topic, conn: ConnId, gen: u32) {
        let Some(slot) = self.table.slot_of(conn) else {
            return;
        };
        let Some(c) = self.table.open_mut(conn) else {
            return;
        };
        let Some(sub) = c.subs.iter_mut().find(|s| s.gen == gen && s.pos.is_none()) else {
            return; // left again before the owner answered
        };
        let members = self.topics.local.entry(topic).or_default();
        sub.pos = Some(members.insert(slot));
    }

    /// Writes `frame` to this shard's subscribers of `topic`.
    fn deliver_topic(&mut self, io: &mut dyn Io, topic: &str, frame: &Frame) {
        let Some(members) = self.topics.local.get(topic) else {
            return;
        };
        let (n, slow) = self
            .table
            .deliver_many(io, members.slots(), frame, &self.shared.settings);
        self.count_sent(n, slow, frame.payload_len());
    }
}

/// The topic a backplane event is about (routes it to the owner shard).
pub(crate) fn remote_topic(ev: &Inbound) -> Option<&str> {
    match ev {
        Inbound::Message { topic, .. } => Some(topic),
        Inbound::Member { room, .. } | Inbound::Count { room, .. } => Some(room),
        Inbound::Failed {
            op: FailedOp::Publish,
            topic: Some(topic),
            ..
        } => Some(topic),
        _ => None,
    }
}

/// Another program wrote to our channel, or a node runs an incompatible
/// version: drop it (the backplane already checked the envelope).
fn bad_payload(topic: &str) {
    tracing::warn!(
        topic,
        "backplane: dropped an event whose payload does not parse"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        for shards in 1..8 {
            for t in ["a", "lobby", "chat:lobby", ""] {
                let o = owner(t, shards);
                assert!(o < shards);
                assert_eq!(o, owner(t, shards));
            }
        }
    }

    #[test]
    fn members_swap_remove() {
        let mut m = Members::default();
        assert_eq!(m.insert(10), 0);
        assert_eq!(m.insert(11), 1);
        assert_eq!(m.insert(12), 2);
        assert_eq!(m.remove(0), Some(12));
        assert_eq!(m.slots(), &[12, 11]);
        assert_eq!(m.remove(1), None);
        assert_eq!(m.len(), 1);
    }
}
