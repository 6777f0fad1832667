//! Frame headers and frame encoding (RFC 6455 §5.2).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               |Masking-key, if MASK set to 1  |
//! +-------------------------------+-------------------------------+
//! | Masking-key (continued)       |          Payload Data         |
//! +-------------------------------- - - - - - - - - - - - - - - - +
//! ```
//!
//! Server frames are unmasked and can be shared between connections, so the
//! encoders return [`Bytes`]. The header can be produced on its own so a
//! large payload goes out as a second iovec without being copied.

use std::ops::Range;

use bytes::Bytes;

use crate::close::{codes, is_valid_wire_code};
use crate::mask;
use crate::message::ProtocolError;

/// Longest possible frame header: 2 + 8 (64-bit length) + 4 (masking key).
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes defined by RFC 6455 §5.2. The others (3–7, 0xB–0xF) are
/// reserved and rejected with close code 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// Continues a fragmented message.
    Continuation = 0,
    /// First frame of a UTF-8 text message.
    Text = 1,
    /// First frame of a binary message.
    Binary = 2,
    /// Close control frame.
    Close = 8,
    /// Ping control frame.
    Ping = 9,
    /// Pong control frame.
    Pong = 10,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` for a reserved one.
    #[inline]
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, Ping and Pong are control frames (high bit of the opcode set).
    #[inline]
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final frame of its message.
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100).
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// Masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes; always below 2^63.
    pub payload_len: u64,
    /// Bytes taken by the header itself (2 to 14).
    pub header_len: usize,
}

impl FrameHeader {
    /// Parses the header at the start of `buf`.
    ///
    /// `Ok(None)` when `buf` is shorter than the header. Rejects, with 1002,
    /// the rules that need no context: reserved opcodes, control frames that
    /// are fragmented or longer than 125 bytes, and a 64-bit length with the
    /// top bit set. Role, RSV and message-state rules are checked by the
    /// [`Decoder`](crate::Decoder).
    ///
    /// Non-minimal length encodings are accepted (receivers need not check).
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        let opcode = OpCode::from_u8(b0 & 0x0F)
            .ok_or(ProtocolError::new(codes::PROTOCOL_ERROR, "reserved opcode"))?;
        let fin = b0 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::new(
                    codes::PROTOCOL_ERROR,
                    "fragmented control frame",
                ));
            }
            if len7 > MAX_CONTROL_PAYLOAD as u8 {
                return Err(ProtocolError::new(
                    codes::PROTOCOL_ERROR,
                    "control frame payload over 125 bytes",
                ));
            }
        }
        let masked = b1 & 0x80 != 0;
        let (payload_len, mut n) = match len7 {
            126 => match buf.get(2..4) {
                Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    let l = u64::from_be_bytes(a);
                    if l >> 63 != 0 {
                        return Err(ProtocolError::new(
                            codes::PROTOCOL_ERROR,
                            "64-bit payload length with the top bit set",
                        ));
                    }
                    (l, 10)
                }
                None => return Ok(None),
            },
            l => (l as u64, 2),
        };
        let mask = if masked {
            match buf.get(n..n + 4) {
                Some(k) => {
                    n += 4;
                    Some([k[0], k[1], k[2], k[3]])
                }
                None => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some(FrameHeader {
            fin,
            rsv: (b0 >> 4) & 0x7,
            opcode,
            mask,
            payload_len,
            header_len: n,
        }))
    }

    /// The header at the start of an encoded frame, for callers that only
    /// need to read it: `None` when `buf` ends inside the header or
    /// [`parse`](FrameHeader::parse) rejects it.
    #[inline]
    pub fn read(buf: &[u8]) -> Option<FrameHeader> {
        FrameHeader::parse(buf).ok().flatten()
    }

    /// The header of `frame` if `frame` is exactly one complete, unmasked,
    /// final text or binary frame with no RSV bit set (a whole message as
    /// [`server_frame`] encodes it), else `None`. Trailing bytes, a cut
    /// payload, a fragment, a control frame or a mask all give `None`.
    ///
    /// Its `payload_len` then equals `frame.len() - header_len`, so it fits
    /// in a `usize`.
    pub fn read_server_message(frame: &[u8]) -> Option<FrameHeader> {
        let h = FrameHeader::read(frame)?;
        let whole = h.frame_len() == frame.len() as u64;
        let message = h.fin && h.rsv == 0 && matches!(h.opcode, OpCode::Text | OpCode::Binary);
        (whole && message && !h.is_masked()).then_some(h)
    }

    /// Whether the MASK bit is set (frames a client sends).
    #[inline]
    pub fn is_masked(&self) -> bool {
        self.mask.is_some()
    }

    /// Header and payload together, in bytes. Cannot overflow: the payload
    /// length is below 2^63 and the header at most 14 bytes.
    #[inline]
    pub fn frame_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

/// Writes a frame header into `out` and returns its length.
///
/// `mask` is `Some(key)` in client role. `payload_len` must be below 2^63.
#[inline]
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    payload_len: u64,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = ((fin as u8) << 7) | opcode as u8;
    let m = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if payload_len < 126 {
        out[1] = m | payload_len as u8;
        2
    } else if payload_len <= u16::MAX as u64 {
        out[1] = m | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = m | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(k) = mask {
        out[n..n + 4].copy_from_slice(&k);
        n += 4;
    }
    n
}

fn header_bytes(fin: bool, opcode: OpCode, payload_len: usize) -> Bytes {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut h, fin, opcode, payload_len as u64, None);
    Bytes::copy_from_slice(&h[..n])
}

/// One unmasked (server-role) frame with FIN set, header and payload in one
/// [`Bytes`]: what a broadcast encodes once and shares between connections.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(server_frame_len(payload.len()));
    server_frame_into(&mut out, opcode, payload);
    Bytes::from(out)
}

/// Encoded size of a server-role frame carrying `payload_len` bytes.
pub fn server_frame_len(payload_len: usize) -> usize {
    let header = match payload_len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    header + payload_len
}

/// Appends the frame [`server_frame`] builds to `out`, for callers that
/// bring their own (recycled) buffer.
pub fn server_frame_into(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut h, true, opcode, payload.len() as u64, None);
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
}

/// The header of an unmasked frame with FIN set, alone, so it and an
/// existing payload [`Bytes`] can be written as two iovecs.
pub fn server_header(opcode: OpCode, payload_len: usize) -> Bytes {
    header_bytes(true, opcode, payload_len)
}

/// The pong answering a ping with this payload (server role).
pub fn pong_frame(ping_payload: &[u8]) -> Bytes {
    let n = ping_payload.len().min(MAX_CONTROL_PAYLOAD);
    server_frame(OpCode::Pong, &ping_payload[..n])
}

/// A server-role close frame carrying `code` and `reason`.
///
/// The reason is cut at a character boundary so the payload fits in 125
/// bytes. A code that may not appear on the wire (such as 1005 or 1006, see
/// [`is_valid_wire_code`]) gives a close frame with an empty payload.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let payload = close_payload(code, reason);
    server_frame(OpCode::Close, &payload)
}

/// The payload of a close frame as [`close_frame`] builds it (for client
/// role, mask it with [`encode_client_frame`]).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    if !is_valid_wire_code(code) {
        return Vec::new();
    }
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// Fast pseudo-random masking keys for client role (wyrand).
///
/// Masking keys only need to be unpredictable to intermediaries that do not
/// see the seed; the caller seeds from a real random source.
#[derive(Debug, Clone)]
pub struct MaskGen {
    state: u64,
}

impl MaskGen {
    /// A generator started from `seed` (any value, including 0).
    pub fn new(seed: u64) -> Self {
        MaskGen { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.state as u128).wrapping_mul((self.state ^ 0xe703_7ed1_a0b4_28db) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// The next masking key.
    #[inline]
    pub fn next_mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
}

/// Appends one masked (client-role) frame to `out`.
pub fn encode_client_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    mask: [u8; 4],
) {
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut h, fin, opcode, payload.len() as u64, Some(mask));
    out.reserve(n + payload.len());
    out.extend_from_slice(&h[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    mask::unmask(&mut out[start..], mask, 0);
}

/// Splits an outgoing server-role message of `len` bytes into frames of at
/// most `max_frame` payload bytes (at least 1).
///
/// Yields each frame's header and the range of the payload it carries; the
/// first frame has `opcode`, the rest are continuations, the last has FIN.
/// An empty message gives one empty frame.
pub fn fragments(
    opcode: OpCode,
    len: usize,
    max_frame: usize,
) -> impl Iterator<Item = (Bytes, Range<usize>)> {
    let max = max_frame.max(1);
    let count = len.div_ceil(max).max(1);
    (0..count).map(move |i| {
        let start = i * max;
        let end = len.min(start.saturating_add(max));
        let op = if i == 0 { opcode } else { OpCode::Continuation };
        (header_bytes(i + 1 == count, op, end - start), start..end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(fin: bool, op: OpCode, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut h, fin, op, len, mask);
        h[..n].to_vec()
    }

    #[test]
    fn rfc_example_headers() {
        // RFC 6455 §5.7.
        assert_eq!(server_frame(OpCode::Text, b"Hello"), &b"\x81\x05Hello"[..]);
        assert_eq!(hdr(true, OpCode::Binary, 256, None), b"\x82\x7E\x01\x00");
        assert_eq!(
            hdr(true, OpCode::Binary, 65536, None),
            b"\x82\x7F\x00\x00\x00\x00\x00\x01\x00\x00"
        );
        assert_eq!(hdr(false, OpCode::Text, 3, None), b"\x01\x03");
        assert_eq!(hdr(true, OpCode::Continuation, 2, None), b"\x80\x02");
        assert_eq!(
            hdr(true, OpCode::Text, 5, Some([0x37, 0xfa, 0x21, 0x3d])),
            b"\x81\x85\x37\xfa\x21\x3d"
        );
    }

    #[test]
    fn length_boundaries_round_trip() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 32, (1 << 63) - 1] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = hdr(true, OpCode::Binary, len, mask);
                let p = FrameHeader::parse(&h).unwrap().unwrap();
                assert_eq!(p.payload_len, len);
                assert_eq!(p.mask, mask);
                assert_eq!(p.header_len, h.len());
                // Every strict prefix needs more bytes.
                for cut in 0..h.len() {
                    assert_eq!(FrameHeader::parse(&h[..cut]), Ok(None), "{len} {cut}");
                }
            }
        }
    }

    #[test]
    fn parse_rejects_context_free_violations() {
        for op in (3..=7).chain(0xB..=0xF) {
            let e = FrameHeader::parse(&[0x80 | op, 0]).unwrap_err();
            assert_eq!(e.code, 1002, "opcode {op}");
        }
        // Ping without FIN.
        assert_eq!(FrameHeader::parse(&[0x09, 0]).unwrap_err().code, 1002);
        // Close with 126-byte payload (16-bit length form).
        assert_eq!(
            FrameHeader::parse(&[0x88, 126, 0, 126]).unwrap_err().code,
            1002
        );
        // Detected from the first two bytes already.
        assert_eq!(FrameHeader::parse(&[0x89, 127]).unwrap_err().code, 1002);
        // 64-bit length with the top bit set.
        let e = FrameHeader::parse(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(e.code, 1002);
    }

    #[test]
    fn rsv_bits_reported() {
        let h = FrameHeader::parse(&[0xC1, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b100);
        let h = FrameHeader::parse(&[0x91, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b001);
    }

    #[test]
    fn read_reports_every_field() {
        let h = FrameHeader::read(&hdr(false, OpCode::Text, 300, Some([9, 8, 7, 6]))).unwrap();
        assert!(!h.fin && h.is_masked());
        assert_eq!((h.rsv, h.opcode), (0, OpCode::Text));
        assert_eq!((h.header_len, h.payload_len, h.frame_len()), (8, 300, 308));
        let h = FrameHeader::read(&[0xF2, 0x00]).unwrap();
        assert!(h.fin && !h.is_masked());
        assert_eq!((h.rsv, h.opcode, h.frame_len()), (0b111, OpCode::Binary, 2));
        // Incomplete and invalid headers alike.
        assert_eq!(FrameHeader::read(&[0x81]), None);
        assert_eq!(FrameHeader::read(&[0x81, 126, 0]), None);
        assert_eq!(FrameHeader::read(&[0x83, 0]), None);
    }

    #[test]
    fn read_server_message_accepts_only_one_whole_message_frame() {
        for len in [0usize, 125, 126, 65535, 65536] {
            for op in [OpCode::Text, OpCode::Binary] {
                let f = server_frame(op, &vec![b'x'; len]);
                let h = FrameHeader::read_server_message(&f).unwrap();
                assert_eq!((h.opcode, h.payload_len), (op, len as u64), "{len}");
                assert_eq!(h.header_len, f.len() - len);
                // One byte short, one byte over.
                assert_eq!(FrameHeader::read_server_message(&f[..f.len() - 1]), None);
                let mut over = f.to_vec();
                over.push(0);
                assert_eq!(FrameHeader::read_server_message(&over), None);
            }
        }
        let mut masked = Vec::new();
        encode_client_frame(&mut masked, true, OpCode::Text, b"hi", [1, 2, 3, 4]);
        let not_messages: [&[u8]; 7] = [
            &masked,
            b"\x01\x02hi",   // not final
            b"\x80\x02hi",   // continuation
            b"\xC1\x02hi",   // RSV1
            b"\x89\x02hi",   // ping
            b"\x81\x7E\x00", // header cut
            b"",
        ];
        for f in not_messages {
            assert_eq!(FrameHeader::read_server_message(f), None, "{f:?}");
        }
        // A non-minimal length encoding is still one whole frame.
        let h = FrameHeader::read_server_message(b"\x82\x7E\x00\x02hi").unwrap();
        assert_eq!((h.header_len, h.payload_len), (4, 2));
        // A 64-bit length with the top bit set is refused, not overflowed.
        let huge = [0x82, 127, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xF6];
        assert_eq!(FrameHeader::read_server_message(&huge), None);
    }

    #[test]
    fn server_header_plus_payload_equals_server_frame() {
        for len in [0usize, 125, 126, 65535, 65536, 70000] {
            let payload = vec![7u8; len];
            let mut two = server_header(OpCode::Binary, len).to_vec();
            two.extend_from_slice(&payload);
            assert_eq!(two, server_frame(OpCode::Binary, &payload));
        }
    }

    #[test]
    fn close_frames() {
        assert_eq!(close_frame(1000, ""), &b"\x88\x02\x03\xe8"[..]);
        assert_eq!(close_frame(4001, "ok"), &b"\x88\x04\x0f\xa1ok"[..]);
        // Non-wire codes give an empty close.
        assert_eq!(close_frame(1005, "x"), &b"\x88\x00"[..]);
        assert_eq!(close_frame(1006, ""), &b"\x88\x00"[..]);
        // Long reason cut at a char boundary to fit 125 bytes.
        let reason = "é".repeat(100);
        let f = close_frame(1000, &reason);
        assert_eq!(f[1] as usize, f.len() - 2);
        assert!(f.len() - 2 <= 125);
        assert_eq!(f.len() - 2, 2 + 122);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }

    #[test]
    fn pong_echoes_ping_payload() {
        assert_eq!(pong_frame(b"abc"), &b"\x8a\x03abc"[..]);
    }

    #[test]
    fn client_frame_is_masked_rfc_hello() {
        let mut out = Vec::new();
        encode_client_frame(
            &mut out,
            true,
            OpCode::Text,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
        );
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn mask_gen_varies_and_is_deterministic() {
        let mut a = MaskGen::new(0);
        let mut b = MaskGen::new(0);
        let xs: Vec<_> = (0..100).map(|_| a.next_mask()).collect();
        let ys: Vec<_> = (0..100).map(|_| b.next_mask()).collect();
        assert_eq!(xs, ys);
        let mut uniq = xs.clone();
        uniq.sort();
        uniq.dedup();
        assert!(uniq.len() > 95);
        assert_ne!(MaskGen::new(1).next_mask(), MaskGen::new(2).next_mask());
    }

    #[test]
    fn fragments_cover_message() {
        let frags: Vec<_> = fragments(OpCode::Text, 10, 4).collect();
        assert_eq!(frags.len(), 3);
        assert_eq!(frags[0], (Bytes::from_static(b"\x01\x04"), 0..4));
        assert_eq!(frags[1], (Bytes::from_static(b"\x00\x04"), 4..8));
        assert_eq!(frags[2], (Bytes::from_static(b"\x80\x02"), 8..10));
        let one: Vec<_> = fragments(OpCode::Binary, 0, 4).collect();
        assert_eq!(one, vec![(Bytes::from_static(b"\x82\x00"), 0..0)]);
        let exact: Vec<_> = fragments(OpCode::Binary, 8, 4).collect();
        assert_eq!(exact.len(), 2);
        assert_eq!(exact[1].0[0], 0x80);
        // max_frame 0 is treated as 1 rather than looping forever.
        assert_eq!(fragments(OpCode::Binary, 3, 0).count(), 3);
    }
}
