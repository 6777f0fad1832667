//! Helpers for the backplane's unit tests.

/// The arguments of a command, its name first.
pub(super) fn args(cmd: &redis::Cmd) -> Vec<Vec<u8>> {
    cmd.args_iter()
        .map(|a| match a {
            redis::Arg::Simple(d) => d.to_vec(),
            _ => b"<cursor>".to_vec(),
        })
        .collect()
}

use bytes::Bytes;

use super::local::{Effect, Presence};

pub(super) fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// A message to topic `t` from conn 5.
pub(super) fn publish(room: bool) -> Effect {
    Effect::Publish {
        topic: "t".into(),
        origin: Some(5),
        room,
        payload: b("x"),
    }
}

/// A push to conn 8 on `node`, from conn 5.
pub(super) fn push(node: u16) -> Effect {
    Effect::Push {
        node,
        conn: 8,
        origin: Some(5),
        payload: b("x"),
    }
}

/// Conn 8 ("alice") joining or leaving room `r`, `count` local members after it.
pub(super) fn member(joined: bool, count: u64) -> Effect {
    Effect::Member {
        room: "r".into(),
        conn: 8,
        joined,
        count,
        payload: b("alice"),
        presence: if joined {
            Presence::Set
        } else {
            Presence::Remove
        },
    }
}
