//! This node's own state, kept on the backplane thread: which topics it has interest
//! in (reference counts shared with the reader) and how many members it has per room.
//! Turns a batch of handle requests into the [`Effect`]s to carry out against Redis,
//! without touching Redis itself.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;

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

    /// A publish or push as the effect it asks of Redis (`None` for other requests).
    pub fn into_message(self) -> Option<Effect> {
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
    },
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
    fn member(&mut self, room: String, conn: u64, joined: bool, count: u64, payload: Bytes) {
        self.touched.push(room.clone());
        self.effects.push(Effect::Member {
            room,
            conn,
            joined,
            count,
            payload,
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
    /// Room -> local member count (absent = 0).
    pub members: HashMap<String, u64>,
}

impl Local {
    /// Applies one request to local state and records what it asks of Redis.
    pub fn apply(&mut self, cmd: Cmd, b: &mut Batch) -> Result<(), Unbalanced> {
        match cmd {
            msg @ (Cmd::Publish { .. } | Cmd::Push { .. }) => b.effects.extend(msg.into_message()),
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
                let n = self.members.entry(room.clone()).or_insert(0);
                *n += 1;
                let count = *n;
                self.add_interest(&room);
                b.member(room, conn, true, count, payload);
            }
            Cmd::Leave {
                room,
                conn,
                payload,
            } => {
                let Some(n) = self.members.get_mut(&room) else {
                    return Err(Unbalanced::Leave { room, conn });
                };
                *n -= 1;
                let count = *n;
                if count == 0 {
                    self.members.remove(&room);
                }
                self.drop_interest(&room);
                b.member(room, conn, false, count, payload);
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

    #[test]
    fn only_releases_and_shutdown_skip_admission() {
        assert!(!leave("r", 1).counted());
        assert!(!Cmd::Unsubscribe("t".into()).counted());
        assert!(!Cmd::Shutdown.counted());
        assert!(join("r", 1).counted());
        assert!(Cmd::Barrier(1).counted());
        assert!(Cmd::Subscribe("t".into()).counted());
    }
}
