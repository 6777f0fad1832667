//! What effects become without Redis: a push to this node is looped back, publishes
//! and remote pushes come back as `Failed` with their payload, queries as a failed
//! `Answer`, joins/leaves are shown to this node's members with the node-local count.
//! Also the answers to requests that arrive after shutdown.

use super::local::{Cmd, Effect};
use super::{Answer, FailKind, FailedOp, Inbound};

impl Effect {
    /// The `Failed` event of a publish or push, handing the payload back, or the failed
    /// answer of a query (`None` for joins/leaves).
    fn into_failed(self, kind: FailKind, reason: &str) -> Option<Inbound> {
        let (op, origin, topic, payload) = match self {
            Effect::Publish {
                topic,
                origin,
                payload,
                room,
            } => (FailedOp::Publish { room }, origin, Some(topic), payload),
            Effect::Push {
                node,
                conn,
                origin,
                payload,
            } => (FailedOp::Push { node, conn }, origin, None, payload),
            Effect::Query { tag, query } => {
                let answer = Answer::Failed {
                    query,
                    kind,
                    reason: reason.to_string(),
                };
                return Some(Inbound::Answer { tag, answer });
            }
            Effect::Member { .. } => return None,
        };
        Some(Inbound::Failed {
            op,
            kind,
            origin,
            topic,
            reason: reason.to_string(),
            payload,
        })
    }
}

/// What an effect becomes without Redis.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Fallback {
    /// The event to hand to the server, if any.
    pub event: Option<Inbound>,
    /// Whether it counts as an error.
    pub error: bool,
}

/// Carries out `eff` without Redis; `ours` tells whether a room still has local
/// interest (only then can anyone here hear a node-local join/leave).
pub(super) fn fallback_event(
    eff: Effect,
    own: u16,
    kind: FailKind,
    reason: &str,
    ours: impl Fn(&str) -> bool,
) -> Fallback {
    match eff {
        Effect::Push {
            node,
            conn,
            origin,
            payload,
        } if node == own => Fallback {
            event: Some(Inbound::Push {
                conn,
                origin,
                payload,
            }),
            error: false,
        },
        Effect::Member {
            room,
            conn,
            joined,
            count,
            payload,
            ..
        } => Fallback {
            event: ours(&room).then_some(Inbound::Member {
                room,
                conn,
                joined,
                members: count,
                seq: None,
                cluster: false,
                payload,
            }),
            error: true,
        },
        other => Fallback {
            event: other.into_failed(kind, reason),
            error: true,
        },
    }
}

/// The answer to a request that came after shutdown: publishes and pushes (to any
/// node, this one included) fail; the rest has nobody to tell.
pub(super) fn refusal(cmd: Cmd) -> Option<Inbound> {
    cmd.into_effect()?
        .into_failed(FailKind::ShuttingDown, "backplane is shutting down")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::testutil::{b, member, publish, push};
    use crate::backplane::Query;

    fn failed(op: FailedOp, kind: FailKind, topic: Option<&str>, reason: &str) -> Inbound {
        Inbound::Failed {
            op,
            kind,
            origin: Some(5),
            topic: topic.map(String::from),
            reason: reason.into(),
            payload: b("x"),
        }
    }

    #[test]
    fn own_pushes_loop_back_and_the_rest_fails() {
        let f = fallback_event(push(3), 3, FailKind::Down, "down", |_| true);
        let looped = Inbound::Push {
            conn: 8,
            origin: Some(5),
            payload: b("x"),
        };
        assert_eq!(
            f,
            Fallback {
                event: Some(looped),
                error: false
            }
        );
        let f = fallback_event(push(4), 3, FailKind::Down, "down", |_| true);
        let op = FailedOp::Push { node: 4, conn: 8 };
        assert!(f.error);
        assert_eq!(f.event, Some(failed(op, FailKind::Down, None, "down")));
        let f = fallback_event(publish(true), 3, FailKind::Refused, "no", |_| true);
        assert!(f.error);
        let want = failed(
            FailedOp::Publish { room: true },
            FailKind::Refused,
            Some("t"),
            "no",
        );
        assert_eq!(f.event, Some(want));
    }

    #[test]
    fn queries_fail_while_down() {
        let query = Query::Count { room: "r".into() };
        let eff = Effect::Query {
            tag: 9,
            query: query.clone(),
        };
        let f = fallback_event(eff, 3, FailKind::Down, "redis backplane down: x", |_| true);
        let answer = Answer::Failed {
            query,
            kind: FailKind::Down,
            reason: "redis backplane down: x".into(),
        };
        assert_eq!(
            f,
            Fallback {
                event: Some(Inbound::Answer { tag: 9, answer }),
                error: true
            }
        );
    }

    #[test]
    fn member_events_are_node_local_and_only_for_rooms_still_ours() {
        let f = fallback_event(member(true, 2), 3, FailKind::Down, "", |r| r == "r");
        assert!(f.error);
        assert_eq!(
            f.event,
            Some(Inbound::Member {
                room: "r".into(),
                conn: 8,
                joined: true,
                members: 2,
                seq: None,
                cluster: false,
                payload: b("alice")
            })
        );
        let f = fallback_event(member(false, 0), 3, FailKind::Down, "", |_| false);
        assert_eq!(
            f,
            Fallback {
                event: None,
                error: true
            }
        );
    }

    #[test]
    fn after_shutdown_only_messages_are_answered() {
        // Even a push to this node fails: nothing is delivered after shutdown.
        let ev = refusal(Cmd::Push {
            node: 2,
            conn: 8,
            payload: b("x"),
            origin: Some(5),
        });
        let op = FailedOp::Push { node: 2, conn: 8 };
        let reason = "backplane is shutting down";
        assert_eq!(ev, Some(failed(op, FailKind::ShuttingDown, None, reason)));
        let query = Query::Members { room: "r".into() };
        let ev = refusal(Cmd::Query {
            tag: 3,
            query: query.clone(),
        });
        let answer = Answer::Failed {
            query,
            kind: FailKind::ShuttingDown,
            reason: reason.into(),
        };
        assert_eq!(ev, Some(Inbound::Answer { tag: 3, answer }));
        assert!(refusal(Cmd::Subscribe("t".into())).is_none());
        assert!(refusal(Cmd::Barrier(1)).is_none());
        assert!(refusal(Cmd::Leave {
            room: "r".into(),
            conn: 1,
            payload: b("x")
        })
        .is_none());
    }
}
