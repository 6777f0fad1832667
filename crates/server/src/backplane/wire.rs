//! Channel/key names and the envelope of messages on Redis channels.
//!
//! Every message is a one-line ASCII header, `\n`, then the opaque payload:
//!
//! ```text
//! rc1 m <origin|-> <seq|->\n<payload>      topic message (origin = sender conn id;
//!                                           seq = room sequence number, rooms only)
//! rc1 j <conn> <members> <seq>\n<payload>  join, members = cluster-wide count after it
//! rc1 l <conn> <members> <seq>\n<payload>  leave
//! rc1 c <members> <seq>\n                  count changed without a join/leave
//!                                           (a node died, or re-registered after a reconnect)
//! rc1 p <conn> <origin|->\n<payload>       push to one connection (node channels only)
//! ```
//!
//! The join/leave/count headers are written by the Lua scripts in `scripts.rs`; keep both
//! in step.

use bytes::Bytes;

const VERSION: &str = "rc1";

/// Every Redis name the backplane uses, derived from the prefix. The Lua scripts build
/// the same names from the prefix, so the formats here and there must match.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub prefix: String,
    topic_prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_string(),
            topic_prefix: format!("{prefix}:topic:"),
        }
    }

    /// Channel of a topic or room.
    pub fn topic_channel(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    /// The topic of a topic channel, `None` for any other channel.
    pub fn topic_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.topic_prefix.as_str())
    }

    /// Channel on which a node receives pushes for its connections.
    pub fn node_channel(&self, node: u16) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// Counter used to allocate node ids.
    pub fn node_seq_key(&self) -> String {
        format!("{}:node_seq", self.prefix)
    }
}

/// A decoded channel message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Envelope {
    Message {
        origin: Option<u64>,
        seq: Option<u64>,
        payload: Bytes,
    },
    Member {
        joined: bool,
        conn: u64,
        members: u64,
        seq: u64,
        payload: Bytes,
    },
    Count {
        members: u64,
        seq: u64,
    },
    Push {
        conn: u64,
        origin: Option<u64>,
        payload: Bytes,
    },
}

fn opt_field(origin: Option<u64>) -> String {
    origin.map_or_else(|| "-".to_string(), |o| o.to_string())
}

fn with_header(header: String, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(header.len() + 1 + payload.len());
    v.extend_from_slice(header.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(payload);
    v
}

/// A plain topic message (no sequence number; room messages get theirs in Redis).
pub(crate) fn encode_message(origin: Option<u64>, payload: &[u8]) -> Vec<u8> {
    with_header(format!("{VERSION} m {} -", opt_field(origin)), payload)
}

/// Origin field for the room-message script, which appends the sequence number.
pub(crate) fn origin_field(origin: Option<u64>) -> String {
    opt_field(origin)
}

pub(crate) fn encode_push(conn: u64, origin: Option<u64>, payload: &[u8]) -> Vec<u8> {
    with_header(format!("{VERSION} p {conn} {}", opt_field(origin)), payload)
}

/// Header of a join/leave up to the member count, which the Lua script appends with the
/// sequence number.
pub(crate) fn member_head(joined: bool, conn: u64) -> String {
    format!("{VERSION} {} {conn} ", if joined { 'j' } else { 'l' })
}

/// Parses a channel message; the error says what is wrong (for the log).
pub(crate) fn decode(raw: &[u8]) -> Result<Envelope, &'static str> {
    let nl = raw
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&raw[..nl]).map_err(|_| "header is not UTF-8")?;
    let payload = || Bytes::copy_from_slice(&raw[nl + 1..]);
    let f: Vec<&str> = header.split(' ').collect();
    if f[0] != VERSION {
        return Err("not a ringcast message (bad version tag)");
    }
    let num = |i: usize| -> Result<u64, &'static str> {
        f.get(i)
            .ok_or("missing field")?
            .parse()
            .map_err(|_| "bad number")
    };
    let opt = |i: usize| -> Result<Option<u64>, &'static str> {
        match *f.get(i).ok_or("missing field")? {
            "-" => Ok(None),
            _ => num(i).map(Some),
        }
    };
    match (f.get(1).copied(), f.len()) {
        (Some("m"), 4) => Ok(Envelope::Message {
            origin: opt(2)?,
            seq: opt(3)?,
            payload: payload(),
        }),
        (Some(kind @ ("j" | "l")), 5) => Ok(Envelope::Member {
            joined: kind == "j",
            conn: num(2)?,
            members: num(3)?,
            seq: num(4)?,
            payload: payload(),
        }),
        (Some("c"), 4) => Ok(Envelope::Count {
            members: num(2)?,
            seq: num(3)?,
        }),
        (Some("p"), 4) => Ok(Envelope::Push {
            conn: num(2)?,
            origin: opt(3)?,
            payload: payload(),
        }),
        (Some("m" | "j" | "l" | "c" | "p"), _) => Err("wrong number of header fields"),
        _ => Err("unknown kind"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let m = encode_message(Some(7), b"hi\nthere");
        assert_eq!(
            decode(&m).unwrap(),
            Envelope::Message {
                origin: Some(7),
                seq: None,
                payload: Bytes::from_static(b"hi\nthere")
            }
        );
        let m = encode_message(None, b"");
        assert_eq!(
            decode(&m).unwrap(),
            Envelope::Message {
                origin: None,
                seq: None,
                payload: Bytes::new()
            }
        );
        // What the room-message script writes.
        let m = format!("rc1 m {} 12\nx", origin_field(Some(3)));
        assert_eq!(
            decode(m.as_bytes()).unwrap(),
            Envelope::Message {
                origin: Some(3),
                seq: Some(12),
                payload: Bytes::from_static(b"x")
            }
        );
        let p = encode_push(u64::MAX, None, b"x");
        assert_eq!(
            decode(&p).unwrap(),
            Envelope::Push {
                conn: u64::MAX,
                origin: None,
                payload: Bytes::from_static(b"x")
            }
        );
        let mut j = member_head(true, 42).into_bytes();
        j.extend_from_slice(b"3 9\n{\"user\":\"a\"}");
        assert_eq!(
            decode(&j).unwrap(),
            Envelope::Member {
                joined: true,
                conn: 42,
                members: 3,
                seq: 9,
                payload: Bytes::from_static(b"{\"user\":\"a\"}")
            }
        );
        assert_eq!(
            decode(b"rc1 c 0 4\n").unwrap(),
            Envelope::Count { members: 0, seq: 4 }
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"hello",
            b"rc1 m 1 -",
            b"rc2 m - -\nx",
            b"rc1 z 1\n",
            b"rc1 j 1 1\n",
            b"rc1 j x 1 1\n",
            b"rc1 c 1\n",
            b"rc1 c 1 2 3\n",
            b"rc1 m 1\n",
            b"rc1 m 1 - -\n",
            b"rc1 p 1\n",
            b"\xff\xfe\n",
            b"rc1 c -1 1\n",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names() {
        let n = Names::new("rc");
        assert_eq!(n.topic_channel("a:b"), "rc:topic:a:b");
        assert_eq!(n.topic_of("rc:topic:a:b"), Some("a:b"));
        assert_eq!(n.topic_of("rc:node:1"), None);
        assert_eq!(n.node_channel(9), "rc:node:9");
    }
}
