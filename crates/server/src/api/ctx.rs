//! [`Ctx`]: what handlers use to act.

use std::net::SocketAddr;

use bytes::Bytes;

use super::Frame;
use crate::channel::{ChannelInfo, Event};
use crate::id::ConnId;
use crate::route::PushError;
use crate::shard::{Io, ShardState};

/// What handlers use to act: send, publish, close, look up data.
///
/// A `Ctx` belongs to one shard; `push`, `close` and `subscribe` accept any
/// connection id and forward to the owning shard when needed.
pub struct Ctx<'a, D> {
    pub(crate) core: &'a mut ShardState<D>,
    pub(crate) io: &'a mut dyn Io,
}

impl<D: Default + 'static> Ctx<'_, D> {
    /// Sends a message to one connection on any shard, and in cluster mode
    /// (`--redis`) on any node. Returns false if the connection is known to
    /// be gone (or its node cannot be reached); true if it was queued or
    /// handed to its shard or to the backplane.
    pub fn push(&mut self, conn: ConnId, msg: impl Into<Frame>) -> bool {
        let frame = msg.into();
        self.core.push_from(self.io, conn, frame, None).is_ok()
    }

    /// Sends a message to every open WebSocket on every shard of this node
    /// (not to other nodes: use a topic for that). Encoded once; other
    /// shards get one mail each carrying the shared buffer.
    pub fn broadcast(&mut self, msg: impl Into<Frame>) {
        let frame = msg.into();
        self.core.broadcast(self.io, frame)
    }

    /// Like [`push`](Self::push), for a message that `origin` sends:
    /// `Err` says why it cannot arrive when that is known at once; in
    /// cluster mode a later failure reaches `origin`'s `on_notice`.
    pub fn push_as(
        &mut self,
        origin: ConnId,
        to: ConnId,
        msg: impl Into<Frame>,
    ) -> Result<(), PushError> {
        let frame = msg.into();
        self.core.push_from(self.io, to, frame, Some(origin))
    }

    /// Adds `conn` (any shard of this node) to `channel`. Returns false if
    /// it already was a member or is gone (for another shard's connection:
    /// if it is on no shard of this node).
    pub fn subscribe(&mut self, conn: ConnId, channel: &str) -> bool {
        self.core.subscribe(self.io, conn, channel, None)
    }

    /// Adds `conn` to `channel` as a presence member with `payload` (for
    /// example a user id and info): the owner numbers a join event, which
    /// the renderer ([`Server::on_channel_event`](crate::Server::on_channel_event))
    /// turns into the frame every member, the joiner first among its own
    /// events, receives; queries list the member until it leaves.
    pub fn join(&mut self, conn: ConnId, channel: &str, payload: impl Into<Bytes>) -> bool {
        self.core
            .subscribe(self.io, conn, channel, Some(payload.into()))
    }

    /// Removes `conn` from `channel` (a presence member's leave is an
    /// event). Returns false if it was not a member. Closing a connection
    /// leaves every channel it was in.
    pub fn unsubscribe(&mut self, conn: ConnId, channel: &str) -> bool {
        self.core.unsubscribe(self.io, conn, channel)
    }

    /// Sends a message to every subscriber of `channel`, on every shard, and
    /// in cluster mode on every node. All subscribers receive a channel's
    /// messages in one and the same order.
    pub fn publish(&mut self, channel: &str, msg: impl Into<Frame>) {
        let frame = msg.into();
        self.core.publish(self.io, channel, Event::Frame(frame))
    }

    /// Publishes an app event on `channel`: the owner numbers it and the
    /// renderer turns it into one frame for every subscriber, in the same
    /// order as joins and leaves. `origin`: the connection that sent it
    /// (told through `on_notice` if the cluster cannot deliver it).
    pub fn publish_event(
        &mut self,
        channel: &str,
        origin: Option<ConnId>,
        payload: impl Into<Bytes>,
    ) {
        let event = Event::Message {
            origin,
            payload: payload.into(),
        };
        self.core.publish(self.io, channel, event)
    }

    /// Whether `conn` (of this shard) is subscribed to `channel`.
    pub fn is_subscribed(&self, conn: ConnId, channel: &str) -> bool {
        self.core.membership(conn, channel).is_some()
    }

    /// The payload `conn` (of this shard) joined `channel` with, if it is a
    /// presence member there.
    pub fn presence(&self, conn: ConnId, channel: &str) -> Option<&Bytes> {
        self.core.membership(conn, channel).flatten()
    }

    /// The channels `conn` (of this shard) is subscribed to, each with
    /// whether it is a presence member there.
    pub fn subscriptions(&self, conn: ConnId) -> impl Iterator<Item = (&str, bool)> + '_ {
        self.core.channels_of(conn)
    }

    /// The counts of `channel` on this node, if it has subscribers here.
    /// Read from the owner shard's directory: it may lag that shard by the
    /// events still in flight.
    pub fn channel(&self, channel: &str) -> Option<ChannelInfo> {
        self.core.shared.directory.info(channel)
    }

    /// The channels with subscribers on this node whose name starts with
    /// `prefix`, sorted by name.
    pub fn channels(&self, prefix: &str) -> Vec<(String, ChannelInfo)> {
        self.core.shared.directory.channels(prefix)
    }

    /// The presence members of `channel` on this node, with the payloads
    /// they joined with.
    pub fn members(&self, channel: &str) -> Vec<(ConnId, Bytes)> {
        self.core.shared.directory.members(channel)
    }

    /// Starts the closing handshake with `code` and `reason` (reason is cut
    /// to 123 bytes). Data already queued is sent first.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.core.close_conn(self.io, conn, code, reason)
    }

    /// Open WebSockets in the whole process (per-shard counts summed; may
    /// lag other shards by a few events).
    pub fn connection_count(&self) -> usize {
        self.core.shared.gauges.total()
    }

    /// The open WebSockets owned by this shard.
    pub fn local_connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.core.local_ids()
    }

    /// This connection's data, if it is open and owned by this shard.
    pub fn data(&mut self, conn: ConnId) -> Option<&mut D> {
        self.core.data_mut(conn)
    }

    /// The client's address, if the connection is owned by this shard.
    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.core.peer_addr(conn)
    }

    /// Index of the shard running this handler.
    pub fn shard(&self) -> usize {
        self.core.shard
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.core.shards
    }

    /// True once a shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.io.draining()
    }

    /// Prometheus text exposition of the server's metrics.
    pub fn render_metrics(&self) -> String {
        self.core.shared.metrics.render()
    }
}
