//! One shard's server logic: the reactor handler that turns bytes into
//! WebSocket events and back.
//!
//! Per connection: `Handshake` (HTTP head being read) → `Open` (frames) or
//! `Done` (HTTP answered, closing). A protocol error moves an open
//! connection to `Failed`: the close frame is sent, the write side shut down
//! and input discarded until the client closes or `close-timeout` passes.
//!
//! Data flows one way: the reactor hands received bytes to [`Core::data`],
//! the codec decodes them, user handlers run, and what they send goes back
//! through the codec's encoders to the reactor's send queue.
//!
//! Everything here runs on the shard's own thread; other shards are reached
//! only through [`Mail`].

use crate::bufpool::{Received, ShardPool};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcast_codec::{
    codes, error_response, is_valid_wire_code, pong_frame, response_101, server_frame, CloseState,
    Decoder, DecoderConfig, OpCode, Request, RequestParser, Role,
};
use ringcast_reactor::{CloseReason, Conn, Input, TimerId};

use crate::api::{Ctx, Frame, Handlers, Message, Response};
use crate::backplane::{Backplane, SendError};
use crate::cluster::Link;
use crate::config::{Settings, SlowConsumer};
use crate::id::ConnId;
use crate::limits::{Gauges, PerIp};
use crate::metrics::{CloseKind, Metrics, ShardMetrics};
use crate::pubsub::{Members, Sub, TopicMail, Topics};
use crate::systemd::Notifier;

/// Messages between shards (and from [`crate::ServerHandle`]).
#[derive(Debug)]
pub(crate) enum Mail {
    Push {
        to: ConnId,
        frame: Frame,
    },
    Close {
        to: ConnId,
        code: u16,
        reason: Box<str>,
    },
    Broadcast {
        frame: Frame,
    },
    Subscribe {
        conn: ConnId,
        topic: Box<str>,
    },
    Unsubscribe {
        conn: ConnId,
        topic: Box<str>,
    },
    Topic(TopicMail),
}

/// What the server logic needs from the reactor (object-safe, so the public
/// [`Ctx`] needs no reactor lifetimes).
pub(crate) trait Io {
    fn now(&self) -> Instant;
    fn send(&mut self, c: Conn, b: Bytes) -> bool;
    fn queued(&self, c: Conn) -> usize;
    fn close(&mut self, c: Conn);
    fn abort(&mut self, c: Conn);
    fn shutdown_write(&mut self, c: Conn);
    fn mail(&mut self, shard: usize, m: Mail) -> Result<(), Mail>;
    fn draining(&self) -> bool;
    fn timer(&mut self, after: Duration, data: u64) -> TimerId;
    fn reset_timer(&mut self, id: TimerId, after: Duration) -> TimerId;
}

impl Io for ringcast_reactor::Ctx<'_, Mail> {
    fn now(&self) -> Instant {
        ringcast_reactor::Ctx::now(self)
    }
    fn send(&mut self, c: Conn, b: Bytes) -> bool {
        ringcast_reactor::Ctx::send(self, c, b)
    }
    fn queued(&self, c: Conn) -> usize {
        self.queued_bytes(c)
    }
    fn close(&mut self, c: Conn) {
        ringcast_reactor::Ctx::close(self, c)
    }
    fn abort(&mut self, c: Conn) {
        ringcast_reactor::Ctx::abort(self, c)
    }
    fn shutdown_write(&mut self, c: Conn) {
        ringcast_reactor::Ctx::shutdown_write(self, c)
    }
    fn mail(&mut self, shard: usize, m: Mail) -> Result<(), Mail> {
        ringcast_reactor::Ctx::mail(self, shard, m)
    }
    fn draining(&self) -> bool {
        self.is_draining()
    }
    fn timer(&mut self, after: Duration, data: u64) -> TimerId {
        ringcast_reactor::Ctx::timer(self, after, data)
    }
    fn reset_timer(&mut self, id: TimerId, after: Duration) -> TimerId {
        ringcast_reactor::Ctx::reset_timer(self, id, after)
    }
}

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
    pub chat: crate::chat::Limits,
}

impl Shared {
    /// The backplane, in cluster mode.
    pub fn backplane(&self) -> Option<&Backplane> {
        self.cluster.as_ref().map(|l| &l.backplane)
    }

    /// A push to a connection of another node: through the backplane, or
    /// nowhere on a single node.
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the HTTP request head.
    Handshake,
    /// A WebSocket.
    Open,
    /// A protocol error was answered with a close frame; waiting for EOF.
    Failed,
    /// HTTP answered (or refused); the reactor flushes and closes.
    Done,
    /// `on_close` is running.
    Closed,
}

/// One TCP connection on this shard.
pub(crate) struct Connection<D> {
    conn: Conn,
    id: ConnId,
    peer: SocketAddr,
    phase: Phase,
    parser: Option<Box<RequestParser>>,
    /// Any request bytes arrived (a silent socket is closed at once on drain).
    got_bytes: bool,
    /// Boxed: decoding takes it out of the table and puts it back for every
    /// read, and the decoder is a few hundred bytes.
    decoder: Option<Box<Decoder<ShardPool>>>,
    close: CloseState,
    /// The close code and reason we sent / the peer sent.
    sent_close: Option<(u16, Box<str>)>,
    peer_close: Option<(u16, Box<str>)>,
    /// Why this connection ended, when we decided it (for metrics).
    kind: Option<CloseKind>,
    /// Handshake deadline, or the deadline of a `Failed` connection.
    deadline: Option<Instant>,
    last_seen: Instant,
    next_ping: Instant,
    all_pos: u32,
    pub(crate) subs: Vec<Sub>,
    /// Counted in the per-IP limiter.
    ip: Option<IpAddr>,
    /// Messages dropped since the queue was last under the limit (drop policy).
    dropped: u64,
    /// Bytes queued during loop pass `burst_pass` (not yet offered to the socket).
    burst: usize,
    burst_pass: u64,
    data: Option<D>,
}

impl<D> Connection<D> {
    fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Accepts data frames: open and no close frame sent.
    fn takes_data(&self) -> bool {
        self.phase == Phase::Open && !self.close.close_sent()
    }

    /// Sends our close frame (once); the client's answer completes the close.
    fn start_close(
        &mut self,
        io: &mut dyn Io,
        code: u16,
        reason: &str,
        kind: CloseKind,
        wait: Duration,
    ) {
        if self.phase != Phase::Open {
            return;
        }
        self.kind.get_or_insert(kind);
        if let Some(frame) = self.close.start(code, reason, io.now() + wait) {
            self.sent_close = Some((code, reason.into()));
            io.send(self.conn, frame);
        }
    }
}

/// What happened to one data frame offered to one connection.
pub(crate) enum Delivery {
    Sent,
    /// Over max-backpressure: dropped (drop policy) or closing (close policy).
    Slow,
    Gone,
}

/// Identity hasher for per-shard sequence numbers (already unique integers).
#[derive(Default)]
pub(crate) struct SeqHasher(u64);

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        // Spread sequential keys over the table's high bits.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// This shard's connections, by reactor slot and by id.
pub(crate) struct Table<D> {
    node: u16,
    shard: usize,
    /// Event-loop passes so far (see `deliver`).
    pass: u64,
    /// (seq, slot) of the connection whose handler is running.
    current: Option<(u64, u32)>,
    conns: Vec<Option<Connection<D>>>,
    by_seq: HashMap<u64, u32, BuildHasherDefault<SeqHasher>>,
}

impl<D> Table<D> {
    pub fn slot_of(&self, id: ConnId) -> Option<u32> {
        if id.node() != self.node || id.shard() != self.shard {
            return None;
        }
        // Handlers mostly act on the connection they were called for.
        if let Some((seq, slot)) = self.current {
            if seq == id.seq() {
                return Some(slot);
            }
        }
        self.by_seq.get(&id.seq()).copied()
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Connection<D>> {
        self.conns.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn get(&self, slot: u32) -> Option<&Connection<D>> {
        self.conns.get(slot as usize).and_then(Option::as_ref)
    }

    /// An open WebSocket with this id.
    pub fn open_mut(&mut self, id: ConnId) -> Option<&mut Connection<D>> {
        let slot = self.slot_of(id)?;
        self.get_mut(slot).filter(|c| c.is_open())
    }

    /// Offers `frame` to each slot; returns (sent, slow) counts.
    pub fn deliver_many(
        &mut self,
        io: &mut dyn Io,
        slots: &[u32],
        frame: &Frame,
        s: &Settings,
    ) -> (u64, u64) {
        let (mut sent, mut slow) = (0, 0);
        for &slot in slots {
            match self.deliver(io, slot, frame.len(), || frame.0.clone(), s) {
                Delivery::Sent => sent += 1,
                Delivery::Slow => slow += 1,
                Delivery::Gone => {}
            }
        }
        (sent, slow)
    }

    /// [`deliver`](Self::deliver) of a frame nobody else needs: moved, not
    /// cloned (cloning a `Bytes` built from a `Vec` allocates its shared
    /// header, a malloc and a free per echoed message).
    pub(crate) fn deliver_one(
        &mut self,
        io: &mut dyn Io,
        slot: u32,
        frame: Frame,
        s: &Settings,
    ) -> Delivery {
        self.deliver(io, slot, frame.len(), move || frame.0, s)
    }

    /// Queues a data frame for one client, applying the slow-consumer policy.
    ///
    /// The reactor writes after each step of its loop, so frames queued in
    /// this pass have not met the socket yet: a fast client can have a burst
    /// queued. Backpressure is what is left over from earlier passes (the
    /// socket refused it); a burst is allowed on top, up to a hard cap.
    fn deliver(
        &mut self,
        io: &mut dyn Io,
        slot: u32,
        len: usize,
        frame: impl FnOnce() -> Bytes,
        s: &Settings,
    ) -> Delivery {
        let pass = self.pass;
        let Some(c) = self.get_mut(slot) else {
            return Delivery::Gone;
        };
        if !c.takes_data() {
            return Delivery::Gone;
        }
        if c.burst_pass != pass {
            c.burst_pass = pass;
            c.burst = 0;
        }
        let queued = io.queued(c.conn);
        let backlog = queued.saturating_sub(c.burst);
        let hard_cap = s
            .max_backpressure
            .saturating_mul(4)
            .saturating_add(s.max_message_size);
        // An empty backlog always takes one message, however large.
        if (backlog > 0 && backlog + len > s.max_backpressure) || queued + len > hard_cap {
            match s.slow_consumer {
                SlowConsumer::Close => {
                    tracing::info!(conn = %c.id, queued, "slow consumer: closing with 1008");
                    c.start_close(
                        io,
                        codes::POLICY,
                        "slow consumer",
                        CloseKind::SlowConsumer,
                        s.close_timeout,
                    );
                }
                SlowConsumer::Drop => {
                    if c.dropped == 0 {
                        tracing::debug!(conn = %c.id, queued, "slow consumer: dropping messages");
                    }
                    c.dropped += 1;
                }
            }
            return Delivery::Slow;
        }
        if c.dropped > 0 {
            tracing::debug!(conn = %c.id, dropped = c.dropped, "slow consumer caught up");
            c.dropped = 0;
        }
        if io.send(c.conn, frame()) {
            c.burst += len;
            Delivery::Sent
        } else {
            Delivery::Gone
        }
    }
}

/// Why a push was not handed on.
#[derive(Debug)]
pub(crate) enum PushError {
    /// No such connection (or no way to reach its node).
    Gone,
    /// The backplane did not take it.
    Backplane(SendError),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Gone => f.write_str("not connected"),
            PushError::Backplane(e) => write!(f, "cannot reach it: {e}"),
        }
    }
}

/// Timer data of the periodic sweep.
const SWEEP: u64 = 1;

/// A shard's server state. User handlers get it through [`Ctx`].
pub(crate) struct Core<D> {
    pub shard: usize,
    pub shards: usize,
    pub shared: Arc<Shared>,
    pub metrics: Arc<ShardMetrics>,
    pub(crate) table: Table<D>,
    /// Open WebSockets on this shard (for broadcast).
    all: Members,
    pub(crate) topics: Topics,
    /// Mail the reactor could not take (its outbox was full), per target.
    overflow: Vec<VecDeque<Mail>>,
    overflow_len: usize,
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

impl<D: Default + 'static> Core<D> {
    pub fn new(shard: usize, shards: usize, shared: Arc<Shared>) -> Core<D> {
        let metrics = shared.metrics.shards()[shard].clone();
        let sweep_every = sweep_period(&shared.settings, shared.notifier.watchdog_interval());
        Core {
            shard,
            shards,
            metrics,
            table: Table {
                node: shared.node,
                shard,
                pass: 0,
                current: None,
                conns: Vec::new(),
                by_seq: HashMap::default(),
            },
            shared,
            all: Members::default(),
            topics: Topics::default(),
            overflow: (0..shards).map(|_| VecDeque::new()).collect(),
            overflow_len: 0,
            sweep: None,
            sweep_every,
            ping: server_frame(OpCode::Ping, b""),
            expired: Vec::new(),
        }
    }

    fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// True if `id` belongs to this shard of this node.
    pub(crate) fn is_ours(&self, id: ConnId) -> bool {
        id.node() == self.shared.node && id.shard() == self.shard
    }

    pub(crate) fn is_local_node(&self, id: ConnId) -> bool {
        id.node() == self.shared.node && id.shard() < self.shards
    }

    // ---------------------------------------------------------------- mail

    /// Sends mail to another shard, keeping FIFO order per target even when
    /// the reactor's mailbox and outbox are full.
    pub(crate) fn mail(&mut self, io: &mut dyn Io, shard: usize, m: Mail) {
        if shard >= self.shards {
            return;
        }
        let q = &mut self.overflow[shard];
        if !q.is_empty() {
            q.push_back(m);
            self.overflow_len += 1;
            return;
        }
        if let Err(m) = io.mail(shard, m) {
            if self.overflow_len == 0 {
                tracing::warn!(
                    from = self.shard,
                    to = shard,
                    "shard mailbox and outbox full; queueing mail locally"
                );
            }
            self.overflow[shard].push_back(m);
            self.overflow_len += 1;
        }
    }

    fn retry_overflow(&mut self, io: &mut dyn Io) {
        if self.overflow_len == 0 {
            return;
        }
        for shard in 0..self.shards {
            while let Some(m) = self.overflow[shard].pop_front() {
                match io.mail(shard, m) {
                    Ok(()) => self.overflow_len -= 1,
                    Err(m) => {
                        self.overflow[shard].push_front(m);
                        break;
                    }
                }
            }
        }
    }

    pub(crate) fn on_mail(&mut self, io: &mut dyn Io, m: Mail) {
        match m {
            Mail::Push { to, frame } => {
                self.push_local(io, to, frame);
            }
            Mail::Close { to, code, reason } => self.close_conn(io, to, code, &reason),
            Mail::Broadcast { frame } => self.deliver_all(io, &frame),
            Mail::Subscribe { conn, topic } => {
                self.subscribe(io, conn, &topic, None);
            }
            Mail::Unsubscribe { conn, topic } => {
                self.unsubscribe(io, conn, &topic);
            }
            Mail::Topic(t) => self.on_topic_mail(io, t),
        }
    }

    // ------------------------------------------------------- sending (API)

    pub(crate) fn count_sent(&self, sent: u64, slow: u64, payload_len: usize) {
        if sent > 0 {
            self.metrics.messages_sent(sent, sent * payload_len as u64);
        }
        for _ in 0..slow {
            self.metrics.slow_consumer();
        }
    }

    pub(crate) fn push(&mut self, io: &mut dyn Io, to: ConnId, frame: Frame) -> bool {
        self.push_from(io, to, frame, None).is_ok()
    }

    /// Sends `frame` to `to` on any shard of any node (other nodes through
    /// the backplane). `origin`: the chat member sending it, told by an
    /// error event if the cluster cannot deliver it.
    pub(crate) fn push_from(
        &mut self,
        io: &mut dyn Io,
        to: ConnId,
        frame: Frame,
        origin: Option<ConnId>,
    ) -> Result<(), PushError> {
        if to.node() != self.shared.node {
            return self.shared.push_remote(to, frame, origin);
        }
        if !self.is_local_node(to) {
            return Err(PushError::Gone);
        }
        if to.shard() != self.shard {
            self.mail(io, to.shard(), Mail::Push { to, frame });
            return Ok(());
        }
        if self.push_local(io, to, frame) {
            Ok(())
        } else {
            Err(PushError::Gone)
        }
    }

    fn push_local(&mut self, io: &mut dyn Io, to: ConnId, frame: Frame) -> bool {
        let Some(slot) = self.table.slot_of(to) else {
            return false;
        };
        let payload_len = frame.payload_len();
        let d = self
            .table
            .deliver_one(io, slot, frame, &self.shared.settings);
        let (sent, slow) = match d {
            Delivery::Sent => (1, 0),
            Delivery::Slow => (0, 1),
            Delivery::Gone => (0, 0),
        };
        self.count_sent(sent, slow, payload_len);
        sent > 0
    }

    pub(crate) fn broadcast(&mut self, io: &mut dyn Io, frame: Frame) {
        for shard in 0..self.shards {
            if shard != self.shard {
                self.mail(
                    io,
                    shard,
                    Mail::Broadcast {
                        frame: frame.clone(),
                    },
                );
            }
        }
        self.deliver_all(io, &frame);
    }

    fn deliver_all(&mut self, io: &mut dyn Io, frame: &Frame) {
        let (sent, slow) =
            self.table
                .deliver_many(io, self.all.slots(), frame, &self.shared.settings);
        self.count_sent(sent, slow, frame.payload_len());
    }

    /// Starts closing `id` (any shard) with `code` (an invalid code becomes 1000).
    pub(crate) fn close_conn(&mut self, io: &mut dyn Io, id: ConnId, code: u16, reason: &str) {
        if !self.is_local_node(id) {
            return;
        }
        if id.shard() != self.shard {
            self.mail(
                io,
                id.shard(),
                Mail::Close {
                    to: id,
                    code,
                    reason: reason.into(),
                },
            );
            return;
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

    // --------------------------------------------------------- lifecycle

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
        let now = io.now();
        let s = &self.shared.settings;
        let deadline = (!s.handshake_timeout.is_zero()).then(|| now + s.handshake_timeout);
        let c = Connection {
            conn,
            id,
            peer,
            phase: Phase::Handshake,
            parser: Some(Box::new(RequestParser::new(s.max_header_size))),
            got_bytes: false,
            decoder: None,
            close: CloseState::new(),
            sent_close: None,
            peer_close: None,
            kind: None,
            deadline,
            last_seen: now,
            next_ping: now,
            all_pos: 0,
            subs: Vec::new(),
            ip: None,
            dropped: 0,
            burst: 0,
            burst_pass: 0,
            data: None,
        };
        let slot = conn.index();
        if self.table.conns.len() <= slot {
            self.table.conns.resize_with(slot + 1, || None);
        }
        self.table.conns[slot] = Some(c);
        self.table.by_seq.insert(id.seq(), slot as u32);
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
        match c.phase {
            Phase::Handshake => self.handshake_data(app, io, slot, &input),
            Phase::Open => {
                c.last_seen = io.now();
                let (data, lender) = input.split();
                self.decode(app, io, slot, data, Received(lender));
            }
            // Answered or failed: input is discarded.
            Phase::Failed | Phase::Done | Phase::Closed => {}
        }
    }

    pub(crate) fn eof(&mut self, io: &mut dyn Io, conn: Conn) {
        if let Some(c) = self.table.get_mut(conn.index() as u32) {
            if c.phase == Phase::Open && !c.close.is_closing() {
                c.kind.get_or_insert(CloseKind::Reset);
            }
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
        let kind = c.kind.unwrap_or(match why {
            CloseReason::Shutdown => CloseKind::Shutdown,
            // Gone before finishing its request.
            _ if c.phase == Phase::Handshake => CloseKind::Reset,
            CloseReason::Local => CloseKind::Normal,
            CloseReason::PeerEof | CloseReason::Reset => CloseKind::Reset,
            CloseReason::Error(_) => CloseKind::Error,
        });
        c.phase = Phase::Closed;
        let id = c.id;
        if was_open {
            // The user hears about it while the data is still there.
            let (code, reason) = c
                .peer_close
                .clone()
                .or_else(|| c.sent_close.clone())
                .unwrap_or((codes::ABNORMAL, "".into()));
            if let Some(f) = &app.close {
                let r = self.call(io, Some((id, slot)), |ctx| f(ctx, id, code, &reason));
                if r.is_err() {
                    tracing::error!(conn = %id, "on_close handler panicked");
                }
            }
        }
        let Some(c) = self.table.conns[slot as usize].take() else {
            return;
        };
        self.table.by_seq.remove(&c.id.seq());
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
                self.drop_sub(io, c.id, sub);
            }
        }
    }

    // ---------------------------------------------------------- handshake

    fn handshake_data(&mut self, app: &Handlers<D>, io: &mut dyn Io, slot: u32, data: &[u8]) {
        let Some(c) = self.table.get_mut(slot) else {
            return;
        };
        c.got_bytes = true;
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
    fn answer(&mut self, io: &mut dyn Io, slot: u32, response: Vec<u8>, kind: CloseKind) {
        let wait = self.settings().close_timeout;
        let Some(c) = self.table.get_mut(slot) else {
            return;
        };
        io.send(c.conn, response.into());
        io.shutdown_write(c.conn);
        c.phase = Phase::Done;
        c.parser = None;
        c.deadline = Some(io.now() + wait);
        c.kind.get_or_insert(kind);
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
        let now = io.now();
        io.send(c.conn, response_101(&key, None).into());
        c.phase = Phase::Open;
        c.deadline = None;
        c.decoder = Some(Box::new(Decoder::with_pool(
            DecoderConfig {
                role: Role::Server,
                max_message_size: s.max_message_size,
                allow_rsv1: false,
            },
            ShardPool,
        )));
        c.data = Some(D::default());
        c.last_seen = now;
        c.next_ping = now + s.ping_interval;
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

    // -------------------------------------------------------------- frames

    fn decode<'a>(
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
        let r = decoder.decode_lent(data, &mut lend, |msg| self.frame(app, io, slot, msg));
        crate::bufpool::end_message();
        match r {
            Ok(()) => {
                if let Some(c) = self.table.get_mut(slot) {
                    if c.phase == Phase::Open {
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
    ) -> ControlFlow<()> {
        use ringcast_codec::Message as M;
        let Some(c) = self.table.get_mut(slot) else {
            return ControlFlow::Break(());
        };
        if c.phase != Phase::Open {
            return ControlFlow::Break(());
        }
        let user = match msg {
            M::Text(s) => Message::Text(s),
            M::Binary(b) => Message::Binary(b),
            M::Ping(p) => {
                if !c.close.close_sent() {
                    io.send(c.conn, pong_frame(p));
                }
                return ControlFlow::Continue(());
            }
            M::Pong(_) => return ControlFlow::Continue(()),
            M::Close(f) => {
                c.peer_close =
                    Some(f.map_or((codes::NO_STATUS, "".into()), |f| (f.code, f.reason.into())));
                if c.kind.is_none() {
                    c.kind = Some(f.map_or(CloseKind::Normal, |f| kind_of_code(f.code)));
                }
                let action = c.close.on_peer_close(f);
                if let Some(reply) = action.reply {
                    if let Some((code, _)) = c.peer_close {
                        c.sent_close = Some((
                            if code == codes::NO_STATUS {
                                codes::NORMAL
                            } else {
                                code
                            },
                            "".into(),
                        ));
                    }
                    io.send(c.conn, reply);
                }
                if action.close_tcp {
                    io.close(c.conn);
                }
                return ControlFlow::Break(());
            }
        };
        if c.close.close_sent() {
            // We are closing: the client's late data is ignored.
            return ControlFlow::Continue(());
        }
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
    fn call<R>(
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

    fn handler_panicked(&mut self, io: &mut dyn Io, slot: u32, which: &str) {
        let wait = self.settings().close_timeout;
        if let Some(c) = self.table.get_mut(slot) {
            tracing::error!(conn = %c.id, handler = which, "handler panicked; closing the connection with 1011");
            c.kind = Some(CloseKind::Panic);
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
        tracing::debug!(conn = %c.id, code, reason, "protocol error");
        c.kind.get_or_insert(kind_of_code(code));
        let now = io.now();
        if let Some(frame) = c.close.start(code, reason, now + wait) {
            c.sent_close = Some((code, reason.into()));
            io.send(c.conn, frame);
        }
        c.phase = Phase::Failed;
        c.decoder = None;
        c.deadline = Some(now + wait);
        // The app hears `on_close` later; no more messages reach it.
        io.shutdown_write(c.conn);
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
        let (idle, ping, close_wait) = (s.idle_timeout, s.ping_interval, s.close_timeout);
        for slot in 0..self.table.conns.len() {
            let Some(c) = self.table.conns[slot].as_mut() else {
                continue;
            };
            match c.phase {
                Phase::Handshake => {
                    if c.deadline.is_some_and(|d| now >= d) {
                        tracing::debug!(conn = %c.id, peer = %c.peer, "handshake timeout");
                        c.kind = Some(CloseKind::HandshakeTimeout);
                        expired.push(slot as u32);
                    }
                }
                Phase::Open => {
                    if c.close.is_closing() {
                        if c.close.expired(now) {
                            io.abort(c.conn);
                        }
                    } else if !idle.is_zero() && now.saturating_duration_since(c.last_seen) >= idle
                    {
                        tracing::debug!(conn = %c.id, "idle timeout");
                        c.start_close(
                            io,
                            codes::GOING_AWAY,
                            "idle timeout",
                            CloseKind::IdleTimeout,
                            close_wait,
                        );
                    } else if !ping.is_zero() && now >= c.next_ping {
                        io.send(c.conn, self.ping.clone());
                        c.next_ping = now + ping;
                    }
                }
                Phase::Failed | Phase::Done => {
                    if c.deadline.is_some_and(|d| now >= d) {
                        io.abort(c.conn);
                    }
                }
                Phase::Closed => {}
            }
        }
        self.expire_pending(io, now);
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
        self.retry_overflow(io);
    }

    /// Drain: no new WebSockets; every open one gets 1001. Sockets that sent
    /// nothing yet are closed; a request already on its way is still answered
    /// (`/healthz` then says `draining`, an upgrade gets 503).
    pub(crate) fn shutdown(&mut self, io: &mut dyn Io) {
        let wait = self.settings().shutdown_timeout;
        for slot in 0..self.table.conns.len() {
            let Some(c) = self.table.conns[slot].as_mut() else {
                continue;
            };
            match c.phase {
                Phase::Handshake if !c.got_bytes => {
                    c.kind = Some(CloseKind::Shutdown);
                    io.close(c.conn);
                }
                Phase::Open => c.start_close(
                    io,
                    codes::GOING_AWAY,
                    "server shutting down",
                    CloseKind::Shutdown,
                    wait,
                ),
                _ => {}
            }
        }
    }
}

/// The metrics label for a close code.
fn kind_of_code(code: u16) -> CloseKind {
    match code {
        codes::GOING_AWAY => CloseKind::GoingAway,
        codes::PROTOCOL_ERROR => CloseKind::ProtocolError,
        codes::INVALID_PAYLOAD => CloseKind::InvalidPayload,
        codes::POLICY => CloseKind::Policy,
        codes::TOO_BIG => CloseKind::TooBig,
        codes::INTERNAL => CloseKind::Error,
        _ => CloseKind::Normal,
    }
}

/// The reactor handler of one shard.
pub(crate) struct Shard<D> {
    pub app: Arc<Handlers<D>>,
    pub core: Core<D>,
}

type RCtx<'a> = ringcast_reactor::Ctx<'a, Mail>;

impl<D: Default + 'static> ringcast_reactor::Handler for Shard<D> {
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
    }

    fn on_mail(&mut self, ctx: &mut RCtx<'_>, mail: Mail) {
        self.core.on_mail(ctx, mail);
    }

    fn on_tick(&mut self, ctx: &mut RCtx<'_>) {
        self.core.tick(ctx);
    }

    fn on_shutdown(&mut self, ctx: &mut RCtx<'_>) {
        self.core.shutdown(ctx);
    }
}
