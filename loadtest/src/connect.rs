//! `connect`: a connection storm. Each connection connects, completes the
//! upgrade, sends a close frame and waits for the server to close; at most
//! `--concurrency` are in progress at once. Reports handshakes/s, failures,
//! connect+upgrade latency and server CPU per connection (handshake and
//! close together).

use hdrhistogram::Histogram;

use crate::clock::now_ns;
use crate::engine::{ConnStats, Engine, Handler, Out};
use crate::run::{finish_result, progress, Common, Cpus};
use crate::stats::{self, Latency, RunResult, Window};
use crate::sys;

/// Parameters of the connect storm.
#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct ConnectArgs {
    /// Connections per window.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub total: usize,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

struct Storm {
    hist: Histogram<u64>,
    unexpected: u64,
}

impl Handler for Storm {
    fn on_open(&mut self, _out: &mut Out, _id: usize, _now: u64, connect_ns: u64) -> bool {
        stats::record(&mut self.hist, connect_ns);
        false
    }

    fn on_message(&mut self, _out: &mut Out, _id: usize, _data: &[u8], _text: bool, _now: u64) {
        self.unexpected += 1;
    }
}

/// Runs `--repeat` storms and returns the result.
pub fn run(args: &ConnectArgs, common: &Common) -> Result<RunResult, String> {
    let target = common.target("/echo")?;
    common.prepare(args.concurrency)?;
    let cpus = Cpus::detect(common.server_pid);
    let bar = progress(common.quiet);
    let mut result = RunResult {
        scenario: "connect".into(),
        case: common.case.clone().unwrap_or_else(|| "connect".into()),
        label: common.label(&target),
        url: format!("ws://{}{}", target.host, target.path),
        params: serde_json::to_value(args).unwrap_or_default(),
        unit: "handshakes".into(),
        processes: 1,
        ..RunResult::default()
    };
    let mut merged = stats::new_histogram();
    let mut totals = ConnStats::default();
    let mut interrupted = false;
    let mut unexpected = 0;
    for r in 0..common.repeat.max(1) {
        bar.set_prefix(format!("storm {}/{}", r + 1, common.repeat.max(1)));
        bar.set_length(args.total as u64);
        bar.set_position(0);
        let mut storm = Storm {
            hist: stats::new_histogram(),
            unexpected: 0,
        };
        let mut engine = Engine::new(common.engine_config(target.clone(), r as u64)?)
            .map_err(|e| e.to_string())?;
        let start = cpus.snap();
        let mut last_check = start.t;
        loop {
            if sys::stop_requested() {
                interrupted = true;
                break;
            }
            let active = engine.pending() + engine.open() + engine.closing();
            while engine.len() < args.total
                && engine.pending() + engine.open() + engine.closing() < args.concurrency.max(1)
            {
                engine.connect(&mut storm);
            }
            if engine.len() >= args.total && active == 0 {
                break;
            }
            engine.poll(&mut storm, 2).map_err(|e| e.to_string())?;
            let now = now_ns();
            if now - last_check > 10_000_000 {
                engine.check_timeouts(&mut storm);
                last_check = now;
                let st = engine.stats();
                bar.set_position(st.opened + st.failed());
                bar.set_message(format!("{} ok, {} failed", st.opened, st.failed()));
            }
        }
        let end = cpus.snap();
        let st = engine.stats();
        let mut w = Window {
            messages: st.opened,
            latency: Latency::from_histogram(&storm.hist),
            ..Window::default()
        };
        start.fill(&end, st.opened, &mut w);
        w.msgs_per_sec = st.opened as f64 / w.secs;
        result.windows.push(w);
        merged.add(&storm.hist).map_err(|e| e.to_string())?;
        unexpected += storm.unexpected;
        totals += st;
        if interrupted {
            break;
        }
    }
    bar.finish_and_clear();
    result.connections = totals;
    result.checks.unexpected = unexpected;
    // Failures are what this scenario measures: reported, not fatal, unless
    // nothing worked at all.
    if totals.opened == 0 {
        result.errors.push("no handshake succeeded".into());
    }
    finish_result(&mut result, &merged, interrupted);
    Ok(result)
}
