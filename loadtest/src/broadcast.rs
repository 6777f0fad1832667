//! `broadcast`: S subscribers over R rooms, P publishers. Every delivery is
//! checked (payload intact, per-publisher sequence numbers strictly
//! increasing) and timed from the publish timestamp in the payload.
//!
//! Two protocols: the plain `/broadcast` route (every message goes to every
//! connection on it; one room) and the `/chat` route (JSON: join a room,
//! then send `{"type":"message",...}`; the server wraps the text in an event
//! with a room sequence number, which is checked too).
//!
//! Publishing is either at a fixed total `--rate`, or flat out (`--rate 0`):
//! each publisher keeps at most `--in-flight` × (subscribers in its room)
//! deliveries outstanding — about `--in-flight` messages not yet delivered
//! everywhere — so the server is kept busy without unbounded queues
//! building up anywhere.

use hdrhistogram::Histogram;
use ringcast_codec::{encode_client_frame, MaskGen, OpCode};

use crate::clock::now_ns;
use crate::engine::{CloseReason, Engine, Handler, Out};
use crate::payload::{self, BCAST_HEAD, BCAST_SEQ_AT, BCAST_TIME_AT};
use crate::run::{Counters, Load};
use crate::stats::{self, Checks};

/// Route protocol.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    /// `/chat` when the URL path ends in `/chat`, else `/broadcast`.
    Auto,
    /// Plain fan-out route: everything to everyone, no join.
    Broadcast,
    /// ringcast's JSON chat protocol with rooms.
    Chat,
}

/// Parameters of the broadcast scenario.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct BroadcastArgs {
    /// Subscribers.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub connections: usize,
    /// Publishers (separate connections; they also receive, and discard).
    #[arg(long, short = 'p', default_value_t = 1)]
    pub publishers: usize,
    /// Rooms (chat only; `/broadcast` has one).
    #[arg(long, short = 'r', default_value_t = 1)]
    pub rooms: usize,
    /// Total publish rate in messages/s; 0 = flat out (closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Flat out: messages per publisher not yet delivered to its whole room
    /// (in-flight × room size deliveries outstanding at most).
    #[arg(long, short = 'k', default_value_t = 8)]
    pub in_flight: usize,
    /// Payload bytes (at least 39: marker, publisher, sequence, timestamp).
    #[arg(long, short = 's', default_value_t = 64)]
    pub size: usize,
    /// Route protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Auto)]
    pub protocol: Protocol,
    /// Chat room name prefix.
    #[arg(long, default_value = "bench-")]
    pub room_prefix: String,
}

struct Publisher {
    id: usize,
    room: usize,
    frame: Vec<u8>,
    /// Offset of the WebSocket payload in `frame`.
    ws_at: usize,
    /// Offset of our payload inside the WebSocket payload.
    body_at: usize,
    mask: [u8; 4],
    published: u64,
    /// Deliveries of this publisher's messages (unique).
    delivered: u64,
    /// Deliveries given up on after a stall (flat-out only).
    written_off: u64,
    /// Deliveries expected for this publisher's messages so far.
    expected: u64,
    last_progress: u64,
    next_due: u64,
}

/// The broadcast scenario's handler.
pub struct Broadcast {
    args: BroadcastArgs,
    chat: bool,
    filler: Vec<u8>,
    masks: MaskGen,
    pubs: Vec<Publisher>,
    /// Publisher index (in payloads) → position in `pubs`.
    pub_slot: Vec<usize>,
    /// Room of each subscriber.
    sub_room: Vec<usize>,
    /// Open subscribers per room.
    room_subs: Vec<u64>,
    /// Last sequence number seen, per (subscriber, publisher).
    last_seq: Vec<u64>,
    /// Last chat room sequence number seen, per subscriber.
    last_room_seq: Vec<u64>,
    joined: Vec<bool>,
    joined_count: usize,
    sending: bool,
    delivered: u64,
    unique: u64,
    published: u64,
    stalls: u64,
    hist: Histogram<u64>,
    checks: Checks,
}

impl Broadcast {
    /// A handler for `args`; `chat` selects the `/chat` protocol.
    pub fn new(mut args: BroadcastArgs, chat: bool) -> Result<Broadcast, String> {
        if args.size < BCAST_HEAD {
            return Err(format!("--size must be at least {BCAST_HEAD} bytes"));
        }
        if args.publishers == 0 || args.publishers > 0xffff {
            return Err("--publishers must be between 1 and 65535".into());
        }
        if !chat {
            args.rooms = 1;
        }
        args.rooms = args.rooms.max(1);
        let subs = args.connections;
        Ok(Broadcast {
            chat,
            filler: payload::filler(args.size, false),
            masks: MaskGen::new(now_ns() ^ 0xb0ad),
            pubs: Vec::new(),
            pub_slot: vec![usize::MAX; args.publishers],
            sub_room: (0..subs).map(|i| i % args.rooms).collect(),
            room_subs: vec![0; args.rooms],
            last_seq: vec![0; subs * args.publishers],
            last_room_seq: vec![0; subs],
            joined: vec![!chat; subs + args.publishers],
            joined_count: if chat { 0 } else { subs + args.publishers },
            sending: false,
            delivered: 0,
            unique: 0,
            published: 0,
            stalls: 0,
            hist: stats::new_histogram(),
            checks: Checks::default(),
            args,
        })
    }

    /// Connections to open: subscribers first, then publishers.
    pub fn connections(&self) -> usize {
        self.args.connections + self.args.publishers
    }

    fn room_name(&self, room: usize) -> String {
        format!("{}{room}", self.args.room_prefix)
    }

    fn conn_name(&self, id: usize) -> String {
        if id < self.args.connections {
            format!("s{id}")
        } else {
            format!("p{id}")
        }
    }

    fn join_frame(&mut self, id: usize, room: usize) -> Vec<u8> {
        let text = format!(
            r#"{{"type":"join","room":"{}","name":"{}"}}"#,
            self.room_name(room),
            self.conn_name(id)
        );
        let mut f = Vec::new();
        encode_client_frame(
            &mut f,
            true,
            OpCode::Text,
            text.as_bytes(),
            self.masks.next_mask(),
        );
        f
    }

    fn new_publisher(&mut self, id: usize) -> Publisher {
        let index = id - self.args.connections;
        let room = index % self.args.rooms;
        let mut body = vec![0u8; self.args.size];
        payload::bcast_payload(&mut body, index as u64, 0, 0, &self.filler);
        let (prefix, suffix) = if self.chat {
            (
                format!(
                    r#"{{"type":"message","room":"{}","text":""#,
                    self.room_name(room)
                ),
                r#""}"#.to_owned(),
            )
        } else {
            (String::new(), String::new())
        };
        let mut ws_payload = prefix.clone().into_bytes();
        ws_payload.extend_from_slice(&body);
        ws_payload.extend_from_slice(suffix.as_bytes());
        let mask = self.masks.next_mask();
        let mut frame = Vec::new();
        encode_client_frame(&mut frame, true, OpCode::Text, &ws_payload, mask);
        Publisher {
            id,
            room,
            ws_at: frame.len() - ws_payload.len(),
            body_at: prefix.len(),
            frame,
            mask,
            published: 0,
            delivered: 0,
            written_off: 0,
            expected: 0,
            last_progress: now_ns(),
            next_due: 0,
        }
    }

    /// Patches hex digits into the masked frame at body offset `at`.
    fn patch(p: &mut Publisher, at: usize, v: u64, len: usize) {
        let mut digits = [0u8; 16];
        payload::put_hex(&mut digits[..len], v);
        for (i, d) in digits[..len].iter().enumerate() {
            let o = p.body_at + at + i;
            p.frame[p.ws_at + o] = d ^ p.mask[o & 3];
        }
    }

    fn publish(&mut self, engine: &mut Engine, k: usize) -> bool {
        // Don't pile data into a socket the server is not reading.
        if engine.unsent(self.pubs[k].id) > 1 << 20 {
            return false;
        }
        let now = now_ns();
        let room_subs = self.room_subs[self.pubs[k].room];
        let p = &mut self.pubs[k];
        let seq = p.published + 1;
        Self::patch(p, BCAST_SEQ_AT, seq, 12);
        Self::patch(p, BCAST_TIME_AT, now, 16);
        let mut frame = std::mem::take(&mut p.frame);
        let id = p.id;
        let sent = engine.send_with(id, self, |out| out.push(&frame));
        let p = &mut self.pubs[k];
        std::mem::swap(&mut p.frame, &mut frame);
        if sent {
            p.published = seq;
            p.expected += room_subs;
            self.published += 1;
        }
        sent
    }

    fn outstanding(&self, k: usize) -> u64 {
        let p = &self.pubs[k];
        p.expected.saturating_sub(p.delivered + p.written_off)
    }

    fn on_subscriber_message(&mut self, sub: usize, data: &[u8], now: u64) {
        if self.chat {
            self.check_room_seq(sub, data);
        }
        let head = match payload::find_bcast(data, self.args.size, &self.filler) {
            None => return,
            Some(Err(())) => {
                self.checks.corrupted += 1;
                self.checks.example(|| {
                    format!(
                        "subscriber {sub}: corrupted payload {:?}",
                        String::from_utf8_lossy(&data[..data.len().min(80)])
                    )
                });
                return;
            }
            Some(Ok(h)) => h,
        };
        let np = self.args.publishers;
        let publisher = head.publisher as usize;
        if publisher >= np {
            self.checks.corrupted += 1;
            return;
        }
        self.delivered += 1;
        stats::record(&mut self.hist, now.saturating_sub(head.sent_ns));
        let last = &mut self.last_seq[sub * np + publisher];
        if head.seq <= *last {
            self.checks.duplicated_or_reordered += 1;
            let l = *last;
            self.checks.example(|| {
                format!(
                    "subscriber {sub}: message {} of publisher {publisher} after {l}",
                    head.seq
                )
            });
            return;
        }
        *last = head.seq;
        self.unique += 1;
        if let Some(p) = self.pubs.get_mut(self.pub_slot[publisher]) {
            p.delivered += 1;
            p.last_progress = now;
        }
    }

    /// Chat events carry the room's sequence number. A member gets every
    /// event of its room from its own join on, so after the first one each
    /// must be exactly one more than the last (a gap is a lost event, a step
    /// back is a duplicate or reordering).
    fn check_room_seq(&mut self, sub: usize, data: &[u8]) {
        const KEY: &[u8] = b"\"seq\":";
        let Some(at) = data.windows(KEY.len()).position(|w| w == KEY) else {
            return;
        };
        let seq = data[at + KEY.len()..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
        let last = self.last_room_seq[sub];
        if last != 0 && seq != last + 1 {
            self.checks.room_order_violations += 1;
            self.checks
                .example(|| format!("subscriber {sub}: room seq {seq} after {last}"));
        }
        self.last_room_seq[sub] = seq;
    }

    fn note_join(&mut self, id: usize, data: &[u8]) {
        if self.joined[id] {
            return;
        }
        let name = format!(r#""name":"{}""#, self.conn_name(id));
        let has = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
        if has(br#""type":"join""#) && has(name.as_bytes()) {
            self.joined[id] = true;
            self.joined_count += 1;
        }
    }
}

impl Handler for Broadcast {
    fn on_open(&mut self, out: &mut Out, id: usize, _now: u64, _connect_ns: u64) -> bool {
        let subs = self.args.connections;
        let room = if id < subs {
            self.room_subs[self.sub_room[id]] += 1;
            self.sub_room[id]
        } else {
            let p = self.new_publisher(id);
            let room = p.room;
            self.pub_slot[id - subs] = self.pubs.len();
            self.pubs.push(p);
            room
        };
        if self.chat {
            let f = self.join_frame(id, room);
            out.push(&f);
        }
        true
    }

    fn on_message(&mut self, _out: &mut Out, id: usize, data: &[u8], _text: bool, now: u64) {
        if self.chat && !self.joined[id] {
            self.note_join(id, data);
        }
        if id < self.args.connections {
            self.on_subscriber_message(id, data, now);
        }
        // Publishers get their own and everyone else's messages: discarded.
    }

    fn on_close(&mut self, id: usize, _reason: CloseReason, was_open: bool, _now: u64) {
        if was_open && id < self.args.connections {
            self.room_subs[self.sub_room[id]] -= 1;
        }
    }
}

impl Load for Broadcast {
    fn unit(&self) -> &'static str {
        "deliveries"
    }

    fn ready(&self, _engine: &Engine) -> bool {
        self.joined_count >= self.joined.len()
    }

    fn start(&mut self, _engine: &mut Engine) {
        self.sending = true;
        let now = now_ns();
        let n = self.pubs.len().max(1) as u64;
        let interval = self.interval_ns();
        for (i, p) in self.pubs.iter_mut().enumerate() {
            // Stagger publishers over one interval.
            p.next_due = now + interval * i as u64 / n;
            p.last_progress = now;
        }
    }

    fn tick(&mut self, engine: &mut Engine) -> u16 {
        if !self.sending {
            return 50;
        }
        let now = now_ns();
        let mut wait_ns = 50_000_000u64;
        for k in 0..self.pubs.len() {
            if self.args.rate > 0.0 {
                let interval = self.interval_ns();
                let mut burst = 0;
                while self.pubs[k].next_due <= now && burst < 1000 {
                    self.publish(engine, k);
                    self.pubs[k].next_due += interval;
                    burst += 1;
                }
                // More than a second behind: the generator cannot keep the
                // rate; skip ahead instead of bursting.
                if now.saturating_sub(self.pubs[k].next_due) > 1_000_000_000 {
                    self.pubs[k].next_due = now + interval;
                }
                wait_ns = wait_ns.min(self.pubs[k].next_due.saturating_sub(now));
            } else {
                let room = self.room_subs[self.pubs[k].room].max(1);
                let window = self.args.in_flight as u64 * room;
                // The cap per tick only matters for an empty room, where
                // publishing never adds to what is outstanding.
                let mut burst = 0;
                while self.outstanding(k) < window && burst < self.args.in_flight.max(1) {
                    if !self.publish(engine, k) {
                        break;
                    }
                    burst += 1;
                }
                let p = &mut self.pubs[k];
                // Nothing delivered for a second: count the rest as lost (the
                // final check reports it) and carry on.
                if now.saturating_sub(p.last_progress) > 1_000_000_000 {
                    p.written_off = p.expected.saturating_sub(p.delivered);
                    p.last_progress = now;
                    self.stalls += 1;
                }
            }
        }
        (wait_ns / 1_000_000) as u16
    }

    fn counters(&self) -> Counters {
        let size = self.args.size as u64;
        Counters {
            messages: self.unique,
            payload_out: self.published * size,
            payload_in: self.delivered * size,
        }
    }

    fn take_histogram(&mut self) -> Histogram<u64> {
        std::mem::replace(&mut self.hist, stats::new_histogram())
    }

    fn stop(&mut self) {
        self.sending = false;
    }

    fn drained(&self) -> bool {
        self.pubs.iter().all(|p| p.delivered >= p.expected)
    }

    fn checks(&mut self) -> Checks {
        let mut c = self.checks.clone();
        c.expected = self.pubs.iter().map(|p| p.expected).sum();
        c.received = self.delivered;
        c.lost = c.expected.saturating_sub(self.unique);
        let (lost, stalls) = (c.lost, self.stalls);
        if lost > 0 {
            c.example(|| format!("{lost} deliveries missing; {stalls} publisher stalls"));
        }
        c
    }
}

impl Broadcast {
    fn interval_ns(&self) -> u64 {
        if self.args.rate <= 0.0 {
            return 0;
        }
        (self.pubs.len().max(1) as f64 * 1e9 / self.args.rate) as u64
    }
}
