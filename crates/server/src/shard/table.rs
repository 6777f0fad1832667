//! This shard's connections, by reactor slot and by id, and the one place
//! a data frame is queued for a client: the slow-consumer policy.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use ringcast_codec::{codes, Decoder, RequestParser};
use ringcast_reactor::Conn;

use super::io::Io;
use super::ws::WsState;
use crate::api::Frame;
use crate::bufpool::ShardPool;
use crate::channel::Sub;
use crate::config::{Settings, SlowConsumer};
use crate::id::ConnId;
use crate::metrics::CloseKind;
use crate::route::{Dest, Router};

/// One TCP connection on this shard.
pub(crate) struct Connection<D> {
    pub conn: Conn,
    pub id: ConnId,
    pub peer: SocketAddr,
    pub ws: WsState,
    pub parser: Option<Box<RequestParser>>,
    /// Boxed: decoding takes it out of the table and puts it back for every
    /// read, and the decoder is a few hundred bytes.
    pub decoder: Option<Box<Decoder<ShardPool>>>,
    /// Position in the shard's list of open WebSockets.
    pub all_pos: u32,
    pub subs: Vec<Sub>,
    /// Counted in the per-IP limiter.
    pub ip: Option<IpAddr>,
    /// Messages dropped since the queue was last under the limit (drop policy).
    dropped: u64,
    /// Bytes queued during loop pass `burst_pass` (not yet offered to the socket).
    burst: usize,
    burst_pass: u64,
    pub data: Option<D>,
}

impl<D> Connection<D> {
    /// A TCP connection that has not sent its request yet.
    pub fn new(
        conn: Conn,
        id: ConnId,
        peer: SocketAddr,
        ws: WsState,
        parser: RequestParser,
    ) -> Self {
        Connection {
            conn,
            id,
            peer,
            ws,
            parser: Some(Box::new(parser)),
            decoder: None,
            all_pos: 0,
            subs: Vec::new(),
            ip: None,
            dropped: 0,
            burst: 0,
            burst_pass: 0,
            data: None,
        }
    }

    /// Sends our close frame (once); the client's answer completes the close.
    pub fn start_close(
        &mut self,
        io: &mut dyn Io,
        code: u16,
        reason: &str,
        kind: CloseKind,
        wait: Duration,
    ) {
        if let Some(frame) = self.ws.start_close(code, reason, kind, io.now(), wait) {
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
    /// Which ids are this shard's.
    router: Router,
    /// Event-loop passes so far (see `deliver`).
    pub pass: u64,
    /// (seq, slot) of the connection whose handler is running.
    pub current: Option<(u64, u32)>,
    conns: Vec<Option<Connection<D>>>,
    by_seq: HashMap<u64, u32, BuildHasherDefault<SeqHasher>>,
}

impl<D> Table<D> {
    pub fn new(router: Router) -> Table<D> {
        Table {
            router,
            pass: 0,
            current: None,
            conns: Vec::new(),
            by_seq: HashMap::default(),
        }
    }

    /// Reactor slots in use or used before (for sweeps over every slot).
    pub fn slots(&self) -> u32 {
        self.conns.len() as u32
    }

    pub fn insert(&mut self, slot: u32, c: Connection<D>) {
        let i = slot as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        self.by_seq.insert(c.id.seq(), slot);
        self.conns[i] = Some(c);
    }

    pub fn remove(&mut self, slot: u32) -> Option<Connection<D>> {
        let c = self.conns.get_mut(slot as usize)?.take()?;
        self.by_seq.remove(&c.id.seq());
        Some(c)
    }

    pub fn slot_of(&self, id: ConnId) -> Option<u32> {
        if self.router.route(id) != Dest::Here {
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

    pub fn get(&self, slot: u32) -> Option<&Connection<D>> {
        self.conns.get(slot as usize).and_then(Option::as_ref)
    }

    /// An open WebSocket with this id.
    pub fn open_mut(&mut self, id: ConnId) -> Option<&mut Connection<D>> {
        let slot = self.slot_of(id)?;
        self.get_mut(slot).filter(|c| c.ws.is_open())
    }

    /// An open WebSocket with this id.
    pub fn open(&self, id: ConnId) -> Option<&Connection<D>> {
        let slot = self.slot_of(id)?;
        self.get(slot).filter(|c| c.ws.is_open())
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
    pub fn deliver_one(
        &mut self,
        io: &mut dyn Io,
        slot: u32,
        frame: Frame,
        s: &Settings,
    ) -> Delivery {
        self.deliver(io, slot, frame.len(), move || frame.0, s)
    }

    /// Queues a data frame for one client, applying the slow-consumer policy.
    /// This is the only backpressure decision in the server: it is made
    /// before queueing, from what the reactor says is still queued.
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
        if !c.ws.takes_data() {
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
