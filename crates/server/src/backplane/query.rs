//! Presence queries: what can be asked ([`Query`]), what comes back ([`Answer`]), the
//! script call of each and turning its reply into an answer. Each query is one Lua
//! script (atomic in Redis), sent in the node's pipeline in request order.

use bytes::Bytes;
use redis::{Pipeline, RedisResult, Value};

use super::{scripts, FailKind};

/// A question about the cluster's rooms, asked with [`Backplane::query`] and answered
/// by [`Inbound::Answer`]. Only members of live nodes count (a node whose liveness key
/// lapsed drops out at once, before it is reaped).
///
/// [`Backplane::query`]: super::Backplane::query
/// [`Inbound::Answer`]: super::Inbound::Answer
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// The members of `room`, each with the payload of its join.
    Members { room: String },
    /// The rooms whose name starts with `prefix` (`""`: all) that have members, each
    /// with its cluster-wide member count.
    Rooms { prefix: String },
    /// The cluster-wide member count of `room`.
    Count { room: String },
}

/// One member of a room: the node it is on, its connection id there, and the payload
/// of its join (its latest, if the conn joined more than once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    pub node: u16,
    pub conn: u64,
    pub payload: Bytes,
}

/// A room in a [`Answer::Rooms`] list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCount {
    pub room: String,
    /// Cluster-wide member count.
    pub members: u64,
    /// The room's sequence number at the time of the answer (as in [`Answer::Count`]).
    pub seq: u64,
}

/// The answer to a [`Query`]. `seq` places a room's answer in the room's event order:
/// it reflects every event of the room numbered up to `seq` and none after (0: the
/// room had no members, its counter is gone). The answer comes on the command
/// connection, events on the subscription connection, so events up to `seq` may
/// arrive before or after it; apply those numbered above `seq` on top of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Sorted by node, then conn.
    Members {
        room: String,
        seq: u64,
        members: Vec<Present>,
    },
    /// Sorted by room name.
    Rooms {
        prefix: String,
        rooms: Vec<RoomCount>,
    },
    Count {
        room: String,
        seq: u64,
        members: u64,
    },
    /// Not answered: `kind` is `Down` (Redis unavailable, or the connection broke while
    /// asking), `Refused` (Redis error or a reply not understood) or `ShuttingDown`.
    /// Counted in `errors_total`.
    Failed {
        query: Query,
        kind: FailKind,
        reason: String,
    },
}

/// Appends the query's script call to the pipeline.
pub(super) fn add_query(pipe: &mut Pipeline, prefix: &str, q: &Query) {
    let (script, arg) = match q {
        Query::Members { room } => (scripts::QUERY_MEMBERS, room),
        Query::Rooms { prefix } => (scripts::QUERY_ROOMS, prefix),
        Query::Count { room } => (scripts::QUERY_COUNT, room),
    };
    pipe.cmd("EVAL").arg(script).arg(0).arg(prefix).arg(arg);
}

/// The answer a query's reply amounts to.
pub(super) fn answer(query: Query, reply: RedisResult<Value>) -> Answer {
    let refused = |query, reason| Answer::Failed {
        query,
        kind: FailKind::Refused,
        reason,
    };
    match reply {
        Ok(v) => match parse(&query, v) {
            Some(a) => a,
            None => refused(query, "redis sent a reply the query did not expect".into()),
        },
        Err(e) => refused(query, format!("redis refused it: {e}")),
    }
}

fn parse(query: &Query, v: Value) -> Option<Answer> {
    let Value::Array(items) = v else {
        return None;
    };
    match query {
        // seq, then node, conn, payload per member.
        Query::Members { room } => {
            let (seq, rest) = items.split_first()?;
            let mut members = rest
                .chunks(3)
                .map(|m| match m {
                    [node, conn, payload] => Some(Present {
                        node: num(node)?.try_into().ok()?,
                        conn: num(conn)?,
                        payload: Bytes::copy_from_slice(blob(payload)?),
                    }),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            members.sort_by_key(|m| (m.node, m.conn));
            Some(Answer::Members {
                room: room.clone(),
                seq: num(seq)?,
                members,
            })
        }
        // room, count, seq per room.
        Query::Rooms { prefix } => {
            let mut rooms = items
                .chunks(3)
                .map(|r| match r {
                    [room, members, seq] => Some(RoomCount {
                        room: String::from_utf8(blob(room)?.to_vec()).ok()?,
                        members: num(members)?,
                        seq: num(seq)?,
                    }),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            rooms.sort_by(|a, b| a.room.cmp(&b.room));
            Some(Answer::Rooms {
                prefix: prefix.clone(),
                rooms,
            })
        }
        // count, seq.
        Query::Count { room } => match &items[..] {
            [members, seq] => Some(Answer::Count {
                room: room.clone(),
                seq: num(seq)?,
                members: num(members)?,
            }),
            _ => None,
        },
    }
}

/// A non-negative number, as an integer reply or as decimal text (hash fields).
fn num(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn blob(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::testutil::{args, b};

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn members(room: &str) -> Query {
        Query::Members { room: room.into() }
    }

    #[test]
    fn each_query_is_one_script_call() {
        let mut pipe = redis::pipe();
        add_query(&mut pipe, "p", &members("r"));
        add_query(
            &mut pipe,
            "p",
            &Query::Rooms {
                prefix: "ch".into(),
            },
        );
        add_query(&mut pipe, "p", &Query::Count { room: "r".into() });
        let cmds: Vec<Vec<Vec<u8>>> = pipe.cmd_iter().map(args).collect();
        let scripts = [
            scripts::QUERY_MEMBERS,
            scripts::QUERY_ROOMS,
            scripts::QUERY_COUNT,
        ];
        for ((c, script), arg) in cmds.iter().zip(scripts).zip(["r", "ch", "r"]) {
            assert_eq!(c[0], b"EVAL");
            assert_eq!(c[1], script.as_bytes());
            assert_eq!(c[2..], [&b"0"[..], b"p", arg.as_bytes()]);
        }
    }

    #[test]
    fn members_are_parsed_and_sorted() {
        let reply = Value::Array(vec![
            Value::Int(12),
            bulk("7"),
            bulk("30"),
            bulk("carol"),
            bulk("2"),
            bulk("11"),
            Value::BulkString(b"\x00bin\n".to_vec()),
            bulk("2"),
            bulk("10"),
            bulk(""),
        ]);
        let want = Answer::Members {
            room: "r".into(),
            seq: 12,
            members: vec![
                Present {
                    node: 2,
                    conn: 10,
                    payload: Bytes::new(),
                },
                Present {
                    node: 2,
                    conn: 11,
                    payload: b("\x00bin\n"),
                },
                Present {
                    node: 7,
                    conn: 30,
                    payload: b("carol"),
                },
            ],
        };
        assert_eq!(answer(members("r"), Ok(reply)), want);
        let empty = Value::Array(vec![Value::Int(0)]);
        assert!(matches!(
            answer(members("r"), Ok(empty)),
            Answer::Members { seq: 0, members, .. } if members.is_empty()
        ));
    }

    #[test]
    fn rooms_and_counts_are_parsed() {
        let reply = Value::Array(vec![
            bulk("chat:b"),
            Value::Int(1),
            Value::Int(4),
            bulk("chat:a"),
            Value::Int(3),
            Value::Int(9),
        ]);
        let q = Query::Rooms {
            prefix: "chat:".into(),
        };
        let row = |room: &str, members, seq| RoomCount {
            room: room.into(),
            members,
            seq,
        };
        assert_eq!(
            answer(q, Ok(reply)),
            Answer::Rooms {
                prefix: "chat:".into(),
                rooms: vec![row("chat:a", 3, 9), row("chat:b", 1, 4)]
            }
        );
        let q = Query::Count { room: "r".into() };
        let reply = Value::Array(vec![Value::Int(5), Value::Int(17)]);
        assert_eq!(
            answer(q, Ok(reply)),
            Answer::Count {
                room: "r".into(),
                seq: 17,
                members: 5
            }
        );
    }

    #[test]
    fn errors_and_unexpected_replies_fail_the_query() {
        let refused = |a: Answer| {
            matches!(
                a,
                Answer::Failed {
                    kind: FailKind::Refused,
                    ..
                }
            )
        };
        let err = Err(redis::RedisError::from((redis::ErrorKind::Client, "boom")));
        assert!(matches!(answer(members("r"), err),
            Answer::Failed { query, kind: FailKind::Refused, reason } if query == members("r") && reason.contains("boom")));
        for bad in [
            Value::Int(3),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(1), bulk("2"), bulk("10")]),
            Value::Array(vec![Value::Int(1), bulk("70000"), bulk("1"), bulk("x")]),
            Value::Array(vec![Value::Int(-1)]),
        ] {
            assert!(refused(answer(members("r"), Ok(bad.clone()))), "{bad:?}");
        }
        let count = Query::Count { room: "r".into() };
        assert!(refused(answer(
            count,
            Ok(Value::Array(vec![Value::Int(1)]))
        )));
        let rooms = Query::Rooms { prefix: "".into() };
        let bad_utf8 = Value::Array(vec![
            Value::BulkString(vec![0xff]),
            Value::Int(1),
            Value::Int(1),
        ]);
        assert!(refused(answer(rooms, Ok(bad_utf8))));
    }
}
