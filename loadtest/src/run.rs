//! Options shared by every scenario and the timed runner used by `echo` and
//! `broadcast`: connect, warm up, measure `--repeat` windows, drain, close.

use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::clock::{now_ns, secs_to_ns};
use crate::engine::{Engine, EngineConfig, Handler};
use crate::stats::{self, Checks, Latency, RunResult, ServerInfo, Window};
use crate::sys;
use crate::target::{parse_source_addrs, Target};

/// File descriptors kept free for the epoll fd, stdio and friends.
const FD_MARGIN: u64 = 64;

/// Options every scenario takes.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Server URL (loopback only). Defaults to the scenario's route on 127.0.0.1:9502.
    #[arg(long)]
    pub url: Option<String>,
    /// Measured seconds per window.
    #[arg(long, short = 'd', default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Measurement windows; the summary is their field-by-field median.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// PID of the server, to report its CPU use (and RSS) from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Loopback source addresses to spread connections over, e.g.
    /// `127.0.0.1,127.0.0.2` or `127.0.0.1-8` (each gives ~28k ports).
    #[arg(long)]
    pub source_addrs: Option<String>,
    /// Connections connecting at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds a connect + upgrade may take.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Largest message accepted from the server.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_message_size: usize,
    /// Pin the generator to this CPU (same as running it under `taskset -c N`).
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Name of the server under test, for reports (default: from the URL).
    #[arg(long)]
    pub label: Option<String>,
    /// Benchmark case name, for reports (default: the scenario name).
    #[arg(long)]
    pub case: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON result to this file.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl Common {
    /// The target, from `--url` or the scenario's default path.
    pub fn target(&self, default_path: &str) -> Result<Target, String> {
        match &self.url {
            Some(u) => Target::parse(u),
            None => Target::parse(&format!("ws://127.0.0.1:9502{default_path}")),
        }
    }

    /// Parsed `--source-addrs` (empty: kernel's choice).
    pub fn sources(&self) -> Result<Vec<Ipv4Addr>, String> {
        self.source_addrs
            .as_deref()
            .map_or(Ok(Vec::new()), parse_source_addrs)
    }

    /// Engine settings for this run.
    pub fn engine_config(&self, target: Target, seed_salt: u64) -> Result<EngineConfig, String> {
        Ok(EngineConfig {
            target,
            sources: self.sources()?,
            connect_timeout_ns: secs_to_ns(self.connect_timeout),
            max_message_size: self.max_message_size,
            seed: now_ns() ^ u64::from(std::process::id()).rotate_left(32) ^ seed_salt,
        })
    }

    /// Applies `--cpu` and raises the open-file limit; checks that
    /// `connections` sockets fit in this process.
    pub fn prepare(&self, connections: usize) -> Result<(), String> {
        if let Some(cpu) = self.cpu {
            sys::pin_to_cpu(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
        }
        let limit = sys::raise_nofile_limit();
        if connections as u64 + FD_MARGIN > limit {
            return Err(format!(
                "{connections} connections need more than this process's open-file limit \
                 ({limit}); use more generator processes (--processes, idle/connect only)"
            ));
        }
        Ok(())
    }

    /// Report label: `--label` or host:port.
    pub fn label(&self, target: &Target) -> String {
        self.label.clone().unwrap_or_else(|| target.host.clone())
    }
}

/// Progress bar on stderr: hidden when stderr is not a terminal or `--quiet`.
pub fn progress(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Cumulative counters of a load scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Messages counted for throughput (echoes or deliveries).
    pub messages: u64,
    /// Payload bytes sent.
    pub payload_out: u64,
    /// Payload bytes received.
    pub payload_in: u64,
}

/// A timed load scenario driven by [`run_load`].
pub trait Load: Handler {
    /// Unit of `Counters::messages` (plural).
    fn unit(&self) -> &'static str;
    /// True once every connection is ready for load (e.g. joined its room).
    fn ready(&self, _engine: &Engine) -> bool {
        true
    }
    /// Start sending.
    fn start(&mut self, engine: &mut Engine);
    /// Called after every poll; sends what is due. Returns the poll timeout
    /// (ms) until something is next due.
    fn tick(&mut self, engine: &mut Engine) -> u16;
    /// Counters so far.
    fn counters(&self) -> Counters;
    /// Latencies recorded since the last call (resets them).
    fn take_histogram(&mut self) -> Histogram<u64>;
    /// Stop sending new messages.
    fn stop(&mut self);
    /// True when nothing sent is still expected back.
    fn drained(&self) -> bool;
    /// Final correctness checks.
    fn checks(&mut self) -> Checks;
}

/// CPU readings at one instant: ours, the server's, and the busy ticks of
/// the CPUs each is pinned to (to see other processes' load there).
#[derive(Clone, Copy, Debug)]
pub struct CpuSnap {
    /// Monotonic time.
    pub t: u64,
    /// Generator CPU time (ns).
    pub gen_cpu: u64,
    /// Server CPU time (ns).
    pub server_cpu: Option<u64>,
    gen_ticks: Option<(u64, u64)>,
    server_ticks: Option<(u64, u64)>,
}

/// Which CPUs to watch: the generator's and the server's, when each is
/// pinned to one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpus {
    gen: Option<usize>,
    server: Option<usize>,
    pid: Option<u32>,
}

impl Cpus {
    /// Looks up the pinning of this process and of `server_pid`.
    pub fn detect(server_pid: Option<u32>) -> Cpus {
        Cpus {
            gen: sys::pinned_cpu(0),
            server: server_pid.and_then(sys::pinned_cpu),
            pid: server_pid,
        }
    }

    /// Reads everything now.
    pub fn snap(&self) -> CpuSnap {
        CpuSnap {
            t: now_ns(),
            gen_cpu: sys::self_cpu_ns(),
            server_cpu: self.pid.and_then(|p| sys::proc_cpu_ns(p).ok()),
            gen_ticks: self.gen.and_then(sys::cpu_ticks),
            server_ticks: self.server.and_then(sys::cpu_ticks),
        }
    }
}

impl CpuSnap {
    /// Fills the CPU fields of `w` from `self` to `b`; `messages` divides
    /// the server's CPU time.
    pub fn fill(&self, b: &CpuSnap, messages: u64, w: &mut Window) {
        let secs = (b.t - self.t) as f64 / 1e9;
        let server = match (self.server_cpu, b.server_cpu) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x)),
            _ => None,
        };
        w.secs = secs;
        w.generator_cpu = (b.gen_cpu - self.gen_cpu) as f64 / 1e9 / secs;
        w.server_cpu = server.map(|ns| ns as f64 / 1e9 / secs);
        w.server_cpu_ns_per_msg = server
            .filter(|_| messages > 0)
            .map(|ns| ns as f64 / messages as f64);
        let other = |a: Option<(u64, u64)>, b: Option<(u64, u64)>, own: Option<f64>| {
            let busy = sys::busy_between(a?, b?)?;
            Some((busy - own?).max(0.0))
        };
        w.generator_cpu_other = other(self.gen_ticks, b.gen_ticks, Some(w.generator_cpu));
        w.server_cpu_other = other(self.server_ticks, b.server_ticks, w.server_cpu);
    }
}

#[derive(Clone, Copy)]
struct Snap {
    c: Counters,
    cpu: CpuSnap,
}

fn snap(load: &impl Load, cpus: &Cpus) -> Snap {
    Snap {
        c: load.counters(),
        cpu: cpus.snap(),
    }
}

fn window(a: &Snap, b: &Snap, hist: &Histogram<u64>) -> Window {
    let messages = b.c.messages - a.c.messages;
    let mut w = Window {
        messages,
        latency: Latency::from_histogram(hist),
        ..Window::default()
    };
    a.cpu.fill(&b.cpu, messages, &mut w);
    w.msgs_per_sec = messages as f64 / w.secs;
    w.mb_per_sec_out = (b.c.payload_out - a.c.payload_out) as f64 / w.secs / 1e6;
    w.mb_per_sec_in = (b.c.payload_in - a.c.payload_in) as f64 / w.secs / 1e6;
    w
}

/// Opens `n` connections with at most `concurrency` in progress at a time.
/// Returns false if interrupted.
pub fn open_connections(
    engine: &mut Engine,
    h: &mut impl Handler,
    n: usize,
    concurrency: usize,
    bar: &ProgressBar,
) -> std::io::Result<bool> {
    bar.set_prefix("connecting");
    bar.set_length(n as u64);
    let concurrency = concurrency.max(1);
    while engine.len() < n || engine.pending() > 0 {
        if sys::stop_requested() {
            return Ok(false);
        }
        while engine.len() < n && engine.pending() < concurrency {
            engine.connect(h);
        }
        engine.poll(h, 5)?;
        engine.check_timeouts(h);
        let st = engine.stats();
        bar.set_position(st.opened + st.failed());
        bar.set_message(format!("{} open, {} failed", st.opened, st.failed()));
    }
    Ok(true)
}

/// What a scenario passes to [`run_load`] besides its handler.
pub struct LoadSpec<'a> {
    /// Scenario name.
    pub scenario: &'static str,
    /// Connections to open (ids `0..connections` in the handler).
    pub connections: usize,
    /// Parameters recorded in the result.
    pub params: serde_json::Value,
    /// Common options.
    pub common: &'a Common,
    /// Default route of the scenario.
    pub default_path: &'a str,
}

/// Runs a timed load scenario end to end and returns its result.
pub fn run_load(spec: LoadSpec<'_>, load: &mut impl Load) -> Result<RunResult, String> {
    let c = spec.common;
    let target = c.target(spec.default_path)?;
    c.prepare(spec.connections)?;
    let mut engine = Engine::new(c.engine_config(target.clone(), 0)?).map_err(|e| e.to_string())?;
    let pid = c.server_pid;
    let cpus = Cpus::detect(pid);
    let rss_before = pid.and_then(|p| sys::proc_rss_bytes(p).ok());
    let bar = progress(c.quiet);
    let mut result = RunResult {
        scenario: spec.scenario.into(),
        case: c.case.clone().unwrap_or_else(|| spec.scenario.into()),
        label: c.label(&target),
        url: format!("ws://{}{}", target.host, target.path),
        params: spec.params,
        unit: load.unit().into(),
        processes: 1,
        ..RunResult::default()
    };
    let io = |e: std::io::Error| e.to_string();

    let mut interrupted = !open_connections(
        &mut engine,
        load,
        spec.connections,
        c.connect_concurrency,
        &bar,
    )
    .map_err(io)?;
    let st = engine.stats();
    if st.failed() > 0 {
        result.errors.push(st.failure_summary(spec.connections));
    }
    if engine.open() == 0 && !interrupted {
        result.errors.push("no connection could be opened".into());
        bar.finish_and_clear();
        result.connections = engine.stats();
        return Ok(result);
    }

    // Let the server finish registering everyone (and chat joins arrive).
    let ready_by = now_ns() + 5_000_000_000;
    let settle_until = now_ns() + 200_000_000;
    bar.set_prefix("settling");
    while !interrupted && (now_ns() < settle_until || (!load.ready(&engine) && now_ns() < ready_by))
    {
        engine.poll(load, 5).map_err(io)?;
        interrupted = sys::stop_requested();
    }
    if !load.ready(&engine) {
        result
            .errors
            .push("not every connection became ready within 5 s".into());
    }

    // Warm-up, then the measured windows.
    let warmup = secs_to_ns(c.warmup);
    let window_ns = secs_to_ns(c.duration);
    let total = warmup + window_ns * c.repeat as u64;
    bar.set_length(total / 1_000_000);
    bar.set_position(0);
    bar.set_prefix("warm-up");
    bar.set_message(String::new());
    load.start(&mut engine);
    let t0 = now_ns();
    let mut merged = stats::new_histogram();
    let mut clock = LoopClock { t0, last_check: t0 };
    if !interrupted {
        interrupted = !run_until(&mut engine, load, t0 + warmup, &mut clock, &bar).map_err(io)?;
    }
    load.take_histogram();
    for r in 0..c.repeat {
        if interrupted {
            break;
        }
        bar.set_prefix(format!("window {}/{}", r + 1, c.repeat));
        let a = snap(load, &cpus);
        let finished =
            run_until(&mut engine, load, a.cpu.t + window_ns, &mut clock, &bar).map_err(io)?;
        let b = snap(load, &cpus);
        let hist = load.take_histogram();
        if finished || b.cpu.t - a.cpu.t > 200_000_000 {
            result.windows.push(window(&a, &b, &hist));
            merged.add(&hist).map_err(|e| e.to_string())?;
        }
        interrupted = !finished;
    }

    // Stop sending, wait for what is in flight, then close politely.
    load.stop();
    bar.set_prefix("draining");
    let drain_by = now_ns() + 3_000_000_000;
    while !load.drained() && now_ns() < drain_by {
        Load::tick(load, &mut engine);
        engine.poll(load, 5).map_err(io)?;
    }
    let rss_after = pid.and_then(|p| sys::proc_rss_bytes(p).ok());
    bar.set_prefix("closing");
    engine.close_all(load);
    let close_by = now_ns() + 2_000_000_000;
    while engine.closing() + engine.pending() > 0 && now_ns() < close_by {
        engine.poll(load, 5).map_err(io)?;
        engine.check_timeouts(load);
    }
    bar.finish_and_clear();

    result.checks = load.checks();
    result.connections = engine.stats();
    if result.connections.dropped > 0 {
        result.errors.push(format!(
            "the server closed or reset {} open connections",
            result.connections.dropped
        ));
    }
    if result.connections.protocol_errors > 0 {
        result.errors.push(format!(
            "{} protocol errors from the server",
            result.connections.protocol_errors
        ));
    }
    if result.windows.is_empty() && !interrupted {
        result.errors.push("no measurement window completed".into());
    }
    if let (Some(pid), Some(before), Some(after)) = (pid, rss_before, rss_after) {
        result.server = Some(ServerInfo {
            pid,
            rss_before: before,
            rss_after: after,
            bytes_per_conn: None,
        });
    }
    finish_result(&mut result, &merged, interrupted);
    Ok(result)
}

struct LoopClock {
    t0: u64,
    last_check: u64,
}

/// Drives the load until `until` (ns). Returns false if interrupted.
fn run_until<L: Load>(
    engine: &mut Engine,
    load: &mut L,
    until: u64,
    clock: &mut LoopClock,
    bar: &ProgressBar,
) -> std::io::Result<bool> {
    loop {
        let now = now_ns();
        if now >= until {
            return Ok(true);
        }
        if sys::stop_requested() {
            return Ok(false);
        }
        let left_ms = ((until - now) / 1_000_000).min(u64::from(u16::MAX - 1)) as u16 + 1;
        let wait = load.tick(engine).min(left_ms);
        engine.poll(load, wait)?;
        if now - clock.last_check > 100_000_000 {
            engine.check_timeouts(load);
            clock.last_check = now;
            bar.set_position((now - clock.t0) / 1_000_000);
        }
    }
}

/// Fills the summary, curve and verdict fields from the windows.
pub fn finish_result(result: &mut RunResult, merged: &Histogram<u64>, interrupted: bool) {
    result.summary = stats::median_window(&result.windows);
    result.latency_curve = stats::latency_curve(merged);
    result.generator_saturated = result
        .windows
        .iter()
        .any(|w| w.generator_cpu >= stats::SATURATION * result.processes as f64);
    result.interrupted = interrupted;
    result.ok = result.errors.is_empty() && result.checks.passed();
}

/// Prints the summary line (stderr), the JSON (stdout with `--json`) and
/// writes `--out`.
pub fn emit(result: &RunResult, common: &Common) -> Result<(), String> {
    eprintln!("{}", result.summary_line());
    if result.generator_saturated {
        eprintln!(
            "note: the generator used ≥{:.0}% of its CPU; figures are limited by the generator, \
             not only the server",
            stats::SATURATION * 100.0
        );
    }
    let json = serde_json::to_string_pretty(result).map_err(|e| e.to_string())?;
    if common.json {
        println!("{json}");
    }
    if let Some(path) = &common.out {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
