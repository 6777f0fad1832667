//! Starting and stopping: settings → reactor config, shard factory, systemd,
//! signals.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringcast_reactor::BackendChoice;

use crate::api::{Running, Server, ServerHandle};
use crate::channel::Directory;
use crate::config::{nofile_limit, Settings};
use crate::limits::{Gauges, PerIp};
use crate::metrics::{Metrics, ShardMetrics};
use crate::shard::{ShardHandler, ShardState, Shared};
use crate::systemd::{self, Notifier};

/// How often systemd's `STATUS=` line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The systemd supervisor thread; stopped when the server is dropped.
pub(crate) struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `auto` is resolved here rather than in the reactor because the metrics
/// name the backend before the shards start.
fn resolve_backend(choice: BackendChoice) -> BackendChoice {
    match choice {
        BackendChoice::Auto => match ringcast_reactor::io_uring_support() {
            Ok(()) => BackendChoice::IoUring,
            Err(why) => {
                tracing::warn!("io_uring unavailable, using epoll: {why}");
                BackendChoice::Epoll
            }
        },
        other => other,
    }
}

/// Every reactor field that is also a setting comes from `s` (whose defaults
/// are the reactor's own, see `config::reactor`); the rest keep the reactor's.
fn reactor_config(
    s: &Settings,
    shards: usize,
    backend: BackendChoice,
    inherited: Vec<std::os::fd::OwnedFd>,
) -> ringcast_reactor::Config {
    if !inherited.is_empty() {
        tracing::info!(
            sockets = inherited.len(),
            "using sockets passed by systemd; --listen is ignored"
        );
    }
    ringcast_reactor::Config {
        listen: s.listen,
        inherited,
        shards,
        pin: s.pin,
        backend,
        backlog: s.backlog,
        ring_entries: s.ring_entries,
        buf_count: s.buf_count,
        buf_size: s.buf_size,
        max_lent_buffers: s.max_lent_buffers,
        mailbox_capacity: s.mailbox_capacity,
        tcp_nodelay: s.tcp_nodelay,
        max_connections: per_shard_cap(s.max_connections, shards),
        drain_timeout: s.shutdown_timeout,
        close_timeout: s.close_timeout,
        // Not a server setting (outbox_capacity): the reactor's default.
        ..Default::default()
    }
}

/// TCP connections one shard may hold (handshakes included; past it the
/// reactor closes new sockets at once). Connections spread over the shards
/// by address hash, so allow 1.5x an even share plus room for handshakes;
/// the WebSocket limit itself is enforced at upgrade time with a 503.
fn per_shard_cap(max_connections: usize, shards: usize) -> usize {
    let even = max_connections.div_ceil(shards.max(1));
    (even + even / 2 + 1024)
        .min(nofile_limit())
        .clamp(1, (1 << 24) - 1)
}

/// Binding the address once before the shards start gives a bind error as
/// the only output, before any backend set-up is logged.
fn check_listen(s: &Settings) -> io::Result<()> {
    if s.listen.port() == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(s.listen)
        .map(drop)
        .map_err(|e| start_error(s.listen, e))
}

pub(crate) fn start<D: Default + 'static>(server: Server<D>) -> io::Result<Running> {
    let Server { settings, handlers } = server;
    let inherited = systemd::listen_fds()?;
    if inherited.is_empty() {
        check_listen(&settings)?;
    }
    let shards = settings.shard_count();
    // Before the shards: the node id goes into every connection id. Redis
    // unreachable is a start error unless --redis-optional.
    let cluster = crate::cluster::start(&settings)?;
    let backend = resolve_backend(settings.backend);
    let backend_name = match backend {
        BackendChoice::Epoll => "epoll",
        _ => "io_uring",
    };
    let shard_metrics: Vec<Arc<ShardMetrics>> = (0..shards)
        .map(|i| Arc::new(ShardMetrics::new(i)))
        .collect();
    let mut metrics = Metrics::new(shard_metrics, backend_name);
    if let Some(link) = &cluster {
        metrics = metrics.with_extra(link.metrics());
    }
    let metrics = Arc::new(metrics);
    let notifier = Arc::new(Notifier::from_env());
    let cfg = reactor_config(&settings, shards, backend, inherited);
    let node = cluster.as_ref().map_or(settings.node_id, |l| l.node_id());
    let shared = Arc::new(Shared {
        node,
        cluster,
        metrics: metrics.clone(),
        gauges: Gauges::new(shards),
        per_ip: (settings.max_connections_per_ip > 0)
            .then(|| PerIp::new(settings.max_connections_per_ip)),
        notifier: notifier.clone(),
        directory: Arc::new(Directory::new(shards)),
        settings,
    });
    let app = Arc::new(handlers);
    let factory_shared = shared.clone();
    let listen = shared.settings.listen;
    let reactor = ringcast_reactor::start(cfg, move |i| ShardHandler {
        app: app.clone(),
        core: ShardState::new(i, shards, factory_shared.clone(), app.render.clone()),
    })
    .map_err(|e| {
        if let Some(link) = &shared.cluster {
            link.shutdown(Duration::from_secs(2));
        }
        start_error(listen, e)
    })?;
    let rhandle = reactor.handle();
    if let Some(link) = &shared.cluster {
        link.connect(rhandle.clone());
    }
    let addrs: Vec<String> = reactor
        .local_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    tracing::info!(
        listen = %addrs.join(","),
        backend = reactor.backend().as_str(),
        shards,
        node = shared.node,
        cluster = shared.cluster.is_some(),
        max_connections = shared.settings.max_connections,
        "ringcast listening"
    );
    notifier.ready();
    let stop = Arc::new(AtomicBool::new(false));
    let thread = systemd::spawn_supervisor(notifier, metrics, stop.clone(), STATUS_EVERY)?;
    Ok(Running {
        reactor,
        handle: ServerHandle {
            reactor: rhandle,
            shared,
        },
        _supervisor: Some(Supervisor { stop, thread }),
    })
}

/// One clear line for the usual reasons a server cannot start.
fn start_error(listen: std::net::SocketAddr, e: io::Error) -> io::Error {
    let why = match e.kind() {
        io::ErrorKind::AddrInUse => {
            "address already in use (is another server running?)".to_string()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_string()
        }
        io::ErrorKind::AddrNotAvailable => "address not available on this host".to_string(),
        _ => return io::Error::new(e.kind(), format!("cannot start: {e}")),
    };
    io::Error::new(e.kind(), format!("cannot listen on {listen}: {why}"))
}

/// Serves until SIGTERM/SIGINT, then drains. A second signal exits at once.
pub(crate) fn run<D: Default + 'static>(server: Server<D>) -> io::Result<()> {
    crate::signals::block()?;
    let drain = server.settings.shutdown_timeout;
    let running = start(server)?;
    let handle = running.handle();
    let mut first: Option<std::time::Instant> = None;
    crate::signals::spawn(move |sig, _n| match first {
        None => {
            first = Some(std::time::Instant::now());
            tracing::info!(signal = %sig, timeout = ?drain, "shutting down: closing every connection with 1001");
            handle.stop(drain);
        }
        // A signal sent to the whole process group (e.g. by `timeout`)
        // arrives twice at once; only a later one means "exit now".
        Some(t) if t.elapsed() < Duration::from_secs(1) => {}
        Some(_) => {
            tracing::warn!(signal = %sig, "second signal: exiting now");
            std::process::exit(1);
        }
    })?;
    running.join()?;
    tracing::info!("stopped");
    Ok(())
}
