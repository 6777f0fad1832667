//! The incremental frame parser and message assembly (RFC 6455 §5.4–§5.6).
//!
//! [`Decoder::decode`] takes whatever bytes the socket produced. A frame that
//! lies whole in the chunk is unmasked in place and handed to the caller as
//! a slice of the chunk: no copy, no allocation. Only a frame cut by the end
//! of the chunk, or a message fragmented over several frames, is copied into
//! a per-connection buffer, which is freed again once the message is out.
//!
//! A server that sends messages straight back or on (echo, broadcast) can
//! ask its [`BufferPool`] for [`frame_buf`](BufferPool::frame_buf)s: a
//! whole unfragmented message is then unmasked into a buffer that already
//! holds the header of the server frame carrying it, and that frame can be
//! sent as it is.
//!
//! Every byte is looked at once: a split header is completed from at most 14
//! stashed bytes, and payload bytes are unmasked, validated and appended as
//! they arrive, so feeding one byte at a time costs no re-scanning.

use std::fmt;
use std::ops::ControlFlow;

use bytes::Bytes;

use crate::close::{codes, parse_close_payload, CloseFrame};
use crate::frame::{
    encode_header, server_frame_len, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN,
};
use crate::mask;
use crate::utf8::{self, Utf8Stream};
use crate::Role;

/// Default for [`DecoderConfig::max_message_size`]: 1 MiB.
pub const MAX_MESSAGE_SIZE_DEFAULT: usize = 1 << 20;

/// Decoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Our role: a server requires masked frames, a client unmasked ones.
    pub role: Role,
    /// Largest message (sum of its frames' payloads) accepted; larger → 1009.
    pub max_message_size: usize,
    /// Accept RSV1 on the first frame of a data message (an extension such
    /// as permessage-deflate was negotiated). The decoder does not
    /// decompress: the payload is handed out as received, and text is still
    /// checked as UTF-8. Leave false unless an extension layer sits on top.
    pub allow_rsv1: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            role: Role::Server,
            max_message_size: MAX_MESSAGE_SIZE_DEFAULT,
            allow_rsv1: false,
        }
    }
}

/// A complete message or control frame. Borrows the decoder's input chunk
/// or its buffer, so it lives only for the duration of the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete text message, validated UTF-8.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; answer with [`pong_frame`](crate::pong_frame).
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer's close frame (`None` when its payload was empty). Pass it
    /// to [`CloseState::on_peer_close`](crate::CloseState::on_peer_close).
    Close(Option<CloseFrame<'a>>),
}

/// A protocol violation by the peer, with the close code to send (§7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    /// Close code: 1002, 1007 or 1009.
    pub code: u16,
    /// Short human-readable cause, usable as the close reason.
    pub reason: &'static str,
}

impl ProtocolError {
    /// An error with this close code and reason.
    pub const fn new(code: u16, reason: &'static str) -> Self {
        ProtocolError { code, reason }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "websocket protocol error {}: {}", self.code, self.reason)
    }
}

impl std::error::Error for ProtocolError {}

const fn err(code: u16, reason: &'static str) -> ProtocolError {
    ProtocolError::new(code, reason)
}

/// One error for every UTF-8 failure, so the outcome does not depend on how
/// the text was split into frames or reads.
const INVALID_TEXT: ProtocolError = err(codes::INVALID_PAYLOAD, "invalid UTF-8 in text");

/// A frame whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct Partial {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes still to come.
    remaining: usize,
    /// Payload bytes already seen (mask rotation).
    done: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame was delivered or the caller stopped: ignore input.
    Done,
    Failed(ProtocolError),
}

/// Where a [`Decoder`] gets its message-assembly buffers and where it returns
/// them once the message is out.
///
/// A server decoding many connections on one thread can recycle these
/// buffers between connections instead of allocating one per cut message:
/// a 16 KiB message that straddles two reads would otherwise cost a fresh
/// 16 KiB allocation and a free every time, and the allocator may hand
/// freed pages back to the kernel and fault them in again on the next one.
pub trait BufferPool {
    /// An empty buffer with at least `min_capacity` bytes of capacity.
    fn take(&mut self, min_capacity: usize) -> Vec<u8>;
    /// A buffer the decoder no longer needs (its contents are stale).
    fn give(&mut self, buf: Vec<u8>);

    /// For a server: a buffer for a whole, unfragmented data message of
    /// `len` bytes, already holding the header of the unmasked final frame
    /// with this `opcode` and length (see [`server_frame_len`]). The decoder
    /// appends the payload, unmasking on the way, and lends the message out
    /// of the [`seal`](BufferPool::seal)ed frame, so echoing or forwarding
    /// it needs no copy. `None` (the default): unmask in place, no copy.
    ///
    /// [`server_frame_len`]: crate::server_frame_len
    fn frame_buf(&mut self, _opcode: OpCode, _len: usize) -> Option<Vec<u8>> {
        None
    }

    /// Freezes a frame built in a [`frame_buf`](BufferPool::frame_buf)
    /// buffer, just before its message is handed out.
    fn seal(&mut self, frame: Vec<u8>) -> Bytes {
        Bytes::from(frame)
    }
}

/// Where the decoder's input lives, for a server whose input buffers can
/// outlive [`Decoder::decode_lent`] (a reactor lending its receive buffer).
///
/// A whole, unfragmented data message that the lender
/// [`wants`](Lend::wants) is unmasked in place, the header of its unmasked
/// server frame is written over the end of the client's header (always
/// four bytes longer: the mask key), and the frame is lent as it lies in
/// the chunk. The message is handed out of that, so echoing or forwarding
/// it costs neither a copy nor an allocation for the payload.
pub trait Lend<'a> {
    /// Whether a server frame of `frame_len` bytes should be lent.
    fn wants(&self, frame_len: usize) -> bool;
    /// `frame` (a part of the chunk, now an unmasked server frame) as
    /// `Bytes` that outlive the chunk; `Err` gives it back.
    fn lend(&mut self, frame: &'a mut [u8]) -> Result<Bytes, &'a mut [u8]>;
}

/// Input that cannot be lent (what [`Decoder::decode`] uses).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLend;

impl<'a> Lend<'a> for NoLend {
    fn wants(&self, _frame_len: usize) -> bool {
        false
    }
    fn lend(&mut self, frame: &'a mut [u8]) -> Result<Bytes, &'a mut [u8]> {
        Err(frame)
    }
}

/// The default pool: plain allocation, nothing kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPool;

impl BufferPool for NoPool {
    fn take(&mut self, min_capacity: usize) -> Vec<u8> {
        Vec::with_capacity(min_capacity)
    }
    fn give(&mut self, _buf: Vec<u8>) {}
}

/// Incremental frame parser and message assembler for one connection.
#[derive(Debug, Clone)]
pub struct Decoder<P: BufferPool = NoPool> {
    pool: P,
    cfg: DecoderConfig,
    state: State,
    /// Header bytes cut off at the end of the previous chunk.
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    /// The frame whose payload is being received, if any.
    frame: Option<Partial>,
    /// Payload of a control frame cut by a chunk boundary.
    ctrl: [u8; MAX_CONTROL_PAYLOAD],
    ctrl_len: u8,
    /// Data message being assembled, when it is fragmented or was split.
    msg: Vec<u8>,
    /// Where the payload starts in `msg`: after the frame header when `msg`
    /// came from [`BufferPool::frame_buf`], else 0.
    msg_start: usize,
    /// Opcode (Text or Binary) of the message in `msg`; `Some` while one is
    /// in progress.
    msg_op: Option<OpCode>,
    utf8: Utf8Stream,
}

impl Decoder {
    /// A decoder at the start of a connection's frame stream.
    pub fn new(cfg: DecoderConfig) -> Self {
        Decoder::with_pool(cfg, NoPool)
    }
}

impl<P: BufferPool> Decoder<P> {
    /// A decoder that takes its assembly buffers from `pool`.
    pub fn with_pool(cfg: DecoderConfig, pool: P) -> Self {
        Decoder {
            pool,
            cfg,
            state: State::Open,
            hdr: [0; MAX_HEADER_LEN],
            hdr_len: 0,
            frame: None,
            ctrl: [0; MAX_CONTROL_PAYLOAD],
            ctrl_len: 0,
            msg: Vec::new(),
            msg_start: 0,
            msg_op: None,
            utf8: Utf8Stream::new(),
        }
    }

    /// The configuration this decoder was built with.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// Decodes every complete frame in `chunk`, unmasking in place, and
    /// calls `sink` for each message and control frame in order. Frames that
    /// lie whole in `chunk` are handed out as slices of it (zero-copy); only
    /// an incomplete tail or a fragmented message is buffered.
    ///
    /// `sink` returns `ControlFlow::Break(())` to stop: the rest of `chunk`
    /// is dropped and later calls ignore their input (the caller is closing).
    /// After a [`Message::Close`] decoding stops the same way.
    ///
    /// On a protocol violation returns the error with its close code; the
    /// decoder stays failed and returns the same error from later calls.
    pub fn decode(
        &mut self,
        chunk: &mut [u8],
        sink: impl FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<(), ProtocolError> {
        self.decode_lent(chunk, &mut NoLend, sink)
    }

    /// [`decode`](Decoder::decode) from a chunk whose frames `lend` may
    /// keep past the call (see [`Lend`]).
    pub fn decode_lent<'a>(
        &mut self,
        chunk: &'a mut [u8],
        lend: &mut impl Lend<'a>,
        mut sink: impl FnMut(Message<'_>) -> ControlFlow<()>,
    ) -> Result<(), ProtocolError> {
        self.decode_framed(chunk, lend, |m, _| sink(m))
    }

    /// [`decode_lent`](Decoder::decode_lent), also handing the sink the
    /// server frame that carries a data message when the decoder built one
    /// (in a [`BufferPool::frame_buf`] buffer, or lent in place): the
    /// message's payload is that frame's payload, so sending the message on
    /// as it is needs only a clone of the `Bytes`.
    pub fn decode_framed<'a>(
        &mut self,
        chunk: &'a mut [u8],
        lend: &mut impl Lend<'a>,
        mut sink: impl FnMut(Message<'_>, Option<&Bytes>) -> ControlFlow<()>,
    ) -> Result<(), ProtocolError> {
        match self.state {
            State::Open => {}
            State::Done => return Ok(()),
            State::Failed(e) => return Err(e),
        }
        let r = self.decode_inner(chunk, lend, &mut sink);
        if let Err(e) = r {
            self.state = State::Failed(e);
            self.release();
        }
        r
    }

    /// True once decoding has stopped: after a close frame, a `Break` from
    /// the sink or a protocol error.
    pub fn is_finished(&self) -> bool {
        self.state != State::Open
    }

    /// Bytes currently buffered (partial header, partial control frame and
    /// message being assembled), for memory accounting.
    pub fn buffered(&self) -> usize {
        self.hdr_len as usize + self.ctrl_len as usize + self.msg.len() - self.msg_start
    }

    /// Heap capacity held by this decoder.
    pub fn capacity(&self) -> usize {
        self.msg.capacity()
    }

    /// Releases buffer capacity not needed for data still buffered, so an
    /// idle connection holds no heap memory.
    pub fn shrink(&mut self) {
        if self.msg.is_empty() {
            self.recycle();
        } else {
            self.msg.shrink_to_fit();
        }
    }

    /// Hands the assembly buffer back to the pool.
    fn recycle(&mut self) {
        self.msg_start = 0;
        let buf = std::mem::take(&mut self.msg);
        if buf.capacity() > 0 {
            self.pool.give(buf);
        }
    }

    fn release(&mut self) {
        self.recycle();
        self.msg_op = None;
        self.frame = None;
        self.hdr_len = 0;
        self.ctrl_len = 0;
        self.utf8.reset();
    }

    /// Rules that depend on the role, the configuration or the message in
    /// progress (the context-free ones are in [`FrameHeader::parse`]).
    #[inline]
    fn check(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv != 0 {
            let first_data = matches!(h.opcode, OpCode::Text | OpCode::Binary);
            if !(self.cfg.allow_rsv1 && h.rsv == 0b100 && first_data) {
                return Err(err(
                    codes::PROTOCOL_ERROR,
                    "RSV bits set without a negotiated extension",
                ));
            }
        }
        match (self.cfg.role, h.mask.is_some()) {
            (Role::Server, false) => {
                return Err(err(codes::PROTOCOL_ERROR, "unmasked frame from client"))
            }
            (Role::Client, true) => {
                return Err(err(codes::PROTOCOL_ERROR, "masked frame from server"))
            }
            _ => {}
        }
        match h.opcode {
            OpCode::Continuation if self.msg_op.is_none() => Err(err(
                codes::PROTOCOL_ERROR,
                "continuation frame without a message in progress",
            )),
            OpCode::Text | OpCode::Binary if self.msg_op.is_some() => Err(err(
                codes::PROTOCOL_ERROR,
                "new data frame inside a fragmented message",
            )),
            op if op.is_control() => Ok(()),
            _ => {
                let total = self.msg.len() as u64 + h.payload_len;
                if total > self.cfg.max_message_size as u64 {
                    Err(err(codes::TOO_BIG, "message too big"))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Reads the next frame header, from `chunk[*pos..]` or by completing
    /// a stashed partial header. `None`: the chunk ran out first.
    #[inline]
    fn next_header(
        &mut self,
        chunk: &[u8],
        pos: &mut usize,
    ) -> Result<Option<FrameHeader>, ProtocolError> {
        let rest = &chunk[*pos..];
        if self.hdr_len == 0 {
            return match FrameHeader::parse(rest)? {
                Some(h) => {
                    *pos += h.header_len;
                    Ok(Some(h))
                }
                None => {
                    // Shorter than a header, so fewer than 14 bytes.
                    self.hdr[..rest.len()].copy_from_slice(rest);
                    self.hdr_len = rest.len() as u8;
                    Ok(None)
                }
            };
        }
        let old = self.hdr_len as usize;
        let n = (MAX_HEADER_LEN - old).min(rest.len());
        self.hdr[old..old + n].copy_from_slice(&rest[..n]);
        match FrameHeader::parse(&self.hdr[..old + n])? {
            Some(h) => {
                *pos += h.header_len - old;
                self.hdr_len = 0;
                Ok(Some(h))
            }
            None => {
                // 14 bytes always hold a header, so the chunk is used up.
                self.hdr_len = (old + n) as u8;
                *pos += n;
                Ok(None)
            }
        }
    }

    fn decode_inner<'a>(
        &mut self,
        mut chunk: &'a mut [u8],
        lend: &mut impl Lend<'a>,
        sink: &mut impl FnMut(Message<'_>, Option<&Bytes>) -> ControlFlow<()>,
    ) -> Result<(), ProtocolError> {
        let mut pos = 0;
        loop {
            // Empty frames are finished in the iteration that parsed their
            // header, so nothing is left to do once the chunk is used up.
            if pos == chunk.len() {
                return Ok(());
            }
            if self.frame.is_none() {
                let h = match self.next_header(chunk, &mut pos)? {
                    Some(h) => h,
                    None => return Ok(()),
                };
                self.check(&h)?;
                // Bounded by the checks above (125 or max_message_size).
                let len = h.payload_len as usize;
                let here = chunk.len() - pos;
                let whole = here >= len;
                let single = h.fin && h.opcode != OpCode::Continuation;
                let data = !h.opcode.is_control();
                if let (true, Some(key)) = (whole && single && data, h.mask) {
                    // The server header fits where the client's ended.
                    let header = server_frame_len(len) - len;
                    if pos >= header && lend.wants(header + len) {
                        let (done, rest) = std::mem::take(&mut chunk).split_at_mut(pos + len);
                        let frame = &mut done[pos - header..];
                        chunk = rest;
                        pos = 0;
                        let flow = lend_in_place(frame, header, h.opcode, key, lend, sink)?;
                        if flow.is_break() {
                            self.state = State::Done;
                            return Ok(());
                        }
                        continue;
                    }
                }
                // A split frame gets one only when half of it is here: like
                // `append`, reserve at most twice the bytes received.
                let mut framed = if single && data && len <= here * 2 {
                    self.pool.frame_buf(h.opcode, len)
                } else {
                    None
                };
                if let Some(buf) = framed.take_if(|_| whole) {
                    // The frame is all here: unmask it into the server
                    // frame that will carry it.
                    let payload = &chunk[pos..pos + len];
                    pos += len;
                    if self
                        .lend_framed(buf, payload, h.opcode, h.mask, sink)?
                        .is_break()
                    {
                        self.state = State::Done;
                        return Ok(());
                    }
                    continue;
                }
                if whole && single {
                    // Fast path: the frame is all here and is a message on
                    // its own. Unmask in place and lend it out.
                    let payload = &mut chunk[pos..pos + len];
                    pos += len;
                    if let Some(k) = h.mask {
                        mask::unmask(payload, k, 0);
                    }
                    let flow = match h.opcode {
                        OpCode::Text => match utf8::validate(payload) {
                            Some(s) => sink(Message::Text(s), None),
                            None => return Err(INVALID_TEXT),
                        },
                        OpCode::Binary => sink(Message::Binary(payload), None),
                        op => control(op, payload, sink)?,
                    };
                    if flow.is_break() {
                        self.state = State::Done;
                        return Ok(());
                    }
                    continue;
                }
                if !h.opcode.is_control() && h.opcode != OpCode::Continuation {
                    self.msg_op = Some(h.opcode);
                }
                if let Some(buf) = framed {
                    // Split over reads: assemble it in the frame buffer.
                    debug_assert!(self.msg.is_empty());
                    self.recycle();
                    self.msg_start = buf.len();
                    self.msg = buf;
                }
                self.ctrl_len = 0;
                self.frame = Some(Partial {
                    opcode: h.opcode,
                    fin: h.fin,
                    mask: h.mask,
                    remaining: len,
                    done: 0,
                });
            }

            // Payload of a frame that is not whole in this chunk, or part of
            // a fragmented message: unmask, check and buffer what is here.
            let Some(f) = self.frame.as_mut() else {
                continue;
            };
            let take = f.remaining.min(chunk.len() - pos);
            let piece = &mut chunk[pos..pos + take];
            pos += take;
            if let Some(k) = f.mask {
                mask::unmask(piece, k, f.done);
            }
            f.remaining -= take;
            f.done += take;
            let f = *f;
            if f.opcode.is_control() {
                let at = self.ctrl_len as usize;
                self.ctrl[at..at + take].copy_from_slice(piece);
                self.ctrl_len += take as u8;
            } else {
                if self.msg_op == Some(OpCode::Text) && self.utf8.feed(piece).is_err() {
                    return Err(INVALID_TEXT);
                }
                self.append(piece, &f);
            }
            if f.remaining > 0 {
                return Ok(());
            }
            self.frame = None;

            let flow = if f.opcode.is_control() {
                let n = self.ctrl_len as usize;
                self.ctrl_len = 0;
                control(f.opcode, &self.ctrl[..n], sink)?
            } else if f.fin {
                let flow = match self.msg_op.take() {
                    Some(OpCode::Text) => {
                        if self.utf8.finish().is_err() {
                            return Err(INVALID_TEXT);
                        }
                        if self.msg_start > 0 {
                            self.lend_assembled(sink, true)
                        } else {
                            sink(Message::Text(checked_text(&self.msg)), None)
                        }
                    }
                    _ if self.msg_start > 0 => self.lend_assembled(sink, false),
                    _ => sink(Message::Binary(&self.msg), None),
                };
                // The message is out: return its buffer so idle
                // connections hold no heap memory.
                self.recycle();
                flow
            } else {
                ControlFlow::Continue(())
            };
            if flow.is_break() {
                self.state = State::Done;
                return Ok(());
            }
        }
    }

    /// Unmasks a whole single-frame message into `frame` (a
    /// [`BufferPool::frame_buf`] holding its header) and hands it out.
    fn lend_framed(
        &mut self,
        mut frame: Vec<u8>,
        payload: &[u8],
        opcode: OpCode,
        key: Option<[u8; 4]>,
        sink: &mut impl FnMut(Message<'_>, Option<&Bytes>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, ProtocolError> {
        let start = frame.len();
        match key {
            Some(k) => mask::append_unmasked(&mut frame, payload, k, 0),
            None => frame.extend_from_slice(payload),
        }
        let frame = self.pool.seal(frame);
        let payload = &frame[start..];
        Ok(match opcode {
            OpCode::Text => match utf8::validate(payload) {
                Some(s) => sink(Message::Text(s), Some(&frame)),
                None => return Err(INVALID_TEXT),
            },
            _ => sink(Message::Binary(payload), Some(&frame)),
        })
    }

    /// Hands out the message assembled in a frame buffer (its text already
    /// validated piece by piece when `text`).
    fn lend_assembled(
        &mut self,
        sink: &mut impl FnMut(Message<'_>, Option<&Bytes>) -> ControlFlow<()>,
        text: bool,
    ) -> ControlFlow<()> {
        let start = std::mem::take(&mut self.msg_start);
        let frame = self.pool.seal(std::mem::take(&mut self.msg));
        let payload = &frame[start..];
        if text {
            sink(Message::Text(checked_text(payload)), Some(&frame))
        } else {
            sink(Message::Binary(payload), Some(&frame))
        }
    }

    /// Appends to the message buffer. It grows with the bytes actually
    /// received, to twice what is needed now (a large declared length
    /// reserves nothing up front), up to the message's end when this is its
    /// last frame, and never past the message limit. So a message cut into
    /// two reads usually needs one buffer, not a chain of reallocations.
    fn append(&mut self, piece: &[u8], f: &Partial) {
        let need = self.msg.len() + piece.len();
        if need > self.msg.capacity() {
            let bound = if f.fin {
                need + f.remaining
            } else {
                self.cfg.max_message_size
            };
            let target = need.saturating_mul(2).max(64).min(bound).max(need);
            let mut grown = self.pool.take(target);
            grown.extend_from_slice(&self.msg);
            let old = std::mem::replace(&mut self.msg, grown);
            if old.capacity() > 0 {
                self.pool.give(old);
            }
        }
        self.msg.extend_from_slice(piece);
    }
}

/// Unmasks a whole single-frame message in place, writes its server header
/// just before it and hands the message out of the frame `lend` keeps (or,
/// if it declines, out of the chunk).
fn lend_in_place<'a>(
    frame: &'a mut [u8],
    header: usize,
    opcode: OpCode,
    key: [u8; 4],
    lend: &mut impl Lend<'a>,
    sink: &mut impl FnMut(Message<'_>, Option<&Bytes>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, ProtocolError> {
    let len = frame.len() - header;
    mask::unmask(&mut frame[header..], key, 0);
    let mut h = [0u8; MAX_HEADER_LEN];
    encode_header(&mut h, true, opcode, len as u64, None);
    frame[..header].copy_from_slice(&h[..header]);
    let kept;
    let (payload, lent): (&[u8], Option<&Bytes>) = match lend.lend(frame) {
        Ok(frame) => {
            kept = frame;
            (&kept[header..], Some(&kept))
        }
        Err(frame) => (&frame[header..], None),
    };
    Ok(match opcode {
        OpCode::Text => match utf8::validate(payload) {
            Some(s) => sink(Message::Text(s), lent),
            None => return Err(INVALID_TEXT),
        },
        _ => sink(Message::Binary(payload), lent),
    })
}

/// A message's text, already validated piece by piece by the decoder's
/// `Utf8Stream`.
#[inline]
fn checked_text(bytes: &[u8]) -> &str {
    debug_assert!(std::str::from_utf8(bytes).is_ok());
    // SAFETY: every byte of the message went through the decoder's
    // `Utf8Stream`, which accepted the whole sequence and found no
    // unfinished code point at the end (checked before this is called).
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// Handles a complete control frame payload.
#[inline]
fn control(
    op: OpCode,
    payload: &[u8],
    sink: &mut impl FnMut(Message<'_>, Option<&Bytes>) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, ProtocolError> {
    Ok(match op {
        OpCode::Ping => sink(Message::Ping(payload), None),
        OpCode::Pong => sink(Message::Pong(payload), None),
        OpCode::Close => {
            let cf = parse_close_payload(payload)?;
            let _ = sink(Message::Close(cf), None);
            // Nothing after a close frame is processed (§5.5.1).
            ControlFlow::Break(())
        }
        // Data opcodes never reach here.
        _ => ControlFlow::Continue(()),
    })
}
