//! Redis backplane: carries topic/room messages, pushes, member counts and presence
//! (members' join payloads, answered by [`Backplane::query`]) between ringcast nodes.
//! Design, data model and failure behaviour: `docs/scaling.md`.
//!
//! One thread per node ("ringcast-backplane") runs a current-thread tokio runtime that
//! owns the Redis connections. Shards talk to it only through a [`Backplane`] handle whose
//! methods never block (they enqueue or fail), and it talks back through the `deliver`
//! callback given to [`Backplane::start`], which the server turns into reactor mailbox
//! messages. Nothing on a shard ever waits for Redis.
//!
//! Order: a node publishes everything over one Redis connection, in the order the
//! requests were queued, and delivers topic messages (its own included) only when they
//! come back from Redis, so every subscriber on every node sees one order per topic.

mod config;
mod exec;
mod fallback;
mod local;
mod node;
mod query;
mod reader;
mod scripts;
mod session;
mod stats;
#[cfg(test)]
mod testutil;
mod wire;
mod worker;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

pub(crate) use config::redact_url;
pub use config::BackplaneConfig;
pub use query::{Answer, Present, Query, RoomCount};
pub use stats::BackplaneStats;

use local::Cmd;

/// Events the backplane hands to the server, on the backplane thread, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A message on a topic/room this node is subscribed to or has members in. This
    /// node's own messages come back this way too: deliver them only now, that is what
    /// gives every node the same order. `origin` is the sender's conn id, if any; `seq`
    /// is the room's cluster-wide sequence number for [`Backplane::publish_room`]
    /// messages (`None` for [`Backplane::publish`]).
    Message {
        topic: String,
        origin: Option<u64>,
        seq: Option<u64>,
        payload: Bytes,
    },
    /// A join or leave in a room, with the room's member count after it. `cluster: true`:
    /// it came through Redis, `members` is cluster-wide and `seq` the room's sequence
    /// number (same counter as room messages); `cluster: false`: Redis was unavailable,
    /// `members` counts this node only, `seq` is `None` (only this node's members see it).
    Member {
        room: String,
        conn: u64,
        joined: bool,
        members: u64,
        seq: Option<u64>,
        cluster: bool,
        payload: Bytes,
    },
    /// The cluster-wide member count of a room changed without a join/leave: a node died
    /// (its members were reaped) or re-registered its members after a reconnect. `seq`
    /// places it in the room's order.
    Count {
        room: String,
        members: u64,
        seq: u64,
    },
    /// A push to one of this node's connections.
    Push {
        conn: u64,
        origin: Option<u64>,
        payload: Bytes,
    },
    /// A publish or push Redis did not take (down, error, or no node listening for the
    /// target). Counted in `errors_total`; the payload is handed back. The message may
    /// still have reached Redis if the connection broke after sending it.
    Failed {
        op: FailedOp,
        kind: FailKind,
        origin: Option<u64>,
        topic: Option<String>,
        reason: String,
        payload: Bytes,
    },
    /// Every request queued before [`Backplane::barrier`] has been carried out.
    Barrier { tag: u64 },
    /// The answer to [`Backplane::query`] with this `tag` (a failure is an
    /// [`Answer::Failed`]).
    Answer { tag: u64, answer: Answer },
    /// Connected (at start or again): subscriptions, member counts and payloads are
    /// registered.
    Up { node: u16 },
    /// The connection to Redis was lost; the backplane keeps reconnecting.
    Down { reason: String },
}

/// What a [`Inbound::Failed`] event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedOp {
    /// [`Backplane::publish`] (`room: false`: the payload is whatever the
    /// server published) or [`Backplane::publish_room`] (`room: true`).
    Publish { room: bool },
    /// [`Backplane::push`] to connection `conn` on node `node`.
    Push { node: u16, conn: u64 },
}

/// Why a request failed (the event's `reason` has the details).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// Not connected to Redis (or the connection broke while sending).
    Down,
    /// Redis answered with an error.
    Refused,
    /// A push to a node id nobody listens on (node gone or never existed).
    NoListener,
    /// Queued after [`Backplane::shutdown`].
    ShuttingDown,
}

/// Why a request was not queued. Counted in `errors_total` (except `Closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// `queue_capacity` requests are already waiting for the backplane thread.
    Full,
    /// The backplane was shut down or its thread has ended.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full => f.write_str("backplane queue is full"),
            SendError::Closed => f.write_str("backplane is shut down"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why the backplane could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackplaneError {
    /// A setting is invalid.
    Config(String),
    /// Redis could not be reached (and `optional` is off).
    Connect { url: String, reason: String },
    /// The configured node id is held by another live ringcast instance.
    NodeIdInUse { node: u16 },
    /// The backplane thread could not be started.
    Thread(String),
}

impl fmt::Display for BackplaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackplaneError::Config(m) => write!(f, "invalid backplane configuration: {m}"),
            BackplaneError::Connect { url, reason } => write!(
                f,
                "cannot connect to Redis at {url}: {reason} (start Redis, fix --redis, or pass \
                 --redis-optional to start single-node and connect later)"
            ),
            BackplaneError::NodeIdInUse { node } => write!(
                f,
                "node id {node} is held by another live ringcast instance (choose another \
                 --node-id, or wait for the old instance's liveness key to expire)"
            ),
            BackplaneError::Thread(m) => write!(f, "cannot start the backplane thread: {m}"),
        }
    }
}

impl std::error::Error for BackplaneError {}

/// State shared by the handles and the backplane thread.
pub(crate) struct Shared {
    pub stats: Arc<BackplaneStats>,
    /// Admission-controlled requests queued but not yet taken by the thread.
    pub pending: AtomicUsize,
    pub capacity: usize,
    pub closed: AtomicBool,
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl Shared {
    pub fn mark_done(&self) {
        self.closed.store(true, Ordering::Release);
        self.stats.up.store(0, Ordering::Relaxed);
        let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
        *d = true;
        self.done_cv.notify_all();
    }
}

/// Handle used by shards; cheap to clone, `Send + Sync`, and no method blocks (except
/// [`Backplane::shutdown`], which is for the main thread).
///
/// Subscriptions are reference-counted here: every successful `subscribe`/`join` must be
/// balanced by exactly one `unsubscribe`/`leave` (calling them once per member is fine);
/// the node subscribes to a channel on the first reference and unsubscribes on the last.
///
/// Queue limit: `publish`, `push`, `subscribe`, `join`, `query` and `barrier` are refused
/// with [`SendError::Full`] when `queue_capacity` requests are waiting. `unsubscribe`, `leave`
/// and `shutdown` are always accepted: they release state taken by an accepted request
/// (so there are never more of them than live joins/subscriptions), and dropping one
/// would leave a subscription or a member count behind.
#[derive(Clone)]
pub struct Backplane {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    node: u16,
}

impl fmt::Debug for Backplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backplane")
            .field("node", &self.node)
            .field("up", &self.is_up())
            .finish()
    }
}

impl Backplane {
    /// Validates `cfg`, connects to Redis, claims a node id and starts the backplane
    /// thread. Blocks until the first connection attempt is over (bounded by the connect
    /// timeouts; with a fixed node id still held by a previous instance, up to one
    /// `node_ttl` more). Unreachable Redis is an error unless `cfg.optional`, in which
    /// case the node starts disconnected and keeps retrying.
    ///
    /// `deliver` runs on the backplane thread for every [`Inbound`] event; it must not
    /// block for long (hand the event to the shards' mailboxes and return). A panic in it
    /// is caught, logged and counted as an error.
    pub fn start<F>(cfg: BackplaneConfig, deliver: F) -> Result<Backplane, BackplaneError>
    where
        F: Fn(Inbound) + Send + 'static,
    {
        cfg.validate()?;
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| {
            BackplaneError::Config(format!(
                "bad redis URL {}: {e}",
                config::redact_url(&cfg.url)
            ))
        })?;
        let shared = Arc::new(Shared {
            stats: Arc::new(BackplaneStats::default()),
            pending: AtomicUsize::new(0),
            capacity: cfg.queue_capacity,
            closed: AtomicBool::new(false),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (init_tx, init_rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("ringcast-backplane".into())
            .spawn(move || {
                let guard = thread_shared.clone();
                let run = std::panic::AssertUnwindSafe(|| {
                    worker::thread_main(cfg, client, thread_shared, rx, Box::new(deliver), init_tx)
                });
                // A bug here must not leave handles waiting on a dead thread.
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!("backplane: thread panicked; the backplane is stopped");
                    guard.mark_done();
                }
            })
            .map_err(|e| BackplaneError::Thread(e.to_string()))?;
        let node = init_rx
            .recv()
            .map_err(|_| BackplaneError::Thread("backplane thread ended during start".into()))??;
        Ok(Backplane { tx, shared, node })
    }

    /// This node's id (goes into connection ids; pushes to it arrive on `{prefix}:node:{id}`).
    pub fn node_id(&self) -> u16 {
        self.node
    }

    /// True while connected to Redis. While false, publishes fail (`Failed` events);
    /// a server keeps local delivery working by delivering room messages locally itself.
    pub fn is_up(&self) -> bool {
        self.shared.stats.up.load(Ordering::Relaxed) == 1
    }

    /// The counters, for the metrics endpoint.
    pub fn stats(&self) -> Arc<BackplaneStats> {
        self.shared.stats.clone()
    }

    /// Publishes `payload` to every node subscribed to `topic` (this one included, via
    /// Redis). A failure after queueing comes back as [`Inbound::Failed`] with `origin`.
    pub fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        origin: Option<u64>,
    ) -> Result<(), SendError> {
        self.admit(Cmd::Publish {
            topic: topic.to_string(),
            payload,
            origin,
            room: false,
        })
    }

    /// Like `publish`, for a room: Redis numbers the message with the room's sequence
    /// counter (shared with join/leave/count events), so `seq` is the same on every node.
    /// Dropped (no recipients, not an error) when no node has members in the room.
    /// Costs a small Lua script per message instead of a bare PUBLISH.
    pub fn publish_room(
        &self,
        room: &str,
        payload: Bytes,
        origin: Option<u64>,
    ) -> Result<(), SendError> {
        self.admit(Cmd::Publish {
            topic: room.to_string(),
            payload,
            origin,
            room: true,
        })
    }

    /// Sends `payload` to connection `conn` on node `node` (delivered as [`Inbound::Push`]
    /// there; to this node it is looped back without Redis). If no node listens on that
    /// id, an [`Inbound::Failed`] comes back with `origin`.
    pub fn push(
        &self,
        node: u16,
        conn: u64,
        payload: Bytes,
        origin: Option<u64>,
    ) -> Result<(), SendError> {
        self.admit(Cmd::Push {
            node,
            conn,
            payload,
            origin,
        })
    }

    /// Takes a reference on `topic`'s channel (subscribes on the first one).
    pub fn subscribe(&self, topic: &str) -> Result<(), SendError> {
        self.admit(Cmd::Subscribe(topic.to_string()))
    }

    /// Releases a reference taken by `subscribe` (unsubscribes on the last one).
    pub fn unsubscribe(&self, topic: &str) {
        self.always(Cmd::Unsubscribe(topic.to_string()));
    }

    /// A member joins `room` on this node: takes a reference on the room's channel, adds
    /// one to this node's count and publishes a join event that every node with members
    /// in the room receives as [`Inbound::Member`] with the cluster-wide count, in the
    /// room's message order. `payload` is opaque (e.g. the user name); Redis also keeps
    /// it as the member's presence entry (`Query::Members`) until its leave. A conn that
    /// joins a room again counts again and shows its latest payload, once.
    pub fn join(&self, room: &str, conn: u64, payload: Bytes) -> Result<(), SendError> {
        self.admit(Cmd::Join {
            room: room.to_string(),
            conn,
            payload,
        })
    }

    /// The reverse of an accepted `join`; always accepted. The conn's presence entry
    /// goes with its last join in the room.
    pub fn leave(&self, room: &str, conn: u64, payload: Bytes) {
        self.always(Cmd::Leave {
            room: room.to_string(),
            conn,
            payload,
        });
    }

    /// Asks Redis about the cluster's members and rooms; the answer comes back as
    /// [`Inbound::Answer`] with `tag`, after the answers and effects of every request
    /// queued before it (so it sees this node's earlier joins and leaves). One Lua
    /// script per query; see [`Answer`] for how it fits the room's event order. While
    /// Redis is down it is answered at once with [`Answer::Failed`] (kind `Down`).
    pub fn query(&self, tag: u64, q: Query) -> Result<(), SendError> {
        self.admit(Cmd::Query { tag, query: q })
    }

    /// Asks for an [`Inbound::Barrier`] once every request queued before it is done
    /// (subscriptions confirmed by Redis, publishes accepted).
    pub fn barrier(&self, tag: u64) -> Result<(), SendError> {
        self.admit(Cmd::Barrier(tag))
    }

    /// Leaves the cluster cleanly: removes this node's member counts (others get
    /// [`Inbound::Count`] updates) and its liveness key, then stops the thread. Requests
    /// after it are refused. Waits up to `wait` for that; returns whether it finished.
    /// Dropping every handle without calling this stops the thread without cleaning up,
    /// like a crash: the node's counts drop out after `node_ttl`.
    pub fn shutdown(&self, wait: Duration) -> bool {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(Cmd::Shutdown);
        }
        let guard = self.shared.done.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .shared
            .done_cv
            .wait_timeout_while(guard, wait, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn admit(&self, cmd: Cmd) -> Result<(), SendError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let prev = self.shared.pending.fetch_add(1, Ordering::AcqRel);
        if prev >= self.shared.capacity {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            BackplaneStats::inc(&self.shared.stats.errors_total);
            return Err(SendError::Full);
        }
        if self.tx.send(cmd).is_err() {
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(SendError::Closed);
        }
        Ok(())
    }

    fn always(&self, cmd: Cmd) {
        // After shutdown there is nothing left to release.
        let _ = self.tx.send(cmd);
    }
}
