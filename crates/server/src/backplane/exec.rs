//! Carrying out a batch: requests are applied to local state (`local`), subscriptions
//! follow the interest, the effects go to Redis as one pipeline and every reply is
//! settled. When Redis is down (or the pipeline fails) each effect falls back to what
//! can be done without it (`fallback`); after shutdown requests are refused.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use redis::{Pipeline, RedisResult, Value};
use tracing::warn;

use super::fallback::{fallback_event, refusal};
use super::local::{Batch, Cmd, Effect, Unbalanced};
use super::query::{add_query, answer};
use super::session::timed;
use super::wire::{self, Names};
use super::worker::{Flow, Worker};
use super::{scripts, Answer, BackplaneStats, FailKind, Inbound};

/// Topics to subscribe and to unsubscribe so that the connection follows local
/// interest, each once, in first-touched order.
pub(super) fn subscription_changes(
    touched: Vec<String>,
    wanted: impl Fn(&str) -> bool,
    subscribed: &HashSet<String>,
) -> (Vec<String>, Vec<String>) {
    let (mut to_sub, mut to_unsub) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for t in touched {
        if !seen.insert(t.clone()) {
            continue;
        }
        match (wanted(&t), subscribed.contains(&t)) {
            (true, false) => to_sub.push(t),
            (false, true) => to_unsub.push(t),
            _ => {}
        }
    }
    (to_sub, to_unsub)
}

/// Appends the Redis command of one effect to the pipeline.
pub(super) fn add_to_pipeline(
    pipe: &mut Pipeline,
    eff: &Effect,
    names: &Names,
    node: u16,
    token: &str,
) {
    match eff {
        Effect::Publish {
            topic,
            origin,
            room: false,
            payload,
        } => {
            pipe.cmd("PUBLISH")
                .arg(names.topic_channel(topic))
                .arg(wire::encode_message(*origin, payload));
        }
        Effect::Publish {
            topic,
            origin,
            room: true,
            payload,
        } => {
            pipe.cmd("EVAL")
                .arg(scripts::ROOM_MESSAGE)
                .arg(0)
                .arg(&names.prefix)
                .arg(topic)
                .arg(wire::origin_field(*origin))
                .arg(&payload[..]);
        }
        Effect::Push {
            node: to,
            conn,
            origin,
            payload,
        } => {
            pipe.cmd("PUBLISH")
                .arg(names.node_channel(*to))
                .arg(wire::encode_push(*conn, *origin, payload));
        }
        Effect::Member {
            room,
            conn,
            joined,
            count,
            payload,
            presence,
        } => {
            pipe.cmd("EVAL")
                .arg(scripts::MEMBER)
                .arg(0)
                .arg(&names.prefix)
                .arg(node)
                .arg(token)
                .arg(room)
                .arg(*count)
                .arg(wire::member_head(*joined, *conn))
                .arg(&payload[..])
                .arg(presence.arg())
                .arg(*conn);
        }
        Effect::Query { query, .. } => add_query(pipe, &names.prefix, query),
    }
}

/// What one pipeline reply means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Settled {
    /// Redis took it.
    Published,
    /// A room message to a room with no members anywhere: nobody to deliver to.
    NoRecipients,
    /// A push nobody listens for.
    NoListener(String),
    /// A join/leave refused because our liveness key lapsed: show it locally, resync.
    Lapsed,
    /// Redis answered with an error.
    Refused(String),
}

pub(super) fn settle_outcome(eff: &Effect, reply: &RedisResult<Value>) -> Settled {
    match (eff, reply) {
        (Effect::Push { node, .. }, Ok(Value::Int(0))) => Settled::NoListener(format!(
            "no node {node} is listening (gone, or never existed)"
        )),
        (Effect::Member { .. }, Ok(Value::Int(-1))) => Settled::Lapsed,
        (Effect::Publish { room: true, .. }, Ok(Value::Int(-2))) => Settled::NoRecipients,
        (_, Ok(_)) => Settled::Published,
        (_, Err(e)) => Settled::Refused(e.to_string()),
    }
}

impl Worker {
    /// Applies a batch to local state, then carries it out against Redis (or fails it
    /// fast when Redis is down).
    pub(super) async fn process(&mut self, buf: &mut Vec<Cmd>) -> Flow {
        let mut batch = Batch::default();
        for cmd in buf.drain(..) {
            if cmd.counted() {
                self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            }
            if batch.stop {
                self.refuse_after_shutdown(cmd);
                continue;
            }
            match self.local.apply(cmd, &mut batch) {
                Ok(()) => {}
                Err(Unbalanced::Unsubscribe(topic)) => {
                    warn!(topic, "backplane: unsubscribe without subscribe; ignored");
                    BackplaneStats::inc(&self.shared.stats.errors_total);
                }
                Err(Unbalanced::Leave { room, conn }) => {
                    warn!(room, conn, "backplane: leave without join; ignored");
                    BackplaneStats::inc(&self.shared.stats.errors_total);
                }
            }
        }
        if self.live.is_some() {
            self.execute_live(batch.effects, batch.touched).await;
        } else {
            self.execute_down(batch.effects);
        }
        if self.resync_needed && self.live.is_some() {
            self.resync().await;
        }
        for tag in batch.barriers {
            self.emitter.emit(Inbound::Barrier { tag });
        }
        if batch.stop {
            self.retire().await;
            return Flow::Stop;
        }
        Flow::Continue
    }

    pub(super) fn refuse_after_shutdown(&self, cmd: Cmd) {
        if let Some(ev) = refusal(cmd) {
            BackplaneStats::inc(&self.shared.stats.errors_total);
            self.emitter.emit(ev);
        }
    }

    /// Redis is not available: every effect falls back.
    fn execute_down(&self, effects: Vec<Effect>) {
        for eff in effects {
            self.fallback(eff, FailKind::Down, &self.down_reason);
        }
    }

    fn fallback(&self, eff: Effect, kind: FailKind, reason: &str) {
        let f = fallback_event(eff, self.node, kind, reason, |room| {
            self.local.has_interest(room)
        });
        if f.error {
            BackplaneStats::inc(&self.shared.stats.errors_total);
        }
        if let Some(ev) = f.event {
            self.emitter.emit(ev);
        }
    }

    /// Brings the Redis subscriptions in line with local interest, then sends the batch
    /// as one pipeline on the command connection (FIFO: Redis runs it in this order).
    async fn execute_live(&mut self, effects: Vec<Effect>, touched: Vec<String>) {
        let Some(live) = self.live.as_mut() else {
            return self.execute_down(effects);
        };
        let mut sink = live.sink.clone();
        let mut cmd = live.cmd.clone();
        let limit = self.cfg.response_timeout;
        let (to_sub, to_unsub) =
            subscription_changes(touched, |t| self.local.has_interest(t), &self.subscribed);
        // Subscribed before the batch's join events are published, so they come back.
        for (list, subscribe) in [(&to_sub, true), (&to_unsub, false)] {
            if list.is_empty() {
                continue;
            }
            let channels: Vec<String> = list.iter().map(|t| self.names.topic_channel(t)).collect();
            for chunk in channels.chunks(512) {
                let r = if subscribe {
                    timed(limit, sink.subscribe(chunk)).await
                } else {
                    timed(limit, sink.unsubscribe(chunk)).await
                };
                if let Err(e) = r {
                    self.mark_down(format!("(un)subscribe failed: {e}"));
                    return self.execute_down(effects);
                }
            }
            for t in list {
                if subscribe {
                    self.subscribed.insert(t.clone());
                } else {
                    self.subscribed.remove(t);
                }
            }
        }

        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut sent = Vec::with_capacity(effects.len());
        for eff in effects {
            if matches!(eff, Effect::Push { node, .. } if node == self.node) {
                self.fallback(eff, FailKind::Down, "");
                continue;
            }
            add_to_pipeline(&mut pipe, &eff, &self.names, self.node, &self.token);
            sent.push(eff);
        }
        if sent.is_empty() {
            return;
        }
        let results =
            match timed(limit, pipe.query_async::<Vec<RedisResult<Value>>>(&mut cmd)).await {
                Ok(r) => r,
                Err(e) => {
                    // Unknown whether Redis took them; report them failed (never silently lost).
                    self.mark_down(format!("publishing failed: {e}"));
                    return self.execute_down(sent);
                }
            };
        let mut results = results.into_iter();
        for eff in sent {
            let reply = results.next().unwrap_or_else(|| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "missing reply",
                )))
            });
            self.settle(eff, reply);
        }
    }

    /// Accounts for one pipeline reply.
    fn settle(&mut self, eff: Effect, reply: RedisResult<Value>) {
        let eff = match eff {
            Effect::Query { tag, query } => {
                let answer = answer(query, reply);
                if matches!(answer, Answer::Failed { .. }) {
                    BackplaneStats::inc(&self.shared.stats.errors_total);
                }
                return self.emitter.emit(Inbound::Answer { tag, answer });
            }
            other => other,
        };
        match settle_outcome(&eff, &reply) {
            Settled::Published => BackplaneStats::inc(&self.shared.stats.published_total),
            Settled::NoRecipients => {}
            Settled::NoListener(reason) => self.fallback(eff, FailKind::NoListener, &reason),
            Settled::Lapsed => {
                if let Effect::Member { room, .. } = &eff {
                    warn!(
                        room,
                        "backplane: our liveness key lapsed; event shown locally, re-registering"
                    );
                }
                self.resync_needed = true;
                self.fallback(eff, FailKind::Down, "");
            }
            Settled::Refused(e) => {
                warn!("backplane: Redis refused a request: {e}");
                self.fallback(eff, FailKind::Refused, &format!("redis refused it: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::testutil::{args, member, publish, push};

    #[test]
    fn subscriptions_follow_interest_once_per_topic() {
        let subscribed = HashSet::from(["old".to_string(), "kept".to_string()]);
        let touched = ["new", "old", "new", "kept", "other"]
            .map(String::from)
            .to_vec();
        let wanted = |t: &str| t == "new" || t == "kept";
        assert_eq!(
            subscription_changes(touched, wanted, &subscribed),
            (vec!["new".to_string()], vec!["old".to_string()])
        );
    }

    #[test]
    fn replies_are_settled_by_effect_kind() {
        let int = |n| Ok(Value::Int(n));
        assert!(
            matches!(settle_outcome(&push(4), &int(0)), Settled::NoListener(r) if r.contains("node 4"))
        );
        assert_eq!(settle_outcome(&push(4), &int(2)), Settled::Published);
        assert_eq!(settle_outcome(&member(true, 1), &int(-1)), Settled::Lapsed);
        assert_eq!(
            settle_outcome(&member(true, 1), &int(0)),
            Settled::Published
        );
        assert_eq!(
            settle_outcome(&publish(true), &int(-2)),
            Settled::NoRecipients
        );
        assert_eq!(settle_outcome(&publish(true), &int(7)), Settled::Published);
        // A plain PUBLISH reaching nobody is still published (topics are fire-and-forget).
        assert_eq!(settle_outcome(&publish(false), &int(0)), Settled::Published);
        let err = Err(redis::RedisError::from((redis::ErrorKind::Client, "boom")));
        assert!(
            matches!(settle_outcome(&publish(false), &err), Settled::Refused(e) if e.contains("boom"))
        );
    }

    #[test]
    fn pipeline_commands_per_effect() {
        let names = Names::new("p");
        let mut pipe = redis::pipe();
        for eff in [publish(false), publish(true), push(4), member(false, 2)] {
            add_to_pipeline(&mut pipe, &eff, &names, 3, "tok");
        }
        let cmds: Vec<Vec<Vec<u8>>> = pipe.cmd_iter().map(args).collect();
        assert_eq!(cmds[0], [&b"PUBLISH"[..], b"p:topic:t", b"rc1 m 5 -\nx"]);
        assert_eq!(cmds[1][1], scripts::ROOM_MESSAGE.as_bytes());
        assert_eq!(cmds[1][2..], [&b"0"[..], b"p", b"t", b"5", b"x"]);
        assert_eq!(cmds[2], [&b"PUBLISH"[..], b"p:node:4", b"rc1 p 8 5\nx"]);
        assert_eq!(cmds[3][1], scripts::MEMBER.as_bytes());
        assert_eq!(
            cmds[3][2..],
            [
                &b"0"[..],
                b"p",
                b"3",
                b"tok",
                b"r",
                b"2",
                b"rc1 l 8 ",
                b"alice",
                b"d",
                b"8"
            ]
        );
        // A query is its script call (see query.rs), in the same pipeline.
        let mut pipe = redis::pipe();
        let q = crate::backplane::Query::Count { room: "r".into() };
        add_to_pipeline(
            &mut pipe,
            &Effect::Query { tag: 1, query: q },
            &names,
            3,
            "tok",
        );
        let cmd = args(pipe.cmd_iter().next().unwrap());
        assert_eq!(cmd[1], scripts::QUERY_COUNT.as_bytes());
    }
}
