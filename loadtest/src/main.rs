//! `ringcast-loadtest`: load generator and benchmark reporter for ringcast.
//! See docs/benchmarks.md.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringcast_loadtest::broadcast::{Broadcast, BroadcastArgs, Protocol};
use ringcast_loadtest::connect::{self, ConnectArgs};
use ringcast_loadtest::echo::{Echo, EchoArgs};
use ringcast_loadtest::idle::{self, IdleArgs};
use ringcast_loadtest::report::{self, CriterionArgs, ReportArgs};
use ringcast_loadtest::run::{self, Common, LoadSpec};
use ringcast_loadtest::stats::RunResult;
use ringcast_loadtest::worker::{PartSpec, WorkerMsg};
use ringcast_loadtest::{flame, sys, worker};

#[derive(Parser)]
#[command(
    version,
    about = "WebSocket load generator for ringcast and its peers (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N connections echoing K messages in flight each; checks every byte.
    Echo {
        #[command(flatten)]
        args: EchoArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Subscribers over rooms, publishers at a rate or flat out; checks
    /// loss, duplication and order; publish→receive latency.
    Broadcast {
        #[command(flatten)]
        args: BroadcastArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Connection storm: handshakes/s and failures.
    Connect {
        #[command(flatten)]
        args: ConnectArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Hold N idle connections; server RSS per connection.
    Idle {
        #[command(flatten)]
        args: IdleArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Markdown tables and SVG charts from JSON results.
    Report(ReportArgs),
    /// Markdown table of this run's criterion medians (from target/criterion).
    CriterionTable(CriterionArgs),
    /// Flame graph SVG from `perf script` output.
    Flamegraph(flame::FlameArgs),
    /// Internal: one worker process of a multi-process run.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        role: String,
        #[arg(long)]
        spec: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Report(args) => return finish(report::run(&args).map(|_| ExitCode::SUCCESS)),
        Cmd::Flamegraph(args) => return finish(flame::run(&args).map(|_| ExitCode::SUCCESS)),
        Cmd::CriterionTable(args) => {
            return finish(report::run_criterion(&args).map(|_| ExitCode::SUCCESS))
        }
        Cmd::Worker { role, spec } => {
            sys::install_stop_handler();
            let r = serde_json::from_str::<PartSpec>(&spec)
                .map_err(|e| e.to_string())
                .and_then(|spec| match role.as_str() {
                    "idle" => idle::worker_main(&spec),
                    other => Err(format!("unknown worker role {other}")),
                });
            if let Err(message) = &r {
                worker::say(&WorkerMsg::Error {
                    message: message.clone(),
                });
            }
            return finish(r.map(|_| ExitCode::SUCCESS));
        }
        _ => {}
    }
    sys::install_stop_handler();
    let (result, common) = match cli.cmd {
        Cmd::Echo { args, common } => {
            let spec = LoadSpec {
                scenario: "echo",
                connections: args.connections,
                params: serde_json::to_value(&args).unwrap_or_default(),
                common: &common,
                default_path: "/echo",
            };
            let mut load = Echo::new(args.clone());
            (run::run_load(spec, &mut load), common)
        }
        Cmd::Broadcast { args, common } => {
            let chat = match args.protocol {
                Protocol::Chat => true,
                Protocol::Broadcast => false,
                Protocol::Auto => common
                    .target("/broadcast")
                    .map(|t| t.path.trim_end_matches('/').ends_with("/chat"))
                    .unwrap_or(false),
            };
            let r = Broadcast::new(args.clone(), chat).and_then(|mut load| {
                let spec = LoadSpec {
                    scenario: "broadcast",
                    connections: load.connections(),
                    params: serde_json::to_value(&args).unwrap_or_default(),
                    common: &common,
                    default_path: if chat { "/chat" } else { "/broadcast" },
                };
                run::run_load(spec, &mut load)
            });
            (r, common)
        }
        Cmd::Connect { args, common } => (connect::run(&args, &common), common),
        Cmd::Idle { args, common } => (idle::run(&args, &common), common),
        Cmd::Report(_) | Cmd::Flamegraph(_) | Cmd::CriterionTable(_) | Cmd::Worker { .. } => {
            unreachable!()
        }
    };
    finish(result.and_then(|r| outcome(&r, &common)))
}

/// Emits the result; exit 0 when it passed, 1 when a check failed.
fn outcome(result: &RunResult, common: &Common) -> Result<ExitCode, String> {
    run::emit(result, common)?;
    Ok(if result.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Usage and setup errors exit with 2.
fn finish(r: Result<ExitCode, String>) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringcast-loadtest: {e}");
            ExitCode::from(2)
        }
    }
}
