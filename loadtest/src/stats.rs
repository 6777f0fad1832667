//! Results: latency summaries from hdrhistogram, measurement windows, the
//! median over repeated windows, and the JSON document every run writes.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::engine::ConnStats;

/// A latency histogram in nanoseconds: 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Records `ns`, clamped into the histogram's range.
#[inline]
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, h.high()));
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// 50th percentile.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl Latency {
    /// Summary of a nanosecond histogram.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Percentiles at which latency curves are sampled.
pub const CURVE_PERCENTILES: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// `[percentile, microseconds]` points of a histogram, for charts.
pub fn latency_curve(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    CURVE_PERCENTILES
        .iter()
        .map(|&p| [p, h.value_at_percentile(p) as f64 / 1000.0])
        .collect()
}

/// Median of several latency curves at each percentile; curves taken on
/// another percentile grid (or empty) are left out.
pub fn median_curve(curves: &[Vec<[f64; 2]>]) -> Vec<[f64; 2]> {
    let Some(grid) = curves.iter().find(|c| !c.is_empty()) else {
        return Vec::new();
    };
    let same: Vec<_> = curves
        .iter()
        .filter(|c| c.len() == grid.len() && c.iter().zip(grid).all(|(a, b)| a[0] == b[0]))
        .collect();
    grid.iter()
        .enumerate()
        .map(|(i, &[p, _])| [p, median(&same.iter().map(|c| c[i][1]).collect::<Vec<_>>())])
        .collect()
}

/// A histogram as `(value, count)` pairs, so worker processes can send
/// theirs to the parent in JSON.
pub fn histogram_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds pairs from [`histogram_to_pairs`] into `h`.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs {
        let _ = h.record_n(v.clamp(1, h.high()), n);
    }
}

/// One measurement window: what happened between two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Wall-clock length.
    pub secs: f64,
    /// Messages counted (echoes received, deliveries, or handshakes).
    pub messages: u64,
    /// `messages / secs`.
    pub msgs_per_sec: f64,
    /// Payload megabytes (10^6) per second sent by the generator.
    pub mb_per_sec_out: f64,
    /// Payload megabytes per second received by the generator.
    pub mb_per_sec_in: f64,
    /// Generator CPU time / wall time (1.0 = one core busy).
    pub generator_cpu: f64,
    /// Server CPU time / wall time, with `--server-pid`.
    pub server_cpu: Option<f64>,
    /// Server CPU nanoseconds per counted message, with `--server-pid`.
    pub server_cpu_ns_per_msg: Option<f64>,
    /// Share of the generator's CPU used by other processes in this window
    /// (when the generator is pinned to one CPU): noise from elsewhere.
    #[serde(default)]
    pub generator_cpu_other: Option<f64>,
    /// Same for the server's CPU (when it is pinned to one CPU).
    #[serde(default)]
    pub server_cpu_other: Option<f64>,
    /// Latency of the messages counted in this window.
    pub latency: Latency,
}

/// Median of `xs` (mean of the two middle values for an even count).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn median_opt(xs: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Option<Vec<f64>> = xs.collect();
    v.filter(|v| !v.is_empty()).map(|v| median(&v))
}

/// Field-by-field median of several windows (each figure is the median of
/// that figure, so the result need not be one of the windows).
pub fn median_window(ws: &[Window]) -> Window {
    let f = |g: fn(&Window) -> f64| median(&ws.iter().map(g).collect::<Vec<_>>());
    Window {
        secs: f(|w| w.secs),
        messages: f(|w| w.messages as f64) as u64,
        msgs_per_sec: f(|w| w.msgs_per_sec),
        mb_per_sec_out: f(|w| w.mb_per_sec_out),
        mb_per_sec_in: f(|w| w.mb_per_sec_in),
        generator_cpu: f(|w| w.generator_cpu),
        server_cpu: median_opt(ws.iter().map(|w| w.server_cpu)),
        server_cpu_ns_per_msg: median_opt(ws.iter().map(|w| w.server_cpu_ns_per_msg)),
        generator_cpu_other: median_opt(ws.iter().map(|w| w.generator_cpu_other)),
        server_cpu_other: median_opt(ws.iter().map(|w| w.server_cpu_other)),
        latency: Latency {
            count: f(|w| w.latency.count as f64) as u64,
            mean_us: f(|w| w.latency.mean_us),
            p50_us: f(|w| w.latency.p50_us),
            p90_us: f(|w| w.latency.p90_us),
            p99_us: f(|w| w.latency.p99_us),
            p999_us: f(|w| w.latency.p999_us),
            max_us: f(|w| w.latency.max_us),
        },
    }
}

/// Correctness checks of a run. Any non-zero error field fails the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checks {
    /// Echo: messages compared byte for byte.
    pub verified: u64,
    /// Echo: echoes that differed from what was sent.
    pub mismatches: u64,
    /// Broadcast: deliveries expected (published × subscribers in the room).
    pub expected: u64,
    /// Broadcast: deliveries received.
    pub received: u64,
    /// Broadcast: expected deliveries that never arrived.
    pub lost: u64,
    /// Broadcast: deliveries whose sequence number was not above the last
    /// one from that publisher (duplicated or out of order).
    pub duplicated_or_reordered: u64,
    /// Broadcast over `/chat`: room sequence numbers that went backwards.
    pub room_order_violations: u64,
    /// Payloads that did not parse or had corrupted filler.
    pub corrupted: u64,
    /// Unexpected messages (e.g. data on an idle connection).
    pub unexpected: u64,
    /// First few problems, readable.
    pub examples: Vec<String>,
}

impl Checks {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.mismatches == 0
            && self.lost == 0
            && self.duplicated_or_reordered == 0
            && self.room_order_violations == 0
            && self.corrupted == 0
    }

    /// Keeps up to 8 readable examples.
    pub fn example(&mut self, s: impl FnOnce() -> String) {
        if self.examples.len() < 8 {
            self.examples.push(s());
        }
    }
}

/// Server-side figures taken from /proc with `--server-pid`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The process measured.
    pub pid: u32,
    /// RSS before the connections were opened.
    pub rss_before: u64,
    /// RSS after they settled (idle) or at the end (other scenarios).
    pub rss_after: u64,
    /// Idle: `(rss_after - rss_before) / connections`.
    pub bytes_per_conn: Option<f64>,
}

/// Everything one run reports; `--json` prints it and `report` reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// `echo`, `broadcast`, `connect` or `idle`.
    pub scenario: String,
    /// Benchmark case this run belongs to (groups runs in `report`).
    pub case: String,
    /// Server under test, e.g. `ringcast-io-uring`.
    pub label: String,
    /// Target URL.
    pub url: String,
    /// Scenario parameters as given.
    pub params: serde_json::Value,
    /// Unit of `messages` (`echoes`, `deliveries`, `handshakes`).
    pub unit: String,
    /// Each repetition.
    pub windows: Vec<Window>,
    /// Field-by-field median of `windows`.
    pub summary: Window,
    /// Latency curve over all windows together.
    pub latency_curve: Vec<[f64; 2]>,
    /// Connection counters.
    pub connections: ConnStats,
    /// Correctness checks.
    pub checks: Checks,
    /// Server RSS and memory per connection.
    pub server: Option<ServerInfo>,
    /// Generator processes used.
    pub processes: usize,
    /// True when the generator's CPU share reached the saturation threshold
    /// in any window: the figures then measure the generator too.
    pub generator_saturated: bool,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
    /// Run-level problems (connect failures, drops, ...).
    pub errors: Vec<String>,
    /// True when checks passed and no errors occurred.
    pub ok: bool,
}

/// A generator at or above this CPU share (of the cores it may use) is
/// considered saturated.
pub const SATURATION: f64 = 0.95;

/// Other processes using more than this share of the server's or the
/// generator's CPU make a window noisy (flagged, not discarded).
pub const NOISE: f64 = 0.10;

impl Window {
    /// The larger of the two "other load" shares, if known.
    pub fn noise(&self) -> Option<f64> {
        match (self.server_cpu_other, self.generator_cpu_other) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0).max(b.unwrap_or(0.0))),
        }
    }
}

/// Formats a count with thousands separators.
pub fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Human duration from microseconds.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.1} µs")
    }
}

impl RunResult {
    /// One result from several runs of the same case against the same
    /// server (the rounds of an interleaved `make bench`): all their
    /// windows, the summary recomputed as the median over them, the
    /// latency curve as the median at each percentile, counters and checks
    /// summed, flags and errors from any run.
    pub fn combine(mut runs: Vec<RunResult>) -> RunResult {
        let mut all = runs.remove(0);
        let mut curves = vec![std::mem::take(&mut all.latency_curve)];
        for r in runs {
            all.windows.extend(r.windows);
            curves.push(r.latency_curve);
            all.connections += r.connections;
            let c = &mut all.checks;
            c.verified += r.checks.verified;
            c.mismatches += r.checks.mismatches;
            c.expected += r.checks.expected;
            c.received += r.checks.received;
            c.lost += r.checks.lost;
            c.duplicated_or_reordered += r.checks.duplicated_or_reordered;
            c.room_order_violations += r.checks.room_order_violations;
            c.corrupted += r.checks.corrupted;
            c.unexpected += r.checks.unexpected;
            for e in r.checks.examples {
                c.example(|| e);
            }
            all.generator_saturated |= r.generator_saturated;
            all.interrupted |= r.interrupted;
            all.errors.extend(r.errors);
            all.ok &= r.ok;
        }
        all.summary = median_window(&all.windows);
        all.latency_curve = median_curve(&curves);
        all
    }

    /// The one-line summary printed after every run.
    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        let mut line = format!("{} {} [{}]:", self.scenario, self.label, self.case);
        match self.scenario.as_str() {
            "idle" => {
                line += &format!(" {} connections held", self.connections.opened);
                if let Some(b) = self.server.as_ref().and_then(|i| i.bytes_per_conn) {
                    line += &format!(", server {} bytes/connection", thousands(b));
                }
            }
            _ => {
                line += &format!(" {} {}/s", thousands(s.msgs_per_sec), self.unit);
                if self.scenario == "echo" {
                    line += &format!(
                        ", {:.1}/{:.1} MB/s out/in",
                        s.mb_per_sec_out, s.mb_per_sec_in
                    );
                }
                if s.latency.count > 0 {
                    line += &format!(
                        ", p50 {} p90 {} p99 {} p99.9 {} max {}",
                        fmt_us(s.latency.p50_us),
                        fmt_us(s.latency.p90_us),
                        fmt_us(s.latency.p99_us),
                        fmt_us(s.latency.p999_us),
                        fmt_us(s.latency.max_us)
                    );
                }
            }
        }
        if let Some(ns) = s.server_cpu_ns_per_msg {
            line += &format!(", server {} CPU-ns/{}", thousands(ns), unit_one(&self.unit));
        }
        if let Some(c) = s.server_cpu {
            line += &format!(" (server CPU {:.0}%)", c * 100.0);
        }
        line += &format!(", generator CPU {:.0}%", s.generator_cpu * 100.0);
        if self.generator_saturated {
            line += " [GENERATOR SATURATED]";
        }
        if s.noise().is_some_and(|n| n > NOISE) {
            let mut parts = Vec::new();
            if let Some(x) = s.server_cpu_other {
                parts.push(format!("{:.0}% of the server's CPU", x * 100.0));
            }
            if let Some(x) = s.generator_cpu_other {
                parts.push(format!("{:.0}% of the generator's", x * 100.0));
            }
            line += &format!(" [noisy: other processes took {}]", parts.join(", "));
        }
        if self.interrupted {
            line += " [interrupted]";
        }
        line += if self.ok { " — ok" } else { " — FAILED" };
        if !self.ok {
            let mut why: Vec<String> = self.errors.clone();
            why.extend(self.checks.examples.iter().take(2).cloned());
            if !why.is_empty() {
                line += &format!(" ({})", why.join("; "));
            }
        }
        line
    }
}

/// Singular of a unit name (`echoes` → `echo`).
pub fn unit_one(unit: &str) -> &str {
    match unit {
        "echoes" => "echo",
        "deliveries" => "delivery",
        u => u.strip_suffix('s').unwrap_or(u),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_histogram() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            record(&mut h, us * 1000);
        }
        let l = Latency::from_histogram(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.p999_us - 999.0).abs() < 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() < 1.0, "{l:?}");
        let curve = latency_curve(&h);
        assert_eq!(curve.len(), CURVE_PERCENTILES.len());
        assert!(curve.windows(2).all(|w| w[0][1] <= w[1][1]));
    }

    #[test]
    fn histogram_pairs_round_trip() {
        let mut h = new_histogram();
        for v in [5, 5, 70, 12_345, 9_999_999] {
            record(&mut h, v);
        }
        let mut back = new_histogram();
        add_pairs(&mut back, &histogram_to_pairs(&h));
        assert_eq!(back.len(), h.len());
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let w = |r: f64, cpu: Option<f64>| Window {
            msgs_per_sec: r,
            server_cpu: cpu,
            ..Window::default()
        };
        let m = median_window(&[w(10.0, Some(0.5)), w(30.0, Some(0.9)), w(20.0, Some(0.7))]);
        assert_eq!(m.msgs_per_sec, 20.0);
        assert_eq!(m.server_cpu, Some(0.7));
        assert_eq!(median_window(&[w(1.0, None)]).server_cpu, None);
    }

    #[test]
    fn rounds_combine_into_one_result() {
        let run = |rate: f64, p99: f64, verified: u64, ok: bool| RunResult {
            label: "x".into(),
            windows: vec![Window {
                msgs_per_sec: rate,
                ..Window::default()
            }],
            latency_curve: vec![[50.0, p99 / 2.0], [99.0, p99]],
            checks: Checks {
                verified,
                mismatches: u64::from(!ok),
                ..Checks::default()
            },
            ok,
            ..RunResult::default()
        };
        let all = RunResult::combine(vec![
            run(10.0, 4.0, 5, true),
            run(30.0, 8.0, 6, true),
            run(20.0, 6.0, 7, false),
        ]);
        assert_eq!(all.windows.len(), 3);
        assert_eq!(all.summary.msgs_per_sec, 20.0);
        assert_eq!(all.latency_curve, vec![[50.0, 3.0], [99.0, 6.0]]);
        assert_eq!(all.checks.verified, 18);
        assert_eq!(all.checks.mismatches, 1);
        assert!(!all.ok, "one failed round fails the whole");
        // A curve on another grid is left out rather than mixed in.
        let odd = vec![[90.0, 100.0]];
        assert_eq!(
            median_curve(&[vec![[99.0, 1.0]], odd, vec![[99.0, 3.0]]]),
            vec![[99.0, 2.0]]
        );
    }

    #[test]
    fn json_round_trip_and_summary() {
        let r = RunResult {
            scenario: "echo".into(),
            case: "echo-20B".into(),
            label: "x".into(),
            unit: "echoes".into(),
            summary: Window {
                msgs_per_sec: 123_456.0,
                server_cpu_ns_per_msg: Some(2500.0),
                ..Window::default()
            },
            ok: true,
            ..RunResult::default()
        };
        let text = serde_json::to_string(&r).unwrap();
        let back: RunResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let line = r.summary_line();
        assert!(line.contains("123,456 echoes/s"), "{line}");
        assert!(line.contains("2,500 CPU-ns/echo"), "{line}");
        assert!(line.ends_with("ok"), "{line}");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(12.0), "12");
    }
}
