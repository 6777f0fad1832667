//! The HTTP side of a connection: reading the request head, answering
//! plain requests, checking and accepting upgrades, refusing the rest.

use std::sync::Arc;

use ringcast_codec::{error_response, response_101, Decoder, DecoderConfig, Request, Role};

use super::io::Io;
use super::ShardState;
use crate::api::{Handlers, Response};
use crate::bufpool::{Received, ShardPool};
use crate::metrics::CloseKind;

impl<D: Default + 'static> ShardState<D> {
    pub(super) fn handshake_data(
        &mut self,
        app: &Handlers<D>,
        io: &mut dyn Io,
        slot: u32,
        data: &[u8],
    ) {
        let Some(c) = self.table.get_mut(slot) else {
            return;
        };
        c.ws.saw_bytes();
        let Some(parser) = c.parser.as_mut() else {
            return;
        };
        match parser.push(data) {
            Ok(None) => {}
            Err(e) => self.refuse(io, slot, e.status, e.reason),
            Ok(Some(req)) => {
                let rest = parser.take_remaining();
                c.parser = None;
                self.request(app, io, slot, req, rest);
            }
        }
    }

    /// Answers with an HTTP error and closes.
    fn refuse(&mut self, io: &mut dyn Io, slot: u32, status: u16, reason: &str) {
        if let Some(c) = self.table.get(slot) {
            tracing::debug!(conn = %c.id, peer = %c.peer, status, reason, "handshake refused");
        }
        self.metrics.handshake_failure(status);
        self.answer(
            io,
            slot,
            error_response(status, &format!("{reason}\n")),
            CloseKind::HandshakeFailed,
        );
    }

    fn respond(&mut self, io: &mut dyn Io, slot: u32, resp: &Response, head_only: bool) {
        // A successful plain request (the page, /metrics, /healthz) is a
        // normal close; only error statuses are failed handshakes.
        let kind = if resp.status() >= 400 {
            self.metrics.handshake_failure(resp.status());
            CloseKind::HandshakeFailed
        } else {
            CloseKind::Normal
        };
        self.answer(io, slot, resp.encode(head_only), kind);
    }

    /// Sends the one HTTP response of this connection, then a lingering
    /// close: shut our write side and discard input until the client closes
    /// (or `close-timeout`). Closing at once while request bytes are still
    /// unread would reset the connection and could destroy the response
    /// before the client reads it.
    pub(super) fn answer(
        &mut self,
        io: &mut dyn Io,
        slot: u32,
        response: Vec<u8>,
        kind: CloseKind,
    ) {
        let wait = self.settings().close_timeout;
        let Some(c) = self.table.get_mut(slot) else {
            return;
        };
        io.send(c.conn, response.into());
        io.shutdown_write(c.conn);
        c.parser = None;
        c.ws.answered(io.now(), wait, kind);
    }

    /// A complete request head: plain HTTP, or an upgrade to check.
    fn request(
        &mut self,
        app: &Handlers<D>,
        io: &mut dyn Io,
        slot: u32,
        req: Request,
        rest: Vec<u8>,
    ) {
        if !req.wants_upgrade() {
            let resp = match &app.request {
                Some(f) => {
                    let r = self.call(io, None, |ctx| f(ctx, &req));
                    r.unwrap_or_else(|_| {
                        tracing::error!(path = req.path(), "on_request handler panicked");
                        Response::text(500, "internal error\n")
                    })
                }
                None => Response::not_found(),
            };
            self.respond(io, slot, &resp, req.method() == "HEAD");
            return;
        }
        let key = match req.validate_upgrade() {
            Ok(k) => k.to_string(),
            Err(e) => return self.refuse(io, slot, e.status, e.reason),
        };
        if let Some(f) = &app.upgrade {
            match self.call(io, None, |_| f(&req)) {
                Ok(Ok(())) => {}
                Ok(Err(resp)) => return self.respond(io, slot, &resp, false),
                Err(_) => {
                    tracing::error!(path = req.path(), "on_upgrade handler panicked");
                    return self.refuse(io, slot, 500, "internal error");
                }
            }
        }
        if io.draining() {
            return self.refuse(io, slot, 503, "server is shutting down");
        }
        // Handshake time, not the message path: one refcount bump is fine.
        let shared = Arc::clone(&self.shared);
        let s = &shared.settings;
        if !s.allowed_origins.allows(req.origin()) {
            return self.refuse(io, slot, 403, "origin not allowed");
        }
        if shared.gauges.total() >= s.max_connections {
            return self.refuse(io, slot, 503, "too many connections");
        }
        let Some(c) = self.table.get_mut(slot) else {
            return;
        };
        if let Some(per_ip) = &shared.per_ip {
            let ip = c.peer.ip().to_canonical();
            if !per_ip.try_acquire(ip) {
                return self.refuse(io, slot, 503, "too many connections from your address");
            }
            c.ip = Some(ip);
        }

        // Accepted.
        io.send(c.conn, response_101(&key, None).into());
        c.ws.opened(io.now(), s.ping_interval);
        c.decoder = Some(Box::new(Decoder::with_pool(
            DecoderConfig {
                role: Role::Server,
                max_message_size: s.max_message_size,
                allow_rsv1: false,
            },
            ShardPool,
        )));
        c.data = Some(D::default());
        c.all_pos = self.all.insert(slot);
        let id = c.id;
        self.shared.gauges.set(self.shard, self.all.len());
        tracing::debug!(conn = %id, peer = %c.peer, path = req.path(), "websocket open");

        if let Some(f) = &app.open {
            let r = self.call(io, Some((id, slot)), |ctx| f(ctx, id, &req));
            if r.is_err() {
                self.handler_panicked(io, slot, "on_open");
            }
        }
        if !rest.is_empty() {
            let mut rest = rest;
            self.decode(app, io, slot, &mut rest, Received(None));
        }
    }
}
