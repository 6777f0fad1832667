//! Generator worker processes, for connection counts beyond one process's
//! open-file limit (`idle --processes`).
//!
//! The parent re-runs its own executable as `ringcast-loadtest worker
//! --spec JSON`. A worker opens its share of connections, prints one JSON
//! line per event on stdout and takes commands (`stop`) as lines on stdin;
//! it also stops by itself at `max_secs` or when stdin closes, so no worker
//! outlives its parent for long.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{now_ns, secs_to_ns};
use crate::engine::{ConnStats, EngineConfig};
use crate::target::Target;

/// What one worker is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartSpec {
    /// Worker number (also rotates the source addresses).
    pub index: usize,
    /// Target URL.
    pub url: String,
    /// Loopback source addresses.
    pub sources: Vec<Ipv4Addr>,
    /// Connections to open and hold.
    pub connections: usize,
    /// Connects in progress at once.
    pub concurrency: usize,
    /// Connect + upgrade timeout, seconds.
    pub connect_timeout: f64,
    /// Largest message accepted.
    pub max_message_size: usize,
    /// Hard limit on the worker's life, seconds.
    pub max_secs: f64,
}

impl PartSpec {
    /// Engine settings for this part.
    pub fn engine_config(&self) -> Result<EngineConfig, String> {
        let mut sources = self.sources.clone();
        if !sources.is_empty() {
            let k = self.index % sources.len();
            sources.rotate_left(k);
        }
        Ok(EngineConfig {
            target: Target::parse(&self.url)?,
            sources,
            connect_timeout_ns: secs_to_ns(self.connect_timeout),
            max_message_size: self.max_message_size,
            seed: now_ns() ^ (self.index as u64) << 48 ^ u64::from(std::process::id()),
        })
    }
}

/// A line a worker prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// All connections attempted; `opened` of them are open.
    Ready {
        /// Open connections.
        opened: u64,
        /// Failed ones.
        failed: u64,
        /// Worker CPU time so far (ns).
        cpu_ns: u64,
    },
    /// Finished: final counters.
    Done {
        /// Connection counters.
        stats: ConnStats,
        /// Worker CPU time (ns).
        cpu_ns: u64,
        /// Unexpected messages received.
        unexpected: u64,
    },
    /// Could not run.
    Error {
        /// Why.
        message: String,
    },
}

/// Prints a message line to stdout (worker side).
pub fn say(msg: &WorkerMsg) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, msg);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Watches stdin for `stop` (or EOF) in a background thread (worker side).
pub fn stdin_stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) if l.trim() == "stop" => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        f.store(true, Ordering::Relaxed);
    });
    flag
}

/// The parent's handle on its workers.
pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: Receiver<(usize, WorkerMsg)>,
}

impl Workers {
    /// Starts one worker per spec (they inherit this process's CPU affinity).
    pub fn spawn(role: &str, specs: &[PartSpec]) -> Result<Workers, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for spec in specs {
            let json = serde_json::to_string(spec).map_err(|e| e.to_string())?;
            let mut child = Command::new(&exe)
                .args(["worker", "--role", role, "--spec", &json])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start worker: {e}"))?;
            let stdout = child.stdout.take().expect("piped stdout");
            stdins.push(child.stdin.take());
            let tx = tx.clone();
            let index = spec.index;
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(msg) = serde_json::from_str::<WorkerMsg>(&line) {
                        if tx.send((index, msg)).is_err() {
                            break;
                        }
                    }
                }
            });
            children.push(child);
        }
        Ok(Workers {
            children,
            stdins,
            rx,
        })
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// True with no workers.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Next message, waiting at most `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<(usize, WorkerMsg)> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Sends a command line to every worker.
    pub fn tell_all(&mut self, line: &str) {
        for stdin in self.stdins.iter_mut().flatten() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Closes stdins and waits up to `grace` for the workers to exit; any
    /// still running after that are killed (they are our own children).
    pub fn finish(mut self, grace: Duration) {
        self.stdins.clear();
        let deadline = now_ns() + grace.as_nanos() as u64;
        for child in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if now_ns() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}
