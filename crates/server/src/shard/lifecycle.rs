//! A connection's life on this shard: accepted, bytes in, EOF, closed.

use std::net::SocketAddr;

use ringcast_codec::RequestParser;
use ringcast_reactor::{CloseReason, Conn, Input};

use super::io::Io;
use super::table::Connection;
use super::ws::{Phase, WsState};
use super::ShardState;
use crate::api::Handlers;
use crate::bufpool::Received;
use crate::id::ConnId;
use crate::metrics::CloseKind;

impl<D: Default + 'static> ShardState<D> {
    pub(crate) fn accepted(&mut self, io: &mut dyn Io, conn: Conn, peer: SocketAddr) {
        self.metrics.connection_opened();
        let Some(id) = ConnId::new(self.shared.node, self.shard, conn.id()) else {
            tracing::error!(
                shard = self.shard,
                "connection ids exhausted on this shard; refusing connections"
            );
            io.abort(conn);
            return;
        };
        let s = &self.shared.settings;
        let ws = WsState::new(io.now(), s.handshake_timeout);
        let parser = RequestParser::new(s.max_header_size);
        let c = Connection::new(conn, id, peer, ws, parser);
        self.table.insert(conn.index() as u32, c);
        if self.sweep.is_none() {
            self.arm_sweep(io);
        }
    }

    pub(crate) fn data(
        &mut self,
        app: &Handlers<D>,
        io: &mut dyn Io,
        conn: Conn,
        input: Input<'_>,
    ) {
        let slot = conn.index() as u32;
        let Some(c) = self.table.get_mut(slot) else {
            return;
        };
        match c.ws.phase() {
            Phase::Handshake => self.handshake_data(app, io, slot, &input),
            Phase::Open => {
                c.ws.seen(io.now());
                let (data, lender) = input.split();
                self.decode(app, io, slot, data, Received(lender));
            }
            // Answered or failed: input is discarded.
            Phase::Failed | Phase::Done | Phase::Closed => {}
        }
        self.run_notices(app, io);
    }

    pub(crate) fn eof(&mut self, io: &mut dyn Io, conn: Conn) {
        if let Some(c) = self.table.get_mut(conn.index() as u32) {
            c.ws.eof();
        }
        io.close(conn);
    }

    /// The reactor closed the socket: report and forget the connection.
    pub(crate) fn closed(
        &mut self,
        app: &Handlers<D>,
        io: &mut dyn Io,
        conn: Conn,
        why: CloseReason,
    ) {
        let slot = conn.index() as u32;
        let Some(c) = self.table.get_mut(slot).filter(|c| c.conn == conn) else {
            // Refused in `accepted` (ids exhausted): only the metrics knew it.
            self.metrics.connection_closed(CloseKind::Error);
            return;
        };
        let was_open = c.data.is_some();
        let kind = c.ws.closed(why);
        let id = c.id;
        if was_open {
            // The user hears about it while the data is still there.
            let (code, reason) = c.ws.close_report();
            if let Some(f) = &app.close {
                let r = self.call(io, Some((id, slot)), |ctx| f(ctx, id, code, &reason));
                if r.is_err() {
                    tracing::error!(conn = %id, "on_close handler panicked");
                }
            }
        }
        let Some(c) = self.table.remove(slot) else {
            return;
        };
        self.metrics.connection_closed(kind);
        tracing::debug!(conn = %c.id, peer = %c.peer, reason = kind.as_str(), "connection closed");
        if was_open {
            if let Some(moved) = self.all.remove(c.all_pos) {
                if let Some(m) = self.table.get_mut(moved) {
                    m.all_pos = c.all_pos;
                }
            }
            self.shared.gauges.set(self.shard, self.all.len());
            if let (Some(ip), Some(per_ip)) = (c.ip, &self.shared.per_ip) {
                per_ip.release(ip);
            }
            for sub in c.subs {
                self.with_channels(io, |ch, port| ch.drop_sub(port, c.id, sub));
            }
        }
        self.run_notices(app, io);
    }
}
