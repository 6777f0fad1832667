//! The application-facing callback trait.
//!
//! One handler instance exists per shard and is built on the shard thread, so
//! it may hold `Rc`/`RefCell` state. The reactor never calls a handler
//! re-entrantly: everything a callback asks for through [`Ctx`] (sends, closes,
//! timers, mail) is recorded and carried out after the callback returns, and
//! the notification that results (`on_close`) is delivered as a separate call.

use crate::conn::Conn;
use crate::ctx::Ctx;
use crate::lend::Input;
use crate::timer::TimerId;
use std::net::SocketAddr;

/// Why a connection went away.
#[derive(Copy, Clone, Debug, Eq, PartialEq, Hash)]
pub enum CloseReason {
    /// The handler closed or aborted it.
    Local,
    /// The peer closed its side (EOF) and the connection was then closed.
    PeerEof,
    /// The peer reset the connection (`ECONNRESET`, `EPIPE`).
    Reset,
    /// Any other socket error (`TimedOut` = `close` could not flush within `close_timeout`).
    Error(std::io::ErrorKind),
    /// Still open when the shutdown drain deadline passed.
    Shutdown,
}

/// Per-shard application logic. See the crate docs for the threading model.
pub trait Handler: 'static {
    /// Message type carried by the cross-shard mailboxes.
    type Mail: Send + 'static;

    /// Called once on the shard thread, after the handler was built and the
    /// listeners are set up, before the loop handles any event (so before any
    /// `on_open`, `on_mail` or `on_timer` on this shard). Arm periodic timers
    /// here. Every shard has had it by the time [`start`](crate::start)
    /// returns. Other shards may already be running: mail sent here is
    /// delivered once the target's loop runs. Default: nothing.
    fn on_start(&mut self, ctx: &mut Ctx<'_, Self::Mail>) {
        let _ = ctx;
    }

    /// A connection was accepted on this shard (or, on a shared inherited
    /// listener, accepted by another shard and handed to this one).
    fn on_open(&mut self, ctx: &mut Ctx<'_, Self::Mail>, conn: Conn, peer: SocketAddr);

    /// Bytes received, in order. `data` is mutable so the codec can unmask in
    /// place. Valid only during the call.
    fn on_data(&mut self, ctx: &mut Ctx<'_, Self::Mail>, conn: Conn, data: &mut [u8]);

    /// Bytes received, as the backend's buffer: a handler that keeps parts
    /// of them past the call can borrow the buffer instead of copying (see
    /// [`Input::split`]). What the reactor calls; the default passes the
    /// bytes to `on_data`.
    fn on_input(&mut self, ctx: &mut Ctx<'_, Self::Mail>, conn: Conn, input: Input<'_>) {
        self.on_data(ctx, conn, input.split().0)
    }

    /// The peer closed its write side (EOF). Default: `ctx.close(conn)`.
    fn on_eof(&mut self, ctx: &mut Ctx<'_, Self::Mail>, conn: Conn) {
        ctx.close(conn)
    }

    /// The connection is gone (after which `conn` is invalid). Exactly once per `on_open`.
    fn on_close(&mut self, ctx: &mut Ctx<'_, Self::Mail>, conn: Conn, why: CloseReason);

    /// A timer armed with `ctx.timer` expired. `ctx.reset_timer(timer, ..)`
    /// inside this call re-arms it (periodic timers).
    fn on_timer(&mut self, ctx: &mut Ctx<'_, Self::Mail>, timer: TimerId, data: u64);

    /// A message arrived from `Ctx::mail` or `Handle::mail`.
    fn on_mail(&mut self, ctx: &mut Ctx<'_, Self::Mail>, mail: Self::Mail);

    /// Called once per loop iteration after events were processed.
    fn on_tick(&mut self, ctx: &mut Ctx<'_, Self::Mail>) {
        let _ = ctx;
    }

    /// Stop requested: listeners are closed; queue final frames now. The shard
    /// keeps running (timers, mail, I/O) until every connection is closed or
    /// the drain deadline passes, then closes whatever remains.
    fn on_shutdown(&mut self, ctx: &mut Ctx<'_, Self::Mail>);
}
