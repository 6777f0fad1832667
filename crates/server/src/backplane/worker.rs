//! The backplane thread: owns the Redis connections, batches requests into pipelines,
//! reads the subscription connection, keeps the node alive and reconnects.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_core::Stream;
use redis::aio::{MultiplexedConnection, PubSub, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, Client, RedisResult, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::{JoinHandle, LocalSet};
use tokio::time::{interval, sleep, sleep_until, timeout, Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use super::config::redact_url;
use super::wire::{self, Envelope, Names};
use super::{
    scripts, BackplaneConfig, BackplaneError, BackplaneStats, FailKind, FailedOp, Inbound, Shared,
};

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
    fn counted(&self) -> bool {
        !matches!(
            self,
            Cmd::Unsubscribe(_) | Cmd::Leave { .. } | Cmd::Shutdown
        )
    }
}

/// What a batch asks of Redis, in request order.
enum Effect {
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

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Calls the server's callback; a panic in it must not take the backplane down.
struct Emitter {
    f: Box<dyn Fn(Inbound) + Send>,
    stats: Arc<BackplaneStats>,
}

impl Emitter {
    fn emit(&self, ev: Inbound) {
        if catch_unwind(AssertUnwindSafe(|| (self.f)(ev))).is_err() {
            error!("backplane: the deliver callback panicked; event dropped");
            BackplaneStats::inc(&self.stats.errors_total);
        }
    }
}

/// Small xorshift generator for jitter and instance tokens (no crypto needed).
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        // splitmix64 of the mixed seed, so similar seeds give unrelated streams.
        let mut z = t ^ (u64::from(std::process::id()) << 32) ^ addr;
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A working connection pair.
struct Live {
    cmd: MultiplexedConnection,
    sink: PubSubSink,
    reader: JoinHandle<()>,
}

struct Worker {
    cfg: BackplaneConfig,
    client: Client,
    names: Rc<Names>,
    node: u16,
    /// Random per start: tells this instance's liveness key from a previous one's.
    token: String,
    emitter: Rc<Emitter>,
    shared: Arc<Shared>,
    /// Topic -> local references (subscribe + join). The reader drops messages for
    /// topics no longer in it.
    interest: Rc<RefCell<HashMap<String, usize>>>,
    /// Room -> local member count (absent = 0).
    members: HashMap<String, u64>,
    /// Topics subscribed on the current Redis connection.
    subscribed: HashSet<String>,
    live: Option<Live>,
    /// Connection generation, so a stale reader's "lost" signal is ignored.
    gen: u64,
    lost_tx: UnboundedSender<u64>,
    /// Failed attempts since the last success (drives the backoff).
    attempts: u32,
    next_attempt: Instant,
    ever_up: bool,
    resync_needed: bool,
    down_reason: String,
    rng: Rng,
    bad_inbound: Rc<Cell<u64>>,
    /// Last "still unreachable" warning, to keep one every 30 s while down.
    last_warn: Instant,
}

pub(crate) fn thread_main(
    cfg: BackplaneConfig,
    client: Client,
    shared: Arc<Shared>,
    rx: UnboundedReceiver<Cmd>,
    deliver: Box<dyn Fn(Inbound) + Send>,
    init: std::sync::mpsc::Sender<Result<u16, BackplaneError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = init.send(Err(BackplaneError::Thread(e.to_string())));
            shared.mark_done();
            return;
        }
    };
    let local = LocalSet::new();
    let done = shared.clone();
    local.block_on(&rt, async move {
        let (lost_tx, lost_rx) = unbounded_channel();
        let mut rng = Rng::seeded();
        let token = format!("{:016x}{:016x}", rng.next(), rng.next());
        let mut w = Worker {
            names: Rc::new(Names::new(&cfg.prefix)),
            node: cfg.node_id.unwrap_or(0),
            token,
            emitter: Rc::new(Emitter {
                f: deliver,
                stats: shared.stats.clone(),
            }),
            shared,
            interest: Rc::new(RefCell::new(HashMap::new())),
            members: HashMap::new(),
            subscribed: HashSet::new(),
            live: None,
            gen: 0,
            lost_tx,
            attempts: 0,
            next_attempt: Instant::now(),
            ever_up: false,
            resync_needed: false,
            down_reason: "redis backplane not connected yet".into(),
            rng,
            bad_inbound: Rc::new(Cell::new(0)),
            last_warn: Instant::now(),
            cfg,
            client,
        };
        if w.start(init).await {
            w.run(rx, lost_rx).await;
        }
        if let Some(live) = w.live.take() {
            live.reader.abort();
        }
    });
    drop(local);
    drop(rt);
    done.mark_done();
}

/// Awaits a Redis future with the response timeout; errors become log-ready strings.
async fn timed<T>(limit: Duration, f: impl Future<Output = RedisResult<T>>) -> Result<T, String> {
    match timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no reply from Redis within {limit:?}")),
    }
}

/// Opens the command connection and the subscription connection.
async fn connect(
    client: Client,
    connect_timeout: Duration,
    response_timeout: Duration,
) -> Result<(MultiplexedConnection, PubSub), String> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout));
    let both = async {
        let cmd = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| e.to_string())?;
        let pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
        Ok((cmd, pubsub))
    };
    // The pubsub connect has no timeout of its own; bound the whole handshake.
    match timeout(connect_timeout * 2, both).await {
        Ok(r) => r,
        Err(_) => Err(format!("connect timed out after {:?}", connect_timeout * 2)),
    }
}

/// Reads the subscription connection until it closes, then reports the loss.
struct Reader {
    emitter: Rc<Emitter>,
    interest: Rc<RefCell<HashMap<String, usize>>>,
    names: Rc<Names>,
    node_channel: String,
    stats: Arc<BackplaneStats>,
    lost: UnboundedSender<u64>,
    gen: u64,
    bad: Rc<Cell<u64>>,
}

impl Reader {
    async fn run(self, mut stream: PubSubStream) {
        while let Some(msg) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            self.handle(msg.get_channel_name(), msg.get_payload_bytes());
        }
        let _ = self.lost.send(self.gen);
    }

    fn handle(&self, channel: &str, raw: &[u8]) {
        let ev = if let Some(topic) = self.names.topic_of(channel) {
            if !self.interest.borrow().contains_key(topic) {
                return; // in flight when the last local member left; nobody to give it to
            }
            match wire::decode(raw) {
                Ok(Envelope::Message {
                    origin,
                    seq,
                    payload,
                }) => Inbound::Message {
                    topic: topic.to_string(),
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
                    room: topic.to_string(),
                    conn,
                    joined,
                    members,
                    seq: Some(seq),
                    cluster: true,
                    payload,
                },
                Ok(Envelope::Count { members, seq }) => Inbound::Count {
                    room: topic.to_string(),
                    members,
                    seq,
                },
                Ok(Envelope::Push { .. }) => return self.bad(channel, "push on a topic channel"),
                Err(e) => return self.bad(channel, e),
            }
        } else if channel == self.node_channel {
            match wire::decode(raw) {
                Ok(Envelope::Push {
                    conn,
                    origin,
                    payload,
                }) => Inbound::Push {
                    conn,
                    origin,
                    payload,
                },
                Ok(_) => return self.bad(channel, "not a push on the node channel"),
                Err(e) => return self.bad(channel, e),
            }
        } else {
            return self.bad(channel, "message on a channel we did not subscribe to");
        };
        BackplaneStats::inc(&self.stats.received_total);
        self.emitter.emit(ev);
    }

    fn bad(&self, channel: &str, why: &str) {
        BackplaneStats::inc(&self.stats.errors_total);
        let n = self.bad.get() + 1;
        self.bad.set(n);
        // Someone else publishing junk on our channels must not flood the log.
        if n <= 10 || n.is_power_of_two() {
            warn!(
                channel,
                reason = why,
                total = n,
                "backplane: dropped a malformed message"
            );
        }
    }
}

impl Worker {
    /// First connection. Reports the outcome to `Backplane::start`; false = give up.
    async fn start(&mut self, init: std::sync::mpsc::Sender<Result<u16, BackplaneError>>) -> bool {
        let url = redact_url(&self.cfg.url);
        let first = match connect(
            self.client.clone(),
            self.cfg.connect_timeout,
            self.cfg.response_timeout,
        )
        .await
        {
            Ok((mut cmd, pubsub)) => match self.claim_node_id(&mut cmd).await {
                Ok(()) => match self.go_live(cmd, pubsub).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(BackplaneError::Connect {
                        url: url.clone(),
                        reason: e,
                    }),
                },
                Err(e) => Err(e),
            },
            Err(e) => Err(BackplaneError::Connect {
                url: url.clone(),
                reason: e,
            }),
        };
        match first {
            Ok(()) => {
                let _ = init.send(Ok(self.node));
                true
            }
            Err(e) if self.cfg.optional => {
                if self.node == 0 {
                    // No Redis to allocate from; a random id (set --node-id to avoid clashes).
                    self.node = (self.rng.next() % u64::from(self.cfg.max_node_id)) as u16 + 1;
                }
                let reason = match e {
                    BackplaneError::Connect { reason, .. } => reason,
                    other => other.to_string(),
                };
                warn!(
                    node = self.node,
                    %url,
                    "backplane: Redis unavailable at start ({reason}); running single-node \
                     (--redis-optional) and retrying in the background"
                );
                self.attempt_failed(reason);
                let _ = init.send(Ok(self.node));
                true
            }
            Err(e) => {
                // The caller reports it (and exits); no log line here to avoid saying it twice.
                let _ = init.send(Err(e));
                false
            }
        }
    }

    /// Picks (auto) or claims (fixed) the node id with this instance's token.
    async fn claim_node_id(
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
                let max = i64::from(self.cfg.max_node_id);
                self.node = ((seq - 1).rem_euclid(max) + 1) as u16;
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

    async fn run(&mut self, mut rx: UnboundedReceiver<Cmd>, mut lost_rx: UnboundedReceiver<u64>) {
        let max = self.cfg.max_batch;
        let mut buf = Vec::with_capacity(max);
        let mut hb = interval(self.cfg.heartbeat);
        hb.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if self.live.is_some() {
                tokio::select! {
                    n = rx.recv_many(&mut buf, max) => {
                        if self.serve(n, &mut buf).await == Flow::Stop {
                            return self.refuse_rest(&mut rx);
                        }
                    }
                    _ = hb.tick() => self.heartbeat().await,
                    Some(g) = lost_rx.recv() => {
                        if g == self.gen && self.live.is_some() {
                            self.mark_down("the subscription connection was closed".into());
                        }
                    }
                }
                if self.resync_needed && self.live.is_some() {
                    self.resync().await;
                }
            } else {
                tokio::select! {
                    n = rx.recv_many(&mut buf, max) => {
                        if self.serve(n, &mut buf).await == Flow::Stop {
                            return self.refuse_rest(&mut rx);
                        }
                    }
                    _ = sleep_until(self.next_attempt) => {
                        if self.attempt(&mut rx, &mut buf).await == Flow::Stop {
                            return self.refuse_rest(&mut rx);
                        }
                    }
                }
            }
        }
    }

    /// After shutdown: requests that raced with it are answered, not dropped.
    fn refuse_rest(&self, rx: &mut UnboundedReceiver<Cmd>) {
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            self.refuse_after_shutdown(cmd);
        }
    }

    /// Serves `n` requests just received into `buf`. `n == 0` means every
    /// handle was dropped without `shutdown`: stop like a crashed node would.
    async fn serve(&mut self, n: usize, buf: &mut Vec<Cmd>) -> Flow {
        if n == 0 {
            debug!("backplane: all handles dropped; stopping without cleanup");
            return Flow::Stop;
        }
        self.process(buf).await
    }

    /// One reconnect attempt; requests keep being served (failing fast) meanwhile.
    async fn attempt(&mut self, rx: &mut UnboundedReceiver<Cmd>, buf: &mut Vec<Cmd>) -> Flow {
        let fut = connect(
            self.client.clone(),
            self.cfg.connect_timeout,
            self.cfg.response_timeout,
        );
        tokio::pin!(fut);
        let res = loop {
            tokio::select! {
                r = &mut fut => break r,
                n = rx.recv_many(buf, self.cfg.max_batch) => {
                    if self.serve(n, buf).await == Flow::Stop {
                        return Flow::Stop;
                    }
                }
            }
        };
        match res {
            Ok((cmd, pubsub)) => {
                if let Err(e) = self.go_live(cmd, pubsub).await {
                    self.attempt_failed(e);
                }
            }
            Err(e) => self.attempt_failed(e),
        }
        Flow::Continue
    }

    fn backoff(&mut self) -> Duration {
        let min = self.cfg.reconnect_min.as_millis() as u64;
        let max = self.cfg.reconnect_max.as_millis() as u64;
        let exp = min.saturating_mul(1u64 << self.attempts.min(20)).min(max);
        // Jitter in [exp/2, exp] so nodes that lost Redis together do not retry together.
        let half = exp / 2;
        Duration::from_millis(half + self.rng.next() % (exp - half + 1))
    }

    fn attempt_failed(&mut self, reason: String) {
        self.attempts = self.attempts.saturating_add(1);
        let delay = self.backoff();
        self.next_attempt = Instant::now() + delay;
        self.down_reason = format!("redis backplane down: {reason}");
        if self.attempts == 1 || self.last_warn.elapsed() >= Duration::from_secs(30) {
            self.last_warn = Instant::now();
            warn!(
                attempts = self.attempts,
                url = %redact_url(&self.cfg.url),
                "backplane: Redis still unreachable ({reason}); next try in {delay:?}"
            );
        } else {
            debug!(
                attempts = self.attempts,
                "backplane: reconnect failed: {reason}"
            );
        }
    }

    /// Subscribes everything needed, registers member counts, starts the reader.
    async fn go_live(
        &mut self,
        mut cmd: MultiplexedConnection,
        pubsub: PubSub,
    ) -> Result<(), String> {
        let (mut sink, stream) = pubsub.split();
        let topics: Vec<String> = self.interest.borrow().keys().cloned().collect();
        let mut channels = vec![self.names.node_channel(self.node)];
        channels.extend(topics.iter().map(|t| self.names.topic_channel(t)));
        // Subscribe before registering, so the count updates our sync publishes reach us.
        for chunk in channels.chunks(512) {
            timed(self.cfg.response_timeout, sink.subscribe(chunk)).await?;
        }
        match self.sync(&mut cmd, false).await? {
            -1 => {
                error!(
                    node = self.node,
                    "backplane: node id is held by another live instance; not joining the cluster"
                );
                return Err(format!(
                    "node id {} is held by another live instance",
                    self.node
                ));
            }
            rooms => debug!(rooms, "backplane: member counts registered"),
        }
        self.gen += 1;
        let reader = Reader {
            emitter: self.emitter.clone(),
            interest: self.interest.clone(),
            names: self.names.clone(),
            node_channel: self.names.node_channel(self.node),
            stats: self.shared.stats.clone(),
            lost: self.lost_tx.clone(),
            gen: self.gen,
            bad: self.bad_inbound.clone(),
        };
        let reader = tokio::task::spawn_local(reader.run(stream));
        self.subscribed = topics.into_iter().collect();
        self.live = Some(Live { cmd, sink, reader });
        self.resync_needed = false;
        self.shared.stats.up.store(1, Ordering::Relaxed);
        let url = redact_url(&self.cfg.url);
        if self.ever_up {
            BackplaneStats::inc(&self.shared.stats.reconnects_total);
            info!(
                node = self.node,
                %url,
                failed_attempts = self.attempts,
                topics = self.subscribed.len(),
                rooms = self.members.len(),
                "backplane: reconnected to Redis; resubscribed and re-registered member counts"
            );
        } else {
            info!(node = self.node, %url, "backplane: connected to Redis");
        }
        self.ever_up = true;
        self.attempts = 0;
        self.emitter.emit(Inbound::Up { node: self.node });
        Ok(())
    }

    /// Runs the SYNC script: claim the id and replace (or, retiring, remove) our counts.
    async fn sync(&self, cmd: &mut MultiplexedConnection, retire: bool) -> Result<i64, String> {
        let mut c = redis::cmd("EVAL");
        c.arg(scripts::SYNC)
            .arg(0)
            .arg(&self.names.prefix)
            .arg(self.node)
            .arg(&self.token)
            .arg(self.cfg.node_ttl.as_millis() as u64)
            .arg(if retire { 1 } else { 0 });
        if !retire {
            for (room, n) in &self.members {
                c.arg(room).arg(*n);
            }
        }
        timed(self.cfg.response_timeout, c.query_async(cmd)).await
    }

    /// Our liveness key lapsed (we may have been reaped): register everything again.
    async fn resync(&mut self) {
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

    fn mark_down(&mut self, reason: String) {
        let Some(live) = self.live.take() else {
            return;
        };
        live.reader.abort();
        self.subscribed.clear();
        self.shared.stats.up.store(0, Ordering::Relaxed);
        self.down_reason = format!("redis backplane down: {reason}");
        warn!(
            node = self.node,
            url = %redact_url(&self.cfg.url),
            "backplane: lost Redis ({reason}); local delivery continues, reconnecting"
        );
        self.attempts = 0;
        let delay = self.backoff();
        self.next_attempt = Instant::now() + delay;
        self.emitter.emit(Inbound::Down { reason });
    }

    async fn heartbeat(&mut self) {
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
            Ok((-1, _)) => {
                error!(
                    node = self.node,
                    "backplane: another instance took this node id"
                );
                return self.mark_down(format!("node id {} taken by another instance", self.node));
            }
            Ok((hb, reaped)) => {
                if hb == 0 {
                    warn!(
                        node = self.node,
                        "backplane: liveness key had expired; re-registering"
                    );
                    self.resync_needed = true;
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

    /// Applies a batch to local state, then carries it out against Redis (or fails it
    /// fast when Redis is down).
    async fn process(&mut self, buf: &mut Vec<Cmd>) -> Flow {
        let mut effects = Vec::with_capacity(buf.len());
        let mut touched: Vec<String> = Vec::new();
        let mut barriers = Vec::new();
        let mut stop = false;
        for cmd in buf.drain(..) {
            if cmd.counted() {
                self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            }
            if stop {
                self.refuse_after_shutdown(cmd);
                continue;
            }
            match cmd {
                Cmd::Publish {
                    topic,
                    payload,
                    origin,
                    room,
                } => effects.push(Effect::Publish {
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
                } => effects.push(Effect::Push {
                    node,
                    conn,
                    origin,
                    payload,
                }),
                Cmd::Subscribe(topic) => {
                    self.add_interest(&topic);
                    touched.push(topic);
                }
                Cmd::Unsubscribe(topic) => {
                    if self.drop_interest(&topic) {
                        touched.push(topic);
                    } else {
                        warn!(topic, "backplane: unsubscribe without subscribe; ignored");
                        BackplaneStats::inc(&self.shared.stats.errors_total);
                    }
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
                    touched.push(room.clone());
                    effects.push(Effect::Member {
                        room,
                        conn,
                        joined: true,
                        count,
                        payload,
                    });
                }
                Cmd::Leave {
                    room,
                    conn,
                    payload,
                } => {
                    let Some(n) = self.members.get_mut(&room) else {
                        warn!(room, conn, "backplane: leave without join; ignored");
                        BackplaneStats::inc(&self.shared.stats.errors_total);
                        continue;
                    };
                    *n -= 1;
                    let count = *n;
                    if count == 0 {
                        self.members.remove(&room);
                    }
                    self.drop_interest(&room);
                    touched.push(room.clone());
                    effects.push(Effect::Member {
                        room,
                        conn,
                        joined: false,
                        count,
                        payload,
                    });
                }
                Cmd::Barrier(tag) => barriers.push(tag),
                Cmd::Shutdown => stop = true,
            }
        }
        if self.live.is_some() {
            self.execute_live(effects, touched).await;
        } else {
            self.execute_down(effects);
        }
        if self.resync_needed && self.live.is_some() {
            self.resync().await;
        }
        for tag in barriers {
            self.emitter.emit(Inbound::Barrier { tag });
        }
        if stop {
            self.retire().await;
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn refuse_after_shutdown(&self, cmd: Cmd) {
        let reason = "backplane is shutting down";
        let kind = FailKind::ShuttingDown;
        match cmd {
            Cmd::Publish {
                topic,
                payload,
                origin,
                ..
            } => self.fail(
                FailedOp::Publish,
                kind,
                origin,
                Some(topic),
                reason,
                payload,
            ),
            Cmd::Push {
                node,
                conn,
                payload,
                origin,
            } => self.fail(
                FailedOp::Push { node, conn },
                kind,
                origin,
                None,
                reason,
                payload,
            ),
            _ => {}
        }
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

    fn fail(
        &self,
        op: FailedOp,
        kind: FailKind,
        origin: Option<u64>,
        topic: Option<String>,
        reason: &str,
        payload: Bytes,
    ) {
        BackplaneStats::inc(&self.shared.stats.errors_total);
        self.emitter.emit(Inbound::Failed {
            op,
            kind,
            origin,
            topic,
            reason: reason.to_string(),
            payload,
        });
    }

    /// Redis is not available: publishes and pushes fail, joins/leaves are shown to this
    /// node's members with the local count, pushes to our own node still work.
    fn execute_down(&self, effects: Vec<Effect>) {
        for eff in effects {
            self.fallback(eff, FailKind::Down, &self.down_reason);
        }
    }

    /// Carries out an effect without Redis: loopback push, failure report, or a
    /// node-local join/leave event.
    fn fallback(&self, eff: Effect, kind: FailKind, reason: &str) {
        match eff {
            Effect::Push {
                node,
                conn,
                origin,
                payload,
            } if node == self.node => self.emitter.emit(Inbound::Push {
                conn,
                origin,
                payload,
            }),
            Effect::Publish {
                topic,
                origin,
                payload,
                ..
            } => self.fail(
                FailedOp::Publish,
                kind,
                origin,
                Some(topic),
                reason,
                payload,
            ),
            Effect::Push {
                node,
                conn,
                origin,
                payload,
            } => self.fail(
                FailedOp::Push { node, conn },
                kind,
                origin,
                None,
                reason,
                payload,
            ),
            Effect::Member {
                room,
                conn,
                joined,
                count,
                payload,
            } => {
                BackplaneStats::inc(&self.shared.stats.errors_total);
                // Only local members can hear it, and only if the room is still ours.
                if self.interest.borrow().contains_key(&room) {
                    self.emitter.emit(Inbound::Member {
                        room,
                        conn,
                        joined,
                        members: count,
                        seq: None,
                        cluster: false,
                        payload,
                    });
                }
            }
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
        let (mut to_sub, mut to_unsub) = (Vec::new(), Vec::new());
        {
            let interest = self.interest.borrow();
            let mut seen = HashSet::new();
            for t in touched {
                if !seen.insert(t.clone()) {
                    continue;
                }
                match (interest.contains_key(&t), self.subscribed.contains(&t)) {
                    (true, false) => to_sub.push(t),
                    (false, true) => to_unsub.push(t),
                    _ => {}
                }
            }
        }
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
        let own = self.node;
        for eff in effects {
            match &eff {
                Effect::Push { node, .. } if *node == own => {
                    self.fallback(eff, FailKind::Down, "");
                    continue;
                }
                Effect::Publish {
                    topic,
                    origin,
                    room: false,
                    payload,
                } => {
                    pipe.cmd("PUBLISH")
                        .arg(self.names.topic_channel(topic))
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
                        .arg(&self.names.prefix)
                        .arg(topic)
                        .arg(wire::origin_field(*origin))
                        .arg(&payload[..]);
                }
                Effect::Push {
                    node,
                    conn,
                    origin,
                    payload,
                } => {
                    pipe.cmd("PUBLISH")
                        .arg(self.names.node_channel(*node))
                        .arg(wire::encode_push(*conn, *origin, payload));
                }
                Effect::Member {
                    room,
                    conn,
                    joined,
                    count,
                    payload,
                } => {
                    pipe.cmd("EVAL")
                        .arg(scripts::MEMBER)
                        .arg(0)
                        .arg(&self.names.prefix)
                        .arg(self.node)
                        .arg(&self.token)
                        .arg(room)
                        .arg(*count)
                        .arg(wire::member_head(*joined, *conn))
                        .arg(&payload[..]);
                }
            }
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
        let stats = &self.shared.stats;
        match (&eff, reply) {
            (Effect::Push { node, .. }, Ok(Value::Int(0))) => {
                let reason = format!("no node {node} is listening (gone, or never existed)");
                self.fallback(eff, FailKind::NoListener, &reason);
            }
            (Effect::Member { room, .. }, Ok(Value::Int(-1))) => {
                warn!(
                    room,
                    "backplane: our liveness key lapsed; event shown locally, re-registering"
                );
                self.resync_needed = true;
                self.fallback(eff, FailKind::Down, "");
            }
            // Room message to a room with no members anywhere: nobody to deliver to.
            (Effect::Publish { room: true, .. }, Ok(Value::Int(-2))) => {}
            (_, Ok(_)) => BackplaneStats::inc(&stats.published_total),
            (_, Err(e)) => {
                warn!("backplane: Redis refused a request: {e}");
                self.fallback(eff, FailKind::Refused, &format!("redis refused it: {e}"));
            }
        }
    }

    /// Clean exit: remove our counts and liveness key while we still can.
    async fn retire(&mut self) {
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
