//! Prometheus metrics.
//!
//! Every shard owns one [`ShardMetrics`] and is the only thread that writes
//! it. Because there is a single writer, an increment is a `Relaxed` load
//! plus a `Relaxed` store: no read-modify-write, no lock prefix, no shared
//! cache line on the hot path. The scraper reads all shards with `Relaxed`
//! loads and sums them; a scrape may see one shard a few events behind
//! another, which is fine for monitoring.
//!
//! Rendering (the `/metrics` endpoint) is off the hot path and may allocate.
//!
//! Label policy: every known `reason` of `ringcast_connections_closed_total`
//! and every known `status` of `ringcast_handshake_failures_total` is always
//! rendered, at 0 when nothing happened, so `rate()` and alerts work from the
//! first scrape. Handshake statuses outside the known list are counted under
//! `status="other"`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Content-Type of the text exposition format served on `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a connection ended; the `reason` label of
/// `ringcast_connections_closed_total`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// Close handshake with 1000 (either side).
    Normal,
    /// Peer said 1001 (page closed, client shutting down).
    GoingAway,
    /// Peer broke the WebSocket protocol (1002).
    ProtocolError,
    /// Invalid UTF-8 in a text message (1007).
    InvalidPayload,
    /// Message or frame over the configured limit (1009).
    TooBig,
    /// Policy violation (1008).
    Policy,
    /// Send queue over its limit; the server dropped the client.
    SlowConsumer,
    /// No traffic within the idle timeout.
    IdleTimeout,
    /// HTTP upgrade not completed in time.
    HandshakeTimeout,
    /// HTTP request answered with an error status (a plain request answered
    /// with 2xx/3xx closes as `Normal`).
    HandshakeFailed,
    /// TCP reset or EOF without a close frame.
    Reset,
    /// Any other I/O error.
    Error,
    /// Closed by the server while draining/shutting down.
    Shutdown,
    /// The connection's handler panicked.
    Panic,
}

impl CloseKind {
    /// All variants, in the order they are rendered.
    pub const ALL: [CloseKind; 14] = [
        CloseKind::Normal,
        CloseKind::GoingAway,
        CloseKind::ProtocolError,
        CloseKind::InvalidPayload,
        CloseKind::TooBig,
        CloseKind::Policy,
        CloseKind::SlowConsumer,
        CloseKind::IdleTimeout,
        CloseKind::HandshakeTimeout,
        CloseKind::HandshakeFailed,
        CloseKind::Reset,
        CloseKind::Error,
        CloseKind::Shutdown,
        CloseKind::Panic,
    ];

    /// The label value (snake_case).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseKind::Normal => "normal",
            CloseKind::GoingAway => "going_away",
            CloseKind::ProtocolError => "protocol_error",
            CloseKind::InvalidPayload => "invalid_payload",
            CloseKind::TooBig => "too_big",
            CloseKind::Policy => "policy",
            CloseKind::SlowConsumer => "slow_consumer",
            CloseKind::IdleTimeout => "idle_timeout",
            CloseKind::HandshakeTimeout => "handshake_timeout",
            CloseKind::HandshakeFailed => "handshake_failed",
            CloseKind::Reset => "reset",
            CloseKind::Error => "error",
            CloseKind::Shutdown => "shutdown",
            CloseKind::Panic => "panic",
        }
    }

    fn index(self) -> usize {
        // The declaration order matches ALL, so the discriminant is the index.
        self as usize
    }
}

/// HTTP statuses the handshake can fail with, each with its own series.
/// Anything else lands in the last slot, rendered as `status="other"`.
const HANDSHAKE_STATUSES: [u16; 11] = [400, 403, 404, 405, 408, 413, 426, 429, 431, 500, 503];
const HANDSHAKE_SLOTS: usize = HANDSHAKE_STATUSES.len() + 1;

fn handshake_slot(status: u16) -> usize {
    HANDSHAKE_STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(HANDSHAKE_STATUSES.len())
}

/// Add `n` to a counter that only the calling thread ever writes.
///
/// A plain load + store is enough with a single writer and is cheaper than
/// `fetch_add` (no locked instruction). Readers may see a slightly stale value.
#[inline(always)]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

/// Counters of one shard. Written only by that shard's thread; read by the
/// scraper. Aligned to 128 bytes (two cache lines, to also defeat the
/// adjacent-line prefetcher) so two shards' counters never share a line.
#[repr(align(128))]
#[derive(Debug)]
pub struct ShardMetrics {
    shard: usize,
    /// Open connections. Stored as u64 with wrapping arithmetic; rendered as i64
    /// so an unbalanced close shows up as a negative number instead of 2^64.
    connections: AtomicU64,
    accepted: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    slow_consumer: AtomicU64,
    rooms: AtomicU64,
    /// Event-loop iterations, for the systemd watchdog (see [`ShardMetrics::heartbeat`]).
    heartbeats: AtomicU64,
    closed: [AtomicU64; CloseKind::ALL.len()],
    handshake_failures: [AtomicU64; HANDSHAKE_SLOTS],
}

impl ShardMetrics {
    pub fn new(shard: usize) -> Self {
        ShardMetrics {
            shard,
            connections: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            slow_consumer: AtomicU64::new(0),
            rooms: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            closed: std::array::from_fn(|_| AtomicU64::new(0)),
            handshake_failures: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The shard index this belongs to (the `shard` label).
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// A TCP connection was accepted by this shard.
    #[inline]
    pub fn connection_opened(&self) {
        bump(&self.accepted, 1);
        bump(&self.connections, 1);
    }

    /// A connection previously counted by `connection_opened` ended.
    #[inline]
    pub fn connection_closed(&self, reason: CloseKind) {
        bump(&self.connections, 1u64.wrapping_neg());
        bump(&self.closed[reason.index()], 1);
    }

    /// One WebSocket data message (text or binary) received; `bytes` is its payload length.
    #[inline]
    pub fn message_received(&self, bytes: usize) {
        bump(&self.messages_received, 1);
        bump(&self.bytes_received, bytes as u64);
    }

    /// One data message queued to one client; `bytes` is its payload length.
    #[inline]
    pub fn message_sent(&self, bytes: usize) {
        bump(&self.messages_sent, 1);
        bump(&self.bytes_sent, bytes as u64);
    }

    /// `count` data messages with `bytes` payload bytes in total were queued
    /// (e.g. one broadcast fanned out to `count` clients).
    #[inline]
    pub fn messages_sent(&self, count: u64, bytes: u64) {
        bump(&self.messages_sent, count);
        bump(&self.bytes_sent, bytes);
    }

    /// A client was dropped because its send queue overflowed.
    #[inline]
    pub fn slow_consumer(&self) {
        bump(&self.slow_consumer, 1);
    }

    /// The HTTP upgrade was answered with `status` instead of 101.
    #[inline]
    pub fn handshake_failure(&self, status: u16) {
        bump(&self.handshake_failures[handshake_slot(status)], 1);
    }

    /// Number of rooms this shard currently holds.
    #[inline]
    pub fn set_rooms(&self, n: usize) {
        self.rooms.store(n as u64, Relaxed);
    }

    /// Call once per event-loop iteration (and at least once per timer tick
    /// while idle). The systemd watchdog only pings while every shard's
    /// heartbeat keeps moving, so a wedged shard gets the process restarted.
    #[inline]
    pub fn heartbeat(&self) {
        bump(&self.heartbeats, 1);
    }

    /// Current heartbeat counter (read by the watchdog thread).
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Relaxed)
    }

    /// Open connections on this shard.
    pub fn connections(&self) -> i64 {
        self.connections.load(Relaxed) as i64
    }
}

/// Renders extra metric families into the exposition text.
pub type ExtraRenderer = Box<dyn Fn(&mut String) + Send + Sync>;

/// All shards' metrics plus process-wide info; renders `/metrics`.
pub struct Metrics {
    shards: Vec<Arc<ShardMetrics>>,
    backend: &'static str,
    extra: Vec<ExtraRenderer>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("shards", &self.shards.len())
            .field("backend", &self.backend)
            .field("extra", &self.extra.len())
            .finish()
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values we emit are fixed strings, except the backend name, which is
/// escaped anyway per the exposition format (backslash, quote, newline).
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

impl Metrics {
    /// `backend` is the reactor backend in use; rendered as
    /// `ringcast_backend_info{backend="..."} 1`. `io-uring` is normalised to
    /// `io_uring`.
    pub fn new(shards: Vec<Arc<ShardMetrics>>, backend: &'static str) -> Self {
        let backend = match backend {
            "io-uring" | "iouring" | "uring" => "io_uring",
            other => other,
        };
        Metrics {
            shards,
            backend,
            extra: Vec::new(),
        }
    }

    /// Also call `f` at the end of every render; it must append complete
    /// families (`# HELP`, `# TYPE`, samples) whose names do not clash. The
    /// server attaches the Redis backplane's counters this way
    /// (`BackplaneStats::render`, the one definition of those families).
    pub fn with_extra(mut self, f: ExtraRenderer) -> Self {
        self.extra.push(f);
        self
    }

    pub fn shards(&self) -> &[Arc<ShardMetrics>] {
        &self.shards
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Open connections over all shards (for `STATUS=` and logs).
    pub fn total_connections(&self) -> i64 {
        self.shards.iter().map(|s| s.connections()).sum()
    }

    /// Rooms over all shards.
    pub fn total_rooms(&self) -> u64 {
        self.shards.iter().map(|s| s.rooms.load(Relaxed)).sum()
    }

    fn sum(&self, f: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(s).load(Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);

        header(
            &mut out,
            "ringcast_connections",
            "Open client connections (accepted TCP connections not yet closed), per shard.",
            "gauge",
        );
        for s in &self.shards {
            let _ = writeln!(
                out,
                "ringcast_connections{{shard=\"{}\"}} {}",
                s.shard,
                s.connections()
            );
        }

        let counters: [(&str, &str, u64); 7] = [
            (
                "ringcast_connections_accepted_total",
                "TCP connections accepted (WebSocket and plain HTTP).",
                self.sum(|s| &s.accepted),
            ),
            (
                "ringcast_messages_received_total",
                "WebSocket data messages received from clients.",
                self.sum(|s| &s.messages_received),
            ),
            (
                "ringcast_messages_sent_total",
                "WebSocket data messages queued to clients (one per recipient).",
                self.sum(|s| &s.messages_sent),
            ),
            (
                "ringcast_bytes_received_total",
                "Payload bytes of WebSocket data messages received.",
                self.sum(|s| &s.bytes_received),
            ),
            (
                "ringcast_bytes_sent_total",
                "Payload bytes of WebSocket data messages queued to clients.",
                self.sum(|s| &s.bytes_sent),
            ),
            (
                "ringcast_slow_consumer_total",
                "Clients disconnected because their send queue overflowed.",
                self.sum(|s| &s.slow_consumer),
            ),
            (
                "ringcast_rooms",
                "Channels with at least one presence member (chat rooms).",
                self.sum(|s| &s.rooms),
            ),
        ];
        for (name, help, value) in counters {
            let kind = if name == "ringcast_rooms" {
                "gauge"
            } else {
                "counter"
            };
            header(&mut out, name, help, kind);
            let _ = writeln!(out, "{name} {value}");
        }

        header(
            &mut out,
            "ringcast_connections_closed_total",
            "Connections closed, by reason.",
            "counter",
        );
        for kind in CloseKind::ALL {
            let v = self.sum(|s| &s.closed[kind.index()]);
            let _ = writeln!(
                out,
                "ringcast_connections_closed_total{{reason=\"{}\"}} {v}",
                kind.as_str()
            );
        }

        header(
            &mut out,
            "ringcast_handshake_failures_total",
            "HTTP requests on the WebSocket endpoints answered with an error status, by status.",
            "counter",
        );
        for (i, status) in HANDSHAKE_STATUSES.iter().enumerate() {
            let v = self.sum(|s| &s.handshake_failures[i]);
            let _ = writeln!(
                out,
                "ringcast_handshake_failures_total{{status=\"{status}\"}} {v}"
            );
        }
        let other = self.sum(|s| &s.handshake_failures[HANDSHAKE_STATUSES.len()]);
        let _ = writeln!(
            out,
            "ringcast_handshake_failures_total{{status=\"other\"}} {other}"
        );

        header(
            &mut out,
            "ringcast_backend_info",
            "The I/O backend in use (value is always 1).",
            "gauge",
        );
        let _ = writeln!(
            out,
            "ringcast_backend_info{{backend=\"{}\"}} 1",
            escape_label(self.backend)
        );

        header(
            &mut out,
            "ringcast_shards",
            "Number of shards (event-loop threads).",
            "gauge",
        );
        let _ = writeln!(out, "ringcast_shards {}", self.shards.len());

        for f in &self.extra {
            f(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Parse samples into "name{labels}" -> value, checking every sample has
    /// a HELP and TYPE line for its family before it.
    fn parse(text: &str) -> HashMap<String, f64> {
        let mut typed = std::collections::HashSet::new();
        let mut helped = std::collections::HashSet::new();
        let mut out = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap().to_string();
                let kind = it.next().unwrap();
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(typed.insert(name), "duplicate TYPE: {line}");
            } else {
                assert!(
                    !line.is_empty() && !line.starts_with('#'),
                    "unexpected line {line:?}"
                );
                let (key, value) = line.rsplit_once(' ').unwrap();
                let family = key.split('{').next().unwrap();
                assert!(typed.contains(family), "no TYPE before {line}");
                assert!(helped.contains(family), "no HELP before {line}");
                assert!(
                    out.insert(key.to_string(), value.parse().unwrap())
                        .is_none(),
                    "dup {key}"
                );
            }
        }
        assert!(text.ends_with('\n'));
        out
    }

    #[test]
    fn shard_metrics_are_cache_line_aligned() {
        assert_eq!(std::mem::align_of::<ShardMetrics>(), 128);
        assert_eq!(std::mem::size_of::<ShardMetrics>() % 128, 0);
    }

    #[test]
    fn close_kind_index_matches_all() {
        for (i, k) in CloseKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert!(k
                .as_str()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }

    #[test]
    fn empty_render_has_all_families_at_zero() {
        let m = Metrics::new(vec![Arc::new(ShardMetrics::new(0))], "epoll");
        let s = parse(&m.render());
        assert_eq!(s["ringcast_connections{shard=\"0\"}"], 0.0);
        assert_eq!(s["ringcast_connections_accepted_total"], 0.0);
        assert_eq!(
            s["ringcast_connections_closed_total{reason=\"normal\"}"],
            0.0
        );
        assert_eq!(
            s["ringcast_connections_closed_total{reason=\"panic\"}"],
            0.0
        );
        assert_eq!(s["ringcast_handshake_failures_total{status=\"426\"}"], 0.0);
        assert_eq!(s["ringcast_backend_info{backend=\"epoll\"}"], 1.0);
        assert_eq!(s["ringcast_rooms"], 0.0);
        assert_eq!(s["ringcast_shards"], 1.0);
        assert!(!s.keys().any(|k| k.starts_with("ringcast_backplane")));
    }

    #[test]
    fn sums_over_shards() {
        let a = Arc::new(ShardMetrics::new(0));
        let b = Arc::new(ShardMetrics::new(1));
        let m = Metrics::new(vec![a.clone(), b.clone()], "io-uring");
        for _ in 0..3 {
            a.connection_opened();
        }
        b.connection_opened();
        a.connection_closed(CloseKind::Normal);
        b.connection_closed(CloseKind::SlowConsumer);
        b.slow_consumer();
        a.message_received(10);
        b.message_received(5);
        a.message_sent(7);
        b.messages_sent(4, 40);
        a.handshake_failure(426);
        b.handshake_failure(431);
        b.handshake_failure(431);
        a.handshake_failure(999);
        a.set_rooms(2);
        b.set_rooms(3);
        a.set_rooms(1);

        let s = parse(&m.render());
        assert_eq!(s["ringcast_connections{shard=\"0\"}"], 2.0);
        assert_eq!(s["ringcast_connections{shard=\"1\"}"], 0.0);
        assert_eq!(m.total_connections(), 2);
        assert_eq!(s["ringcast_connections_accepted_total"], 4.0);
        assert_eq!(
            s["ringcast_connections_closed_total{reason=\"normal\"}"],
            1.0
        );
        assert_eq!(
            s["ringcast_connections_closed_total{reason=\"slow_consumer\"}"],
            1.0
        );
        assert_eq!(
            s["ringcast_connections_closed_total{reason=\"reset\"}"],
            0.0
        );
        assert_eq!(s["ringcast_slow_consumer_total"], 1.0);
        assert_eq!(s["ringcast_messages_received_total"], 2.0);
        assert_eq!(s["ringcast_bytes_received_total"], 15.0);
        assert_eq!(s["ringcast_messages_sent_total"], 5.0);
        assert_eq!(s["ringcast_bytes_sent_total"], 47.0);
        assert_eq!(s["ringcast_handshake_failures_total{status=\"426\"}"], 1.0);
        assert_eq!(s["ringcast_handshake_failures_total{status=\"431\"}"], 2.0);
        assert_eq!(
            s["ringcast_handshake_failures_total{status=\"other\"}"],
            1.0
        );
        assert_eq!(s["ringcast_rooms"], 4.0);
        assert_eq!(s["ringcast_backend_info{backend=\"io_uring\"}"], 1.0);
    }

    #[test]
    fn unbalanced_close_renders_negative_not_huge() {
        let a = Arc::new(ShardMetrics::new(0));
        a.connection_closed(CloseKind::Error);
        let m = Metrics::new(vec![a], "epoll");
        assert!(m
            .render()
            .contains("ringcast_connections{shard=\"0\"} -1\n"));
    }

    #[test]
    fn single_writer_counts_exactly_with_concurrent_reader() {
        let a = Arc::new(ShardMetrics::new(0));
        let m = Arc::new(Metrics::new(vec![a.clone()], "epoll"));
        let reader = {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..200 {
                    let s = parse(&m.render());
                    let v = s["ringcast_messages_received_total"] as u64;
                    assert!(v >= last, "counter went backwards");
                    last = v;
                }
            })
        };
        let writer = std::thread::spawn(move || {
            for _ in 0..100_000 {
                a.message_received(1);
            }
        });
        writer.join().unwrap();
        reader.join().unwrap();
        let s = parse(&m.render());
        assert_eq!(s["ringcast_messages_received_total"], 100_000.0);
        assert_eq!(s["ringcast_bytes_received_total"], 100_000.0);
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn backplane_and_extra_families() {
        use crate::backplane::BackplaneStats;
        let bp = Arc::new(BackplaneStats::default());
        bp.up.store(1, Relaxed);
        bp.published_total.store(2, Relaxed);
        bp.reconnects_total.store(1, Relaxed);
        let stats = bp.clone();
        let m = Metrics::new(vec![Arc::new(ShardMetrics::new(0))], "epoll")
            .with_extra(Box::new(move |out: &mut String| stats.render(out)))
            .with_extra(Box::new(|out: &mut String| {
                out.push_str("# HELP ringcast_test_extra Test.\n# TYPE ringcast_test_extra gauge\nringcast_test_extra 7\n");
            }));
        let s = parse(&m.render());
        assert_eq!(s["ringcast_backplane_up"], 1.0);
        assert_eq!(s["ringcast_backplane_published_total"], 2.0);
        assert_eq!(s["ringcast_backplane_received_total"], 0.0);
        assert_eq!(s["ringcast_backplane_errors_total"], 0.0);
        assert_eq!(s["ringcast_backplane_reconnects_total"], 1.0);
        assert_eq!(s["ringcast_test_extra"], 7.0);
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
