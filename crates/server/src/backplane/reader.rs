//! The subscription-connection reader: a task that reads the pub/sub stream until it
//! ends, turns each message into an [`Inbound`] event (or drops and counts it) and then
//! reports the loss of the connection to the worker.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use futures_core::Stream;
use redis::aio::PubSubStream;
use tokio::sync::mpsc::UnboundedSender;
use tracing::warn;

use super::local::Interest;
use super::wire::{self, Envelope, Names};
use super::worker::Emitter;
use super::{BackplaneStats, Inbound};

/// What one channel message amounts to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// Hand it to the server.
    Event(Inbound),
    /// For a topic this node no longer has interest in: in flight when the last local
    /// member left, nobody to give it to.
    Stale,
    /// Not ours to understand: dropped, counted, logged.
    Bad(&'static str),
}

/// Interprets a message on `channel` (pure: no counters, no log).
pub(super) fn interpret(
    names: &Names,
    node_channel: &str,
    interest: &HashMap<String, usize>,
    channel: &str,
    raw: &[u8],
) -> Heard {
    if let Some(topic) = names.topic_of(channel) {
        if !interest.contains_key(topic) {
            return Heard::Stale;
        }
        let topic = topic.to_string();
        Heard::Event(match wire::decode(raw) {
            Ok(Envelope::Message {
                origin,
                seq,
                payload,
            }) => Inbound::Message {
                topic,
                origin,
                seq,
                payload,
            },
            Ok(Envelope::Member {
                joined,
                conn,
                members,
                seq,
                payload,
            }) => Inbound::Member {
                room: topic,
                conn,
                joined,
                members,
                seq: Some(seq),
                cluster: true,
                payload,
            },
            Ok(Envelope::Count { members, seq }) => Inbound::Count {
                room: topic,
                members,
                seq,
            },
            Ok(Envelope::Push { .. }) => return Heard::Bad("push on a topic channel"),
            Err(e) => return Heard::Bad(e),
        })
    } else if channel == node_channel {
        match wire::decode(raw) {
            Ok(Envelope::Push {
                conn,
                origin,
                payload,
            }) => Heard::Event(Inbound::Push {
                conn,
                origin,
                payload,
            }),
            Ok(_) => Heard::Bad("not a push on the node channel"),
            Err(e) => Heard::Bad(e),
        }
    } else {
        Heard::Bad("message on a channel we did not subscribe to")
    }
}

/// Whether the `n`th malformed message gets a log line: someone else publishing junk
/// on our channels must not flood the log.
pub(super) fn worth_logging(n: u64) -> bool {
    n <= 10 || n.is_power_of_two()
}

/// Reads the subscription connection until it closes, then reports the loss.
pub(super) struct Reader {
    pub emitter: Rc<Emitter>,
    pub interest: Interest,
    pub names: Rc<Names>,
    pub node_channel: String,
    pub stats: Arc<BackplaneStats>,
    pub lost: UnboundedSender<u64>,
    pub gen: u64,
    /// Malformed messages so far (kept across reconnects, for the log's rate limit).
    pub bad: Rc<Cell<u64>>,
}

impl Reader {
    pub async fn run(self, mut stream: PubSubStream) {
        while let Some(msg) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            self.handle(msg.get_channel_name(), msg.get_payload_bytes());
        }
        let _ = self.lost.send(self.gen);
    }

    fn handle(&self, channel: &str, raw: &[u8]) {
        let heard = interpret(
            &self.names,
            &self.node_channel,
            &self.interest.borrow(),
            channel,
            raw,
        );
        match heard {
            Heard::Event(ev) => {
                BackplaneStats::inc(&self.stats.received_total);
                self.emitter.emit(ev);
            }
            Heard::Stale => {}
            Heard::Bad(why) => {
                BackplaneStats::inc(&self.stats.errors_total);
                let n = self.bad.get() + 1;
                self.bad.set(n);
                if worth_logging(n) {
                    warn!(
                        channel,
                        reason = why,
                        total = n,
                        "backplane: dropped a malformed message"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn hear(channel: &str, raw: &[u8]) -> Heard {
        let names = Names::new("p");
        let interest = HashMap::from([("room".to_string(), 1), ("a:b".to_string(), 2)]);
        interpret(&names, "p:node:4", &interest, channel, raw)
    }

    #[test]
    fn topic_messages_become_events_for_topics_of_interest() {
        assert_eq!(
            hear("p:topic:a:b", b"rc1 m 7 -\nhi"),
            Heard::Event(Inbound::Message {
                topic: "a:b".into(),
                origin: Some(7),
                seq: None,
                payload: Bytes::from_static(b"hi"),
            })
        );
        assert_eq!(
            hear("p:topic:room", b"rc1 l 3 5 12\nbob"),
            Heard::Event(Inbound::Member {
                room: "room".into(),
                conn: 3,
                joined: false,
                members: 5,
                seq: Some(12),
                cluster: true,
                payload: Bytes::from_static(b"bob"),
            })
        );
        assert_eq!(
            hear("p:topic:room", b"rc1 c 2 13\n"),
            Heard::Event(Inbound::Count {
                room: "room".into(),
                members: 2,
                seq: 13
            })
        );
    }

    #[test]
    fn topics_without_interest_are_stale_even_when_malformed() {
        assert_eq!(hear("p:topic:gone", b"rc1 m - -\nx"), Heard::Stale);
        assert_eq!(hear("p:topic:gone", b"junk"), Heard::Stale);
    }

    #[test]
    fn pushes_only_on_the_node_channel() {
        assert_eq!(
            hear("p:node:4", b"rc1 p 9 -\nx"),
            Heard::Event(Inbound::Push {
                conn: 9,
                origin: None,
                payload: Bytes::from_static(b"x")
            })
        );
        assert_eq!(
            hear("p:topic:room", b"rc1 p 9 -\nx"),
            Heard::Bad("push on a topic channel")
        );
        assert_eq!(
            hear("p:node:4", b"rc1 m - -\nx"),
            Heard::Bad("not a push on the node channel")
        );
        assert!(matches!(hear("p:node:4", b"garbage"), Heard::Bad(_)));
        assert!(matches!(hear("p:topic:room", b"garbage"), Heard::Bad(_)));
        assert_eq!(
            hear("p:node:5", b"rc1 p 9 -\nx"),
            Heard::Bad("message on a channel we did not subscribe to")
        );
    }

    #[test]
    fn malformed_message_log_is_rate_limited() {
        let logged: Vec<u64> = (1..=70).filter(|&n| worth_logging(n)).collect();
        assert_eq!(logged, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64]);
    }
}
