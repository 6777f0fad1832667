//! `echo`: N connections, K messages in flight on each, every echo checked
//! byte for byte and timed (round trip).

use std::rc::Rc;

use hdrhistogram::Histogram;
use ringcast_codec::{encode_client_frame, MaskGen, OpCode};

use crate::clock::now_ns;
use crate::engine::{CloseReason, Engine, Handler, Out};
use crate::payload::{self, ECHO_HEAD};
use crate::run::{Counters, Load};
use crate::stats::{self, Checks};

/// Parameters of the echo scenario.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct EchoArgs {
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: usize,
    /// Messages in flight per connection.
    #[arg(long, short = 'k', default_value_t = 1)]
    pub in_flight: usize,
    /// Payload bytes per message (the first 20 carry connection id and
    /// sequence number; fewer than 20 weakens the check).
    #[arg(long, short = 's', default_value_t = 20)]
    pub size: usize,
    /// Send binary messages instead of text.
    #[arg(long)]
    pub binary: bool,
}

/// Payload bytes after the head from which the rest of a frame is queued by
/// reference instead of copied (below it a copy is cheaper than a slice).
const SHARE_FROM: usize = 1024;

struct Conn {
    /// The masked frame up to the end of the head bytes, the only ones that
    /// change per message; the whole frame when `body` is `None`.
    frame: Vec<u8>,
    /// The rest of the masked frame, the same for every message.
    body: Option<Rc<[u8]>>,
    payload_at: usize,
    mask: [u8; 4],
    sent: u64,
    received: u64,
    /// Send times of the messages in flight, by `seq % in_flight`.
    sent_at: Box<[u64]>,
}

/// The echo scenario's handler.
pub struct Echo {
    args: EchoArgs,
    filler: Vec<u8>,
    conns: Vec<Option<Conn>>,
    masks: MaskGen,
    sending: bool,
    messages_out: u64,
    messages_in: u64,
    hist: Histogram<u64>,
    checks: Checks,
}

impl Echo {
    /// A handler for `args`.
    pub fn new(args: EchoArgs) -> Echo {
        Echo {
            filler: payload::filler(args.size, args.binary),
            conns: Vec::new(),
            masks: MaskGen::new(now_ns() ^ 0x5eed),
            sending: false,
            messages_out: 0,
            messages_in: 0,
            hist: stats::new_histogram(),
            checks: Checks::default(),
            args,
        }
    }

    /// Appends the next message of connection `id` to `out`: patch the 20
    /// head bytes (masked) into the pre-masked frame, copy it and queue the
    /// shared body after it.
    #[inline]
    fn send_next(&mut self, id: usize, out: &mut Out, now: u64) {
        let Some(c) = self.conns[id].as_mut() else {
            return;
        };
        let head = payload::echo_head(id, c.sent);
        let n = self.args.size.min(ECHO_HEAD);
        for (i, b) in head[..n].iter().enumerate() {
            c.frame[c.payload_at + i] = b ^ c.mask[i & 3];
        }
        out.push(&c.frame);
        if let Some(body) = &c.body {
            out.push_shared(body);
        }
        let slot = (c.sent % c.sent_at.len() as u64) as usize;
        c.sent_at[slot] = now;
        c.sent += 1;
        self.messages_out += 1;
    }

    fn fill_window(&mut self, id: usize, out: &mut Out, now: u64) {
        let k = self.args.in_flight as u64;
        while self.conns[id]
            .as_ref()
            .is_some_and(|c| c.sent - c.received < k)
        {
            self.send_next(id, out, now);
        }
    }
}

impl Handler for Echo {
    fn on_open(&mut self, out: &mut Out, id: usize, now: u64, _connect_ns: u64) -> bool {
        if self.conns.len() <= id {
            self.conns.resize_with(id + 1, || None);
        }
        let mask = self.masks.next_mask();
        let opcode = if self.args.binary {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        let mut frame = Vec::new();
        encode_client_frame(
            &mut frame,
            true,
            opcode,
            &payload::echo_payload(id, 0, &self.filler),
            mask,
        );
        let payload_at = frame.len() - self.args.size;
        let head_end = payload_at + self.args.size.min(ECHO_HEAD);
        let body = (frame.len() - head_end >= SHARE_FROM).then(|| {
            let body = Rc::from(&frame[head_end..]);
            frame.truncate(head_end);
            body
        });
        self.conns[id] = Some(Conn {
            payload_at,
            frame,
            body,
            mask,
            sent: 0,
            received: 0,
            sent_at: vec![0; self.args.in_flight.max(1)].into_boxed_slice(),
        });
        if self.sending {
            self.fill_window(id, out, now);
        }
        true
    }

    fn on_message(&mut self, out: &mut Out, id: usize, data: &[u8], text: bool, now: u64) {
        let Some(c) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            self.checks.unexpected += 1;
            return;
        };
        let seq = c.received;
        if seq >= c.sent {
            self.checks.unexpected += 1;
            self.checks
                .example(|| format!("connection {id}: an echo arrived with nothing in flight"));
            return;
        }
        let slot = (seq % c.sent_at.len() as u64) as usize;
        stats::record(&mut self.hist, now.saturating_sub(c.sent_at[slot]));
        c.received += 1;
        self.messages_in += 1;
        self.checks.verified += 1;
        let verdict = if text == self.args.binary {
            Err(payload::EchoMismatch::Kind)
        } else {
            payload::check_echo(data, id, seq, &self.filler)
        };
        if let Err(e) = verdict {
            self.checks.mismatches += 1;
            self.checks
                .example(|| format!("connection {id}, message {seq}: {e}"));
        }
        if self.sending {
            self.fill_window(id, out, now);
        }
    }

    fn on_close(&mut self, id: usize, _reason: CloseReason, _was_open: bool, _now: u64) {
        // Its echoes in flight will never come; the engine counts the drop.
        if let Some(slot) = self.conns.get_mut(id) {
            *slot = None;
        }
    }
}

impl Load for Echo {
    fn unit(&self) -> &'static str {
        "echoes"
    }

    fn start(&mut self, engine: &mut Engine) {
        self.sending = true;
        let now = now_ns();
        for id in 0..engine.len() {
            if self.conns.get(id).is_some_and(Option::is_some) {
                // Borrow juggling: the engine owns the buffer, we own the frames.
                let mut batch = Out::default();
                self.fill_window(id, &mut batch, now);
                engine.send_with(id, self, |out| out.append(batch));
            }
        }
    }

    fn tick(&mut self, _engine: &mut Engine) -> u16 {
        // Echo is closed-loop: everything is sent from `on_message`.
        50
    }

    fn counters(&self) -> Counters {
        let size = self.args.size as u64;
        Counters {
            messages: self.messages_in,
            payload_out: self.messages_out * size,
            payload_in: self.messages_in * size,
        }
    }

    fn take_histogram(&mut self) -> Histogram<u64> {
        std::mem::replace(&mut self.hist, stats::new_histogram())
    }

    fn stop(&mut self) {
        self.sending = false;
    }

    fn drained(&self) -> bool {
        self.conns.iter().flatten().all(|c| c.sent == c.received)
    }

    fn checks(&mut self) -> Checks {
        self.checks.clone()
    }
}
