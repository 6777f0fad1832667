//! `start`, `Running` and `Handle`: spawning, pinning and joining shard threads.
//!
//! `start` does everything that can fail in an expected way (config checks,
//! backend probe, binding every listening socket) on the caller's thread, then
//! waits until every shard thread has built its backend and handler, so
//! `EADDRINUSE`, `EACCES`, a refused io_uring setup or a locked-memory limit
//! come back as an `io::Error` from `start` itself.
//!
//! A shard that panics (handler panics are the application's business) trips a
//! guard that asks every other shard to stop at once, so the process is never
//! left half-running; `join` then reports the panic.

use crate::config::{Backend, BackendChoice, Config, ShardConfig};
use crate::core::Core;
use crate::epoll::EpollDriver;
use crate::handler::Handler;
use crate::listener::{self, Listener};
use crate::shard::{self, Driver, Shard};
use crate::shared::Shared;
use crate::stats::ShardStats;
use crate::{sys, uring};
use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// Cloneable, thread-safe handle for mail and stop requests from any thread.
pub struct Handle<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for Handle<M> {
    fn clone(&self) -> Self {
        Handle {
            shared: self.shared.clone(),
        }
    }
}

impl<M: Send + 'static> Handle<M> {
    /// Send `m` to `shard` from any thread. `Err(m)` if the shard index is out
    /// of range, its mailbox is full, or the shard has exited.
    pub fn mail(&self, shard: usize, m: M) -> Result<(), M> {
        self.shared.mail(shard, m)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.shards()
    }

    /// Graceful stop: every shard closes its listeners, calls `on_shutdown`,
    /// and runs until its connections are gone or `drain` has passed.
    pub fn stop(&self, drain: Duration) {
        self.shared.stop(Some(drain))
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.shared.backend
    }

    /// Per-shard counters (for metrics).
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shared.stats.iter().map(|s| s.snapshot()).collect()
    }
}

/// The running reactor. Dropping it without `join` asks every shard to stop
/// at once (zero drain) and detaches the threads.
pub struct Running<M> {
    shared: Arc<Shared<M>>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    addrs: Vec<SocketAddr>,
}

impl<M: Send + 'static> Running<M> {
    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.shared.backend
    }

    /// A handle for mail and stop from other threads.
    pub fn handle(&self) -> Handle<M> {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The distinct local addresses being listened on (the actual port when
    /// port 0 was requested).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Per-shard counters.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shared.stats.iter().map(|s| s.snapshot()).collect()
    }

    /// Block until every shard thread has exited; `Err` if a shard failed
    /// (I/O error or panic). All shards are joined either way.
    pub fn join(mut self) -> io::Result<()> {
        let mut first: Option<io::Error> = None;
        for (i, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            let r = match t.join() {
                Ok(r) => r,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    Err(io::Error::other(format!("shard {i} panicked: {msg}")))
                }
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl<M> Drop for Running<M> {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shared.stop(Some(Duration::ZERO));
        }
    }
}

/// Decide the backend. `Auto` falls back to epoll with a warning naming the reason.
fn select_backend(choice: BackendChoice, cfg: &ShardConfig) -> io::Result<Backend> {
    match choice {
        BackendChoice::Epoll => Ok(Backend::Epoll),
        BackendChoice::IoUring => match uring::probe(cfg) {
            Ok(mode) => {
                tracing::info!("using io_uring ({})", mode.describe());
                Ok(Backend::IoUring)
            }
            Err(why) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring unavailable: {why}"),
            )),
        },
        BackendChoice::Auto => match uring::probe(cfg) {
            Ok(mode) => {
                tracing::info!("using io_uring ({})", mode.describe());
                Ok(Backend::IoUring)
            }
            Err(why) => {
                tracing::warn!("io_uring unavailable, falling back to epoll: {why}");
                Ok(Backend::Epoll)
            }
        },
    }
}

/// Whether io_uring can be used here with the default configuration, and if
/// not, why (in plain words). What `BackendChoice::Auto` checks.
pub fn io_uring_support() -> Result<(), String> {
    let cfg = Config::default()
        .shard_config()
        .map_err(|e| e.to_string())?;
    uring::probe(&cfg).map(|_| ())
}

/// Asks every shard to stop if the owning shard thread unwinds.
struct PanicGuard<M> {
    shared: Arc<Shared<M>>,
    shard: usize,
}

impl<M> Drop for PanicGuard<M> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.mailboxes[self.shard].close();
            self.shared.stop(Some(Duration::ZERO));
            let mut s = self.shared.stats[self.shard].snapshot();
            s.exited = true;
            self.shared.stats[self.shard].publish(&s);
        }
    }
}

/// Start the shards. See the crate docs.
pub fn start<H, F>(cfg: Config, factory: F) -> io::Result<Running<H::Mail>>
where
    H: Handler,
    F: Fn(usize) -> H + Send + Sync + 'static,
{
    let scfg = cfg.shard_config()?;
    let cpus = sys::affinity_cpus().unwrap_or_default();
    let n = if cfg.shards == 0 {
        cpus.len().max(1)
    } else {
        cfg.shards
    };
    let backend = select_backend(cfg.backend, &scfg)?;
    let nonblocking = backend == Backend::Epoll;
    let (listeners, addrs) =
        listener::build(n, cfg.listen, cfg.inherited, scfg.backlog, nonblocking)?;
    let shared = Arc::new(Shared::new(
        n,
        cfg.mailbox_capacity,
        backend,
        scfg.drain_timeout,
    )?);
    let factory = Arc::new(factory);
    let (tx, rx) = mpsc::channel::<(usize, io::Result<()>)>();
    let mut threads = Vec::with_capacity(n);
    for (i, ls) in listeners.into_iter().enumerate() {
        let cpu = (cfg.pin && !cpus.is_empty()).then(|| cpus[i % cpus.len()]);
        let shared2 = shared.clone();
        let factory = factory.clone();
        let scfg = scfg.clone();
        let tx2 = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ringcast-shard-{i}"))
            .spawn(move || shard_main(i, cpu, backend, ls, shared2, scfg, &*factory, tx2));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                shared.stop(Some(Duration::ZERO));
                drop(tx);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        }
    }
    drop(tx);
    let mut ready = 0;
    let mut failure: Option<io::Error> = None;
    while ready < n {
        match rx.recv() {
            Ok((_, Ok(()))) => ready += 1,
            Ok((i, Err(e))) => {
                failure.get_or_insert(io::Error::new(e.kind(), format!("shard {i}: {e}")));
                ready += 1;
            }
            Err(_) => {
                // A shard thread exited (panicked) before reporting.
                failure.get_or_insert(io::Error::other("a shard thread died during setup"));
                break;
            }
        }
    }
    let running = Running {
        shared,
        threads,
        addrs,
    };
    if let Some(e) = failure {
        running.shared.stop(Some(Duration::ZERO));
        let joined = running.join();
        // A setup panic is better described by the join error.
        return Err(if ready < n {
            joined.err().unwrap_or(e)
        } else {
            e
        });
    }
    Ok(running)
}

#[allow(clippy::too_many_arguments)]
fn shard_main<H, F>(
    i: usize,
    cpu: Option<usize>,
    backend: Backend,
    listeners: Vec<Listener>,
    shared: Arc<Shared<H::Mail>>,
    scfg: ShardConfig,
    factory: &F,
    tx: mpsc::Sender<(usize, io::Result<()>)>,
) -> io::Result<()>
where
    H: Handler,
    F: Fn(usize) -> H,
{
    let _guard = PanicGuard {
        shared: shared.clone(),
        shard: i,
    };
    if let Some(cpu) = cpu {
        if let Err(e) = sys::pin_current_thread(cpu) {
            tracing::warn!(shard = i, cpu, error = %e, "could not pin shard thread");
        }
    }
    let waker = shared.mailboxes[i].waker().raw_fd();
    let core = Core::new(i, shared.clone(), scfg.clone(), backend);
    let ready = move |r: io::Result<()>| {
        let failed = r
            .as_ref()
            .err()
            .map(|e| io::Error::new(e.kind(), e.to_string()));
        let _ = tx.send((i, r));
        failed.map_or(Ok(()), Err)
    };
    match backend {
        Backend::Epoll => serve(
            EpollDriver::new(listeners, waker, &scfg),
            core,
            factory,
            ready,
        ),
        Backend::IoUring => serve(
            uring::UringDriver::new(listeners, waker, &scfg),
            core,
            factory,
            ready,
        ),
    }
}

/// Build the handler, deliver `on_start`, report readiness to `start`, then
/// run the loop. `on_start` comes before the report, so when `start` returns
/// every shard has had it.
fn serve<H, F, D>(
    drv: io::Result<D>,
    core: Core<H::Mail>,
    factory: &F,
    ready: impl FnOnce(io::Result<()>) -> io::Result<()>,
) -> io::Result<()>
where
    H: Handler,
    F: Fn(usize) -> H,
    D: Driver,
{
    let mut drv = match drv {
        Ok(d) => d,
        Err(e) => return ready(Err(e)),
    };
    let i = core.shard;
    let shared = core.shared.clone();
    let mut sh = Shard {
        h: factory(i),
        core,
    };
    sh.start(&mut drv);
    ready(Ok(()))?;
    exit_on_error(&shared, i, shard::run(&mut sh, &mut drv))
}

/// A shard that fails stops the others too (as a panic does), so the
/// process does not keep serving on a subset of its shards unnoticed.
fn exit_on_error<M>(shared: &Shared<M>, i: usize, r: io::Result<()>) -> io::Result<()> {
    if let Err(e) = &r {
        tracing::error!(shard = i, error = %e, "shard failed; stopping all shards");
        shared.mailboxes[i].close();
        shared.stop(Some(Duration::ZERO));
    }
    r
}
