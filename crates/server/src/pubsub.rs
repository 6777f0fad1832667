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

use std::collections::HashMap;
use std::sync::Arc;

use crate::api::Frame;
use crate::chat::{self, RoomEvent};
use crate::id::ConnId;
use crate::shard::{Core, Io, Mail};

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
    /// To the owner: a member on shard `from` left; `event` announces it.
    Unsubscribe {
        topic: Topic,
        from: usize,
        event: Option<RoomEvent>,
    },
    /// To the owner: number and fan out.
    Publish { topic: Topic, event: Event },
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
    members: usize,
    per_shard: Box<[u32]>,
    seq: u64,
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
        let event = name.map(|name| RoomEvent::Join { name });
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
        self.drop_sub(io, sub);
        true
    }

    /// Leaves `sub` locally at once (nothing more is delivered to it) and
    /// tells the owner.
    pub(crate) fn drop_sub(&mut self, io: &mut dyn Io, sub: Sub) {
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
            },
        );
    }

    /// Publishes a chat event on `topic` (the owner renders it).
    pub(crate) fn publish_room(&mut self, io: &mut dyn Io, topic: Topic, event: RoomEvent) {
        self.send_to_owner(
            io,
            TopicMail::Publish {
                topic,
                event: Event::Room(event),
            },
        );
    }

    fn send_to_owner(&mut self, io: &mut dyn Io, m: TopicMail) {
        let topic = match &m {
            TopicMail::Subscribe { topic, .. }
            | TopicMail::Unsubscribe { topic, .. }
            | TopicMail::Publish { topic, .. }
            | TopicMail::Activate { topic, .. }
            | TopicMail::Deliver { topic, .. } => topic,
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
            } => {
                let shards = self.shards;
                let topics = &mut self.topics;
                let room = topics.owned.entry(topic.clone()).or_insert_with(|| {
                    if topic.starts_with(chat::ROOM_PREFIX) {
                        topics.rooms += 1;
                    }
                    Owned {
                        members: 0,
                        per_shard: vec![0; shards].into_boxed_slice(),
                        seq: 0,
                    }
                });
                room.members += 1;
                room.per_shard[from] += 1;
                self.metrics.set_rooms(self.topics.rooms);
                // Activate first: the member must see the events sequenced
                // from here on, its own join announcement included.
                self.send_to_shard(
                    io,
                    from,
                    TopicMail::Activate {
                        topic: topic.clone(),
                        conn,
                        gen,
                    },
                );
                if let Some(ev) = event {
                    self.sequence(io, &topic, Event::Room(ev));
                }
            }
            TopicMail::Unsubscribe { topic, from, event } => {
                let Some(room) = self.topics.owned.get_mut(&topic) else {
                    return;
                };
                room.members = room.members.saturating_sub(1);
                room.per_shard[from] = room.per_shard[from].saturating_sub(1);
                if room.members == 0 {
                    self.topics.owned.remove(&topic);
                    if topic.starts_with(chat::ROOM_PREFIX) {
                        self.topics.rooms -= 1;
                        self.metrics.set_rooms(self.topics.rooms);
                    }
                } else if let Some(ev) = event {
                    self.sequence(io, &topic, Event::Room(ev));
                }
            }
            TopicMail::Publish { topic, event } => self.sequence(io, &topic, event),
            TopicMail::Activate { topic, conn, gen } => self.activate(topic, conn, gen),
            TopicMail::Deliver { topic, frame } => self.deliver_topic(io, &topic, &frame),
        }
    }

    /// The owner orders one event of `topic`: numbers it, encodes it once and
    /// hands the shared frame to every shard with members. This is the single
    /// place a topic's order is decided (a multi-node backplane replaces this
    /// step with "publish to the backplane, deliver what comes back").
    pub(crate) fn sequence(&mut self, io: &mut dyn Io, topic: &Topic, event: Event) {
        let Some(room) = self.topics.owned.get_mut(topic) else {
            return; // no subscribers anywhere
        };
        room.seq += 1;
        let frame = match event {
            Event::Frame(f) => f,
            Event::Room(ev) => {
                let name = topic.strip_prefix(chat::ROOM_PREFIX).unwrap_or(topic);
                Frame::text(&chat::render(name, &ev, room.seq, room.members))
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
        self.count_sent(n, slow, frame);
    }
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
