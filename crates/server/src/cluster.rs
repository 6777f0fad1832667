//! Cluster mode (`--redis`): the server's side of the Redis backplane
//! (`crate::backplane`, design in docs/scaling.md).
//!
//! [`start`] maps the `--redis*` settings onto a [`BackplaneConfig`] and
//! starts the backplane before the shards, because the node id it settles on
//! goes into every connection id. Outbound, shards call the [`Backplane`]
//! handle, which only enqueues. Inbound, events arrive on the backplane
//! thread and [`Router::route`] turns each into one mail to the shard that
//! handles it: topic events to the topic's owner shard (one FIFO mailbox per
//! backplane→shard pair, which keeps Redis's order), pushes to the shard of
//! the addressed connection. So a shard never waits for Redis.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ringcast_reactor::Handle;

use crate::api::Frame;
use crate::backplane::{
    Answer, Backplane, BackplaneConfig, BackplaneStats, FailedOp, Inbound, Query,
};
use crate::channel::{owner, remote_topic, ChannelMail};
use crate::config::Settings;
use crate::id::{ConnId, MAX_NODE};
use crate::route::Router as IdRouter;
use crate::shard::Mail;

/// How long a cluster-wide query waits for Redis.
const QUERY_WAIT: Duration = Duration::from_secs(2);

fn unexpected(a: Answer) -> io::Error {
    io::Error::other(format!(
        "cluster query got an answer to another question: {a:?}"
    ))
}

/// How long the backplane thread retries a full shard mailbox before it
/// drops the event (counted, logged). A mailbox stays full this long only
/// when its shard is stuck; meanwhile Redis buffers for this node.
const MAIL_WAIT: Duration = Duration::from_secs(1);

/// The backplane of a node in cluster mode, and where its events go.
pub(crate) struct Link {
    pub backplane: Backplane,
    router: Arc<OnceLock<Router>>,
    queries: Arc<Queries>,
}

/// Cluster-wide queries waiting for their answer from the backplane thread.
#[derive(Default)]
struct Queries {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, SyncSender<Answer>>>,
}

impl Queries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SyncSender<Answer>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On the backplane thread: hands an answer to whoever still waits.
    fn answer(&self, tag: u64, answer: Answer) {
        if let Some(tx) = self.lock().remove(&tag) {
            let _ = tx.try_send(answer);
        }
    }
}

/// Starts the backplane if `--redis` is set. Redis unreachable (without
/// `--redis-optional`), a bad setting or a node id in use is an error whose
/// text says what to do.
pub(crate) fn start(s: &Settings) -> io::Result<Option<Link>> {
    if s.redis.is_empty() {
        return Ok(None);
    }
    let router = Arc::new(OnceLock::<Router>::new());
    let queries = Arc::new(Queries::default());
    let (events, answers) = (router.clone(), queries.clone());
    let backplane = Backplane::start(config(s), move |ev| {
        if let Inbound::Answer { tag, answer } = ev {
            return answers.answer(tag, answer);
        }
        // Before the shards run only `Up` can arrive; nothing to tell them.
        if let Some(r) = events.get() {
            r.route(ev);
        }
    })
    .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Some(Link {
        backplane,
        router,
        queries,
    }))
}

fn config(s: &Settings) -> BackplaneConfig {
    let mut cfg = BackplaneConfig::new(s.redis.as_str());
    cfg.prefix = s.redis_prefix.clone();
    cfg.node_id = (s.node_id > 0).then_some(s.node_id);
    cfg.max_node_id = MAX_NODE;
    cfg.optional = s.redis_optional;
    cfg.queue_capacity = s.redis_queue;
    cfg.node_ttl = s.redis_node_ttl;
    cfg.heartbeat = s.redis_node_ttl / 5;
    cfg
}

impl Link {
    /// This node's id, settled with Redis.
    pub fn node_id(&self) -> u16 {
        self.backplane.node_id()
    }

    /// The backplane's counters, for `/metrics`.
    pub fn metrics(&self) -> Box<dyn Fn(&mut String) + Send + Sync> {
        let stats = self.backplane.stats();
        Box::new(move |out| stats.render(out))
    }

    /// Asks Redis, waiting up to `wait` for the answer (for threads that
    /// may block: never a shard).
    pub fn query(&self, q: Query, wait: Duration) -> io::Result<Answer> {
        let tag = self.queries.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(1);
        self.queries.lock().insert(tag, tx);
        if let Err(e) = self.backplane.query(tag, q) {
            self.queries.lock().remove(&tag);
            return Err(io::Error::other(format!("cluster query not sent: {e}")));
        }
        let answer = rx.recv_timeout(wait);
        self.queries.lock().remove(&tag);
        match answer {
            Ok(Answer::Failed { reason, .. }) => {
                Err(io::Error::other(format!("cluster query failed: {reason}")))
            }
            Ok(a) => Ok(a),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("Redis did not answer the cluster query within {wait:?}"),
            )),
        }
    }

    /// The presence members of `room` on every live node.
    pub fn members(&self, room: &str) -> io::Result<Vec<(ConnId, Bytes)>> {
        match self.query(Query::Members { room: room.into() }, QUERY_WAIT)? {
            Answer::Members { members, .. } => Ok(members
                .into_iter()
                .map(|p| (ConnId::from_u64(p.conn), p.payload))
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Presence channels starting with `prefix` with their cluster-wide
    /// member counts, sorted by name.
    pub fn channels(&self, prefix: &str) -> io::Result<Vec<(String, usize)>> {
        let q = Query::Rooms {
            prefix: prefix.into(),
        };
        match self.query(q, QUERY_WAIT)? {
            Answer::Rooms { rooms, .. } => Ok(rooms
                .into_iter()
                .map(|r| (r.room, r.members as usize))
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    /// The cluster-wide presence member count of `room`.
    pub fn count(&self, room: &str) -> io::Result<usize> {
        match self.query(Query::Count { room: room.into() }, QUERY_WAIT)? {
            Answer::Count { members, .. } => Ok(members as usize),
            other => Err(unexpected(other)),
        }
    }

    /// The shards run: from now on backplane events reach them.
    pub fn connect(&self, reactor: Handle<Mail>) {
        let stats = self.backplane.stats();
        let node = self.backplane.node_id();
        let _ = self.router.set(Router {
            reactor,
            node,
            stats,
            stopped: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
    }

    /// After the shards have stopped (their last leaves are queued): leave
    /// the cluster cleanly, so others drop this node's members at once.
    pub fn shutdown(&self, wait: Duration) {
        if let Some(r) = self.router.get() {
            // Stopped shards take no mail; do not retry for them.
            r.stopped.store(true, Ordering::Relaxed);
        }
        if !self.backplane.shutdown(wait) {
            tracing::warn!(
                "backplane did not stop within {wait:?}; this node's members expire with its ttl"
            );
        }
    }
}

/// Runs on the backplane thread.
struct Router {
    reactor: Handle<Mail>,
    node: u16,
    stats: Arc<BackplaneStats>,
    stopped: AtomicBool,
    /// Events dropped because a mailbox stayed full (for the log).
    dropped: AtomicU64,
}

impl Router {
    fn route(&self, ev: Inbound) {
        let shards = self.reactor.shards();
        let router = IdRouter {
            node: self.node,
            shards,
            here: None,
        };
        match ev {
            Inbound::Push { conn, payload, .. } => {
                let to = ConnId::from_u64(conn);
                let Some(frame) = Frame::from_wire(payload) else {
                    tracing::warn!(conn, "backplane: dropped a push that is not one frame");
                    return BackplaneStats::inc(&self.stats.errors_total);
                };
                if let Some(shard) = router.local_shard(to) {
                    self.mail(shard, Mail::Push { to, frame });
                }
            }
            // Only pushes sent with `push_as` carry their sender: tell it.
            Inbound::Failed {
                op: FailedOp::Push { conn, .. },
                origin: Some(origin),
                reason,
                ..
            } => {
                let to = ConnId::from_u64(origin);
                if let Some(shard) = router.local_shard(to) {
                    let text = format!("direct message to {conn} not delivered: {reason}").into();
                    self.mail(shard, Mail::Notice { to, text });
                }
            }
            ev => {
                // Up, Down, Barrier and failed pushes without a sender are
                // logged and counted by the backplane itself.
                if let Some(shard) = remote_topic(&ev).map(|t| owner(t, shards)) {
                    self.mail(shard, Mail::Channel(ChannelMail::Remote(Box::new(ev))));
                }
            }
        }
    }

    /// Hands `m` to `shard`, waiting a little while its mailbox is full.
    fn mail(&self, shard: usize, m: Mail) {
        let stopped = || self.stopped.load(Ordering::Relaxed);
        let pause = Duration::from_micros(100);
        if crate::shard::mail_waiting(&self.reactor, shard, m, MAIL_WAIT, pause, stopped)
            || stopped()
        {
            return;
        }
        BackplaneStats::inc(&self.stats.errors_total);
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(
                shard,
                dropped = n,
                "backplane: shard mailbox full for {MAIL_WAIT:?}; event dropped"
            );
        }
    }
}
