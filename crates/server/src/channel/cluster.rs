//! The owner's side of cluster mode (`--redis`, docs/scaling.md).
//!
//! The owner stays the one place per node that handles a channel, but the
//! order is decided by Redis: the owner hands joins, leaves and messages to
//! the backplane and fans out what comes back ([`ChannelMail::Remote`]), its
//! own events included; a presence member is activated when its own join
//! event returns. While Redis is unreachable the backplane hands events
//! back unsent and the owner delivers them locally, numbered by its own
//! counter. The backplane carries presence and message payloads opaquely.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::owner::Owned;
use super::{ChannelEvent, Channels, Event, EventKind, Port, Topic};
use crate::api::Frame;
use crate::backplane::{FailKind, FailedOp, Inbound};
use crate::id::ConnId;

/// How long a presence member waits for its own join event from Redis
/// before it is let in anyway (the event was lost with a broken Redis
/// connection). Far above any healthy round trip, so it never cuts one short.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the owner knew of a member as it left, in cluster mode.
#[derive(Clone, Copy)]
pub(super) struct Left {
    /// A presence member Redis never took: its leave stays on this node.
    local_only: bool,
    /// The node holds a Redis subscription for the channel.
    subscribed: bool,
}

impl Left {
    /// Takes `conn` out of `room`'s cluster bookkeeping.
    pub(super) fn of(room: &mut Owned, port: &dyn Port, conn: ConnId) -> Left {
        let mut local_only = false;
        if port.backplane().is_some() {
            if let Some(p) = room.pending.iter_mut().find(|p| p.conn == conn && !p.left) {
                p.left = true;
            }
            if let Some(i) = room.local_only.iter().position(|c| *c == conn) {
                room.local_only.swap_remove(i);
                local_only = true;
            }
        }
        Left {
            local_only,
            subscribed: room.subscribed,
        }
    }
}

/// A presence member whose join went to Redis and has not come back yet.
pub(crate) struct Pending {
    conn: ConnId,
    payload: Bytes,
    gen: u32,
    from: usize,
    since: Instant,
    /// Left before its join came back: the entry only absorbs that event
    /// (join events of one connection return in request order).
    left: bool,
}

impl Channels {
    /// Owner, cluster mode: a plain subscriber is let in at once (the node
    /// subscribes to the channel in Redis with its first one); a presence
    /// join goes to Redis and the member is let in when its join event
    /// comes back (`on_remote`).
    pub(super) fn cluster_subscribe(
        &mut self,
        port: &mut dyn Port,
        topic: Topic,
        from: usize,
        conn: ConnId,
        gen: u32,
        presence: Option<Bytes>,
    ) {
        let Some(bp) = port.backplane() else { return };
        let Some(payload) = presence else {
            let room = self.owned.get_mut(&topic).expect("subscribed above");
            if !room.subscribed {
                match bp.subscribe(&topic) {
                    Ok(()) => room.subscribed = true,
                    // Retried with the next member; until then only local
                    // publishes reach this node's subscribers.
                    Err(e) => tracing::warn!(topic = &*topic, "cannot subscribe in Redis: {e}"),
                }
            }
            return self.let_in(port, &topic, from, conn, gen);
        };
        match bp.join(&topic, conn.as_u64(), payload.clone()) {
            Ok(()) => {
                let since = port.now();
                let room = self.owned.get_mut(&topic).expect("subscribed above");
                room.pending.push(Pending {
                    conn,
                    payload,
                    gen,
                    from,
                    since,
                    left: false,
                });
                self.pending += 1;
            }
            Err(e) => {
                // Let it in here only, rather than not at all.
                tracing::warn!(
                    room = &*topic,
                    "backplane refused a join ({e}); member is local-only"
                );
                let room = self.owned.get_mut(&topic).expect("subscribed above");
                room.local_only.push(conn);
                self.let_in(port, &topic, from, conn, gen);
                self.sequence(port, &topic, Event::Join { conn, payload });
                let why =
                    format!("joined on this node only: the cluster backplane is unavailable ({e})");
                port.notice(conn, why);
            }
        }
    }

    /// Owner, cluster mode: what a leave does. Every member's join went to
    /// Redis; so does its leave, whose event (with the cluster-wide count)
    /// comes back to the others. A local-only member's leave is sequenced
    /// here (returns false: not handled); so is everything on a single node.
    /// The channel's Redis subscription (taken with its first plain
    /// subscriber) goes with the channel, whoever leaves last.
    pub(super) fn cluster_unsubscribe(
        &mut self,
        port: &mut dyn Port,
        topic: &Topic,
        conn: ConnId,
        presence: &Option<Bytes>,
        left: Left,
        empty: bool,
    ) -> bool {
        let Some(bp) = port.backplane() else {
            return false;
        };
        if empty && left.subscribed {
            bp.unsubscribe(topic);
        }
        match presence {
            Some(payload) if !left.local_only => bp.leave(topic, conn.as_u64(), payload.clone()),
            Some(_) => return false,
            None => {}
        }
        true
    }

    /// Owner, cluster mode: a message goes to Redis, which numbers it.
    pub(super) fn cluster_publish(&mut self, port: &mut dyn Port, topic: Topic, event: Event) {
        let origin = match &event {
            Event::Message { origin, .. } => *origin,
            _ => None,
        };
        let local_only = origin.is_some_and(|o| {
            self.owned
                .get(&topic)
                .is_some_and(|r| r.local_only.contains(&o))
        });
        if local_only {
            return self.sequence(port, &topic, event);
        }
        let Some(bp) = port.backplane() else { return };
        let sent = match &event {
            Event::Frame(f) => bp.publish(&topic, f.0.clone(), None),
            Event::Message { origin, payload } => {
                bp.publish_room(&topic, payload.clone(), origin.map(ConnId::as_u64))
            }
            // Joins and leaves travel as subscribe/unsubscribe.
            _ => return self.sequence(port, &topic, event),
        };
        // Not even queued: counted by the backplane. Delivering it here now
        // could overtake earlier messages still queued, so it is not sent.
        if let Err(e) = sent {
            match origin {
                Some(o) => port.notice(o, format!("message not sent: {e}")),
                None => {
                    self.unsent += 1;
                    let n = self.unsent;
                    if n.is_power_of_two() {
                        tracing::warn!(topic = &*topic, unsent = n, "publish not sent: {e}");
                    }
                }
            }
        }
    }

    /// Owner, cluster mode: an event from the backplane thread.
    pub(super) fn on_remote(&mut self, port: &mut dyn Port, ev: Inbound) {
        match ev {
            Inbound::Message {
                topic,
                seq,
                payload,
                origin,
            } => {
                let event = match seq {
                    // An app message, numbered by Redis.
                    Some(_) => Event::Message {
                        origin: origin.map(ConnId::from_u64),
                        payload,
                    },
                    None => match Frame::from_wire(payload) {
                        Some(f) => Event::Frame(f),
                        None => return bad_payload(&topic),
                    },
                };
                if let Some(key) = self.owned_key(&topic) {
                    self.sequence_as(port, &key, event, seq, None);
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
                let conn = ConnId::from_u64(conn);
                let Some(key) = self.owned_key(&topic) else {
                    return; // no members here (any more)
                };
                let event = if joined {
                    self.admit_pending(port, &key, conn);
                    Event::Join { conn, payload }
                } else {
                    Event::Leave { conn, payload }
                };
                let count = Some(members as usize);
                self.sequence_as(port, &key, event, seq, count);
            }
            Inbound::Count { room, members, seq } => {
                if let Some(key) = self.owned_key(&room) {
                    let count = Some(members as usize);
                    self.sequence_as(port, &key, Event::Members, Some(seq), count);
                }
            }
            Inbound::Failed {
                op: FailedOp::Publish { room },
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
                    let event = if room {
                        Some(Event::Message { origin, payload })
                    } else {
                        Frame::from_wire(payload).map(Event::Frame)
                    };
                    if let (Some(event), Some(key)) = (event, self.owned_key(&topic)) {
                        self.sequence(port, &key, event);
                    }
                }
                if let Some(o) = origin {
                    let why = match kind {
                        FailKind::Down => format!(
                            "delivered on this node only: the cluster backplane is unavailable ({reason})"
                        ),
                        _ => format!("message not delivered: {reason}"),
                    };
                    port.notice(o, why);
                }
            }
            _ => {}
        }
    }

    /// The shared name of a channel this shard owns (events from the
    /// backplane name it by a string of their own).
    fn owned_key(&self, topic: &str) -> Option<Topic> {
        self.owned.get_key_value(topic).map(|(k, _)| k.clone())
    }

    /// The joiner's own join event is back: let it in before that event is
    /// fanned out (same FIFO path), so it is the first event it sees.
    fn admit_pending(&mut self, port: &mut dyn Port, topic: &Topic, conn: ConnId) {
        let Some(room) = self.owned.get_mut(topic) else {
            return;
        };
        let Some(i) = room.pending.iter().position(|p| p.conn == conn) else {
            return;
        };
        let p = room.pending.remove(i);
        self.pending -= 1;
        if !p.left {
            self.let_in(port, topic, p.from, conn, p.gen);
        }
    }

    /// Cluster mode, from the sweep: lets in members whose join event never
    /// came back (lost with a Redis connection) and shows them their join.
    pub fn expire_pending(&mut self, port: &mut dyn Port, now: Instant) {
        if self.pending == 0 {
            return;
        }
        let mut late = Vec::new();
        for (topic, room) in &mut self.owned {
            let (seq, count) = (room.seq, room.member_count());
            room.pending.retain_mut(|p| {
                if now.saturating_duration_since(p.since) < JOIN_TIMEOUT {
                    return true;
                }
                if !p.left {
                    let payload = std::mem::take(&mut p.payload);
                    late.push((topic.clone(), p.conn, p.gen, p.from, payload, seq, count));
                }
                false
            });
        }
        self.pending = self.owned.values().map(|r| r.pending.len()).sum();
        for (topic, conn, gen, from, payload, seq, members) in late {
            tracing::warn!(room = &*topic, conn = %conn, "join not confirmed by Redis in time; letting the member in");
            let join = port.render(&ChannelEvent {
                channel: &topic,
                seq,
                members,
                kind: EventKind::Join {
                    conn,
                    payload: &payload,
                },
            });
            self.let_in(port, &topic, from, conn, gen);
            // To the joiner only (after its Activate, same FIFO path): the
            // others never saw this join.
            if let Some(frame) = join {
                port.push(conn, frame);
            }
        }
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
