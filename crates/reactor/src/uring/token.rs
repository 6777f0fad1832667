//! `user_data` encoding: which operation a completion belongs to.
//!
//! `kind` (8 bits) | `gen` (24 low bits of the connection generation) | `idx` (32 bits).
//! Connection slots are never freed while an operation names them (the
//! slot is kept until its last CQE), so `idx` alone is unambiguous; `gen`
//! is a cheap debug cross-check.

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    /// Cancel of a connection's operations (`idx` = connection).
    Cancel = 4,
    /// The 8-byte read on the shard's wake eventfd.
    Wake = 5,
    /// Cancel of a listener's accept, or of everything at exit.
    CancelOther = 6,
}

pub(crate) fn encode(kind: Kind, idx: u32, gen: u64) -> u64 {
    ((kind as u64) << 56) | ((gen & 0xff_ffff) << 32) | idx as u64
}

pub(crate) fn decode(ud: u64) -> (Option<Kind>, u32, u32) {
    let kind = match (ud >> 56) as u8 {
        1 => Some(Kind::Accept),
        2 => Some(Kind::Recv),
        3 => Some(Kind::Send),
        4 => Some(Kind::Cancel),
        5 => Some(Kind::Wake),
        6 => Some(Kind::CancelOther),
        _ => None,
    };
    (kind, ud as u32, ((ud >> 32) & 0xff_ffff) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn roundtrip() {
        let ud = encode(Kind::Send, 123_456, 0x1234_5678_9abc);
        assert_eq!(decode(ud), (Some(Kind::Send), 123_456, 0x78_9abc));
    }
}
