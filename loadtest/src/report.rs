//! `report`: reads the JSON results of a bench run and writes markdown
//! tables (per case, with ratios of ringcast to each peer and the issue's
//! targets checked against the measured figures) and SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::stats::{fmt_us, thousands, unit_one, RunResult, NOISE};

/// Arguments of `report`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Directory with the JSON results (`*.json`, read in name order).
    #[arg(long)]
    pub input: PathBuf,
    /// Directory for the SVG charts.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Markdown file for the tables (default: OUT_DIR/tables.md).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Labels starting with this are the server under test.
    #[arg(long, default_value = "ringcast")]
    pub subject: String,
    /// Peers to compare with, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tokio-tungstenite,fastwebsockets"
    )]
    pub peers: Vec<String>,
    /// Path prefix of the charts as linked from the markdown.
    #[arg(long, default_value = "")]
    pub chart_prefix: String,
}

/// Results grouped by case, cases and labels in first-seen order.
#[derive(Debug, Default)]
pub struct Cases {
    /// Case names in order.
    pub order: Vec<String>,
    /// Runs of each case, one per label (in order of appearance).
    pub runs: BTreeMap<String, Vec<RunResult>>,
}

impl Cases {
    /// Groups results. Several runs of one label in one case (rounds) become
    /// one, with [`RunResult::combine`].
    pub fn new(results: Vec<RunResult>) -> Cases {
        let mut groups: BTreeMap<String, Vec<Vec<RunResult>>> = BTreeMap::new();
        let mut order = Vec::new();
        for r in results {
            if !groups.contains_key(&r.case) {
                order.push(r.case.clone());
            }
            let by_label = groups.entry(r.case.clone()).or_default();
            match by_label.iter_mut().find(|g| g[0].label == r.label) {
                Some(g) => g.push(r),
                None => by_label.push(vec![r]),
            }
        }
        let runs = groups
            .into_iter()
            .map(|(case, by_label)| (case, by_label.into_iter().map(RunResult::combine).collect()))
            .collect();
        Cases { order, runs }
    }

    /// The run of `label` in `case`.
    pub fn get(&self, case: &str, label: &str) -> Option<&RunResult> {
        self.runs.get(case)?.iter().find(|r| r.label == label)
    }
}

/// Reads every `*.json` result in `dir`.
pub fn load_dir(dir: &Path) -> Result<Vec<RunResult>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))
        })
        .collect()
}

/// Which figure a target looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Messages (echoes, deliveries, handshakes) per second; higher is better.
    Throughput,
    /// Server CPU-ns per message; lower is better.
    CpuNs,
    /// p99 latency; lower is better.
    P99,
    /// Server RSS per idle connection; lower is better.
    BytesPerConn,
}

impl Metric {
    fn of(self, r: &RunResult) -> Option<f64> {
        let s = &r.summary;
        let v = match self {
            Metric::Throughput => Some(s.msgs_per_sec),
            Metric::CpuNs => s.server_cpu_ns_per_msg,
            Metric::P99 => Some(s.latency.p99_us).filter(|_| s.latency.count > 0),
            Metric::BytesPerConn => r.server.as_ref().and_then(|i| i.bytes_per_conn),
        };
        v.filter(|x| x.is_finite())
    }

    fn name(self) -> &'static str {
        match self {
            Metric::Throughput => "throughput",
            Metric::CpuNs => "server CPU-ns per message",
            Metric::P99 => "p99 latency",
            Metric::BytesPerConn => "RSS per connection",
        }
    }
}

/// What a target compares against.
#[derive(Debug, Clone, PartialEq)]
pub enum Versus {
    /// ratio to one peer's figure.
    Peer(&'static str),
    /// ratio to the best peer (highest throughput).
    BestPeer,
    /// An absolute bound on the figure itself.
    Absolute,
}

/// One target of issue 6.
#[derive(Debug, Clone)]
pub struct Target {
    /// Case it reads.
    pub case: &'static str,
    /// Figure.
    pub metric: Metric,
    /// Comparison.
    pub versus: Versus,
    /// True: the value must be at most `bound`; false: at least.
    pub at_most: bool,
    /// The bound (a ratio, or bytes for absolute).
    pub bound: f64,
    /// Readable statement.
    pub text: &'static str,
}

/// The targets.
pub fn targets() -> Vec<Target> {
    use Metric::*;
    vec![
        Target {
            case: "echo-20B",
            metric: CpuNs,
            versus: Versus::Peer("tokio-tungstenite"),
            at_most: true,
            bound: 0.6,
            text: "echo 20 B: server CPU-ns/msg ≤ 0.6× tokio-tungstenite",
        },
        Target {
            case: "echo-20B",
            metric: CpuNs,
            versus: Versus::Peer("fastwebsockets"),
            at_most: true,
            bound: 0.8,
            text: "echo 20 B: server CPU-ns/msg ≤ 0.8× fastwebsockets",
        },
        Target {
            case: "echo-16KiB",
            metric: Throughput,
            versus: Versus::BestPeer,
            at_most: false,
            bound: 1.2,
            text: "echo 16 KiB: msgs/s ≥ 1.2× the better peer",
        },
        Target {
            case: "broadcast-10k",
            metric: Throughput,
            versus: Versus::Peer("tokio-tungstenite"),
            at_most: false,
            bound: 2.0,
            text: "broadcast 10k: deliveries/s ≥ 2× tokio-tungstenite",
        },
        Target {
            case: "broadcast-10k",
            metric: P99,
            versus: Versus::Peer("tokio-tungstenite"),
            at_most: true,
            bound: 1.0,
            text: "broadcast 10k: p99 latency ≤ tokio-tungstenite's",
        },
        Target {
            case: "idle-10k",
            metric: BytesPerConn,
            versus: Versus::Peer("tokio-tungstenite"),
            at_most: true,
            bound: 0.5,
            text: "idle: RSS/connection ≤ 0.5× tokio-tungstenite",
        },
        Target {
            case: "idle-10k",
            metric: BytesPerConn,
            versus: Versus::Absolute,
            at_most: true,
            bound: 4096.0,
            text: "idle: RSS/connection < 4 KiB",
        },
    ]
}

/// Outcome of a target for one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Measured ratio (or absolute value).
    pub value: f64,
    /// Met?
    pub met: bool,
    /// By how much it was missed, in percent of the bound (0 when met).
    pub missed_by_pct: f64,
}

/// Checks `t` for `subject`; `None` when a figure is missing.
pub fn evaluate(t: &Target, cases: &Cases, subject: &str, peers: &[String]) -> Option<Verdict> {
    let ours = t.metric.of(cases.get(t.case, subject)?)?;
    let value = match &t.versus {
        Versus::Absolute => ours,
        Versus::Peer(p) => ours / t.metric.of(cases.get(t.case, p)?)?,
        Versus::BestPeer => {
            let best = peers
                .iter()
                .filter_map(|p| cases.get(t.case, p).and_then(|r| t.metric.of(r)))
                .fold(f64::NAN, f64::max);
            if best.is_nan() {
                return None;
            }
            ours / best
        }
    };
    let met = if t.at_most {
        if t.versus == Versus::Absolute {
            value < t.bound
        } else {
            value <= t.bound
        }
    } else {
        value >= t.bound
    };
    let missed_by_pct = if met {
        0.0
    } else if t.at_most {
        (value / t.bound - 1.0) * 100.0
    } else {
        (1.0 - value / t.bound) * 100.0
    };
    Some(Verdict {
        value,
        met,
        missed_by_pct,
    })
}

fn fmt_metric(m: Metric, v: Option<f64>) -> String {
    match (m, v) {
        (_, None) => "–".into(),
        (Metric::P99, Some(us)) => fmt_us(us),
        (Metric::BytesPerConn, Some(b)) => format!("{} B", thousands(b)),
        (_, Some(x)) => thousands(x),
    }
}

fn verdict_cell(t: &Target, v: Option<Verdict>) -> String {
    let Some(v) = v else {
        return "not measured".into();
    };
    let shown = if t.versus == Versus::Absolute {
        format!("{} B", thousands(v.value))
    } else {
        format!("{:.3}×", v.value)
    };
    if v.met {
        format!("{shown} — **met**")
    } else {
        format!("{shown} — **missed** by {:.1}%", v.missed_by_pct)
    }
}

fn status(r: &RunResult) -> String {
    let mut s = Vec::new();
    if !r.ok {
        let mut why = r.errors.clone();
        why.extend(r.checks.examples.iter().take(1).cloned());
        s.push(format!("FAILED ({})", why.join("; ")));
    }
    if r.generator_saturated {
        s.push("generator saturated".into());
    }
    if let Some(n) = r.summary.noise().filter(|n| *n > NOISE) {
        s.push(format!(
            "noisy: other processes took {:.0}% of a pinned CPU",
            n * 100.0
        ));
    }
    if r.interrupted {
        s.push("interrupted".into());
    }
    if s.is_empty() {
        "ok".into()
    } else {
        s.join(", ")
    }
}

fn describe(r: &RunResult) -> String {
    let p = &r.params;
    let g = |k: &str| p.get(k).map(|v| v.to_string()).unwrap_or_default();
    match r.scenario.as_str() {
        "echo" => format!(
            "echo, {} connections × {} in flight, {} B {} messages",
            g("connections"),
            g("in_flight"),
            g("size"),
            if p.get("binary").and_then(|b| b.as_bool()) == Some(true) {
                "binary"
            } else {
                "text"
            }
        ),
        "broadcast" => format!(
            "broadcast, {} subscribers, {} publisher(s), {} B, {}",
            g("connections"),
            g("publishers"),
            g("size"),
            match p.get("rate").and_then(|r| r.as_f64()) {
                Some(x) if x > 0.0 => format!("{x} msgs/s"),
                _ => format!("flat out ({} in flight per publisher)", g("in_flight")),
            }
        ),
        "idle" => format!("idle, {} connections", g("connections")),
        "connect" => format!(
            "connect storm, {} connections per window, {} at a time",
            g("total"),
            g("concurrency")
        ),
        s => s.to_owned(),
    }
}

fn labels_in(cases: &Cases, case: &str, args: &ReportArgs) -> Vec<String> {
    let mut v: Vec<String> = cases.runs[case]
        .iter()
        .filter(|r| r.label.starts_with(&args.subject))
        .map(|r| r.label.clone())
        .collect();
    for p in &args.peers {
        if cases.get(case, p).is_some() {
            v.push(p.clone());
        }
    }
    for r in &cases.runs[case] {
        if !v.contains(&r.label) {
            v.push(r.label.clone());
        }
    }
    v
}

/// Markdown tables of every case, ratios and targets.
pub fn markdown(cases: &Cases, args: &ReportArgs) -> String {
    let mut md = String::new();
    for case in &cases.order {
        let runs = &cases.runs[case];
        let first = &runs[0];
        let _ = writeln!(
            md,
            "### {case}\n\n{}; {} window(s) of {:.0} s, medians.\n",
            describe(first),
            first.windows.len(),
            first.summary.secs
        );
        let labels = labels_in(cases, case, args);
        let unit = unit_one(&first.unit);
        match first.scenario.as_str() {
            "idle" => {
                md += "| server | open | RSS before | RSS after | bytes/connection | server CPU idle | status |\n|---|---:|---:|---:|---:|---:|---|\n";
                for l in &labels {
                    let r = cases.get(case, l).expect("label of case");
                    let i = r.server.clone().unwrap_or_default();
                    let _ = writeln!(
                        md,
                        "| {l} | {} | {} MiB | {} MiB | {} | {} | {} |",
                        thousands(r.connections.opened as f64),
                        format_args!("{:.1}", i.rss_before as f64 / 1048576.0),
                        format_args!("{:.1}", i.rss_after as f64 / 1048576.0),
                        fmt_metric(Metric::BytesPerConn, Metric::BytesPerConn.of(r)),
                        r.summary
                            .server_cpu
                            .map_or("–".into(), |c| format!("{:.1}%", c * 100.0)),
                        status(r)
                    );
                }
            }
            _ => {
                let _ = writeln!(md, "| server | {}/s | server CPU-ns/{unit} | server CPU | generator CPU | p50 | p90 | p99 | p99.9 | max | status |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", first.unit);
                for l in &labels {
                    let r = cases.get(case, l).expect("label of case");
                    let s = &r.summary;
                    let _ = writeln!(
                        md,
                        "| {l} | {} | {} | {} | {:.0}% | {} | {} | {} | {} | {} | {} |",
                        thousands(s.msgs_per_sec),
                        fmt_metric(Metric::CpuNs, s.server_cpu_ns_per_msg),
                        s.server_cpu
                            .map_or("–".into(), |c| format!("{:.0}%", c * 100.0)),
                        s.generator_cpu * 100.0,
                        fmt_us(s.latency.p50_us),
                        fmt_us(s.latency.p90_us),
                        fmt_us(s.latency.p99_us),
                        fmt_us(s.latency.p999_us),
                        fmt_us(s.latency.max_us),
                        status(r)
                    );
                }
            }
        }
        // Ratios of each subject to each peer.
        let subjects: Vec<&String> = labels
            .iter()
            .filter(|l| l.starts_with(&args.subject))
            .collect();
        let peers: Vec<&String> = args
            .peers
            .iter()
            .filter(|p| cases.get(case, p).is_some())
            .collect();
        if !subjects.is_empty() && !peers.is_empty() {
            let metrics: &[Metric] = if first.scenario == "idle" {
                &[Metric::BytesPerConn]
            } else {
                &[Metric::Throughput, Metric::CpuNs, Metric::P99]
            };
            md += "\nRatios (ringcast ÷ peer; throughput: higher is better, the others: lower is better):\n\n| | ";
            md += &peers
                .iter()
                .map(|p| format!("vs {p}"))
                .collect::<Vec<_>>()
                .join(" | ");
            md += " |\n|---|";
            md += &"---:|".repeat(peers.len());
            md += "\n";
            for s in &subjects {
                for m in metrics {
                    let ours = cases.get(case, s).and_then(|r| m.of(r));
                    let cells: Vec<String> = peers
                        .iter()
                        .map(|p| match (ours, cases.get(case, p).and_then(|r| m.of(r))) {
                            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                            _ => "–".into(),
                        })
                        .collect();
                    let _ = writeln!(md, "| {s} {} | {} |", m.name(), cells.join(" | "));
                }
            }
        }
        md += "\n";
    }
    md
}

/// The targets table.
pub fn targets_markdown(cases: &Cases, args: &ReportArgs) -> String {
    let subjects: Vec<String> = cases
        .order
        .iter()
        .flat_map(|c| cases.runs[c].iter().map(|r| r.label.clone()))
        .filter(|l| l.starts_with(&args.subject))
        .fold(Vec::new(), |mut v, l| {
            if !v.contains(&l) {
                v.push(l)
            }
            v
        });
    let mut md = String::from("| target | ");
    md += &subjects.join(" | ");
    md += " |\n|---|";
    md += &"---|".repeat(subjects.len());
    md += "\n";
    for t in targets() {
        let cells: Vec<String> = subjects
            .iter()
            .map(|s| {
                let mut cell = verdict_cell(&t, evaluate(&t, cases, s, &args.peers));
                if let Some(caveat) = caveat(&t, cases, s, &args.peers) {
                    cell += &format!(" ({caveat})");
                }
                cell
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", t.text, cells.join(" | "));
    }
    md += "\n\"gen. saturated\": the generator used ≥ 95% of its CPU in that run, so the \
           throughput and the server's load were limited by the generator. \"noisy\": other \
           processes took more than 10% of the server's or the generator's CPU during the \
           windows. Either makes the verdict less certain; the figures are still the measured \
           ones.\n";
    md
}

fn is_noisy(r: &RunResult) -> bool {
    r.summary.noise().is_some_and(|n| n > NOISE)
}

/// Why a verdict is less certain: a saturated generator or a noisy
/// machine in any run the target compares.
fn caveat(t: &Target, cases: &Cases, subject: &str, peers: &[String]) -> Option<String> {
    if t.metric == Metric::BytesPerConn {
        return None;
    }
    let mut labels = vec![subject.to_owned()];
    match &t.versus {
        Versus::Peer(p) => labels.push((*p).to_owned()),
        Versus::BestPeer => labels.extend(peers.iter().cloned()),
        Versus::Absolute => {}
    }
    let runs: Vec<&RunResult> = labels.iter().filter_map(|l| cases.get(t.case, l)).collect();
    let mut why = Vec::new();
    let sat: Vec<&str> = runs
        .iter()
        .filter(|r| r.generator_saturated)
        .map(|r| r.label.as_str())
        .collect();
    if !sat.is_empty() {
        why.push(format!("gen. saturated: {}", sat.join(", ")));
    }
    let noisy: Vec<&str> = runs
        .iter()
        .filter(|r| is_noisy(r))
        .map(|r| r.label.as_str())
        .collect();
    if !noisy.is_empty() {
        why.push(format!("noisy: {}", noisy.join(", ")));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// The compact summary table printed at the end of `make bench`.
pub fn summary_markdown(cases: &Cases, args: &ReportArgs) -> String {
    let mut labels: Vec<String> = Vec::new();
    for c in &cases.order {
        for l in labels_in(cases, c, args) {
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
    }
    let mut md = String::from("| case | figure | ");
    md += &labels.join(" | ");
    md += " |\n|---|---|";
    md += &"---:|".repeat(labels.len());
    md += "\n";
    for case in &cases.order {
        let first = &cases.runs[case][0];
        let rows: Vec<(String, Metric)> = match first.scenario.as_str() {
            "idle" => vec![("bytes/connection".into(), Metric::BytesPerConn)],
            _ => vec![
                (format!("{}/s", first.unit), Metric::Throughput),
                (format!("CPU-ns/{}", unit_one(&first.unit)), Metric::CpuNs),
                ("p99".into(), Metric::P99),
            ],
        };
        for (name, m) in rows {
            let cells: Vec<String> = labels
                .iter()
                .map(|l| {
                    let Some(r) = cases.get(case, l) else {
                        return "–".into();
                    };
                    let mut s = fmt_metric(m, m.of(r));
                    if !r.ok {
                        s += " ✗";
                    }
                    if r.generator_saturated && m != Metric::BytesPerConn {
                        s += " (gen sat.)";
                    }
                    if m == Metric::Throughput && is_noisy(r) {
                        s += " (noisy)";
                    }
                    s
                })
                .collect();
            let _ = writeln!(md, "| {case} | {name} | {} |", cells.join(" | "));
        }
    }
    md
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const COLORS: [RGBColor; 6] = [
    RGBColor(0xd9, 0x5f, 0x02),
    RGBColor(0xe6, 0xab, 0x02),
    RGBColor(0x1b, 0x9e, 0x77),
    RGBColor(0x75, 0x70, 0xb3),
    RGBColor(0x66, 0x66, 0x66),
    RGBColor(0xe7, 0x29, 0x8a),
];

fn short(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn bar_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    y_desc: &str,
    bars: &[(String, f64)],
) -> Res<()> {
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9) * 1.18;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_desc)
        .y_label_formatter(&|y| short(*y))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 11))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        let mut r = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *v),
            ],
            COLORS[i % COLORS.len()].filled(),
        );
        r.set_margin(0, 0, 12, 12);
        r
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        Text::new(
            short(*v),
            (SegmentValue::CenterOf(i), v + top * 0.02),
            ("sans-serif", 12),
        )
    }))?;
    Ok(())
}

/// A chart panel: title, y axis name, bars (label, value).
type Panel = (String, String, Vec<(String, f64)>);

fn bars_chart(path: &Path, panels: &[Panel]) -> Res<()> {
    if panels.is_empty() {
        return Ok(());
    }
    let cols = panels.len().min(3);
    let rows = panels.len().div_ceil(cols);
    let root = SVGBackend::new(path, (420 * cols as u32, 300 * rows as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((rows, cols));
    for (area, (title, y, bars)) in areas.iter().zip(panels) {
        bar_panel(area, title, y, bars)?;
    }
    root.present()?;
    Ok(())
}

/// x position of a percentile on a "number of nines" axis.
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-6).log10()
}

fn latency_chart(path: &Path, title: &str, curves: &[(String, Vec<[f64; 2]>)]) -> Res<()> {
    let pts: Vec<(usize, f64, f64)> = curves
        .iter()
        .enumerate()
        .flat_map(|(i, (_, c))| {
            c.iter()
                .filter(|p| p[0] < 100.0)
                .map(move |p| (i, nines(p[0]), p[1].max(0.1)))
        })
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    let lo = pts.iter().map(|p| p.2).fold(f64::INFINITY, f64::min) * 0.8;
    let hi = pts.iter().map(|p| p.2).fold(0.0, f64::max) * 1.25;
    let x_hi = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(3.0);
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_hi, (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (log scale)")
        .x_labels(x_hi as usize + 1)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            match x.round() as i32 {
                0 => "p0".into(),
                1 => "p90".into(),
                2 => "p99".into(),
                3 => "p99.9".into(),
                4 => "p99.99".into(),
                5 => "p99.999".into(),
                _ => format!("p{p:.3}"),
            }
        })
        .y_label_formatter(&|y| fmt_us(*y))
        .draw()?;
    for (i, (label, c)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line: Vec<(f64, f64)> = c
            .iter()
            .filter(|p| p[0] < 100.0)
            .map(|p| (nines(p[0]), p[1].max(0.1)))
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes every chart; returns the file names written.
pub fn charts(cases: &Cases, args: &ReportArgs) -> Res<Vec<String>> {
    std::fs::create_dir_all(&args.out_dir)?;
    let mut written = Vec::new();
    let mut tput = Vec::new();
    let mut cpu = Vec::new();
    let mut mem = Vec::new();
    for case in &cases.order {
        let labels = labels_in(cases, case, args);
        let first = &cases.runs[case][0];
        let get = |m: Metric| -> Vec<(String, f64)> {
            labels
                .iter()
                .filter_map(|l| {
                    let v = m.of(cases.get(case, l)?)?;
                    Some((
                        l.replace("ringcast-", "rc-")
                            .replace("tokio-tungstenite", "tungstenite")
                            .replace("fastwebsockets", "fastws"),
                        v,
                    ))
                })
                .collect()
        };
        if first.scenario == "idle" {
            mem.push((
                case.clone(),
                "bytes per connection".into(),
                get(Metric::BytesPerConn),
            ));
            continue;
        }
        tput.push((
            case.clone(),
            format!("{}/s", first.unit),
            get(Metric::Throughput),
        ));
        cpu.push((
            case.clone(),
            format!("server CPU-ns/{}", unit_one(&first.unit)),
            get(Metric::CpuNs),
        ));
        let curves: Vec<(String, Vec<[f64; 2]>)> = labels
            .iter()
            .filter_map(|l| {
                cases
                    .get(case, l)
                    .map(|r| (l.clone(), r.latency_curve.clone()))
            })
            .filter(|c| !c.1.is_empty())
            .collect();
        let name = format!("latency-{case}.svg");
        let what = if first.scenario == "broadcast" {
            "publish → receive"
        } else if first.scenario == "connect" {
            "connect + upgrade"
        } else {
            "round trip"
        };
        latency_chart(
            &args.out_dir.join(&name),
            &format!("{case}: {what} latency"),
            &curves,
        )?;
        written.push(name);
    }
    for (name, panels) in [
        ("throughput.svg", &tput),
        ("cpu-per-message.svg", &cpu),
        ("idle-memory.svg", &mem),
    ] {
        let panels: Vec<_> = panels.iter().filter(|p| !p.2.is_empty()).cloned().collect();
        if !panels.is_empty() {
            bars_chart(&args.out_dir.join(name), &panels)?;
            written.push(name.to_owned());
        }
    }
    Ok(written)
}

/// Runs the subcommand: tables to `--markdown`, charts to `--out-dir`,
/// and the summary table on stdout.
pub fn run(args: &ReportArgs) -> Result<(), String> {
    let results = load_dir(&args.input)?;
    if results.is_empty() {
        return Err(format!("no JSON results in {}", args.input.display()));
    }
    let cases = Cases::new(results);
    let written = charts(&cases, args).map_err(|e| format!("charts: {e}"))?;
    let mut md = String::from("## Targets\n\n");
    md += &targets_markdown(&cases, args);
    md += "\n## Summary\n\n";
    let summary = summary_markdown(&cases, args);
    md += &summary;
    md += "\n## Charts\n\n";
    for w in &written {
        let _ = writeln!(md, "![{w}]({}{w})\n", args.chart_prefix);
    }
    md += "## Results per case\n\n";
    md += &markdown(&cases, args);
    let path = args
        .markdown
        .clone()
        .unwrap_or_else(|| args.out_dir.join("tables.md"));
    std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("{summary}");
    println!("{}", targets_markdown(&cases, args));
    Ok(())
}

/// Arguments of `criterion-table`.
#[derive(clap::Args, Debug, Clone)]
pub struct CriterionArgs {
    /// Criterion's output directory.
    #[arg(long, default_value = "target/criterion")]
    pub dir: PathBuf,
    /// Only benchmarks measured at or after this Unix time (seconds).
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Markdown file to write (stdout when absent).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// One criterion benchmark's median.
#[derive(Debug, Clone, PartialEq)]
pub struct CriterionRow {
    /// `group/function/parameter`.
    pub id: String,
    /// Median time per iteration, ns.
    pub median_ns: f64,
    /// Bytes or elements per iteration, when declared.
    pub throughput: Option<(String, f64)>,
}

fn collect_criterion(dir: &Path, since: u64, rows: &mut Vec<CriterionRow>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        let (bench, est) = (p.join("new/benchmark.json"), p.join("new/estimates.json"));
        let fresh = std::fs::metadata(&est)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .is_some_and(|d| d.as_secs() >= since);
        if fresh {
            let read = |f: &Path| -> Option<serde_json::Value> {
                serde_json::from_str(&std::fs::read_to_string(f).ok()?).ok()
            };
            if let (Some(b), Some(s)) = (read(&bench), read(&est)) {
                let id = b["full_id"].as_str().unwrap_or_default().to_owned();
                let median_ns = s["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
                let throughput = b["throughput"].as_object().and_then(|t| {
                    let (k, v) = t.iter().next()?;
                    Some((k.clone(), v.as_f64()?))
                });
                rows.push(CriterionRow {
                    id,
                    median_ns,
                    throughput,
                });
            }
        }
        if p.file_name()
            .is_some_and(|n| n != "report" && n != "new" && n != "base")
        {
            collect_criterion(&p, since, rows);
        }
    }
}

/// Markdown table of the criterion medians under `dir`.
pub fn criterion_markdown(dir: &Path, since: u64) -> String {
    let mut rows = Vec::new();
    collect_criterion(dir, since, &mut rows);
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows.dedup_by(|a, b| a.id == b.id);
    if rows.is_empty() {
        return "No criterion results were produced in this run.\n".into();
    }
    let mut md = String::from("| benchmark | median time | throughput |\n|---|---:|---:|\n");
    for r in rows {
        let time = if r.median_ns >= 1e6 {
            format!("{:.2} ms", r.median_ns / 1e6)
        } else if r.median_ns >= 1e3 {
            format!("{:.2} µs", r.median_ns / 1e3)
        } else {
            format!("{:.1} ns", r.median_ns)
        };
        let tput = match &r.throughput {
            Some((k, n)) if k == "Bytes" => {
                format!("{:.2} GiB/s", n / r.median_ns * 1e9 / 1073741824.0)
            }
            Some((_, n)) => format!("{:.1} M/s", n / r.median_ns * 1e3),
            None => "–".into(),
        };
        let _ = writeln!(md, "| {} | {time} | {tput} |", r.id);
    }
    md
}

/// Runs `criterion-table`.
pub fn run_criterion(args: &CriterionArgs) -> Result<(), String> {
    let md = criterion_markdown(&args.dir, args.since);
    match &args.markdown {
        Some(p) => std::fs::write(p, md).map_err(|e| format!("{}: {e}", p.display())),
        None => {
            print!("{md}");
            Ok(())
        }
    }
}
