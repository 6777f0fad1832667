//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::cell::RefCell;
use std::ops::ControlFlow;
use std::rc::Rc;

use bytes::Bytes;
use ringcast_codec::{
    encode_client_frame, encode_header, BufferPool, Decoder, DecoderConfig, Lend, Message, NoLend,
    OpCode, ProtocolError, Role, MAX_HEADER_LEN,
};

/// An owned copy of a [`Message`], so tests can collect and compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl From<Message<'_>> for Owned {
    fn from(m: Message<'_>) -> Self {
        match m {
            Message::Text(s) => Owned::Text(s.to_owned()),
            Message::Binary(b) => Owned::Binary(b.to_vec()),
            Message::Ping(b) => Owned::Ping(b.to_vec()),
            Message::Pong(b) => Owned::Pong(b.to_vec()),
            Message::Close(c) => Owned::Close(c.map(|c| (c.code, c.reason.to_owned()))),
        }
    }
}

pub fn server() -> Decoder {
    Decoder::new(DecoderConfig::default())
}

pub fn client() -> Decoder {
    Decoder::new(DecoderConfig {
        role: Role::Client,
        ..DecoderConfig::default()
    })
}

/// A pool that asks for a frame buffer for every data message of at least
/// `min` bytes and keeps a copy of every frame it seals.
#[derive(Debug, Clone, Default)]
pub struct FramingPool {
    pub min: usize,
    pub sealed: Rc<RefCell<Vec<Bytes>>>,
}

impl BufferPool for FramingPool {
    fn take(&mut self, min_capacity: usize) -> Vec<u8> {
        Vec::with_capacity(min_capacity)
    }
    fn give(&mut self, _buf: Vec<u8>) {}
    fn frame_buf(&mut self, opcode: OpCode, len: usize) -> Option<Vec<u8>> {
        if len < self.min {
            return None;
        }
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut h, true, opcode, len as u64, None);
        let mut buf = Vec::with_capacity(n + len);
        buf.extend_from_slice(&h[..n]);
        Some(buf)
    }
    fn seal(&mut self, frame: Vec<u8>) -> Bytes {
        let frame = Bytes::from(frame);
        self.sealed.borrow_mut().push(frame.clone());
        frame
    }
}

/// A server decoder with a [`FramingPool`] (and a handle on its frames).
pub fn framing_server(
    cfg: DecoderConfig,
    min: usize,
) -> (Decoder<FramingPool>, Rc<RefCell<Vec<Bytes>>>) {
    let pool = FramingPool {
        min,
        ..FramingPool::default()
    };
    let sealed = pool.sealed.clone();
    (Decoder::with_pool(cfg, pool), sealed)
}

/// What a client decodes from frames the server would send.
pub fn decode_frames(frames: &[Bytes]) -> Vec<Owned> {
    let mut c = client();
    frames
        .iter()
        .flat_map(|f| {
            let (m, r) = feed(&mut c, f);
            assert_eq!(r, Ok(()));
            m
        })
        .collect()
}

/// A lender that keeps (a copy of) every frame of at least `min` bytes it
/// is offered, or gives each back when `decline`. Checks that the frame it
/// is offered is already the server frame of the message handed out.
#[derive(Debug, Clone, Default)]
pub struct CopyLend {
    pub min: usize,
    pub decline: bool,
    pub lent: Rc<RefCell<Vec<Bytes>>>,
}

impl<'a> Lend<'a> for CopyLend {
    fn wants(&self, frame_len: usize) -> bool {
        frame_len >= self.min
    }
    fn lend(&mut self, frame: &'a mut [u8]) -> Result<Bytes, &'a mut [u8]> {
        if self.decline {
            return Err(frame);
        }
        let kept = Bytes::copy_from_slice(frame);
        self.lent.borrow_mut().push(kept.clone());
        Ok(kept)
    }
}

/// Feeds `bytes` as one chunk and collects what comes out.
pub fn feed<P: BufferPool>(
    dec: &mut Decoder<P>,
    bytes: &[u8],
) -> (Vec<Owned>, Result<(), ProtocolError>) {
    feed_lent(dec, bytes, &mut NoLend)
}

/// [`feed`] through a lender.
pub fn feed_lent<P: BufferPool, L: for<'a> Lend<'a>>(
    dec: &mut Decoder<P>,
    bytes: &[u8],
    lend: &mut L,
) -> (Vec<Owned>, Result<(), ProtocolError>) {
    let mut chunk = bytes.to_vec();
    let mut out = Vec::new();
    let r = dec.decode_lent(&mut chunk, lend, |m| {
        out.push(Owned::from(m));
        ControlFlow::Continue(())
    });
    (out, r)
}

/// Feeds `bytes` in the given chunk sizes (cycled), collecting everything
/// until the first error.
pub fn feed_split<P: BufferPool>(
    dec: &mut Decoder<P>,
    bytes: &[u8],
    sizes: &[usize],
) -> (Vec<Owned>, Result<(), ProtocolError>) {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let n = sizes[i % sizes.len()].max(1).min(bytes.len() - pos);
        i += 1;
        let (m, r) = feed(dec, &bytes[pos..pos + n]);
        out.extend(m);
        if r.is_err() {
            return (out, r);
        }
        pos += n;
    }
    (out, Ok(()))
}

/// A masked (client-role) frame with explicit header bits.
pub fn masked(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    let fin = b0 & 0x80 != 0;
    let op = OpCode::from_u8(b0 & 0x0F).unwrap_or(OpCode::Binary);
    encode_client_frame(&mut out, fin, op, payload, key);
    out[0] = b0;
    out
}

/// An unmasked (server-role) frame with explicit first byte.
pub fn unmasked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut h, true, OpCode::Binary, payload.len() as u64, None);
    h[0] = b0;
    let mut out = h[..n].to_vec();
    out.extend_from_slice(payload);
    out
}

pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
