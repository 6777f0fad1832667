//! This node's standing in the cluster: claiming its node id, the liveness heartbeat
//! (with reaping of dead nodes), re-registering after its liveness lapsed (resync) and
//! retiring cleanly on shutdown. All of it goes through the SYNC / HEARTBEAT / REAP
//! scripts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::time::{sleep, Instant};
use tracing::{error, info, warn};

use super::config::redact_url;
use super::local::Room;
use super::scripts;
use super::session::timed;
use super::worker::Worker;
use super::BackplaneError;

/// The node id an `INCR` of the allocation counter gives: 1..=max, wrapping.
pub(super) fn node_from_seq(seq: i64, max: u16) -> u16 {
    ((seq - 1).rem_euclid(i64::from(max)) + 1) as u16
}

/// The SYNC script call: claim `node` with `token` and replace its counts and presence
/// entries by `members` (or, retiring, remove them all with the liveness key).
pub(super) fn sync_cmd(
    prefix: &str,
    node: u16,
    token: &str,
    ttl_ms: u64,
    retire: bool,
    members: &HashMap<String, Room>,
) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(scripts::SYNC)
        .arg(0)
        .arg(prefix)
        .arg(node)
        .arg(token)
        .arg(ttl_ms)
        .arg(if retire { 1 } else { 0 });
    if !retire {
        for (room, r) in members {
            c.arg(room).arg(r.count).arg(r.conns.len());
            for (conn, (payload, _)) in &r.conns {
                c.arg(*conn).arg(&payload[..]);
            }
        }
    }
    c
}

/// What the HEARTBEAT script said about our liveness key.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Beat {
    Refreshed,
    /// It had expired (we may have been reaped): register everything again.
    Lapsed,
    /// Another instance holds our node id.
    Taken,
}

pub(super) fn beat(reply: i64) -> Beat {
    match reply {
        -1 => Beat::Taken,
        0 => Beat::Lapsed,
        _ => Beat::Refreshed,
    }
}

impl Worker {
    /// Picks (auto) or claims (fixed) the node id with this instance's token.
    pub(super) async fn claim_node_id(
        &mut self,
        cmd: &mut MultiplexedConnection,
    ) -> Result<(), BackplaneError> {
        let url = redact_url(&self.cfg.url);
        let conn_err = |reason: String| BackplaneError::Connect {
            url: url.clone(),
            reason,
        };
        if self.cfg.node_id.is_none() {
            // Ids wrap after max_node_id starts; skip any still held by a live node.
            for _ in 0..self.cfg.max_node_id.min(256) {
                let seq: i64 = timed(
                    self.cfg.response_timeout,
                    redis::cmd("INCR")
                        .arg(self.names.node_seq_key())
                        .query_async(cmd),
                )
                .await
                .map_err(conn_err)?;
                self.node = node_from_seq(seq, self.cfg.max_node_id);
                if self.sync(cmd, false).await.map_err(conn_err)? >= 0 {
                    return Ok(());
                }
            }
            return Err(conn_err("no free node id found".into()));
        }
        // A fixed id may still be held by our own previous (crashed) instance: its key
        // expires within node_ttl.
        let deadline = Instant::now() + self.cfg.node_ttl + self.cfg.heartbeat;
        loop {
            if self.sync(cmd, false).await.map_err(conn_err)? >= 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BackplaneError::NodeIdInUse { node: self.node });
            }
            info!(
                node = self.node,
                "backplane: node id still held by another instance; waiting"
            );
            sleep(self.cfg.heartbeat / 2).await;
        }
    }

    /// Runs the SYNC script: claim the id and replace (or, retiring, remove) our counts.
    pub(super) async fn sync(
        &self,
        cmd: &mut MultiplexedConnection,
        retire: bool,
    ) -> Result<i64, String> {
        let c = sync_cmd(
            &self.names.prefix,
            self.node,
            &self.token,
            self.cfg.node_ttl.as_millis() as u64,
            retire,
            &self.local.members,
        );
        timed(self.cfg.response_timeout, c.query_async(cmd)).await
    }

    /// Our liveness key lapsed (we may have been reaped): register everything again.
    pub(super) async fn resync(&mut self) {
        let Some(mut cmd) = self.live.as_ref().map(|l| l.cmd.clone()) else {
            return;
        };
        match self.sync(&mut cmd, false).await {
            Ok(-1) => self.mark_down(format!("node id {} taken by another instance", self.node)),
            Ok(_) => {
                self.resync_needed = false;
                info!(node = self.node, "backplane: re-registered member counts");
            }
            Err(e) => self.mark_down(format!("re-registering member counts failed: {e}")),
        }
    }

    /// Refreshes our liveness key, reaps dead nodes, and checks that the subscription
    /// connection still answers.
    pub(super) async fn heartbeat(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let mut cmd = live.cmd.clone();
        let mut sink = live.sink.clone();
        let ttl = self.cfg.node_ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(scripts::HEARTBEAT)
            .arg(0)
            .arg(&self.names.prefix)
            .arg(self.node)
            .arg(&self.token)
            .arg(ttl)
            .cmd("EVAL")
            .arg(scripts::REAP)
            .arg(0)
            .arg(&self.names.prefix);
        let limit = self.cfg.response_timeout;
        match timed(limit, pipe.query_async::<(i64, i64)>(&mut cmd)).await {
            Err(e) => return self.mark_down(format!("heartbeat failed: {e}")),
            Ok((hb, reaped)) => {
                match beat(hb) {
                    Beat::Taken => {
                        error!(
                            node = self.node,
                            "backplane: another instance took this node id"
                        );
                        let reason = format!("node id {} taken by another instance", self.node);
                        return self.mark_down(reason);
                    }
                    Beat::Lapsed => {
                        warn!(
                            node = self.node,
                            "backplane: liveness key had expired; re-registering"
                        );
                        self.resync_needed = true;
                    }
                    Beat::Refreshed => {}
                }
                if reaped > 0 {
                    info!(reaped, "backplane: removed the member counts of dead nodes");
                }
            }
        }
        // The subscription connection can die silently (no FIN); make it answer too.
        if let Err(e) = timed(limit, sink.ping::<Value>()).await {
            self.mark_down(format!("subscription connection ping failed: {e}"));
        }
    }

    /// Clean exit: remove our counts and liveness key while we still can.
    pub(super) async fn retire(&mut self) {
        if let Some(live) = self.live.take() {
            let mut cmd = live.cmd.clone();
            match self.sync(&mut cmd, true).await {
                Ok(_) => info!(node = self.node, "backplane: left the cluster cleanly"),
                Err(e) => warn!(
                    node = self.node,
                    "backplane: could not remove member counts ({e}); they expire with the node ttl"
                ),
            }
            live.reader.abort();
        }
        self.shared.stats.up.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::testutil::{args, b};

    #[test]
    fn allocated_ids_wrap_within_1_to_max() {
        assert_eq!(node_from_seq(1, 1023), 1);
        assert_eq!(node_from_seq(1023, 1023), 1023);
        assert_eq!(node_from_seq(1024, 1023), 1);
        assert_eq!(node_from_seq(2050, 1023), 4);
        assert_eq!(node_from_seq(7, 1), 1);
        // A counter someone reset below zero still gives a valid id.
        assert_eq!(node_from_seq(-3, 10), 7);
    }

    #[test]
    fn sync_registers_every_local_count_and_payload_and_retire_none() {
        let room = Room {
            count: 3,
            // Conn 8 joined twice: one presence entry.
            conns: HashMap::from([(8, (b("alice"), 2)), (9, (b("bob"), 1))]),
        };
        let members = HashMap::from([("room".to_string(), room)]);
        let a = args(&sync_cmd("p", 4, "tok", 1500, false, &members));
        assert_eq!(a[0], b"EVAL");
        assert_eq!(a[1], scripts::SYNC.as_bytes());
        let head: Vec<&[u8]> = a[2..11].iter().map(|v| &v[..]).collect();
        assert_eq!(
            head,
            [
                &b"0"[..],
                b"p",
                b"4",
                b"tok",
                b"1500",
                b"0",
                b"room",
                b"3",
                b"2"
            ]
        );
        // The (conn, payload) pairs, in whatever order the map gives them.
        let mut pairs: Vec<(&[u8], &[u8])> =
            a[11..].chunks(2).map(|p| (&p[0][..], &p[1][..])).collect();
        pairs.sort();
        assert_eq!(pairs, [(&b"8"[..], &b"alice"[..]), (b"9", b"bob")]);
        let r = args(&sync_cmd("p", 4, "tok", 1500, true, &members));
        assert_eq!(r.len(), 8, "retire sends no counts");
        assert_eq!(r[7], b"1");
    }

    #[test]
    fn heartbeat_replies() {
        assert_eq!(beat(1), Beat::Refreshed);
        assert_eq!(beat(0), Beat::Lapsed);
        assert_eq!(beat(-1), Beat::Taken);
    }
}
