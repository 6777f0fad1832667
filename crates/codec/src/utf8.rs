//! UTF-8 validation for text that arrives in pieces (RFC 6455 §5.6, §8.1).
//!
//! A text message may be split across frames and each frame across reads,
//! and a code point may be split anywhere. [`Utf8Stream`] validates each
//! piece as it arrives with `simdutf8`'s compat API, keeps the at most three
//! bytes of an unfinished code point, and fails as soon as a piece holds a
//! sequence that no later bytes could make valid.

use simdutf8::compat::from_utf8;

/// Validates a complete text: `Some` if it is UTF-8.
///
/// Short all-ASCII texts (the common chat or event message) skip the SIMD
/// set-up; everything else goes through `simdutf8`.
#[inline]
pub(crate) fn validate(bytes: &[u8]) -> Option<&str> {
    if bytes.len() < 64 && bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    simdutf8::basic::from_utf8(bytes).ok()
}

/// Incremental UTF-8 validator. Holds no heap memory.
#[derive(Debug, Clone, Default)]
pub struct Utf8Stream {
    /// Bytes of a code point cut off at the end of the previous piece.
    pending: [u8; 4],
    pending_len: u8,
}

/// Length of the sequence started by a lead byte that `from_utf8` reported
/// as an unfinished (not invalid) prefix.
fn seq_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Stream {
    /// A validator at the start of a text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece. `Err(())` as soon as the text so far can
    /// never be valid UTF-8; the stream should then be [`reset`](Self::reset)
    /// before reuse.
    // The only failure is "not UTF-8" (close code 1007): no payload needed.
    #[allow(clippy::result_unit_err)]
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ()> {
        if self.pending_len > 0 {
            let have = self.pending_len as usize;
            let want = seq_len(self.pending[0]);
            let take = (want - have).min(bytes.len());
            self.pending[have..have + take].copy_from_slice(&bytes[..take]);
            let now = have + take;
            bytes = &bytes[take..];
            match from_utf8(&self.pending[..now]) {
                Ok(_) => self.pending_len = 0,
                // Still a valid prefix; only possible when the piece ran out.
                Err(e) if e.error_len().is_none() && e.valid_up_to() == 0 => {
                    self.pending_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(()),
            }
        }
        match from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4 => {
                let tail = &bytes[e.valid_up_to()..];
                // An unfinished sequence is at most three bytes.
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(()),
        }
    }

    /// Ends the text: `Err(())` if it stopped inside a code point. Resets the
    /// stream either way.
    #[allow(clippy::result_unit_err)]
    pub fn finish(&mut self) -> Result<(), ()> {
        let ok = self.pending_len == 0;
        self.reset();
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }

    /// Forgets any unfinished code point and starts a new text.
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }

    /// True when the text so far ends on a code point boundary.
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_ok(pieces: &[&[u8]]) -> Result<(), ()> {
        let mut s = Utf8Stream::new();
        for p in pieces {
            s.feed(p)?;
        }
        s.finish()
    }

    #[test]
    fn whole_valid_text() {
        assert_eq!(stream_ok(&["héllo wörld €𝄞".as_bytes()]), Ok(()));
        assert_eq!(stream_ok(&[b""]), Ok(()));
    }

    #[test]
    fn code_point_split_at_every_position() {
        let text = "a€b𝄞c".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let r = stream_ok(&[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(r, Ok(()), "split {i} {j}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let text = "κόσμε 𝄞 €".as_bytes();
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(stream_ok(&pieces), Ok(()));
    }

    #[test]
    fn fails_fast_on_impossible_sequence() {
        let mut s = Utf8Stream::new();
        // 0xF5 can never start a sequence: fail on this piece, not at finish.
        assert_eq!(s.feed(b"ok\xF5"), Err(()));
        s.reset();
        // Overlong prefix 0xE0 0x80 is invalid even though it is unfinished.
        assert_eq!(s.feed(b"\xE0\x80"), Err(()));
        s.reset();
        // Surrogate prefix split across pieces.
        assert_eq!(s.feed(b"\xED"), Ok(()));
        assert_eq!(s.feed(b"\xA0"), Err(()));
        s.reset();
        // Code point above U+10FFFF, split.
        assert_eq!(s.feed(b"\xF4"), Ok(()));
        assert_eq!(s.feed(b"\x90"), Err(()));
    }

    #[test]
    fn unfinished_at_end_fails_on_finish() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.feed(b"abc\xE2\x82"), Ok(()));
        assert!(!s.is_complete());
        assert_eq!(s.finish(), Err(()));
        // finish reset the stream.
        assert_eq!(s.feed(b"fine"), Ok(()));
        assert_eq!(s.finish(), Ok(()));
    }

    #[test]
    fn pending_then_invalid_continuation() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.feed(b"\xE2"), Ok(()));
        assert_eq!(s.feed(b"\x82A"), Err(()));
    }

    #[test]
    fn pending_completed_then_more_text() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.feed(b"\xF0\x9D"), Ok(()));
        assert_eq!(s.feed(b"\x84"), Ok(()));
        assert_eq!(s.feed(b"\x9Exyz\xC3"), Ok(()));
        assert_eq!(s.feed(b"\xA9"), Ok(()));
        assert_eq!(s.finish(), Ok(()));
    }
}
