//! Backplane counters, read by the metrics endpoint.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Plain atomic counters; `render` writes them in the Prometheus text format.
#[derive(Debug, Default)]
pub struct BackplaneStats {
    /// 1 while connected to Redis (subscribed and registered), else 0.
    pub up: AtomicU64,
    /// Messages Redis accepted from this node (topic messages, pushes, join/leave events).
    pub published_total: AtomicU64,
    /// Well-formed messages received from Redis and handed to the server.
    pub received_total: AtomicU64,
    /// Everything that went wrong: queue full, a request Redis did not take (Redis down,
    /// command error, push to a node nobody listens for), malformed inbound messages.
    pub errors_total: AtomicU64,
    /// Successful reconnections after the connection to Redis was lost.
    pub reconnects_total: AtomicU64,
}

impl BackplaneStats {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the counters in the Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let rows: [(&str, &str, &str, &AtomicU64); 5] = [
            (
                "ringcast_backplane_up",
                "gauge",
                "1 if the Redis backplane is connected",
                &self.up,
            ),
            (
                "ringcast_backplane_published_total",
                "counter",
                "Messages published to Redis",
                &self.published_total,
            ),
            (
                "ringcast_backplane_received_total",
                "counter",
                "Messages received from Redis",
                &self.received_total,
            ),
            (
                "ringcast_backplane_errors_total",
                "counter",
                "Backplane errors (queue full, Redis refused or unreachable, bad messages)",
                &self.errors_total,
            ),
            (
                "ringcast_backplane_reconnects_total",
                "counter",
                "Reconnections to Redis after a loss",
                &self.reconnects_total,
            ),
        ];
        for (name, kind, help, v) in rows {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let s = BackplaneStats::default();
        BackplaneStats::inc(&s.errors_total);
        s.up.store(1, Ordering::Relaxed);
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("# TYPE ringcast_backplane_up gauge\nringcast_backplane_up 1\n"));
        assert!(out.contains("\nringcast_backplane_errors_total 1\n"));
        assert!(out.contains("\nringcast_backplane_reconnects_total 0\n"));
        assert_eq!(out.lines().count(), 15);
    }
}
