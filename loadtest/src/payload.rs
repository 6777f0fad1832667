//! Message payloads and their checks.
//!
//! Echo payloads start with a 20-byte ASCII head — the connection id (8 hex
//! digits) and the per-connection sequence number (12 hex digits) — followed
//! by filler shared by all connections. An echo is correct only if it is
//! byte for byte the payload sent with the expected sequence number, so a
//! lost, repeated, reordered or corrupted echo is caught.
//!
//! Broadcast payloads start with `rc1:PPPP:SSSSSSSSSSSS:TTTTTTTTTTTTTTTT:`
//! (publisher, per-publisher sequence number, send time in ns, all hex) and
//! filler. Heads are fixed-width so a pre-encoded, pre-masked frame can be
//! patched in place for every message.

/// Length of the echo head (connection id + sequence number).
pub const ECHO_HEAD: usize = 20;
/// Length of the broadcast head.
pub const BCAST_HEAD: usize = 39;
/// Marker that starts a broadcast payload.
pub const BCAST_MARK: &[u8; 4] = b"rc1:";
/// Offsets inside the broadcast head.
pub const BCAST_PUB_AT: usize = 4;
/// See [`BCAST_PUB_AT`].
pub const BCAST_SEQ_AT: usize = 9;
/// See [`BCAST_PUB_AT`].
pub const BCAST_TIME_AT: usize = 22;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `v` as `out.len()` lowercase hex digits (the low digits of `v`).
#[inline]
pub fn put_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Parses fixed-width lowercase hex.
#[inline]
pub fn get_hex(digits: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &d in digits {
        let x = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(x);
    }
    Some(v)
}

/// Filler bytes for payloads of up to `size` bytes: printable ASCII for
/// text, every byte value for binary (so a server that mangles bytes >= 0x80
/// is caught).
pub fn filler(size: usize, binary: bool) -> Vec<u8> {
    (0..size)
        .map(|i| {
            if binary {
                (i as u8).wrapping_mul(31).wrapping_add(7)
            } else {
                b'a' + (i % 26) as u8
            }
        })
        .collect()
}

/// The echo head of connection `conn`, message `seq`.
#[inline]
pub fn echo_head(conn: usize, seq: u64) -> [u8; ECHO_HEAD] {
    let mut h = [0u8; ECHO_HEAD];
    put_hex(&mut h[..8], conn as u64);
    put_hex(&mut h[8..], seq);
    h
}

/// The full echo payload (used once per connection to build its frame).
pub fn echo_payload(conn: usize, seq: u64, filler: &[u8]) -> Vec<u8> {
    let mut p = filler.to_vec();
    let head = echo_head(conn, seq);
    let n = p.len().min(ECHO_HEAD);
    p[..n].copy_from_slice(&head[..n]);
    p
}

/// Where an echo first differs from what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EchoMismatch {
    /// Wrong length.
    Length { got: usize, want: usize },
    /// Text came back as binary or the other way round.
    Kind,
    /// First differing byte.
    Byte { at: usize, got: u8, want: u8 },
}

impl std::fmt::Display for EchoMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EchoMismatch::Length { got, want } => write!(f, "length {got}, expected {want}"),
            EchoMismatch::Kind => write!(f, "wrong message type (text/binary)"),
            EchoMismatch::Byte { at, got, want } => {
                write!(f, "byte {at} is {got:#04x}, expected {want:#04x}")
            }
        }
    }
}

/// Checks an echo against the payload `(conn, seq)` of `filler.len()` bytes.
#[inline]
pub fn check_echo(data: &[u8], conn: usize, seq: u64, filler: &[u8]) -> Result<(), EchoMismatch> {
    if data.len() != filler.len() {
        return Err(EchoMismatch::Length {
            got: data.len(),
            want: filler.len(),
        });
    }
    let head = echo_head(conn, seq);
    let n = data.len().min(ECHO_HEAD);
    if data[..n] == head[..n] && data[n..] == filler[n..] {
        return Ok(());
    }
    let at = (0..data.len())
        .find(|&i| data[i] != if i < n { head[i] } else { filler[i] })
        .unwrap_or(0);
    let want = if at < n { head[at] } else { filler[at] };
    Err(EchoMismatch::Byte {
        at,
        got: data[at],
        want,
    })
}

/// A broadcast head as read back by a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BcastHead {
    /// Publisher index.
    pub publisher: u64,
    /// Per-publisher sequence number (from 1).
    pub seq: u64,
    /// Publish time (ns, generator clock).
    pub sent_ns: u64,
}

/// Fills `out` (the whole payload) with a broadcast head and filler.
pub fn bcast_payload(out: &mut [u8], publisher: u64, seq: u64, sent_ns: u64, filler: &[u8]) {
    out.copy_from_slice(&filler[..out.len()]);
    out[..4].copy_from_slice(BCAST_MARK);
    put_hex(&mut out[BCAST_PUB_AT..BCAST_PUB_AT + 4], publisher);
    out[BCAST_SEQ_AT - 1] = b':';
    put_hex(&mut out[BCAST_SEQ_AT..BCAST_SEQ_AT + 12], seq);
    out[BCAST_TIME_AT - 1] = b':';
    put_hex(&mut out[BCAST_TIME_AT..BCAST_TIME_AT + 16], sent_ns);
    out[BCAST_HEAD - 1] = b':';
}

/// Finds and checks a broadcast payload of `size` bytes inside `data`
/// (at the start for `/broadcast`, inside a JSON event for `/chat`).
/// `None`: no payload here (another kind of event). `Some(Err)`: corrupted.
pub fn find_bcast(data: &[u8], size: usize, filler: &[u8]) -> Option<Result<BcastHead, ()>> {
    let at = if data.starts_with(BCAST_MARK) {
        0
    } else {
        data.windows(4).position(|w| w == BCAST_MARK)?
    };
    let p = &data[at..];
    if p.len() < size || size < BCAST_HEAD {
        return Some(Err(()));
    }
    let field = |from: usize, len: usize| get_hex(&p[from..from + len]);
    let head = (|| {
        Some(BcastHead {
            publisher: field(BCAST_PUB_AT, 4)?,
            seq: field(BCAST_SEQ_AT, 12)?,
            sent_ns: field(BCAST_TIME_AT, 16)?,
        })
    })();
    match head {
        Some(h) if p[BCAST_HEAD..size] == filler[BCAST_HEAD..size] => Some(Ok(h)),
        _ => Some(Err(())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let mut b = [0u8; 12];
        put_hex(&mut b, 0xabc_1234_5678);
        assert_eq!(&b, b"0abc12345678");
        assert_eq!(get_hex(&b), Some(0xabc_1234_5678));
        assert_eq!(get_hex(b"12x4"), None);
    }

    #[test]
    fn echo_check_catches_every_kind_of_error() {
        let f = filler(64, true);
        let good = echo_payload(7, 42, &f);
        assert_eq!(check_echo(&good, 7, 42, &f), Ok(()));
        // Wrong sequence number (a lost or repeated echo).
        assert!(matches!(
            check_echo(&good, 7, 43, &f),
            Err(EchoMismatch::Byte { .. })
        ));
        // Another connection's message.
        assert!(check_echo(&good, 8, 42, &f).is_err());
        // One flipped bit in the filler.
        let mut bad = good.clone();
        bad[50] ^= 1;
        assert_eq!(
            check_echo(&bad, 7, 42, &f),
            Err(EchoMismatch::Byte {
                at: 50,
                got: good[50] ^ 1,
                want: good[50]
            })
        );
        // Truncated.
        assert!(matches!(
            check_echo(&good[..63], 7, 42, &f),
            Err(EchoMismatch::Length { .. })
        ));
    }

    #[test]
    fn short_echo_payloads_keep_a_prefix_of_the_head() {
        let f = filler(10, false);
        let p = echo_payload(1, 2, &f);
        assert_eq!(&p, b"0000000100");
        assert_eq!(check_echo(&p, 1, 2, &f), Ok(()));
    }

    #[test]
    fn broadcast_payload_round_trip() {
        let f = filler(64, false);
        let mut p = vec![0u8; 64];
        bcast_payload(&mut p, 3, 9, 123_456_789, &f);
        assert!(std::str::from_utf8(&p).is_ok());
        let want = BcastHead {
            publisher: 3,
            seq: 9,
            sent_ns: 123_456_789,
        };
        assert_eq!(find_bcast(&p, 64, &f), Some(Ok(want)));
        // Inside a chat event.
        let mut ev = br#"{"type":"message","room":"r","text":""#.to_vec();
        ev.extend_from_slice(&p);
        ev.extend_from_slice(br#"","seq":5}"#);
        assert_eq!(find_bcast(&ev, 64, &f), Some(Ok(want)));
        // Corrupted filler.
        p[60] = b'!';
        assert_eq!(find_bcast(&p, 64, &f), Some(Err(())));
        // Not a benchmark message at all.
        assert_eq!(find_bcast(br#"{"type":"join"}"#, 64, &f), None);
    }
}
