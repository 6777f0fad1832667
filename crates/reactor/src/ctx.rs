//! `Ctx`: what a handler callback may do. Every method only records an intent
//! in the shard's core; I/O happens after the callback returns.

use crate::config::Backend;
use crate::conn::Conn;
use crate::core::Core;
use crate::handler::CloseReason;
use crate::timer::TimerId;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Handle to the shard, passed to every [`Handler`](crate::Handler) callback.
pub struct Ctx<'a, M> {
    pub(crate) core: &'a mut Core<M>,
}

impl<'a, M: Send + 'static> Ctx<'a, M> {
    /// Index of this shard (0-based).
    pub fn shard(&self) -> usize {
        self.core.shard
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.core.shared.shards()
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.core.backend
    }

    /// Time at the start of this loop iteration (cached; no syscall).
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// Queue `buf` for `conn`. Returns false if the connection is gone, closing
    /// or shut down for writing. There is no limit: a handler that bounds a
    /// connection's queue checks [`queued_bytes`](Self::queued_bytes) first.
    pub fn send(&mut self, conn: Conn, buf: Bytes) -> bool {
        self.core.send(conn, std::iter::once(buf))
    }

    /// Queue several buffers (e.g. header + shared payload); they go out in one
    /// `sendmsg` when possible.
    pub fn send_parts(&mut self, conn: Conn, parts: &[Bytes]) -> bool {
        self.core.send(conn, parts.iter().cloned())
    }

    /// Bytes queued for `conn` and not yet written (0 for a stale handle).
    /// The reactor's one backpressure fact: it applies no threshold, so any
    /// slow-consumer policy (drop, close, pause) belongs to the handler.
    pub fn queued_bytes(&self, conn: Conn) -> usize {
        self.core.get(conn).map_or(0, |e| e.out.len())
    }

    /// Flush what is queued, then close. Bounded by `Config::close_timeout` and
    /// by the shutdown drain deadline. Received data is discarded from now on.
    pub fn close(&mut self, conn: Conn) {
        self.core.close(conn)
    }

    /// Close now and discard the queue.
    pub fn abort(&mut self, conn: Conn) {
        self.core.abort(conn, CloseReason::Local)
    }

    /// After the queue flushes, `shutdown(SHUT_WR)`; reading continues.
    pub fn shutdown_write(&mut self, conn: Conn) {
        self.core.shutdown_write(conn)
    }

    /// The peer address captured at accept.
    pub fn peer_addr(&self, conn: Conn) -> Option<SocketAddr> {
        self.core.get(conn).map(|e| e.peer)
    }

    /// Whether `conn` still refers to an open connection.
    pub fn is_open(&self, conn: Conn) -> bool {
        self.core.get(conn).is_some()
    }

    /// Send `m` to shard `shard` (may be this one: delivered on a later pass
    /// of the loop, never inside this call). If the target mailbox is full the
    /// message waits in a bounded local outbox (FIFO per target preserved);
    /// `Err(m)` only if that outbox is full too, or `shard` is out of range.
    pub fn mail(&mut self, shard: usize, m: M) -> Result<(), M> {
        self.core.mail(shard, m)
    }

    /// Arm a one-shot timer; `on_timer(id, data)` fires no earlier than `after`.
    pub fn timer(&mut self, after: Duration, data: u64) -> TimerId {
        self.core.timer(after, data)
    }

    /// Cancel a timer (stale ids are ignored).
    pub fn cancel_timer(&mut self, id: TimerId) {
        self.core.timers.cancel(id)
    }

    /// Re-arm a pending timer, or the one being delivered in `on_timer`, to
    /// fire `after` from now. Returns the same id. A timer that already fired
    /// (outside its own `on_timer`) or was cancelled is not revived; its id is
    /// returned unchanged and stays inert.
    pub fn reset_timer(&mut self, id: TimerId, after: Duration) -> TimerId {
        let now = self.core.now;
        self.core.timers.reset(now, id, after)
    }

    /// Ask every shard to stop gracefully (drain deadline `Config::drain_timeout`).
    pub fn stop_all(&self) {
        self.core.shared.stop(None)
    }

    /// Handler-visible connections on this shard.
    pub fn connection_count(&self) -> usize {
        self.core.live
    }

    /// A stop was requested: this shard is draining, or starts to at the
    /// end of this loop pass. (Checking only the former let a request that
    /// arrived in the same pass as the stop see "not draining".)
    pub fn is_draining(&self) -> bool {
        self.core.draining || self.core.shared.stop_requested()
    }
}
