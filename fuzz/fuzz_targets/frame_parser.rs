//! Frame parser fuzz target.
//!
//! Input: one config byte, one split byte, then the byte stream. The stream
//! is decoded three times: as one chunk, cut into small chunks, and cut into
//! small chunks through a lender that keeps every frame it is offered. All
//! runs must give the same messages and the same error (neither chunking
//! nor lending may matter), every lent frame must be the server frame of a
//! message, and buffering must stay within the configured bounds. When the
//! stream is one whole server message by `FrameHeader::read_server_message`,
//! the client-role decoder must agree.
#![no_main]

use std::cell::Cell;
use std::ops::ControlFlow;
use std::rc::Rc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringcast_codec::{
    is_valid_wire_code, Decoder, DecoderConfig, FrameHeader, Lend, Message, OpCode, ProtocolError,
    Role,
};

/// Keeps (a copy of) every frame offered, when `on`.
struct Keep {
    on: bool,
    last: Rc<Cell<Option<Bytes>>>,
}

impl<'a> Lend<'a> for Keep {
    fn wants(&self, _frame_len: usize) -> bool {
        self.on
    }
    fn lend(&mut self, frame: &'a mut [u8]) -> Result<Bytes, &'a mut [u8]> {
        let kept = Bytes::copy_from_slice(frame);
        self.last.set(Some(kept.clone()));
        Ok(kept)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

fn run(
    cfg: DecoderConfig,
    input: &[u8],
    split: u8,
    lend: bool,
) -> (Vec<Owned>, Option<ProtocolError>) {
    let mut dec = Decoder::new(cfg);
    let last = Rc::new(Cell::new(None));
    let mut keep = Keep {
        on: lend,
        last: last.clone(),
    };
    let mut out = Vec::new();
    let mut pos = 0;
    let mut step = 0usize;
    while pos < input.len() {
        let n = if split == 0 {
            input.len()
        } else {
            // Varying small chunk sizes: 1..=split, cycling.
            1 + (step * 7 + split as usize) % split as usize
        };
        step += 1;
        let end = input.len().min(pos + n);
        let mut chunk = input[pos..end].to_vec();
        pos = end;
        let r = dec.decode_lent(&mut chunk, &mut keep, |m| {
            if let (Some(f), Message::Text(_) | Message::Binary(_)) = (last.take(), m) {
                let payload = match m {
                    Message::Text(s) => s.as_bytes(),
                    Message::Binary(b) => b,
                    _ => unreachable!(),
                };
                let op = if matches!(m, Message::Text(_)) {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                let h = FrameHeader::read_server_message(&f).expect("lent frame is one message");
                assert_eq!(h.opcode, op);
                assert_eq!(
                    &f[h.header_len..],
                    payload,
                    "lent frame carries the message"
                );
            }
            out.push(match m {
                Message::Text(s) => {
                    assert!(std::str::from_utf8(s.as_bytes()).is_ok());
                    Owned::Text(s.to_owned())
                }
                Message::Binary(b) => {
                    assert!(b.len() <= cfg.max_message_size);
                    Owned::Binary(b.to_vec())
                }
                Message::Ping(b) => {
                    assert!(b.len() <= 125);
                    Owned::Ping(b.to_vec())
                }
                Message::Pong(b) => {
                    assert!(b.len() <= 125);
                    Owned::Pong(b.to_vec())
                }
                Message::Close(c) => {
                    if let Some(c) = c {
                        assert!(is_valid_wire_code(c.code));
                    }
                    Owned::Close(c.map(|c| (c.code, c.reason.to_owned())))
                }
            });
            ControlFlow::Continue(())
        });
        // Partial header (14) + partial control frame (125) + message.
        assert!(dec.buffered() <= cfg.max_message_size + 14 + 125);
        assert!(dec.capacity() <= cfg.max_message_size);
        if let Err(e) = r {
            assert!(matches!(e.code, 1002 | 1007 | 1009), "{e}");
            // Failure is sticky.
            assert_eq!(
                dec.decode(&mut [0x81, 0x80, 0, 0, 0, 0], |_| ControlFlow::Continue(())),
                Err(e)
            );
            return (out, Some(e));
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let [conf, split, input @ ..] = data else {
        return;
    };
    let cfg = DecoderConfig {
        role: if conf & 1 == 0 {
            Role::Server
        } else {
            Role::Client
        },
        max_message_size: if conf & 2 != 0 {
            1 << 20
        } else {
            ((conf >> 2) & 0x1F) as usize * 37
        },
        allow_rsv1: conf & 0x80 != 0,
    };
    let whole = run(cfg, input, 0, false);
    let pieces = run(cfg, input, split % 17, false);
    assert_eq!(whole, pieces);
    let lent = run(cfg, input, split % 17, true);
    assert_eq!(whole, lent);
    // The header helper and the decoder agree on what one whole message is.
    if let Some(h) = FrameHeader::read_server_message(input) {
        if cfg.role == Role::Client && h.payload_len <= cfg.max_message_size as u64 {
            match whole {
                (msgs, None) => match &msgs[..] {
                    [Owned::Text(t)] => {
                        assert_eq!((h.opcode, t.len() as u64), (OpCode::Text, h.payload_len))
                    }
                    [Owned::Binary(b)] => {
                        assert_eq!((h.opcode, b.len() as u64), (OpCode::Binary, h.payload_len))
                    }
                    other => panic!("one message expected, got {other:?}"),
                },
                (_, Some(e)) => assert_eq!((h.opcode, e.code), (OpCode::Text, 1007)),
            }
        }
    }
});
