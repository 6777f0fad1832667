//! The chat protocol of the `/chat` route (see docs/protocol.md).
//!
//! An app on the public API, like any user's: rooms are presence channels
//! (`Ctx::join` with the member's name as its payload), messages are
//! channel events (`Ctx::publish_event`), and [`render_event`] is the
//! renderer the engine calls once per event on the room's owner shard, with
//! the room's sequence number and member count. This module is the
//! protocol: parsing and checking client commands, rendering server events,
//! and the compact payloads events carry (on the Redis backplane too).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::api::{Ctx, Frame, Message};
use crate::channel::{ChannelEvent, EventKind};
use crate::config::Settings;
use crate::id::ConnId;

/// Topic prefix of chat rooms, keeping them apart from other topics.
pub(crate) const ROOM_PREFIX: &str = "chat:";

/// Per-field limits (bytes), from the `chat-max-*` settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub name: usize,
    pub room: usize,
    pub text: usize,
    pub rooms: usize,
}

impl Limits {
    pub(crate) fn from_settings(s: &Settings) -> Limits {
        Limits {
            name: s.chat_max_name,
            room: s.chat_max_room,
            text: s.chat_max_text,
            rooms: s.chat_max_rooms,
        }
    }
}

/// A valid client command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Join { room: String, name: String },
    Message { room: String, text: String },
    Leave { room: String },
    Direct { to: ConnId, text: String },
}

/// Parses one text frame from a client. `Err` is the readable reason sent back
/// in an error event.
pub(crate) fn parse(text: &str, limits: &Limits) -> Result<Command, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err(
            "expected a JSON object like {\"type\":\"join\",\"room\":\"lobby\",\"name\":\"ann\"}"
                .into(),
        );
    };
    let kind = string_field(&obj, "type")?;
    match kind {
        "join" => {
            let room = bounded(&obj, "room", limits.room)?;
            let name = bounded(&obj, "name", limits.name)?;
            Ok(Command::Join { room, name })
        }
        "message" => Ok(Command::Message {
            room: bounded(&obj, "room", limits.room)?,
            text: text_field(&obj, limits)?,
        }),
        "leave" => Ok(Command::Leave {
            room: bounded(&obj, "room", limits.room)?,
        }),
        "direct" => Ok(Command::Direct {
            to: conn_id_field(&obj, "to")?,
            text: text_field(&obj, limits)?,
        }),
        other => Err(format!(
            "unknown type {:?} (expected join, message, leave or direct)",
            truncate(other, 32)
        )),
    }
}

fn string_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match obj.get(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("field `{key}` must be a string")),
    }
}

/// The `text` of a message (may be empty), at most `limits.text` bytes.
fn text_field(obj: &Map<String, Value>, limits: &Limits) -> Result<String, String> {
    let text = string_field(obj, "text")?;
    if text.len() > limits.text {
        return Err(format!("text is longer than {} bytes", limits.text));
    }
    Ok(text.to_string())
}

/// A connection id as the join event shows it: a decimal string (ids do not
/// fit a JavaScript number), or a JSON integer.
fn conn_id_field(obj: &Map<String, Value>, key: &str) -> Result<ConnId, String> {
    let bad =
        || format!("field `{key}` must be a connection id like \"12345\" (from a join event)");
    match obj.get(key) {
        None => Err(format!("missing field `{key}`")),
        Some(Value::String(s)) => s.parse().map(ConnId::from_u64).map_err(|_| bad()),
        Some(Value::Number(n)) => n.as_u64().map(ConnId::from_u64).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// A non-empty string field of at most `max` bytes.
fn bounded(obj: &Map<String, Value>, key: &str, max: usize) -> Result<String, String> {
    let s = string_field(obj, key)?;
    if s.is_empty() {
        return Err(format!("field `{key}` must not be empty"));
    }
    if s.len() > max {
        return Err(format!("{key} is longer than {max} bytes"));
    }
    Ok(s.to_string())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Serializes a connection id as a decimal string: ids use all 64 bits,
/// beyond what a JavaScript number holds exactly.
struct IdText(u64);

impl Serialize for IdText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// A room event as sent to members; rendered once per event by the room's
/// owner shard and shared by every recipient.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<IdText>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<usize>,
    seq: u64,
    ts: u64,
}

/// What happened in a room, as the owner numbered it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RoomEvent<'a> {
    /// `id`: the joiner's connection, for direct messages.
    Join {
        name: &'a str,
        id: ConnId,
    },
    Message {
        name: &'a str,
        text: &'a str,
    },
    Leave {
        name: &'a str,
    },
    /// Cluster mode: the member count changed without a join or leave (a
    /// node died, or re-registered its members after a Redis outage).
    Members,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Renders `event` for `room` as JSON text.
pub(crate) fn render(room: &str, event: &RoomEvent<'_>, seq: u64, members: usize) -> String {
    let mut ev = Event {
        kind: "members",
        room,
        name: None,
        id: None,
        text: None,
        members: Some(members),
        seq,
        ts: now_ms(),
    };
    match event {
        RoomEvent::Join { name, id } => {
            ev.kind = "join";
            ev.name = Some(name);
            ev.id = Some(IdText(id.as_u64()));
        }
        RoomEvent::Message { name, text } => {
            ev.kind = "message";
            ev.name = Some(name);
            ev.text = Some(text);
            ev.members = None;
        }
        RoomEvent::Leave { name } => {
            ev.kind = "leave";
            ev.name = Some(name);
        }
        RoomEvent::Members => {}
    }
    serde_json::to_string(&ev).expect("serializing strings and numbers cannot fail")
}

/// The engine's renderer: a room's channel event as its JSON frame. Other
/// channels, and payloads this module did not write, render nothing.
pub(crate) fn render_event(ev: &ChannelEvent<'_>) -> Option<Frame> {
    let room = ev.channel.strip_prefix(ROOM_PREFIX)?;
    let event = match ev.kind {
        EventKind::Join { conn, payload } => {
            wire::parse_name(payload).map(|name| RoomEvent::Join { name, id: conn })
        }
        EventKind::Leave { payload, .. } => {
            wire::parse_name(payload).map(|name| RoomEvent::Leave { name })
        }
        EventKind::Message { payload, .. } => {
            wire::parse_message(payload).map(|(name, text)| RoomEvent::Message { name, text })
        }
        EventKind::Members => Some(RoomEvent::Members),
    };
    let Some(event) = event else {
        // Another program wrote to the room's Redis channel, or a node
        // runs an incompatible version.
        tracing::warn!(
            room,
            "chat: dropped a room event whose payload does not parse"
        );
        return None;
    };
    Some(Frame::text(&render(room, &event, ev.seq, ev.members)))
}

/// `{"type":"direct","from":ID,"text":T,"ts":MS}`, for the addressee.
pub(crate) fn direct(from: ConnId, text: &str) -> String {
    #[derive(Serialize)]
    struct Direct<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        from: IdText,
        text: &'a str,
        ts: u64,
    }
    serde_json::to_string(&Direct {
        kind: "direct",
        from: IdText(from.as_u64()),
        text,
        ts: now_ms(),
    })
    .expect("serializing strings and numbers cannot fail")
}

/// Room event payloads, as the engine carries them (to the owner shard, and
/// on the Redis backplane to other nodes).
/// A message is `<name length>:<name><text>` (names may hold any character);
/// a join or leave is the bare name (the backplane carries the connection
/// id, the count and the sequence number itself).
pub(crate) mod wire {
    use bytes::Bytes;

    pub(crate) fn message(name: &str, text: &str) -> Bytes {
        let mut v = Vec::with_capacity(name.len() + text.len() + 4);
        v.extend_from_slice(name.len().to_string().as_bytes());
        v.push(b':');
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(text.as_bytes());
        v.into()
    }

    /// `None` if `raw` is not what [`message`] writes.
    pub(crate) fn parse_message(raw: &[u8]) -> Option<(&str, &str)> {
        let colon = raw.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&raw[..colon]).ok()?.parse().ok()?;
        let rest = std::str::from_utf8(&raw[colon + 1..]).ok()?;
        Some((rest.get(..len)?, rest.get(len..)?))
    }

    pub(crate) fn name(name: &str) -> Bytes {
        Bytes::copy_from_slice(name.as_bytes())
    }

    pub(crate) fn parse_name(raw: &[u8]) -> Option<&str> {
        std::str::from_utf8(raw).ok()
    }
}

/// `{"type":"error","error":reason}`.
pub(crate) fn error(reason: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        error: &'a str,
    }
    serde_json::to_string(&Error {
        kind: "error",
        error: reason,
    })
    .expect("serializing strings cannot fail")
}

/// Handles one message on a `/chat` connection. Problems are answered to
/// the sender only, as error events; the connection stays open.
pub(crate) fn on_message<D: Default + 'static>(
    ctx: &mut Ctx<'_, D>,
    conn: ConnId,
    msg: Message<'_>,
    limits: &Limits,
) {
    let Some(text) = msg.as_text() else {
        ctx.push(
            conn,
            error("binary messages are not supported: send JSON text"),
        );
        return;
    };
    if let Err(reason) = parse(text, limits).and_then(|cmd| apply(ctx, conn, cmd, limits)) {
        ctx.push(conn, error(&reason));
    }
}

/// The engine could not deliver what `conn` sent: tell it, as an error event.
pub(crate) fn on_notice<D: Default + 'static>(ctx: &mut Ctx<'_, D>, conn: ConnId, text: &str) {
    ctx.push(conn, error(text));
}

fn apply<D: Default + 'static>(
    ctx: &mut Ctx<'_, D>,
    conn: ConnId,
    cmd: Command,
    limits: &Limits,
) -> Result<(), String> {
    let room_topic = |room: &str| format!("{ROOM_PREFIX}{room}");
    match cmd {
        Command::Join { room, name } => {
            let topic = room_topic(&room);
            if ctx.is_subscribed(conn, &topic) {
                return Err(format!("already in room {room:?}"));
            }
            let rooms = ctx
                .subscriptions(conn)
                .filter(|(_, member)| *member)
                .count();
            if rooms >= limits.rooms {
                return Err(format!("too many rooms: at most {} at once", limits.rooms));
            }
            ctx.join(conn, &topic, wire::name(&name));
        }
        Command::Message { room, text } => {
            let topic = room_topic(&room);
            let name = ctx.presence(conn, &topic).and_then(|p| wire::parse_name(p));
            let Some(name) = name else {
                return Err(format!("not in room {room:?}: join it first"));
            };
            let payload = wire::message(name, &text);
            ctx.publish_event(&topic, Some(conn), payload);
        }
        Command::Leave { room } => {
            let topic = room_topic(&room);
            if ctx.presence(conn, &topic).is_none() {
                return Err(format!("not in room {room:?}"));
            }
            ctx.unsubscribe(conn, &topic);
        }
        Command::Direct { to, text } => {
            if let Err(e) = ctx.push_as(conn, to, direct(conn, &text)) {
                return Err(format!("connection {}: {e}", to.as_u64()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        name: 8,
        room: 8,
        text: 16,
        rooms: 2,
    };

    #[test]
    fn commands() {
        assert_eq!(
            parse(r#"{"type":"join","room":"a","name":"ann"}"#, &L),
            Ok(Command::Join {
                room: "a".into(),
                name: "ann".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"message","room":"a","text":""}"#, &L),
            Ok(Command::Message {
                room: "a".into(),
                text: "".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"leave","room":"a"}"#, &L),
            Ok(Command::Leave { room: "a".into() })
        );
    }

    #[test]
    fn errors_are_readable() {
        assert!(parse("{", &L).unwrap_err().starts_with("invalid JSON"));
        assert!(parse("[1]", &L)
            .unwrap_err()
            .starts_with("expected a JSON object"));
        assert_eq!(
            parse(r#"{"room":"a"}"#, &L).unwrap_err(),
            "missing field `type`"
        );
        assert!(parse(r#"{"type":"dance"}"#, &L)
            .unwrap_err()
            .starts_with("unknown type \"dance\""));
        assert_eq!(
            parse(r#"{"type":"join","room":"a"}"#, &L).unwrap_err(),
            "missing field `name`"
        );
        assert_eq!(
            parse(r#"{"type":"join","room":5,"name":"x"}"#, &L).unwrap_err(),
            "field `room` must be a string"
        );
        assert_eq!(
            parse(r#"{"type":"join","room":"abcdefghi","name":"x"}"#, &L).unwrap_err(),
            "room is longer than 8 bytes"
        );
        assert_eq!(
            parse(
                r#"{"type":"message","room":"a","text":"01234567890123456"}"#,
                &L
            )
            .unwrap_err(),
            "text is longer than 16 bytes"
        );
    }

    #[test]
    fn events_render_as_json() {
        let s = render(
            "r",
            &RoomEvent::Message {
                name: "ann",
                text: "hi \"x\"",
            },
            3,
            2,
        );
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["text"], "hi \"x\"");
        assert_eq!(v["seq"], 3);
        assert!(v.get("members").is_none());
        // Ids are strings: they use all 64 bits, beyond a JavaScript number.
        let id = ConnId::new(1023, 3, 77).unwrap();
        let join = RoomEvent::Join { name: "b", id };
        let j: Value = serde_json::from_str(&render("r", &join, 1, 5)).unwrap();
        assert_eq!(j["members"], 5);
        assert_eq!(j["id"], id.as_u64().to_string());
        let c: Value = serde_json::from_str(&render("r", &RoomEvent::Members, 9, 4)).unwrap();
        assert_eq!(
            c,
            serde_json::json!({"type":"members","room":"r","members":4,"seq":9,"ts":c["ts"]})
        );
        let d: Value = serde_json::from_str(&direct(id, "psst")).unwrap();
        assert_eq!((&d["type"], &d["text"]), (&"direct".into(), &"psst".into()));
        assert_eq!(d["from"], id.as_u64().to_string());
        let e: Value = serde_json::from_str(&error("nope")).unwrap();
        assert_eq!(e, serde_json::json!({"type":"error","error":"nope"}));
    }

    #[test]
    fn the_renderer_turns_room_events_into_frames() {
        let id = ConnId::new(2, 1, 9).unwrap();
        let ev = |kind| ChannelEvent {
            channel: "chat:lobby",
            seq: 7,
            members: 3,
            kind,
        };
        let json = |f: Frame| -> Value { serde_json::from_slice(&f.0[2..]).unwrap() };
        let join = render_event(&ev(EventKind::Join {
            conn: id,
            payload: b"ann",
        }))
        .unwrap();
        let j = json(join);
        assert_eq!(
            (&j["type"], &j["room"], &j["name"]),
            (&"join".into(), &"lobby".into(), &"ann".into())
        );
        assert_eq!((&j["seq"], &j["members"]), (&7.into(), &3.into()));
        assert_eq!(j["id"], id.as_u64().to_string());
        let payload = wire::message("ann", "hi");
        let m = json(
            render_event(&ev(EventKind::Message {
                origin: Some(id),
                payload: &payload,
            }))
            .unwrap(),
        );
        assert_eq!((&m["name"], &m["text"]), (&"ann".into(), &"hi".into()));
        let l = json(
            render_event(&ev(EventKind::Leave {
                conn: id,
                payload: b"ann",
            }))
            .unwrap(),
        );
        assert_eq!(l["type"], "leave");
        assert_eq!(
            json(render_event(&ev(EventKind::Members)).unwrap())["type"],
            "members"
        );
        // Not a room, or a payload this module did not write: nothing.
        let other = ChannelEvent {
            channel: "route:broadcast",
            ..ev(EventKind::Members)
        };
        assert!(render_event(&other).is_none());
        let bad = EventKind::Message {
            origin: None,
            payload: b"no length",
        };
        assert!(render_event(&ev(bad)).is_none());
    }

    #[test]
    fn direct_command() {
        let id = u64::MAX - 5;
        let cmd = format!(r#"{{"type":"direct","to":"{id}","text":"hi"}}"#);
        assert_eq!(
            parse(&cmd, &L),
            Ok(Command::Direct {
                to: ConnId::from_u64(id),
                text: "hi".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"direct","to":42,"text":""}"#, &L),
            Ok(Command::Direct {
                to: ConnId::from_u64(42),
                text: "".into()
            })
        );
        for bad in [
            r#"{"type":"direct","to":"bob","text":"x"}"#,
            r#"{"type":"direct","to":-1,"text":"x"}"#,
            r#"{"type":"direct","text":"x"}"#,
        ] {
            assert!(parse(bad, &L).unwrap_err().contains("`to`"), "{bad}");
        }
        let long = r#"{"type":"direct","to":"1","text":"01234567890123456"}"#;
        assert_eq!(parse(long, &L).unwrap_err(), "text is longer than 16 bytes");
    }

    #[test]
    fn backplane_payloads_round_trip() {
        for (name, text) in [("ann", "hi"), ("a:b\n", "x:y"), ("é", ""), ("n", "é\u{0}")] {
            let raw = wire::message(name, text);
            let (n, t) = wire::parse_message(&raw).unwrap();
            assert_eq!((n, t), (name, text));
        }
        for bad in [&b"ann"[..], b"x:ann", b"9:ann", b"1:\xff", b":a"] {
            assert!(wire::parse_message(bad).is_none(), "{bad:?}");
        }
        assert_eq!(wire::parse_name(&wire::name("bob")), Some("bob"));
        assert!(wire::parse_name(b"\xff").is_none());
    }
}
