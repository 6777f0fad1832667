//! The connection pair to Redis (commands + subscriptions): the first connection at
//! start, going live (subscribe, register, start the reader), losing it (down) and
//! reconnecting with jittered exponential backoff.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSub, PubSubSink};
use redis::{AsyncConnectionConfig, Client, RedisResult};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tracing::{debug, error, info, warn};

use super::config::redact_url;
use super::local::Cmd;
use super::reader::Reader;
use super::worker::{Flow, Worker};
use super::{BackplaneError, BackplaneStats, Inbound};

/// A working connection pair.
pub(super) struct Live {
    pub cmd: MultiplexedConnection,
    pub sink: PubSubSink,
    pub reader: JoinHandle<()>,
}

/// Awaits a Redis future with the response timeout; errors become log-ready strings.
pub(super) async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = RedisResult<T>>,
) -> Result<T, String> {
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

/// Reconnect delay after `attempts` failures in a row: doubling from `min`, capped at
/// `max`, with jitter in [d/2, d] (from the random `r`) so nodes that lost Redis
/// together do not retry together.
pub(super) fn backoff(min: Duration, max: Duration, attempts: u32, r: u64) -> Duration {
    let min = min.as_millis() as u64;
    let max = max.as_millis() as u64;
    let exp = min.saturating_mul(1u64 << attempts.min(20)).min(max);
    let half = exp / 2;
    Duration::from_millis(half + r % (exp - half + 1))
}

/// When to try connecting again, and when to say so in the log.
pub(super) struct Retry {
    min: Duration,
    max: Duration,
    /// Failed attempts since the last success (drives the backoff).
    pub attempts: u32,
    pub next_attempt: Instant,
    /// Last "still unreachable" warning, to keep one every 30 s while down.
    last_warn: Instant,
}

impl Retry {
    pub fn new(min: Duration, max: Duration) -> Retry {
        let now = Instant::now();
        Retry {
            min,
            max,
            attempts: 0,
            next_attempt: now,
            last_warn: now,
        }
    }

    /// An attempt failed: schedules the next. Returns the delay and whether this failure
    /// gets a warning (the first one, then one every 30 s).
    pub fn failed(&mut self, now: Instant, r: u64) -> (Duration, bool) {
        self.attempts = self.attempts.saturating_add(1);
        let delay = self.schedule(now, r);
        let warn = self.attempts == 1 || now >= self.last_warn + Duration::from_secs(30);
        if warn {
            self.last_warn = now;
        }
        (delay, warn)
    }

    /// A working connection was lost: the first retry comes after the shortest delay.
    pub fn lost(&mut self, now: Instant, r: u64) {
        self.attempts = 0;
        self.schedule(now, r);
    }

    fn schedule(&mut self, now: Instant, r: u64) -> Duration {
        let delay = backoff(self.min, self.max, self.attempts, r);
        self.next_attempt = now + delay;
        delay
    }
}

impl Worker {
    /// First connection. Reports the outcome to `Backplane::start`; false = give up.
    pub(super) async fn start(
        &mut self,
        init: std::sync::mpsc::Sender<Result<u16, BackplaneError>>,
    ) -> bool {
        let url = redact_url(&self.cfg.url);
        let conn_err = |reason: String| BackplaneError::Connect {
            url: url.clone(),
            reason,
        };
        let first = match self.connect().await {
            Ok((mut cmd, pubsub)) => match self.claim_node_id(&mut cmd).await {
                Ok(()) => self.go_live(cmd, pubsub).await.map_err(conn_err),
                Err(e) => Err(e),
            },
            Err(e) => Err(conn_err(e)),
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

    fn connect(&self) -> impl Future<Output = Result<(MultiplexedConnection, PubSub), String>> {
        connect(
            self.client.clone(),
            self.cfg.connect_timeout,
            self.cfg.response_timeout,
        )
    }

    /// One reconnect attempt; requests keep being served (failing fast) meanwhile.
    pub(super) async fn attempt(
        &mut self,
        rx: &mut UnboundedReceiver<Cmd>,
        buf: &mut Vec<Cmd>,
    ) -> Flow {
        let fut = self.connect();
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

    pub(super) fn attempt_failed(&mut self, reason: String) {
        let (delay, loud) = self.retry.failed(Instant::now(), self.rng.next());
        self.down_reason = format!("redis backplane down: {reason}");
        let attempts = self.retry.attempts;
        if loud {
            warn!(
                attempts,
                url = %redact_url(&self.cfg.url),
                "backplane: Redis still unreachable ({reason}); next try in {delay:?}"
            );
        } else {
            debug!(attempts, "backplane: reconnect failed: {reason}");
        }
    }

    /// Subscribes everything needed, registers member counts, starts the reader.
    async fn go_live(
        &mut self,
        mut cmd: MultiplexedConnection,
        pubsub: PubSub,
    ) -> Result<(), String> {
        let (mut sink, stream) = pubsub.split();
        let topics: Vec<String> = self.local.interest.borrow().keys().cloned().collect();
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
            interest: self.local.interest.clone(),
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
                failed_attempts = self.retry.attempts,
                topics = self.subscribed.len(),
                rooms = self.local.members.len(),
                "backplane: reconnected to Redis; resubscribed and re-registered member counts"
            );
        } else {
            info!(node = self.node, %url, "backplane: connected to Redis");
        }
        self.ever_up = true;
        self.retry.attempts = 0;
        self.emitter.emit(Inbound::Up { node: self.node });
        Ok(())
    }

    /// The connection pair stopped working: drop it, tell the server, retry soon.
    pub(super) fn mark_down(&mut self, reason: String) {
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
        self.retry.lost(Instant::now(), self.rng.next());
        self.emitter.emit(Inbound::Down { reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let (min, max) = (MS * 100, MS * 5000);
        for (attempts, full) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (5, 3200),
            (6, 5000),
            (40, 5000),
        ] {
            for r in [0, 1, 77, u64::MAX] {
                let d = backoff(min, max, attempts, r).as_millis() as u64;
                assert!(
                    (full / 2..=full).contains(&d),
                    "attempt {attempts}: {d} ms not in [{}, {full}]",
                    full / 2
                );
            }
        }
        // The jitter spans the whole interval, ends included.
        assert_eq!(backoff(min, max, 0, 0), MS * 50);
        assert_eq!(backoff(min, max, 0, 50), MS * 100);
    }

    #[test]
    fn backoff_survives_extreme_settings() {
        let d = backoff(MS, Duration::from_secs(u32::MAX as u64), u32::MAX, u64::MAX);
        assert!(d <= Duration::from_secs(u32::MAX as u64));
        assert_eq!(backoff(MS, MS, 3, 1), MS);
    }

    #[test]
    fn retry_warns_on_the_first_failure_then_every_30_seconds() {
        let t0 = Instant::now();
        let mut r = Retry::new(MS * 100, MS * 5000);
        assert_eq!(r.failed(t0, 0), (MS * 100, true));
        assert_eq!(r.next_attempt, t0 + MS * 100);
        assert!(!r.failed(t0 + Duration::from_secs(1), 0).1);
        assert!(!r.failed(t0 + Duration::from_secs(29), 0).1);
        assert!(r.failed(t0 + Duration::from_secs(30), 0).1);
        assert!(!r.failed(t0 + Duration::from_secs(31), 0).1);
        assert_eq!(r.attempts, 5);
    }

    #[test]
    fn a_lost_connection_retries_after_the_shortest_delay() {
        let t0 = Instant::now();
        let mut r = Retry::new(MS * 100, MS * 5000);
        for _ in 0..6 {
            r.failed(t0, 0);
        }
        r.lost(t0, u64::MAX);
        assert_eq!(r.attempts, 0);
        assert!(r.next_attempt <= t0 + MS * 100);
        assert!(r.next_attempt >= t0 + MS * 50);
        // The next failure starts the doubling from the beginning again.
        assert_eq!(r.failed(t0, 0).0, MS * 100);
    }
}
