//! Reactor configuration and backend selection.
//!
//! Every limit the reactor enforces lives here. `Config::default()` holds
//! ringcast's values, and the one copy of them: the reactor serves only that
//! server and its tests, and the server's `Settings` read their reactor-level
//! defaults (flags and config-file keys) from here. The io_uring sizes interact: the
//! completion queue is sized from `buf_count`, `max_connections` and `backlog`
//! so it cannot overflow (see `uring::setup`), so raising those raises the
//! per-shard ring memory too.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::str::FromStr;
use std::time::Duration;

/// Which backend [`start`](crate::start) should use.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq, Hash)]
pub enum BackendChoice {
    /// Try io_uring; fall back to epoll (with a `tracing::warn!` saying why)
    /// when the kernel, a seccomp filter or a sysctl forbids it.
    #[default]
    Auto,
    /// io_uring or an error.
    IoUring,
    /// epoll, always available on Linux.
    Epoll,
}

impl FromStr for BackendChoice {
    type Err = String;

    /// Accepts `auto`, `io-uring` (also `io_uring`, `uring`) and `epoll`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "io-uring" | "io_uring" | "iouring" | "uring" => Ok(BackendChoice::IoUring),
            "epoll" => Ok(BackendChoice::Epoll),
            other => Err(format!(
                "unknown backend {other:?}: expected auto, io-uring or epoll"
            )),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::IoUring => "io-uring",
            BackendChoice::Epoll => "epoll",
        })
    }
}

/// The backend actually in use.
#[derive(Copy, Clone, Debug, Eq, PartialEq, Hash)]
pub enum Backend {
    /// io_uring: multishot accept, multishot recv into a provided-buffer ring, sendmsg.
    IoUring,
    /// Edge-triggered epoll with nonblocking accept4 / read / sendmsg.
    Epoll,
}

impl Backend {
    /// `"io_uring"` or `"epoll"` (stable strings for metrics labels).
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reactor configuration. Build with `Config { listen, ..Default::default() }`.
/// The defaults are those of the `ringcast` binary (see the module docs).
#[derive(Debug)]
pub struct Config {
    /// Address every shard binds (with `SO_REUSEPORT`) when `inherited` is empty.
    /// Port 0 is allowed: the first shard's actual port is used by the others.
    pub listen: SocketAddr,
    /// Already-listening sockets (systemd socket activation). When non-empty,
    /// `listen` is ignored; every shard accepts on every inherited socket and
    /// hands each connection to the shards in round robin (a full shard is
    /// skipped), so they are spread evenly.
    pub inherited: Vec<OwnedFd>,
    /// Number of shard threads; 0 = one per CPU in the process affinity mask.
    pub shards: usize,
    /// Pin shard `i` to the `i`-th CPU of the affinity mask (wrapping).
    pub pin: bool,
    /// Backend selection.
    pub backend: BackendChoice,
    /// `listen(2)` backlog per listening socket.
    pub backlog: u32,
    /// io_uring submission queue entries per shard (rounded up to a power of two).
    pub ring_entries: u32,
    /// Provided receive buffers per shard (io_uring buffer ring).
    pub buf_count: u16,
    /// Size of each provided buffer, and of the epoll per-shard read scratch buffer.
    pub buf_size: u32,
    /// Receive buffers per shard that handlers may keep past `on_data`
    /// (`Input::split`); 0 = never lend. With io_uring also at most half of
    /// the buffers circulating, so receives always have buffers; with epoll
    /// this many extra read buffers may be mapped.
    pub max_lent_buffers: u16,
    /// Capacity (messages) of each shard's inbound mailbox.
    pub mailbox_capacity: usize,
    /// Set `TCP_NODELAY` on accepted sockets.
    pub tcp_nodelay: bool,
    // ---- additions beyond the original contract ----
    /// Maximum connections per shard (table slots, including closed io_uring
    /// connections whose cancellation is still completing); further accepts
    /// are closed at once. With io_uring, `buf_count + 4 * max_connections +
    /// backlog` must stay under 65,536 for the no-CQ-overflow guarantee.
    pub max_connections: usize,
    /// Capacity (messages) of each per-target local outbox used by `Ctx::mail`
    /// when the target mailbox is full.
    pub outbox_capacity: usize,
    /// Drain deadline used by `Ctx::stop_all`.
    pub drain_timeout: Duration,
    /// How long `Ctx::close` may spend flushing a connection's queue before the
    /// socket is closed anyway (a peer that never reads cannot pin it).
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // Loopback: exposing the server is a decision, not a default.
            listen: SocketAddr::from(([127, 0, 0, 1], 9502)),
            inherited: Vec::new(),
            shards: 0,
            // Pinning pays on a dedicated machine and hurts on a shared one.
            pin: false,
            backend: BackendChoice::Auto,
            backlog: 4096,
            ring_entries: 4096,
            // 64 KiB reads take most WebSocket messages whole; 1,024 of them
            // keep the same 64 MiB virtual ceiling per shard as 4,096 × 16 KiB.
            buf_count: 1024,
            buf_size: 64 * 1024,
            max_lent_buffers: 256,
            mailbox_capacity: 65536,
            tcp_nodelay: true,
            max_connections: 16384,
            outbox_capacity: 65536,
            drain_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// The subset of [`Config`] each shard needs at run time (cheap to share).
#[derive(Clone, Debug)]
pub(crate) struct ShardConfig {
    pub ring_entries: u32,
    pub buf_count: u16,
    pub buf_size: u32,
    pub max_lent_buffers: u16,
    pub backlog: u32,
    pub tcp_nodelay: bool,
    pub max_connections: usize,
    pub outbox_capacity: usize,
    pub drain_timeout: Duration,
    pub close_timeout: Duration,
}

impl Config {
    /// Validate and clamp; returns the per-shard view.
    pub(crate) fn shard_config(&self) -> std::io::Result<ShardConfig> {
        use std::io::{Error, ErrorKind};
        let bad = |what: &str| Err(Error::new(ErrorKind::InvalidInput, what.to_string()));
        if self.buf_count == 0 || self.buf_count > 32768 {
            return bad("buf_count must be in 1..=32768 (kernel buffer-ring limit)");
        }
        if self.max_lent_buffers > 32768 {
            return bad("max_lent_buffers must be in 0..=32768");
        }
        if self.buf_size < 64 {
            return bad("buf_size must be at least 64 bytes");
        }
        if self.mailbox_capacity == 0 {
            return bad("mailbox_capacity must be > 0");
        }
        if self.max_connections == 0 || self.max_connections >= (1 << 24) {
            return bad("max_connections must be in 1..16777216");
        }
        if self.ring_entries == 0 || self.ring_entries > 32768 {
            return bad("ring_entries must be in 1..=32768");
        }
        Ok(ShardConfig {
            ring_entries: self.ring_entries.next_power_of_two(),
            buf_count: self.buf_count,
            buf_size: self.buf_size,
            max_lent_buffers: self.max_lent_buffers,
            backlog: self.backlog.clamp(1, i32::MAX as u32),
            tcp_nodelay: self.tcp_nodelay,
            max_connections: self.max_connections,
            outbox_capacity: self.outbox_capacity,
            drain_timeout: self.drain_timeout,
            close_timeout: self.close_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_choice() {
        assert_eq!("auto".parse::<BackendChoice>(), Ok(BackendChoice::Auto));
        assert_eq!(
            "io-uring".parse::<BackendChoice>(),
            Ok(BackendChoice::IoUring)
        );
        assert_eq!("epoll".parse::<BackendChoice>(), Ok(BackendChoice::Epoll));
        assert!("kqueue".parse::<BackendChoice>().is_err());
        assert_eq!(Backend::IoUring.as_str(), "io_uring");
        assert_eq!(Backend::Epoll.as_str(), "epoll");
    }
}
