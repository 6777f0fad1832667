//! Frames in: decoding a connection's bytes and running the user's
//! handlers. Every user callback goes through [`ShardState::call`].

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ringcast_codec::codes;

use super::io::Io;
use super::ws::{kind_of_code, Incoming};
use super::ShardState;
use crate::api::{Ctx, Handlers};
use crate::bufpool::Received;
use crate::id::ConnId;
use crate::metrics::CloseKind;

impl<D: Default + 'static> ShardState<D> {
    pub(super) fn decode<'a>(
        &mut self,
        app: &Handlers<D>,
        io: &mut dyn Io,
        slot: u32,
        data: &'a mut [u8],
        mut lend: Received<'a>,
    ) {
        let Some(mut decoder) = self.table.get_mut(slot).and_then(|c| c.decoder.take()) else {
            return;
        };
        let r = decoder.decode_framed(data, &mut lend, |msg, frame| {
            self.frame(app, io, slot, msg, frame)
        });
        match r {
            Ok(()) => {
                if let Some(c) = self.table.get_mut(slot) {
                    if c.ws.is_open() {
                        // Between messages an idle connection keeps no buffer;
                        // never in the middle of one (that would copy it again
                        // on every read).
                        if decoder.buffered() == 0 {
                            decoder.shrink();
                        }
                        c.decoder = Some(decoder);
                    }
                }
            }
            Err(e) => self.fail(io, slot, e.code, e.reason),
        }
    }

    fn frame(
        &mut self,
        app: &Handlers<D>,
        io: &mut dyn Io,
        slot: u32,
        msg: ringcast_codec::Message<'_>,
        frame: Option<&bytes::Bytes>,
    ) -> ControlFlow<()> {
        let Some(c) = self.table.get_mut(slot) else {
            return ControlFlow::Break(());
        };
        let user = match c.ws.on_frame(msg, frame) {
            Incoming::Data(m) => m,
            Incoming::Reply(pong) => {
                // A client that pings without reading must not grow its
                // queue without bound: past max-backpressure its pings go
                // unanswered (RFC 6455 5.5.3 lets a pong answer only the
                // latest ping; the pongs already queued do).
                if io.queued(c.conn) <= self.shared.settings.max_backpressure {
                    io.send(c.conn, pong);
                }
                return ControlFlow::Continue(());
            }
            Incoming::Ignore => return ControlFlow::Continue(()),
            Incoming::Stop => return ControlFlow::Break(()),
            Incoming::Closed { reply, close_tcp } => {
                if let Some(reply) = reply {
                    io.send(c.conn, reply);
                }
                if close_tcp {
                    io.close(c.conn);
                }
                return ControlFlow::Break(());
            }
        };
        self.metrics.message_received(user.as_bytes().len());
        let id = c.id;
        if let Some(f) = &app.message {
            let r = self.call(io, Some((id, slot)), |ctx| f(ctx, id, user));
            if r.is_err() {
                self.handler_panicked(io, slot, "on_message");
            }
        }
        ControlFlow::Continue(())
    }

    /// Runs one user callback, for connection `conn` if given. Every user
    /// callback goes through here: a panic is caught (the caller decides
    /// what it means for the connection) and never unwinds into the shard.
    pub(super) fn call<R>(
        &mut self,
        io: &mut dyn Io,
        conn: Option<(ConnId, u32)>,
        f: impl FnOnce(&mut Ctx<'_, D>) -> R,
    ) -> std::thread::Result<R> {
        let outer = self.table.current;
        self.table.current = conn.map(|(id, slot)| (id.seq(), slot));
        let r = catch_unwind(AssertUnwindSafe(|| {
            f(&mut Ctx {
                core: &mut *self,
                io: &mut *io,
            })
        }));
        self.table.current = outer;
        r
    }

    pub(super) fn handler_panicked(&mut self, io: &mut dyn Io, slot: u32, which: &str) {
        let wait = self.settings().close_timeout;
        if let Some(c) = self.table.get_mut(slot) {
            tracing::error!(conn = %c.id, handler = which, "handler panicked; closing the connection with 1011");
            c.ws.set_kind(CloseKind::Panic);
            c.start_close(
                io,
                codes::INTERNAL,
                "internal error",
                CloseKind::Panic,
                wait,
            );
        }
    }

    /// The client broke the protocol: send the close code, shut our write
    /// side, then wait for its EOF (closing at once could reset the
    /// connection before the client reads the close frame).
    fn fail(&mut self, io: &mut dyn Io, slot: u32, code: u16, reason: &str) {
        let wait = self.settings().close_timeout;
        let Some(c) = self.table.get_mut(slot) else {
            return;
        };
        tracing::debug!(conn = %c.id, code, reason, kind = kind_of_code(code).as_str(), "protocol error");
        if let Some(frame) = c.ws.fail(code, reason, io.now(), wait) {
            io.send(c.conn, frame);
        }
        c.decoder = None;
        // The app hears `on_close` later; no more messages reach it.
        io.shutdown_write(c.conn);
    }
}
