//! Shared set-up for the criterion benches in `benches/benches/`.
//!
//! Run them all with `cargo bench -p ringcast-benches` (pin with
//! `taskset -c 1` when measuring). Measurement is kept short so the whole
//! codec suite finishes in about three minutes.

use std::time::Duration;

use criterion::Criterion;
use ringcast_codec::{encode_client_frame, OpCode};

/// Criterion settings for every codec bench: 0.5 s warm-up, 2 s measurement
/// (49 benchmarks, about two and a half minutes in all).
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

/// A masking key whose bytes are all below 0x80: XOR keeps ASCII ASCII, so a
/// text frame stays valid UTF-8 whether its payload is currently masked or
/// not, and benches can decode the same buffer in place again and again.
pub const ASCII_SAFE_KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// One masked (client-role) frame.
pub fn client_frame(fin: bool, opcode: OpCode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    encode_client_frame(&mut out, fin, opcode, payload, key);
    out
}

/// Printable ASCII filler of length `len`.
pub fn ascii(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Mixed-script UTF-8 text (1- to 4-byte sequences) of at least `len` bytes,
/// cut back to a character boundary.
pub fn mixed_utf8(len: usize) -> Vec<u8> {
    let unit = "ascii text, ünïcödé, ελληνικά, 中文字符, emoji 🎉🚀; ";
    let mut s = String::with_capacity(len + unit.len());
    while s.len() < len {
        s.push_str(unit);
    }
    let mut end = len.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.into_bytes()
}
