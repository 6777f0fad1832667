//! This node's own state, kept on the backplane thread: which topics it has interest
//! in (reference counts shared with the reader) and how many members it has per room.
//! Turns a batch of handle requests into the [`Effect`]s to carry out against Redis,
//! without touching Redis itself.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;

use super::Query;

/// A request from a handle.
pub(crate) enum Cmd {
    Publish {
        topic: String,
        payload: Bytes,
        origin: Option<u64>,
        /// Room message: numbered by Redis.
        room: bool,
    },
    Push {
        node: u16,
        conn: u64,
        payload: Bytes,
        origin: Option<u64>,
    },
    Subscribe(String),
    Unsubscribe(String),
    Join {
        room: String,
        conn: u64,
        payload: Bytes,
    },
    Leave {
        room: String,
        conn: u64,
        payload: Bytes,
    },
    Barrier(u64),
    Query {
        tag: u64,
        query: Query,
    },
    Shutdown,
}

impl Cmd {
    /// Whether the request went through admission control (counted in `pending`).
    pub fn counted(&self) -> bool {
        !matches!(
            self,
            Cmd::Unsubscribe(_) | Cmd::Leave { .. } | Cmd::Shutdown
        )
    }

    /// A publish, push or query as the effect it asks of Redis (`None` for requests
    /// that change local state first).
    pub fn into_effect(self) -> Option<Effect> {
        match self {
            Cmd::Publish {
                topic,
                payload,
                origin,
                room,
            } => Some(Effect::Publish {
                topic,
                origin,
                room,
                payload,
            }),
            Cmd::Push {
                node,
                conn,
                payload,
                origin,
            } => Some(Effect::Push {
                node,
                conn,
                origin,
                payload,
            }),
            Cmd::Query { tag, query } => Some(Effect::Query { tag, query }),
            _ => None,
        }
    }
}

/// What a batch asks of Redis, in request order.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Effect {
    Publish {
        topic: String,
        origin: Option<u64>,
        room: bool,
        payload: Bytes,
    },
    Push {
        node: u16,
        conn: u64,
        origin: Option<u64>,
        payload: Bytes,
    },
    /// Join/leave with this node's local count for the room after it.
    Member {
        room: String,
        conn: u64,
        joined: bool,
        count: u64,
        payload: Bytes,
        presence: Presence,
    },
    /// A presence query, answered in request order.
    Query { tag: u64, query: Query },
}

/// What a join/leave does to the member's entry in the room's presence hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    /// Store the event's payload for the conn (a join).
    Set,
    /// Remove the conn (its last join in the room left).
    Remove,
    /// Leave it: the conn is still in the room through another join.
    Keep,
}

impl Presence {
    /// The MEMBER script's argument for it.
    pub fn arg(self) -> &'static str {
        match self {
            Presence::Set => "s",
            Presence::Remove => "d",
            Presence::Keep => "-",
        }
    }
}

/// This node's members of one room.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Room {
    /// Joins not yet balanced by a leave: the node's count in Redis.
    pub count: u64,
    /// Conn -> payload of its latest join and how many joins it has here. Kept so a
    /// resync can register the payloads again.
    pub conns: HashMap<u64, (Bytes, u64)>,
}

/// Topic -> local references (subscribe + join). Shared with the reader, which drops
/// messages for topics no longer in it.
pub(super) type Interest = Rc<RefCell<HashMap<String, usize>>>;

/// A batch of requests applied to local state.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub effects: Vec<Effect>,
    /// Topics whose interest changed: their subscriptions may need to follow.
    pub touched: Vec<String>,
    pub barriers: Vec<u64>,
    /// A shutdown was in the batch; later requests are refused, not applied.
    pub stop: bool,
}

impl Batch {
    /// A join/leave: its room's subscription may change, and Redis gets the new count.
    fn member(
        &mut self,
        room: String,
        conn: u64,
        joined: bool,
        count: u64,
        presence: Presence,
        payload: Bytes,
    ) {
        self.touched.push(room.clone());
        self.effects.push(Effect::Member {
            room,
            conn,
            joined,
            count,
            payload,
            presence,
        });
    }
}

/// A release that had nothing to release (logged and counted by the caller).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unbalanced {
    Unsubscribe(String),
    Leave { room: String, conn: u64 },
}

#[derive(Default)]
pub(super) struct Local {
    pub interest: Interest,
    /// Room -> this node's members there (absent = none).
    pub members: HashMap<String, Room>,
}

impl Local {
    /// Applies one request to local state and records what it asks of Redis.
    pub fn apply(&mut self, cmd: Cmd, b: &mut Batch) -> Result<(), Unbalanced> {
        match cmd {
            msg @ (Cmd::Publish { .. } | Cmd::Push { .. } | Cmd::Query { .. }) => {
                b.effects.extend(msg.into_effect())
            }
            Cmd::Subscribe(topic) => {
                self.add_interest(&topic);
                b.touched.push(topic);
            }
            Cmd::Unsubscribe(topic) => {
                if !self.drop_interest(&topic) {
                    return Err(Unbalanced::Unsubscribe(topic));
                }
                b.touched.push(topic);
            }
            Cmd::Join {
                room,
                conn,
                payload,
            } => {
                let r = self.members.entry(room.clone()).or_default();
                r.count += 1;
                let c = r.conns.entry(conn).or_insert((Bytes::new(), 0));
                // A conn that joins again shows its latest payload.
                *c = (payload.clone(), c.1 + 1);
                let count = r.count;
                self.add_interest(&room);
                b.member(room, conn, true, count, Presence::Set, payload);
            }
            Cmd::Leave {
                room,
                conn,
                payload,
            } => {
                let Some(r) = self.members.get_mut(&room) else {
                    return Err(Unbalanced::Leave { room, conn });
                };
                r.count -= 1;
                let count = r.count;
                let presence = match r.conns.get_mut(&conn) {
                    Some((_, joins)) if *joins > 1 => {
                        *joins -= 1;
                        Presence::Keep
                    }
                    _ => {
                        // Also for a conn that never joined: removing nothing is harmless.
                        r.conns.remove(&conn);
                        Presence::Remove
                    }
                };
                if count == 0 {
                    self.members.remove(&room);
                }
                self.drop_interest(&room);
                b.member(room, conn, false, count, presence, payload);
            }
            Cmd::Barrier(tag) => b.barriers.push(tag),
            Cmd::Shutdown => b.stop = true,
        }
        Ok(())
    }

    pub fn has_interest(&self, topic: &str) -> bool {
        self.interest.borrow().contains_key(topic)
    }

    fn add_interest(&self, topic: &str) {
        *self
            .interest
            .borrow_mut()
            .entry(topic.to_string())
            .or_insert(0) += 1;
    }

    /// False if there was no reference to release.
    fn drop_interest(&self, topic: &str) -> bool {
        let mut map = self.interest.borrow_mut();
        let Some(n) = map.get_mut(topic) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            map.remove(topic);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::testutil::b;

    fn join(room: &str, conn: u64) -> Cmd {
        Cmd::Join {
            room: room.into(),
            conn,
            payload: b("p"),
        }
    }

    fn leave(room: &str, conn: u64) -> Cmd {
        Cmd::Leave {
            room: room.into(),
            conn,
            payload: b("p"),
        }
    }

    #[test]
    fn joins_and_leaves_carry_the_absolute_local_count() {
        let mut l = Local::default();
        let mut batch = Batch::default();
        for cmd in [join("r", 1), join("r", 2), leave("r", 1), leave("r", 2)] {
            l.apply(cmd, &mut batch).unwrap();
        }
        let counts: Vec<(bool, u64)> = batch
            .effects
            .iter()
            .map(|e| match e {
                Effect::Member { joined, count, .. } => (*joined, *count),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(counts, [(true, 1), (true, 2), (false, 1), (false, 0)]);
        // The last leave forgets the room and drops the interest it held.
        assert!(l.members.is_empty());
        assert!(!l.has_interest("r"));
        assert_eq!(batch.touched, ["r", "r", "r", "r"]);
    }

    #[test]
    fn interest_is_shared_by_subscribe_and_join() {
        let mut l = Local::default();
        let mut batch = Batch::default();
        l.apply(Cmd::Subscribe("r".into()), &mut batch).unwrap();
        l.apply(join("r", 1), &mut batch).unwrap();
        l.apply(Cmd::Unsubscribe("r".into()), &mut batch).unwrap();
        assert!(l.has_interest("r"), "the member still holds a reference");
        l.apply(leave("r", 1), &mut batch).unwrap();
        assert!(!l.has_interest("r"));
    }

    #[test]
    fn unbalanced_releases_are_reported_and_change_nothing() {
        let mut l = Local::default();
        let mut batch = Batch::default();
        assert_eq!(
            l.apply(Cmd::Unsubscribe("t".into()), &mut batch),
            Err(Unbalanced::Unsubscribe("t".into()))
        );
        assert_eq!(
            l.apply(leave("r", 4), &mut batch),
            Err(Unbalanced::Leave {
                room: "r".into(),
                conn: 4
            })
        );
        assert!(batch.effects.is_empty() && batch.touched.is_empty());
    }

    #[test]
    fn messages_keep_request_order_and_barriers_and_shutdown_are_noted() {
        let mut l = Local::default();
        let mut batch = Batch::default();
        let cmds = [
            Cmd::Publish {
                topic: "t".into(),
                payload: b("1"),
                origin: Some(9),
                room: true,
            },
            Cmd::Barrier(5),
            Cmd::Push {
                node: 3,
                conn: 8,
                payload: b("2"),
                origin: None,
            },
            Cmd::Shutdown,
        ];
        for cmd in cmds {
            l.apply(cmd, &mut batch).unwrap();
        }
        assert_eq!(
            batch.effects,
            [
                Effect::Publish {
                    topic: "t".into(),
                    origin: Some(9),
                    room: true,
                    payload: b("1")
                },
                Effect::Push {
                    node: 3,
                    conn: 8,
                    origin: None,
                    payload: b("2")
                }
            ]
        );
        assert_eq!(batch.barriers, [5]);
        assert!(batch.stop);
        assert!(batch.touched.is_empty());
    }

    fn presence(batch: &Batch) -> Vec<Presence> {
        batch
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Member { presence, .. } => Some(*presence),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn payloads_are_remembered_per_conn_until_its_last_leave() {
        let mut l = Local::default();
        let mut batch = Batch::default();
        let join_as = |conn, p: &'static str| Cmd::Join {
            room: "r".into(),
            conn,
            payload: b(p),
        };
        l.apply(join_as(1, "alice"), &mut batch).unwrap();
        l.apply(join_as(2, "bob"), &mut batch).unwrap();
        // The same conn again: counted twice, one entry with its latest payload.
        l.apply(join_as(1, "alice2"), &mut batch).unwrap();
        let r = &l.members["r"];
        assert_eq!(r.count, 3);
        assert_eq!(r.conns[&1], (b("alice2"), 2));
        assert_eq!(r.conns[&2], (b("bob"), 1));
        l.apply(leave("r", 1), &mut batch).unwrap();
        assert_eq!(l.members["r"].conns[&1], (b("alice2"), 1));
        l.apply(leave("r", 1), &mut batch).unwrap();
        assert!(!l.members["r"].conns.contains_key(&1));
        l.apply(leave("r", 2), &mut batch).unwrap();
        assert!(l.members.is_empty());
        use Presence::*;
        assert_eq!(presence(&batch), [Set, Set, Set, Keep, Remove, Remove]);
        assert_eq!(Set.arg(), "s");
        assert_eq!(Remove.arg(), "d");
        assert_eq!(Keep.arg(), "-");
    }

    #[test]
    fn queries_are_effects_in_request_order() {
        let mut l = Local::default();
        let mut batch = Batch::default();
        let q = Query::Count { room: "r".into() };
        l.apply(join("r", 1), &mut batch).unwrap();
        l.apply(
            Cmd::Query {
                tag: 7,
                query: q.clone(),
            },
            &mut batch,
        )
        .unwrap();
        assert!(matches!(batch.effects[0], Effect::Member { .. }));
        assert_eq!(batch.effects[1], Effect::Query { tag: 7, query: q });
        assert_eq!(batch.touched, ["r"], "a query changes no subscription");
    }

    #[test]
    fn only_releases_and_shutdown_skip_admission() {
        assert!(!leave("r", 1).counted());
        assert!(!Cmd::Unsubscribe("t".into()).counted());
        assert!(!Cmd::Shutdown.counted());
        assert!(join("r", 1).counted());
        assert!(Cmd::Barrier(1).counted());
        let q = Query::Rooms { prefix: "".into() };
        assert!(Cmd::Query { tag: 1, query: q }.counted());
        assert!(Cmd::Subscribe("t".into()).counted());
    }
}
