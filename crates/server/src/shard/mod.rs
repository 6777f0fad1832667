//! One shard's server logic: the reactor handler that turns bytes into
//! WebSocket events and back.
//!
//! Data flows one way: the reactor hands received bytes to [`ShardState::data`],
//! the codec decodes them, the connection's [`ws::WsState`] says what each
//! frame means, user handlers run, and what they send goes back through the
//! codec's encoders to the reactor's send queue.
//!
//! The pieces: `table` (the connections and the slow-consumer policy),
//! `ws` (one connection's WebSocket state machine, sans I/O), `lifecycle`
//! (accepted, bytes in, EOF, closed), `handshake`
//! (the HTTP side: requests, upgrades, refusals), `frames` (decoding and the
//! user's handlers), `send` (acting on connections by id: push, broadcast,
//! close, channel membership), `io` (the reactor seen from here, and the
//! mail between shards).
//!
//! Everything here runs on the shard's own thread; other shards are reached
//! only through [`Mail`].

mod frames;
mod handshake;
mod io;
mod lifecycle;
mod send;
mod table;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcast_codec::{codes, error_response, server_frame, OpCode};
use ringcast_reactor::{CloseReason, Conn, Input, TimerId};

pub(crate) use io::{mail_waiting, Io, Mail};

use crate::api::{Frame, Handlers, RenderFn};
#[cfg(feature = "cluster")]
use crate::backplane::Backplane;
use crate::channel::{ChannelEvent, ChannelMail, Channels, Directory, Members, Port, Sub};
use crate::cluster::Link;
use crate::config::Settings;
use crate::id::ConnId;
use crate::limits::{Gauges, PerIp};
use crate::metrics::{CloseKind, Metrics, ShardMetrics};
use crate::route::{Dest, PushError, Router};
use crate::systemd::Notifier;
use io::Outbox;
use table::Table;
use ws::{Due, Phase, Timeouts};

/// Read-only state shared by all shards (plus per-shard gauges that only
/// their own shard writes).
pub(crate) struct Shared {
    pub settings: Settings,
    /// This node's id (from `--node-id`, or allocated by the backplane).
    pub node: u16,
    /// Cluster mode (`--redis`): the link to the other nodes.
    pub cluster: Option<Link>,
    pub metrics: Arc<Metrics>,
    pub gauges: Gauges,
    pub per_ip: Option<PerIp>,
    pub notifier: Arc<Notifier>,
    /// Channel counts and presence members, for queries.
    pub directory: Arc<Directory>,
}

impl Shared {
    /// The backplane, in cluster mode.
    #[cfg(feature = "cluster")]
    pub fn backplane(&self) -> Option<&Backplane> {
        self.cluster.as_ref().map(|l| &l.backplane)
    }

    /// A push to a connection of another node: through the backplane, or
    /// nowhere on a single node.
    #[cfg(feature = "cluster")]
    pub fn push_remote(
        &self,
        to: ConnId,
        frame: Frame,
        origin: Option<ConnId>,
    ) -> Result<(), PushError> {
        let bp = self.backplane().ok_or(PushError::Gone)?;
        bp.push(to.node(), to.as_u64(), frame.0, origin.map(ConnId::as_u64))
            .map_err(PushError::Backplane)
    }

    /// Without cluster support no other node is reachable.
    #[cfg(not(feature = "cluster"))]
    pub fn push_remote(&self, _: ConnId, _: Frame, _: Option<ConnId>) -> Result<(), PushError> {
        Err(PushError::Gone)
    }
}

/// Timer data of the periodic sweep.
const SWEEP: u64 = 1;

/// A shard's server state. User handlers get it through [`Ctx`](crate::Ctx).
pub(crate) struct ShardState<D> {
    pub shard: usize,
    pub shards: usize,
    pub shared: Arc<Shared>,
    pub metrics: Arc<ShardMetrics>,
    pub(crate) table: Table<D>,
    router: Router,
    /// Open WebSockets on this shard (for broadcast).
    all: Members,
    channels: Channels,
    outbox: Outbox,
    /// The app's channel event renderer.
    render: Option<Arc<RenderFn>>,
    /// Notices for connections of this shard, for `on_notice` once the
    /// current callback is done.
    notices: Vec<(ConnId, Box<str>)>,
    sweep: Option<TimerId>,
    sweep_every: Duration,
    ping: Bytes,
    /// Reused list of timed-out handshakes (see `sweep_now`).
    expired: Vec<u32>,
}

/// How often timeouts are checked: fine enough for the shortest one.
fn sweep_period(s: &Settings, watchdog: Option<Duration>) -> Duration {
    let mut p = Duration::from_secs(1);
    for d in [
        s.ping_interval,
        s.idle_timeout,
        s.handshake_timeout,
        s.close_timeout,
    ] {
        if !d.is_zero() {
            p = p.min(d / 4);
        }
    }
    if let Some(w) = watchdog {
        p = p.min(w / 4);
    }
    p.max(Duration::from_millis(20))
}

impl<D: Default + 'static> ShardState<D> {
    pub fn new(
        shard: usize,
        shards: usize,
        shared: Arc<Shared>,
        render: Option<Arc<RenderFn>>,
    ) -> ShardState<D> {
        let metrics = shared.metrics.shards()[shard].clone();
        let sweep_every = sweep_period(&shared.settings, shared.notifier.watchdog_interval());
        let router = Router {
            node: shared.node,
            shards,
            here: Some(shard),
        };
        ShardState {
            shard,
            shards,
            metrics,
            table: Table::new(router),
            router,
            all: Members::default(),
            channels: Channels::new(shared.directory.clone()),
            shared,
            outbox: Outbox::new(shard, shards),
            render,
            notices: Vec::new(),
            sweep: None,
            sweep_every,
            ping: server_frame(OpCode::Ping, b""),
            expired: Vec::new(),
        }
    }

    fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Sends mail to another shard, FIFO per target.
    pub(crate) fn mail(&mut self, io: &mut dyn Io, shard: usize, m: Mail) {
        self.outbox.mail(io, shard, m);
    }

    pub(crate) fn on_mail(&mut self, app: &Handlers<D>, io: &mut dyn Io, m: Mail) {
        match m {
            Mail::Push { to, frame } => {
                self.push_local(io, to, frame);
            }
            Mail::Close { to, code, reason } => self.close_conn(io, to, code, &reason),
            Mail::Broadcast { frame } => self.deliver_all(io, &frame),
            Mail::Subscribe {
                conn,
                topic,
                presence,
            } => {
                self.subscribe(io, conn, &topic, presence);
            }
            Mail::Unsubscribe { conn, topic } => {
                self.unsubscribe(io, conn, &topic);
            }
            Mail::Notice { to, text } => self.notices.push((to, text)),
            Mail::Channel(m) => self.with_channels(io, |ch, port| ch.on_mail(port, m)),
        }
        self.run_notices(app, io);
    }

    /// Runs a channel-engine step with this shard as its [`Port`].
    fn with_channels<R>(
        &mut self,
        io: &mut dyn Io,
        f: impl FnOnce(&mut Channels, &mut dyn Port) -> R,
    ) -> R {
        let mut port = ShardPort {
            shard: self.shard,
            router: self.router,
            table: &mut self.table,
            outbox: &mut self.outbox,
            notices: &mut self.notices,
            io,
            shared: &self.shared,
            metrics: &self.metrics,
            render: self.render.as_deref(),
        };
        f(&mut self.channels, &mut port)
    }

    /// Hands queued notices to the app's `on_notice`, after the callback
    /// that raised them (handlers never run inside the engine). A notice
    /// raised by `on_notice` itself is handed on in the same pass, up to a
    /// bound that stops two apps' handlers from feeding each other forever.
    fn run_notices(&mut self, app: &Handlers<D>, io: &mut dyn Io) {
        const ROUNDS: usize = 4;
        for _ in 0..ROUNDS {
            if self.notices.is_empty() {
                return;
            }
            let notices = std::mem::take(&mut self.notices);
            for (conn, text) in notices {
                let Some(f) = &app.notice else { continue };
                let Some(slot) = self.table.open(conn).map(|c| c.conn.index() as u32) else {
                    continue;
                };
                if self
                    .call(io, Some((conn, slot)), |ctx| f(ctx, conn, &text))
                    .is_err()
                {
                    self.handler_panicked(io, slot, "on_notice");
                }
            }
        }
        // Still more: they wait for this shard's next event.
    }

    // ------------------------------------------------------------- timers

    fn arm_sweep(&mut self, io: &mut dyn Io) {
        if self.sweep.is_none() {
            self.sweep = Some(io.timer(self.sweep_every, SWEEP));
        }
    }

    pub(crate) fn timer(&mut self, io: &mut dyn Io, id: TimerId, data: u64) {
        if data == SWEEP {
            self.sweep_now(io);
            self.sweep = Some(io.reset_timer(id, self.sweep_every));
        }
    }

    /// Pings, idle and handshake timeouts, close deadlines.
    fn sweep_now(&mut self, io: &mut dyn Io) {
        self.metrics.heartbeat();
        let mut expired = std::mem::take(&mut self.expired);
        let now = io.now();
        let s = &self.shared.settings;
        let t = Timeouts {
            idle: s.idle_timeout,
            ping: s.ping_interval,
        };
        let close_wait = s.close_timeout;
        for slot in 0..self.table.slots() {
            let Some(c) = self.table.get_mut(slot) else {
                continue;
            };
            match c.ws.poll(now, t) {
                Due::Nothing => {}
                Due::HandshakeTimeout => {
                    tracing::debug!(conn = %c.id, peer = %c.peer, "handshake timeout");
                    c.ws.set_kind(CloseKind::HandshakeTimeout);
                    expired.push(slot);
                }
                Due::Abort => io.abort(c.conn),
                Due::Idle => {
                    tracing::debug!(conn = %c.id, "idle timeout");
                    c.start_close(
                        io,
                        codes::GOING_AWAY,
                        "idle timeout",
                        CloseKind::IdleTimeout,
                        close_wait,
                    );
                }
                Due::Ping => {
                    io.send(c.conn, self.ping.clone());
                }
            }
        }
        #[cfg(feature = "cluster")]
        self.with_channels(io, |ch, port| ch.expire_pending(port, now));
        for slot in expired.drain(..) {
            self.metrics.handshake_failure(408);
            self.answer(
                io,
                slot,
                error_response(408, "handshake timeout\n"),
                CloseKind::HandshakeTimeout,
            );
        }
        self.expired = expired;
    }

    pub(crate) fn tick(&mut self, io: &mut dyn Io) {
        self.table.pass += 1;
        self.metrics.heartbeat();
        self.outbox.retry(io);
    }

    /// Drain: no new WebSockets; every open one gets 1001. Sockets that sent
    /// nothing yet are closed; a request already on its way is still answered
    /// (`/healthz` then says `draining`, an upgrade gets 503).
    pub(crate) fn shutdown(&mut self, io: &mut dyn Io) {
        let wait = self.settings().shutdown_timeout;
        for slot in 0..self.table.slots() {
            let Some(c) = self.table.get_mut(slot) else {
                continue;
            };
            if c.ws.silent() {
                c.ws.set_kind(CloseKind::Shutdown);
                io.close(c.conn);
            } else if c.ws.phase() == Phase::Open {
                c.start_close(
                    io,
                    codes::GOING_AWAY,
                    "server shutting down",
                    CloseKind::Shutdown,
                    wait,
                );
            }
        }
    }
}

/// The shard as the channel engine sees it.
struct ShardPort<'a, D> {
    shard: usize,
    router: Router,
    table: &'a mut Table<D>,
    outbox: &'a mut Outbox,
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))] // used by cluster mode
    notices: &'a mut Vec<(ConnId, Box<str>)>,
    io: &'a mut dyn Io,
    shared: &'a Shared,
    metrics: &'a ShardMetrics,
    render: Option<&'a RenderFn>,
}

impl<D> Port for ShardPort<'_, D> {
    fn shard(&self) -> usize {
        self.shard
    }

    fn shards(&self) -> usize {
        self.router.shards
    }

    fn now(&self) -> Instant {
        self.io.now()
    }

    fn subs(&mut self, conn: ConnId) -> Option<(u32, &mut Vec<Sub>)> {
        let slot = self.table.slot_of(conn)?;
        let c = self.table.get_mut(slot).filter(|c| c.ws.is_open())?;
        Some((slot, &mut c.subs))
    }

    fn subs_at(&mut self, slot: u32) -> Option<&mut Vec<Sub>> {
        self.table.get_mut(slot).map(|c| &mut c.subs)
    }

    fn mail(&mut self, shard: usize, m: ChannelMail) {
        self.outbox.mail(self.io, shard, Mail::Channel(m));
    }

    fn deliver(&mut self, slots: &[u32], frame: &Frame) {
        let (sent, slow) = self
            .table
            .deliver_many(self.io, slots, frame, &self.shared.settings);
        count_sent(self.metrics, sent, slow, frame.payload_len());
    }

    fn push(&mut self, conn: ConnId, frame: Frame) {
        match self.router.route(conn) {
            Dest::Here => {
                let s = &self.shared.settings;
                send::push_here(self.table, self.io, s, self.metrics, conn, frame);
            }
            Dest::Shard(s) => self.outbox.mail(self.io, s, Mail::Push { to: conn, frame }),
            Dest::Node(_) | Dest::Gone => {}
        }
    }

    fn notice(&mut self, conn: ConnId, text: String) {
        match self.router.route(conn) {
            Dest::Here => self.notices.push((conn, text.into())),
            Dest::Shard(s) => {
                let m = Mail::Notice {
                    to: conn,
                    text: text.into(),
                };
                self.outbox.mail(self.io, s, m);
            }
            Dest::Node(_) | Dest::Gone => {}
        }
    }

    fn render(&self, ev: &ChannelEvent<'_>) -> Option<Frame> {
        let f = self.render?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ev))) {
            Ok(frame) => frame,
            Err(_) => {
                tracing::error!(
                    channel = ev.channel,
                    "channel event renderer panicked; event dropped"
                );
                None
            }
        }
    }

    #[cfg(feature = "cluster")]
    fn backplane(&self) -> Option<&Backplane> {
        self.shared.backplane()
    }

    fn set_presence_channels(&self, n: usize) {
        self.metrics.set_rooms(n);
    }
}

/// Counts what one fan-out did.
pub(crate) fn count_sent(m: &ShardMetrics, sent: u64, slow: u64, payload_len: usize) {
    if sent > 0 {
        m.messages_sent(sent, sent * payload_len as u64);
    }
    for _ in 0..slow {
        m.slow_consumer();
    }
}

/// Counts one delivery; true if it was sent.
pub(crate) fn count_delivery(m: &ShardMetrics, d: table::Delivery, payload_len: usize) -> bool {
    let (sent, slow) = match d {
        table::Delivery::Sent => (1, 0),
        table::Delivery::Slow => (0, 1),
        table::Delivery::Gone => (0, 0),
    };
    count_sent(m, sent, slow, payload_len);
    sent > 0
}

/// The reactor handler of one shard.
pub(crate) struct ShardHandler<D> {
    pub app: Arc<Handlers<D>>,
    pub core: ShardState<D>,
}

type RCtx<'a> = ringcast_reactor::Ctx<'a, Mail>;

impl<D: Default + 'static> ringcast_reactor::Handler for ShardHandler<D> {
    type Mail = Mail;

    fn on_start(&mut self, ctx: &mut RCtx<'_>) {
        crate::bufpool::configure(self.core.shared.settings.buffer_pool);
        // The sweep (heartbeat, pings, timeouts) runs even before the first
        // connection.
        self.core.arm_sweep(ctx);
    }

    fn on_open(&mut self, ctx: &mut RCtx<'_>, conn: Conn, peer: SocketAddr) {
        self.core.accepted(ctx, conn, peer);
    }

    fn on_data(&mut self, ctx: &mut RCtx<'_>, conn: Conn, data: &mut [u8]) {
        self.core.data(&self.app, ctx, conn, Input::plain(data));
    }

    fn on_input(&mut self, ctx: &mut RCtx<'_>, conn: Conn, input: Input<'_>) {
        self.core.data(&self.app, ctx, conn, input);
    }

    fn on_eof(&mut self, ctx: &mut RCtx<'_>, conn: Conn) {
        self.core.eof(ctx, conn);
    }

    fn on_close(&mut self, ctx: &mut RCtx<'_>, conn: Conn, why: CloseReason) {
        self.core.closed(&self.app, ctx, conn, why);
    }

    fn on_timer(&mut self, ctx: &mut RCtx<'_>, timer: TimerId, data: u64) {
        self.core.timer(ctx, timer, data);
        self.core.run_notices(&self.app, ctx);
    }

    fn on_mail(&mut self, ctx: &mut RCtx<'_>, mail: Mail) {
        self.core.on_mail(&self.app, ctx, mail);
    }

    fn on_tick(&mut self, ctx: &mut RCtx<'_>) {
        self.core.tick(ctx);
    }

    fn on_shutdown(&mut self, ctx: &mut RCtx<'_>) {
        self.core.shutdown(ctx);
    }
}
