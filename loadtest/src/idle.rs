//! `idle`: opens N connections, lets them settle and reports the server's
//! RSS growth per connection (`--server-pid`), then holds them for
//! `--duration` seconds measuring the server's idle CPU use.
//!
//! Past one process's open-file limit the connections are spread over
//! worker processes (`--processes`, default: as many as needed at 18,000
//! each), and past ~28,000 per source address over several loopback source
//! addresses (`--source-addrs 127.0.0.1-4`).

use std::time::Duration;

use indicatif::ProgressBar;

use crate::clock::{now_ns, secs_to_ns};
use crate::engine::{ConnStats, Engine, Handler, Out};
use crate::run::{finish_result, open_connections, progress, Common};
use crate::stats::{self, RunResult, ServerInfo, Window};
use crate::sys;
use crate::worker::{self, PartSpec, WorkerMsg, Workers};

/// Connections one worker process opens at most (open-file limit is 20,000).
pub const PER_PROCESS: usize = 18_000;

/// Parameters of the idle scenario.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct IdleArgs {
    /// Connections to hold.
    #[arg(long, short = 'c', default_value_t = 10_000)]
    pub connections: usize,
    /// Generator processes; 0 = one per 18,000 connections.
    #[arg(long, default_value_t = 0)]
    pub processes: usize,
    /// Seconds to wait after the last connection opened before reading RSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

#[derive(Default)]
struct Quiet {
    unexpected: u64,
}

impl Handler for Quiet {
    fn on_open(&mut self, _out: &mut Out, _id: usize, _now: u64, _connect_ns: u64) -> bool {
        true
    }

    fn on_message(&mut self, _out: &mut Out, _id: usize, _data: &[u8], _text: bool, _now: u64) {
        self.unexpected += 1;
    }
}

/// When a part should let go of its connections.
trait Coordinator {
    fn ready(&mut self, stats: ConnStats);
    fn should_stop(&mut self) -> bool;
}

struct PartOutcome {
    stats: ConnStats,
    unexpected: u64,
}

/// Opens and holds one part's connections until the coordinator says stop.
fn hold_part(
    spec: &PartSpec,
    coord: &mut impl Coordinator,
    bar: &ProgressBar,
) -> Result<PartOutcome, String> {
    let mut engine = Engine::new(spec.engine_config()?).map_err(|e| e.to_string())?;
    let mut h = Quiet::default();
    let io = |e: std::io::Error| e.to_string();
    let deadline = now_ns() + secs_to_ns(spec.max_secs);
    if open_connections(&mut engine, &mut h, spec.connections, spec.concurrency, bar).map_err(io)? {
        coord.ready(engine.stats());
        // Keep polling: the server may ping idle connections.
        while !coord.should_stop() && now_ns() < deadline {
            engine.poll(&mut h, 20).map_err(io)?;
            engine.check_timeouts(&mut h);
        }
    }
    engine.close_all(&mut h);
    let close_by = now_ns() + 3_000_000_000;
    while engine.closing() + engine.pending() > 0 && now_ns() < close_by {
        engine.poll(&mut h, 10).map_err(io)?;
        engine.check_timeouts(&mut h);
    }
    Ok(PartOutcome {
        stats: engine.stats(),
        unexpected: h.unexpected,
    })
}

/// The parent's timeline when everything runs in this process.
struct InProcess<'a> {
    pid: Option<u32>,
    settle_ns: u64,
    hold_ns: u64,
    bar: &'a ProgressBar,
    ready_at: Option<u64>,
    rss_after: Option<u64>,
    hold: Option<Snap>,
    window: Option<(Snap, Snap)>,
}

#[derive(Clone, Copy)]
struct Snap {
    t: u64,
    gen_cpu: u64,
    server_cpu: Option<u64>,
}

fn snap(pid: Option<u32>, gen_cpu: u64) -> Snap {
    Snap {
        t: now_ns(),
        gen_cpu,
        server_cpu: pid.and_then(|p| sys::proc_cpu_ns(p).ok()),
    }
}

impl Coordinator for InProcess<'_> {
    fn ready(&mut self, _stats: ConnStats) {
        self.ready_at = Some(now_ns());
        self.bar.set_prefix("settling");
    }

    fn should_stop(&mut self) -> bool {
        if sys::stop_requested() {
            return true;
        }
        let now = now_ns();
        let Some(ready_at) = self.ready_at else {
            return false;
        };
        if now < ready_at + self.settle_ns {
            return false;
        }
        let hold = *self.hold.get_or_insert_with(|| {
            self.rss_after = self.pid.and_then(|p| sys::proc_rss_bytes(p).ok());
            self.bar.set_prefix("holding");
            snap(self.pid, sys::self_cpu_ns())
        });
        if now < hold.t + self.hold_ns {
            return false;
        }
        self.window = Some((hold, snap(self.pid, sys::self_cpu_ns())));
        true
    }
}

/// Runs the idle scenario.
pub fn run(args: &IdleArgs, common: &Common) -> Result<RunResult, String> {
    let target = common.target("/echo")?;
    let processes = match args.processes {
        0 => args.connections.div_ceil(PER_PROCESS).max(1),
        p => p,
    };
    if let Some(cpu) = common.cpu {
        sys::pin_to_cpu(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
    }
    let sources = common.sources()?;
    let ports = 28_000 * sources.len().max(1);
    if args.connections > ports {
        eprintln!(
            "warning: {} connections from {} source address(es) may run out of ephemeral \
             ports (~28k each); add --source-addrs 127.0.0.1-N",
            args.connections,
            sources.len().max(1)
        );
    }
    let pid = common.server_pid;
    let rss_before = pid.and_then(|p| sys::proc_rss_bytes(p).ok());
    let url = format!("ws://{}{}", target.host, target.path);
    let specs: Vec<PartSpec> = (0..processes)
        .map(|i| PartSpec {
            index: i,
            url: url.clone(),
            sources: sources.clone(),
            connections: args.connections / processes
                + usize::from(i < args.connections % processes),
            concurrency: (common.connect_concurrency / processes).max(1),
            connect_timeout: common.connect_timeout,
            max_message_size: common.max_message_size,
            max_secs: 120.0 + args.settle + common.duration + args.connections as f64 / 500.0,
        })
        .collect();
    let mut result = RunResult {
        scenario: "idle".into(),
        case: common.case.clone().unwrap_or_else(|| "idle".into()),
        label: common.label(&target),
        url,
        params: serde_json::to_value(args).unwrap_or_default(),
        unit: "connections".into(),
        processes,
        ..RunResult::default()
    };
    let bar = progress(common.quiet);
    let (stats, unexpected, window, rss_after) = if processes == 1 {
        sys::raise_nofile_limit();
        let mut coord = InProcess {
            pid,
            settle_ns: secs_to_ns(args.settle),
            hold_ns: secs_to_ns(common.duration),
            bar: &bar,
            ready_at: None,
            rss_after: None,
            hold: None,
            window: None,
        };
        common.prepare(specs[0].connections)?;
        let out = hold_part(&specs[0], &mut coord, &bar)?;
        (out.stats, out.unexpected, coord.window, coord.rss_after)
    } else {
        multi_process(&specs, pid, args.settle, common.duration, &bar)?
    };
    bar.finish_and_clear();
    let interrupted = sys::stop_requested();
    result.connections = stats;
    result.checks.unexpected = unexpected;
    if stats.failed() > 0 {
        result.errors.push(stats.failure_summary(args.connections));
    }
    if stats.dropped > 0 {
        result.errors.push(format!(
            "the server dropped {} idle connections",
            stats.dropped
        ));
    }
    if let Some((a, b)) = window {
        let secs = (b.t - a.t) as f64 / 1e9;
        let server = match (a.server_cpu, b.server_cpu) {
            (Some(x), Some(y)) => Some(y.saturating_sub(x)),
            _ => None,
        };
        result.windows.push(Window {
            secs,
            generator_cpu: (b.gen_cpu - a.gen_cpu) as f64 / 1e9 / secs,
            server_cpu: server.map(|ns| ns as f64 / 1e9 / secs),
            ..Window::default()
        });
    }
    if let (Some(pid), Some(before), Some(after)) = (pid, rss_before, rss_after) {
        result.server = Some(ServerInfo {
            pid,
            rss_before: before,
            rss_after: after,
            bytes_per_conn: (stats.opened > 0)
                .then(|| (after as f64 - before as f64) / stats.opened as f64),
        });
    }
    finish_result(&mut result, &stats::new_histogram(), interrupted);
    Ok(result)
}

type Outcome = (ConnStats, u64, Option<(Snap, Snap)>, Option<u64>);

fn multi_process(
    specs: &[PartSpec],
    pid: Option<u32>,
    settle: f64,
    hold: f64,
    bar: &ProgressBar,
) -> Result<Outcome, String> {
    let mut workers = Workers::spawn("idle", specs)?;
    bar.set_prefix(format!("connecting ({} processes)", workers.len()));
    let mut ready = vec![None; workers.len()];
    let mut done = vec![None; workers.len()];
    let give_up = now_ns() + secs_to_ns(specs[0].max_secs);
    // Wait until every worker has opened its share.
    while ready.iter().any(Option::is_none) && now_ns() < give_up && !sys::stop_requested() {
        match workers.recv(Duration::from_millis(100)) {
            Some((i, WorkerMsg::Ready { opened, cpu_ns, .. })) => ready[i] = Some((opened, cpu_ns)),
            Some((i, WorkerMsg::Error { message })) => {
                workers.finish(Duration::from_secs(3));
                return Err(format!("worker {i}: {message}"));
            }
            Some((i, msg @ WorkerMsg::Done { .. })) => done[i] = Some(msg),
            None => {}
        }
    }
    let mut window = None;
    let mut rss_after = None;
    if ready.iter().all(Option::is_some) {
        bar.set_prefix("settling");
        sleep_unless_stopped(settle);
        rss_after = pid.and_then(|p| sys::proc_rss_bytes(p).ok());
        bar.set_prefix("holding");
        let a = snap(pid, 0);
        sleep_unless_stopped(hold);
        let b = snap(pid, 0);
        window = Some((a, b));
    }
    workers.tell_all("stop");
    let collect_by = now_ns() + 10_000_000_000;
    while done.iter().any(Option::is_none) && now_ns() < collect_by {
        if let Some((i, msg @ WorkerMsg::Done { .. })) = workers.recv(Duration::from_millis(100)) {
            done[i] = Some(msg);
        }
    }
    workers.finish(Duration::from_secs(5));
    let mut total = ConnStats::default();
    let mut unexpected = 0;
    let mut cpu_hold = 0;
    for (i, d) in done.iter().enumerate() {
        let Some(WorkerMsg::Done {
            stats: s,
            cpu_ns,
            unexpected: u,
        }) = d
        else {
            return Err(format!("worker {i} did not report"));
        };
        total += *s;
        unexpected += u;
        cpu_hold += cpu_ns - ready[i].map_or(0, |r| r.1);
    }
    // Workers' CPU after they were ready (hold and close), charged to the window.
    if let Some((a, b)) = window.as_mut() {
        b.gen_cpu = cpu_hold;
        a.gen_cpu = 0;
    }
    Ok((total, unexpected, window, rss_after))
}

fn sleep_unless_stopped(secs: f64) {
    let until = now_ns() + secs_to_ns(secs);
    while now_ns() < until && !sys::stop_requested() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct FromParent {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Coordinator for FromParent {
    fn ready(&mut self, stats: ConnStats) {
        worker::say(&WorkerMsg::Ready {
            opened: stats.opened,
            failed: stats.failed(),
            cpu_ns: sys::self_cpu_ns(),
        });
    }

    fn should_stop(&mut self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed) || sys::stop_requested()
    }
}

/// Worker-process side of `idle`.
pub fn worker_main(spec: &PartSpec) -> Result<(), String> {
    let limit = sys::raise_nofile_limit();
    if spec.connections as u64 + 64 > limit {
        return Err(format!(
            "{} connections exceed the open-file limit {limit}",
            spec.connections
        ));
    }
    let mut coord = FromParent {
        stop: worker::stdin_stop_flag(),
    };
    let out = hold_part(spec, &mut coord, &ProgressBar::hidden())?;
    worker::say(&WorkerMsg::Done {
        stats: out.stats,
        cpu_ns: sys::self_cpu_ns(),
        unexpected: out.unexpected,
    });
    Ok(())
}
