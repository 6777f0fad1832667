//! The subscriber side of channels, on the shard that owns the connection:
//! its memberships, their activation by the owner, and writing each event
//! to the local members.

use bytes::Bytes;

use super::{ChannelMail, Channels, Event, Port, Topic};
use crate::api::Frame;
use crate::id::ConnId;

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

/// One channel membership of a connection.
#[derive(Debug)]
pub(crate) struct Sub {
    pub topic: Topic,
    /// Matches the owner's `Activate` to this subscription.
    pub gen: u32,
    /// Position in the local member list once active.
    pub pos: Option<u32>,
    /// Presence members: the payload it joined with.
    pub presence: Option<Bytes>,
}

impl Channels {
    /// Subscribes `conn`, an open connection of this shard. `presence`
    /// makes it a member announced to the channel. False if it already was
    /// subscribed or is gone.
    pub fn subscribe(
        &mut self,
        port: &mut dyn Port,
        conn: ConnId,
        topic: &str,
        presence: Option<Bytes>,
    ) -> bool {
        let topic = self.intern(topic);
        let gen = self.next_gen;
        let Some((_, subs)) = port.subs(conn) else {
            return false;
        };
        if subs.iter().any(|s| *s.topic == *topic) {
            return false;
        }
        subs.push(Sub {
            topic: topic.clone(),
            gen,
            pos: None,
            presence: presence.clone(),
        });
        self.next_gen = gen.wrapping_add(1);
        let from = port.shard();
        self.send_to_owner(
            port,
            ChannelMail::Subscribe {
                topic,
                from,
                conn,
                gen,
                presence,
            },
        );
        true
    }

    /// Unsubscribes `conn`, a connection of this shard. False if it was not
    /// subscribed.
    pub fn unsubscribe(&mut self, port: &mut dyn Port, conn: ConnId, topic: &str) -> bool {
        let Some((_, subs)) = port.subs(conn) else {
            return false;
        };
        let Some(i) = subs.iter().position(|s| &*s.topic == topic) else {
            return false;
        };
        let sub = subs.swap_remove(i);
        self.drop_sub(port, conn, sub);
        true
    }

    /// Leaves `sub` locally at once (nothing more is delivered to it) and
    /// tells the owner.
    pub fn drop_sub(&mut self, port: &mut dyn Port, conn: ConnId, sub: Sub) {
        if let Some(pos) = sub.pos {
            if let Some(members) = self.local.get_mut(&sub.topic) {
                if let Some(moved) = members.remove(pos) {
                    if let Some(subs) = port.subs_at(moved) {
                        if let Some(s) = subs.iter_mut().find(|s| s.topic == sub.topic) {
                            s.pos = Some(pos);
                        }
                    }
                }
                if members.is_empty() {
                    self.local.remove(&sub.topic);
                }
            }
        }
        let from = port.shard();
        self.send_to_owner(
            port,
            ChannelMail::Unsubscribe {
                topic: sub.topic,
                from,
                conn,
                presence: sub.presence,
            },
        );
    }

    /// Sends `event` to the owner of `topic` to be numbered and fanned out.
    pub fn publish(&mut self, port: &mut dyn Port, topic: &str, event: Event) {
        let topic = self.intern(topic);
        self.send_to_owner(port, ChannelMail::Publish { topic, event });
    }

    /// The owner let subscription `gen` of `conn` in.
    pub fn activate(&mut self, port: &mut dyn Port, topic: Topic, conn: ConnId, gen: u32) {
        let Some((slot, subs)) = port.subs(conn) else {
            return;
        };
        let Some(sub) = subs.iter_mut().find(|s| s.gen == gen && s.pos.is_none()) else {
            return; // left again before the owner answered
        };
        let members = self.local.entry(topic).or_default();
        sub.pos = Some(members.insert(slot));
    }

    /// Writes `frame` to this shard's subscribers of `topic`.
    pub fn deliver(&self, port: &mut dyn Port, topic: &str, frame: &Frame) {
        if let Some(members) = self.local.get(topic) {
            port.deliver(members.slots(), frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(m.remove(5), None);
        assert!(!m.is_empty());
    }
}
