//! Acting on connections by id, for handlers (through `Ctx`) and mail:
//! push, broadcast, close, channel membership and publishing. Where an id
//! lives is the router's answer (`crate::route`).

use std::net::SocketAddr;

use bytes::Bytes;
use ringcast_codec::{codes, is_valid_wire_code};

use super::io::{Io, Mail};
use super::table::Table;
use super::ws::kind_of_code;
use super::{count_delivery, count_sent, ShardState};
use crate::api::Frame;
use crate::channel::Event;
use crate::config::Settings;
use crate::id::ConnId;
use crate::metrics::ShardMetrics;
use crate::route::{Dest, PushError};

/// Queues `frame` for `to`, a connection of this shard, and counts it; false
/// if it is gone (or was not sent).
pub(super) fn push_here<D>(
    table: &mut Table<D>,
    io: &mut dyn Io,
    s: &Settings,
    m: &ShardMetrics,
    to: ConnId,
    frame: Frame,
) -> bool {
    let Some(slot) = table.slot_of(to) else {
        return false;
    };
    let payload_len = frame.payload_len();
    let d = table.deliver_one(io, slot, frame, s);
    count_delivery(m, d, payload_len)
}

impl<D: Default + 'static> ShardState<D> {
    /// Sends `frame` to `to` on any shard of any node (other nodes through
    /// the backplane). `origin`: the connection sending it, told by a
    /// notice if the cluster cannot deliver it.
    pub(crate) fn push_from(
        &mut self,
        io: &mut dyn Io,
        to: ConnId,
        frame: Frame,
        origin: Option<ConnId>,
    ) -> Result<(), PushError> {
        match self.router.route(to) {
            Dest::Here => match self.push_local(io, to, frame) {
                true => Ok(()),
                false => Err(PushError::Gone),
            },
            Dest::Gone => Err(PushError::Gone),
            Dest::Shard(s) => {
                self.mail(io, s, Mail::Push { to, frame });
                Ok(())
            }
            Dest::Node(_) => self.shared.push_remote(to, frame, origin),
        }
    }

    pub(super) fn push_local(&mut self, io: &mut dyn Io, to: ConnId, frame: Frame) -> bool {
        push_here(
            &mut self.table,
            io,
            &self.shared.settings,
            &self.metrics,
            to,
            frame,
        )
    }

    pub(crate) fn broadcast(&mut self, io: &mut dyn Io, frame: Frame) {
        for shard in 0..self.shards {
            if shard != self.shard {
                let m = Mail::Broadcast {
                    frame: frame.clone(),
                };
                self.mail(io, shard, m);
            }
        }
        self.deliver_all(io, &frame);
    }

    pub(super) fn deliver_all(&mut self, io: &mut dyn Io, frame: &Frame) {
        let (sent, slow) =
            self.table
                .deliver_many(io, self.all.slots(), frame, &self.shared.settings);
        count_sent(&self.metrics, sent, slow, frame.payload_len());
    }

    /// Starts closing `id` (any shard) with `code` (an invalid code becomes 1000).
    pub(crate) fn close_conn(&mut self, io: &mut dyn Io, id: ConnId, code: u16, reason: &str) {
        match self.router.route(id) {
            Dest::Here => {}
            Dest::Shard(s) => {
                let reason = reason.into();
                return self.mail(
                    io,
                    s,
                    Mail::Close {
                        to: id,
                        code,
                        reason,
                    },
                );
            }
            Dest::Node(_) | Dest::Gone => return,
        }
        let code = if is_valid_wire_code(code) {
            code
        } else {
            codes::NORMAL
        };
        let wait = self.settings().close_timeout;
        if let Some(c) = self.table.open_mut(id) {
            c.start_close(io, code, reason, kind_of_code(code), wait);
        }
    }

    pub(crate) fn local_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.all
            .slots()
            .iter()
            .filter_map(|&s| self.table.get(s).map(|c| c.id))
    }

    pub(crate) fn data_mut(&mut self, id: ConnId) -> Option<&mut D> {
        let slot = self.table.slot_of(id)?;
        self.table.get_mut(slot)?.data.as_mut()
    }

    pub(crate) fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        let slot = self.table.slot_of(id)?;
        self.table.get(slot).map(|c| c.peer)
    }

    // ------------------------------------------------------------ channels

    /// Subscribes `conn` (on any shard of this node) to `topic`; with
    /// `presence`, as a member announced to the channel.
    pub(crate) fn subscribe(
        &mut self,
        io: &mut dyn Io,
        conn: ConnId,
        topic: &str,
        presence: Option<Bytes>,
    ) -> bool {
        match self.router.route(conn) {
            Dest::Here => {
                self.with_channels(io, |ch, port| ch.subscribe(port, conn, topic, presence))
            }
            Dest::Shard(s) => {
                let topic = topic.into();
                let m = Mail::Subscribe {
                    conn,
                    topic,
                    presence,
                };
                self.mail(io, s, m);
                true
            }
            Dest::Node(_) | Dest::Gone => false,
        }
    }

    /// Removes `conn` (on any shard of this node) from `topic`.
    pub(crate) fn unsubscribe(&mut self, io: &mut dyn Io, conn: ConnId, topic: &str) -> bool {
        match self.router.route(conn) {
            Dest::Here => self.with_channels(io, |ch, port| ch.unsubscribe(port, conn, topic)),
            Dest::Shard(s) => {
                let topic = topic.into();
                self.mail(io, s, Mail::Unsubscribe { conn, topic });
                true
            }
            Dest::Node(_) | Dest::Gone => false,
        }
    }

    /// Publishes a ready frame, or an app event the owner renders.
    pub(crate) fn publish(&mut self, io: &mut dyn Io, topic: &str, event: Event) {
        self.with_channels(io, |ch, port| ch.publish(port, topic, event));
    }

    /// The payload `conn` (of this shard) joined `topic` with, if it is a
    /// presence member there; `Some(None)` for a plain subscription.
    pub(crate) fn membership(&self, conn: ConnId, topic: &str) -> Option<Option<&Bytes>> {
        let c = self.table.open(conn)?;
        let sub = c.subs.iter().find(|s| &*s.topic == topic)?;
        Some(sub.presence.as_ref())
    }

    /// The channels `conn` (of this shard) is subscribed to, and whether
    /// it is a presence member in each.
    pub(crate) fn channels_of(&self, conn: ConnId) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.table
            .open(conn)
            .into_iter()
            .flat_map(|c| c.subs.iter())
            .map(|s| (&*s.topic, s.presence.is_some()))
    }
}
