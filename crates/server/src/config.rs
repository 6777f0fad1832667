//! Settings: command-line flags, the optional TOML file, defaults.
//!
//! Every setting is declared once in the `settings!` table below, which
//! generates the clap flag, the TOML key and the merge. A flag and its key
//! share one parser, so `--idle-timeout 2m` and `idle_timeout = "2m"` mean
//! the same thing. Precedence: flag, then file, then default.
//!
//! TOML keys are the flag names without the leading `--`; both spellings are
//! accepted (`max-connections` or `max_connections`). An unknown key or a bad
//! value in the file is an error that names the key; the binary exits with
//! code 2 for those, as clap does for bad flags.
//!
//! To add a setting, add one line to the table: the field name, its type,
//! its default and its parser. A setting the reactor also has takes its
//! default from the reactor's `Config::default()`. Boolean settings (value name `BOOL`) also
//! accept the bare flag: `--redis-optional` means `--redis-optional true`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ringcast_reactor::BackendChoice;

/// What to do with a client whose send queue passes `max-backpressure`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close it with 1008.
    Close,
    /// Drop the messages that do not fit (counted in metrics) and keep it.
    Drop,
}

/// Log line format.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Origins allowed to open WebSockets; empty means any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origins(pub Vec<String>);

impl Origins {
    /// True if a request with this `Origin` header (or none) may upgrade.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(o) => self.0.is_empty() || self.0.iter().any(|a| a == o),
        }
    }
}

impl fmt::Display for Origins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("any")
        } else {
            f.write_str(&self.0.join(","))
        }
    }
}

/// A setting the user got wrong; `Display` is the whole message.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

// ---- value parsers (shared by flags and TOML keys) ----

/// `30s`, `500ms`, `2m`, `1h`, `1.5s` or plain seconds (`30`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: use e.g. 30s, 500ms, 2m or plain seconds"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 30s, 500ms, 2m or plain seconds"))?;
    let secs = n * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Bytes: `4096`, `64k`/`64KiB`, `1m`/`1MiB`, `1g`/`1GiB` (binary units).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size {s:?}: use e.g. 65536, 64KiB or 1MiB")),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use e.g. 65536, 64KiB or 1MiB"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

fn parse_positive_size(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        0 => Err("must be greater than 0".into()),
        n => Ok(n),
    }
}

fn parse_count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("invalid number {s:?}: expected a whole number"))
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match parse_count(s)? {
        0 => Err("must be greater than 0".into()),
        n => Ok(n),
    }
}

fn parse_shards(s: &str) -> Result<usize, String> {
    match parse_count(s)? {
        n if n > crate::id::MAX_SHARDS => Err(format!("at most {} shards", crate::id::MAX_SHARDS)),
        n => Ok(n),
    }
}

fn parse_node_id(s: &str) -> Result<u16, String> {
    match parse_count(s)? {
        n if n > crate::id::MAX_NODE as usize => {
            Err(format!("node id must be 0..={}", crate::id::MAX_NODE))
        }
        n => Ok(n as u16),
    }
}

fn parse_u32(s: &str) -> Result<u32, String> {
    match parse_count(s)? {
        0 => Err("must be greater than 0".into()),
        n => u32::try_from(n).map_err(|_| format!("{n} is too large")),
    }
}

fn parse_buf_count(s: &str) -> Result<u16, String> {
    match parse_count(s)? {
        n @ 1..=32768 => Ok(n as u16),
        _ => Err("must be in 1..=32768".into()),
    }
}

fn parse_lent_buffers(s: &str) -> Result<u16, String> {
    match parse_count(s)? {
        n @ 0..=32768 => Ok(n as u16),
        _ => Err("must be in 0..=32768".into()),
    }
}

fn parse_buf_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if !(512..=(16 << 20)).contains(&n) {
        return Err("must be between 512 bytes and 16MiB".into());
    }
    Ok(n as u32)
}

fn parse_header_size(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if !(1024..=(1 << 20)).contains(&n) {
        return Err("must be between 1KiB and 1MiB".into());
    }
    Ok(n)
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("invalid address {s:?}: expected IP:PORT, e.g. 0.0.0.0:9502 or [::]:9502")
    })
}

/// `redis://[:password@]HOST:PORT/DB`; empty = no backplane (single node).
/// Checked here so a typo is a bad flag (exit 2), not a failed start.
fn parse_redis_url(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(String::new());
    }
    if cfg!(not(feature = "cluster")) {
        return Err(
            "this ringcast was built without cluster support (the `cluster` feature)".into(),
        );
    }
    check_redis_url(t)?;
    Ok(t.to_string())
}

#[cfg(not(feature = "cluster"))]
fn check_redis_url(_: &str) -> Result<(), String> {
    Ok(())
}

#[cfg(feature = "cluster")]
fn check_redis_url(t: &str) -> Result<(), String> {
    if t.starts_with("rediss://") {
        return Err(format!(
            "TLS (rediss://) is not supported in {:?}: use redis:// (through a TLS tunnel if needed)",
            crate::backplane::redact_url(t)
        ));
    }
    if !t.starts_with("redis://") {
        return Err(format!(
            "invalid Redis URL {:?}: expected redis://HOST:PORT/DB",
            crate::backplane::redact_url(t)
        ));
    }
    redis::IntoConnectionInfo::into_connection_info(t).map_err(|e| {
        format!(
            "invalid Redis URL {:?}: {e}",
            crate::backplane::redact_url(t)
        )
    })?;
    Ok(())
}

/// Namespace of the Redis keys and channels.
fn parse_redis_prefix(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty()
        || t.bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "invalid prefix {s:?}: must be non-empty, without spaces or control characters"
        ));
    }
    Ok(t.to_string())
}

/// The node liveness timeout; the heartbeat is a fifth of it.
fn parse_node_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{s:?} must be between 100ms and 1h"));
    }
    Ok(d)
}

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    s.parse()
}

/// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("invalid boolean {s:?}: expected true or false")),
    }
}

fn parse_slow_consumer(s: &str) -> Result<SlowConsumer, String> {
    match s.trim() {
        "close" => Ok(SlowConsumer::Close),
        "drop" => Ok(SlowConsumer::Drop),
        _ => Err(format!("invalid policy {s:?}: expected close or drop")),
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("invalid log format {s:?}: expected text or json")),
    }
}

fn parse_log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s.trim())
        .map(|_| s.trim().to_string())
        .map_err(|e| format!("invalid log level {s:?}: {e}"))
}

/// Comma-separated exact origins (`https://a.example,https://b.example`);
/// `any` or `*` (or empty) allows every origin.
fn parse_origins(s: &str) -> Result<Origins, String> {
    let list: Vec<String> = s
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .filter(|o| !o.is_empty())
        .collect();
    if list.iter().any(|o| o == "*" || o == "any") {
        if list.len() > 1 {
            return Err(format!(
                "invalid origins {s:?}: `any` cannot be combined with other origins"
            ));
        }
        return Ok(Origins::default());
    }
    for o in &list {
        if !(o.starts_with("http://") || o.starts_with("https://"))
            || o.contains(char::is_whitespace)
        {
            return Err(format!(
                "invalid origin {o:?}: expected scheme://host[:port], e.g. https://chat.example.com"
            ));
        }
    }
    Ok(Origins(list))
}

/// CPUs this process may run on.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Soft `RLIMIT_NOFILE` (after [`raise_nofile`]).
pub fn nofile_limit() -> usize {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft.min(1 << 30) as usize)
}

/// Raises the soft open-file limit to the hard limit, as servers usually do.
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Where the reactor-level settings (listen address, shards, buffers, ...)
/// get their defaults: the reactor's `Config::default()` holds the binary's
/// values, so each is written once. The `[default: ...]` in their help is
/// checked against it (`stated_defaults_are_the_defaults`).
fn reactor() -> ringcast_reactor::Config {
    ringcast_reactor::Config::default()
}

/// The default `max-connections`: 90 % of the open-file limit minus 64
/// descriptors kept for listeners, rings, eventfds and log files.
pub fn default_max_connections() -> usize {
    (nofile_limit() / 10 * 9).saturating_sub(64).max(1)
}

/// Values a flag takes: booleans may be given bare (`--pin`).
fn arity(value_name: &str) -> clap::builder::ValueRange {
    if value_name == "BOOL" {
        (0..=1).into()
    } else {
        1.into()
    }
}

/// What a bare boolean flag means.
fn bare_value(value_name: &str) -> Option<&'static str> {
    (value_name == "BOOL").then_some("true")
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr, $parse:expr, $value:literal; )*) => {
        /// Command line. Every flag is optional here; [`Settings`] holds the result.
        #[derive(Parser, Debug, Default)]
        #[command(
            name = "ringcast",
            version,
            about = "ringcast: a WebSocket event server (chat rooms, echo, broadcast)",
            after_help = "Every flag can also be set in the --config TOML file under the same name without the leading --, written with - or _. Flags win over the file. Durations: 30s, 500ms, 2m or plain seconds. Sizes: bytes or 64KiB, 1MiB."
        )]
        pub struct Cli {
            /// TOML file with settings (keys = flag names, with - or _).
            #[arg(long, value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(
                    long,
                    value_name = $value,
                    value_parser = $parse,
                    allow_negative_numbers = true,
                    num_args = arity($value),
                    default_missing_value = bare_value($value)
                )]
                pub $field: Option<$ty>,
            )*
        }

        /// Effective settings after merging flags, file and defaults.
        #[derive(Clone, Debug)]
        pub struct Settings {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        /// Values read from the TOML file.
        #[derive(Default)]
        struct FileValues {
            $( $field: Option<$ty>, )*
        }

        /// Every TOML key, in `snake_case`.
        pub const KEYS: &[&str] = &[$(stringify!($field)),*];

        impl FileValues {
            /// Parses `value` for the `snake_case` key; `Ok(false)` if unknown.
            fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
                match key {
                    $( stringify!($field) => self.$field = Some(($parse)(value)?), )*
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }

        fn merge(cli: Cli, file: FileValues) -> Settings {
            Settings {
                $( $field: cli.$field.or(file.$field).unwrap_or_else(|| $default), )*
            }
        }

        /// Checks each help text's `[default: X]` by reading X with the
        /// setting's own parser: returns the mismatches, and the settings
        /// whose stated default is prose (e.g. "CPUs available").
        #[cfg(test)]
        fn stated_defaults() -> (Vec<String>, Vec<&'static str>) {
            let d = Settings::defaults();
            let (mut wrong, mut prose) = (Vec::new(), Vec::new());
            $(
                let stated = concat!($($doc),*)
                    .rsplit_once("[default: ")
                    .and_then(|(_, rest)| rest.strip_suffix("]."));
                match stated.map($parse) {
                    Some(Ok(v)) if v == d.$field => {}
                    Some(Ok(v)) => wrong.push(format!(
                        "{}: help says {:?}, default is {:?}",
                        stringify!($field), v, d.$field
                    )),
                    _ => prose.push(stringify!($field)),
                }
            )*
            (wrong, prose)
        }
    };
}

settings! {
    /// Address to listen on [default: 127.0.0.1:9502].
    listen: SocketAddr = reactor().listen, parse_addr, "ADDR";
    /// Shard (event loop) threads; 0 = one per available CPU [default: CPUs available].
    shards: usize = reactor().shards, parse_shards, "N";
    /// I/O backend: auto, io-uring or epoll [default: auto].
    backend: BackendChoice = reactor().backend, parse_backend, "BACKEND";
    /// Pin shard i to the i-th allowed CPU; worth it on a dedicated machine, harmful when other busy processes share the CPUs [default: false].
    pin: bool = reactor().pin, parse_bool, "BOOL";
    /// Node id (0..=1023) carried in connection ids; with --redis, 0 = allocate one in Redis and 1..=1023 = this fixed id [default: 0].
    node_id: u16 = 0, parse_node_id, "ID";
    /// Redis backplane for several nodes: redis://[:PASSWORD@]HOST:PORT/DB; rooms, publish and push then reach every node sharing it [default: none, single node].
    redis: String = String::new(), parse_redis_url, "URL";
    /// Prefix of every Redis key and channel; clusters sharing one Redis need different prefixes [default: ringcast].
    redis_prefix: String = "ringcast".to_string(), parse_redis_prefix, "PREFIX";
    /// Start even when Redis is unreachable (single node until it connects) instead of exiting with an error [default: false].
    redis_optional: bool = false, parse_bool, "BOOL";
    /// A node silent this long drops out of the cluster's member counts (heartbeat: a fifth of it) [default: 5s].
    redis_node_ttl: Duration = Duration::from_secs(5), parse_node_ttl, "DURATION";
    /// Requests (messages, joins, pushes) waiting for the Redis connection before further ones are refused [default: 65536].
    redis_queue: usize = 65536, parse_positive, "N";
    /// Open WebSocket connections at most; further upgrades get 503 [default: 90% of RLIMIT_NOFILE - 64].
    max_connections: usize = default_max_connections(), parse_positive, "N";
    /// Open WebSocket connections per client IP; 0 = unlimited [default: 0].
    max_connections_per_ip: usize = 0, parse_count, "N";
    /// Largest message accepted; bigger ones close with 1009 [default: 1MiB].
    max_message_size: usize = 1 << 20, parse_positive_size, "SIZE";
    /// Bytes queued to one client that its socket has not taken before the slow-consumer policy applies [default: 1MiB].
    max_backpressure: usize = 1 << 20, parse_positive_size, "SIZE";
    /// What to do with a client over max-backpressure: close (1008) or drop messages [default: close].
    slow_consumer: SlowConsumer = SlowConsumer::Close, parse_slow_consumer, "POLICY";
    /// Largest HTTP request head; bigger ones get 431 [default: 8KiB].
    max_header_size: usize = ringcast_codec::MAX_HEADER_BYTES_DEFAULT, parse_header_size, "SIZE";
    /// Close a connection silent for this long (1001 "idle timeout"); 0 = never [default: 120s].
    idle_timeout: Duration = Duration::from_secs(120), parse_duration, "DURATION";
    /// Send a ping to every connection this often; 0 = never [default: 30s].
    ping_interval: Duration = Duration::from_secs(30), parse_duration, "DURATION";
    /// Close sockets that have not finished the HTTP upgrade within this time; 0 = never [default: 10s].
    handshake_timeout: Duration = Duration::from_secs(10), parse_duration, "DURATION";
    /// After sending a close frame, wait this long for the client's close before dropping it [default: 5s].
    close_timeout: Duration = reactor().close_timeout, parse_duration, "DURATION";
    /// Origins allowed to open WebSockets: comma list of exact origins, or any [default: any].
    allowed_origins: Origins = Origins::default(), parse_origins, "LIST";
    /// On SIGTERM/SIGINT, wait this long for clients to close before exiting [default: 10s].
    shutdown_timeout: Duration = reactor().drain_timeout, parse_duration, "DURATION";
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives [default: info].
    log_level: String = "info".to_string(), parse_log_level, "FILTER";
    /// Log format: text or json [default: text].
    log_format: LogFormat = LogFormat::Text, parse_log_format, "FORMAT";
    /// Chat: longest user name in bytes [default: 64].
    chat_max_name: usize = 64, parse_positive, "BYTES";
    /// Chat: longest room name in bytes [default: 64].
    chat_max_room: usize = 64, parse_positive, "BYTES";
    /// Chat: longest message text in bytes [default: 4096].
    chat_max_text: usize = 4096, parse_positive, "BYTES";
    /// Chat: rooms one connection may be in at once [default: 16].
    chat_max_rooms: usize = 16, parse_positive, "N";
    /// listen(2) backlog per listening socket [default: 4096].
    backlog: u32 = reactor().backlog, parse_u32, "N";
    /// Receive buffer size per read (bounds the work done for one client per event) [default: 64KiB].
    buf_size: u32 = reactor().buf_size, parse_buf_size, "SIZE";
    /// Bytes of large (4 KiB to 2 MiB) message and frame buffers each shard keeps for reuse; 0 = none [default: 8MiB].
    buffer_pool: usize = 8 << 20, parse_size, "SIZE";
    /// io_uring provided receive buffers per shard, at most (the ring starts at 64 and grows when it runs dry) [default: 1024].
    buf_count: u16 = reactor().buf_count, parse_buf_count, "N";
    /// Receive buffers per shard that large messages may be lent from until they are sent (echo and relay without a copy); 0 = always copy [default: 256].
    max_lent_buffers: u16 = reactor().max_lent_buffers, parse_lent_buffers, "N";
    /// io_uring submission queue entries per shard [default: 4096].
    ring_entries: u32 = reactor().ring_entries, parse_u32, "N";
    /// Messages each shard's inbound mailbox holds before senders queue locally [default: 65536].
    mailbox_capacity: usize = reactor().mailbox_capacity, parse_positive, "N";
    /// Set TCP_NODELAY on client sockets [default: true].
    tcp_nodelay: bool = reactor().tcp_nodelay, parse_bool, "BOOL";
}

impl Settings {
    /// Defaults only (no flags, no file): for embedding and tests.
    pub fn defaults() -> Settings {
        merge(Cli::default(), FileValues::default())
    }

    /// Shard count with 0 resolved to the CPUs available.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            cpus().min(crate::id::MAX_SHARDS)
        } else {
            self.shards
        }
    }

    /// [`Settings::from_args`], printing the error and exiting on failure:
    /// code 2 for a bad flag or config file (0 for `--help`).
    pub fn from_args_or_exit() -> Settings {
        match Self::from_args() {
            Ok(s) => s,
            Err(SettingsError::Cli(e)) => e.exit(),
            Err(SettingsError::File(e)) => {
                eprintln!("ringcast: {e}");
                std::process::exit(2);
            }
        }
    }

    /// Parses the process arguments and the `--config` file.
    ///
    /// `Err` carries clap's own error for bad flags (print with `exit()`:
    /// code 2, or 0 for `--help`) or a [`ConfigError`] for the file.
    pub fn from_args() -> Result<Settings, SettingsError> {
        Self::parse_from(std::env::args_os())
    }

    /// [`Settings::from_args`] for an explicit argument list (first = program name).
    pub fn parse_from<I, T>(args: I) -> Result<Settings, SettingsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args).map_err(SettingsError::Cli)?;
        let file = match &cli.config {
            Some(path) => load_file(path).map_err(SettingsError::File)?,
            None => FileValues::default(),
        };
        Ok(merge(cli, file))
    }
}

/// Why settings could not be built.
#[derive(Debug)]
pub enum SettingsError {
    /// Bad command line (or `--help` / `--version`).
    Cli(clap::Error),
    /// Bad config file.
    File(ConfigError),
}

/// Reads the TOML file. Each value goes through the same parser as its flag,
/// so the file accepts exactly what the command line accepts.
fn load_file(path: &Path) -> Result<FileValues, ConfigError> {
    let where_ = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read config file {where_}: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        ConfigError(format!(
            "config file {where_}: {}",
            e.to_string().trim_end()
        ))
    })?;
    let mut out = FileValues::default();
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in &table {
        let canonical = key.replace('-', "_");
        if seen.contains(&canonical) {
            return Err(ConfigError(format!(
                "config file {where_}: key `{key}` is set twice (as `{canonical}` and with dashes)"
            )));
        }
        seen.push(canonical.clone());
        let text = toml_scalar(value)
            .map_err(|why| ConfigError(format!("config file {where_}: key `{key}`: {why}")))?;
        match out.set(&canonical, &text) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ConfigError(format!(
                    "config file {where_}: unknown key `{key}` (known keys: {})",
                    KEYS.join(", ")
                )))
            }
            Err(why) => {
                return Err(ConfigError(format!(
                    "config file {where_}: key `{key}`: {why}"
                )))
            }
        }
    }
    Ok(out)
}

/// A TOML value as the text a flag would carry; arrays become comma lists.
fn toml_scalar(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => {
            let parts: Result<Vec<String>, String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::Array(_) | toml::Value::Table(_) => {
                        Err("nested arrays or tables are not allowed".to_string())
                    }
                    other => toml_scalar(other),
                })
                .collect();
            Ok(parts?.join(","))
        }
        toml::Value::Datetime(_) => Err("a date is not a valid value here".into()),
        toml::Value::Table(_) => Err("expected a value, found a table".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("1x").is_err());
        assert!(parse_positive_size("0").is_err());
    }

    #[test]
    fn origins() {
        assert_eq!(parse_origins("any"), Ok(Origins::default()));
        let o = parse_origins("https://a.example, http://b.example:8080/").unwrap();
        assert!(o.allows(Some("https://a.example")));
        assert!(o.allows(Some("http://b.example:8080")));
        assert!(!o.allows(Some("https://evil.example")));
        assert!(o.allows(None));
        assert!(parse_origins("a.example").is_err());
    }

    #[test]
    fn flags_win_over_file() {
        let dir = std::env::temp_dir().join(format!("ringcast-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.toml");
        std::fs::write(
            &path,
            "idle-timeout = \"2m\"\nping_interval = 5\nshards = 3\n",
        )
        .unwrap();
        let s = Settings::parse_from([
            "ringcast",
            "--config",
            path.to_str().unwrap(),
            "--shards",
            "2",
        ])
        .unwrap();
        assert_eq!(s.idle_timeout, Duration::from_secs(120));
        assert_eq!(s.ping_interval, Duration::from_secs(5));
        assert_eq!(s.shards, 2);

        std::fs::write(&path, "idle_timeout = \"soon\"\n").unwrap();
        match Settings::parse_from(["ringcast", "--config", path.to_str().unwrap()]) {
            Err(SettingsError::File(e)) => assert!(e.0.contains("`idle_timeout`"), "{e}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "colour = 1\n").unwrap();
        match Settings::parse_from(["ringcast", "--config", path.to_str().unwrap()]) {
            Err(SettingsError::File(e)) => assert!(e.0.contains("unknown key `colour`"), "{e}"),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(not(feature = "cluster"))]
    #[test]
    fn redis_is_refused_without_cluster_support() {
        assert_eq!(parse_redis_url(""), Ok(String::new()));
        let e = parse_redis_url("redis://127.0.0.1:6379/0").unwrap_err();
        assert!(e.contains("cluster"), "{e}");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn redis_settings() {
        let s = Settings::defaults();
        assert!(s.redis.is_empty());
        assert_eq!(s.redis_prefix, "ringcast");
        assert_eq!(
            parse_redis_url(" redis://127.0.0.1:6379/1 "),
            Ok("redis://127.0.0.1:6379/1".into())
        );
        assert_eq!(parse_redis_url(""), Ok(String::new()));
        let tls = parse_redis_url("rediss://:secret@db:6379/0").unwrap_err();
        assert!(tls.contains("TLS") && !tls.contains("secret"), "{tls}");
        assert!(parse_redis_url("http://db").is_err());
        assert!(parse_redis_url("redis://db:notaport/0").is_err());
        assert!(parse_redis_prefix("a b").is_err());
        assert!(parse_node_ttl("50ms").is_err());
        assert_eq!(parse_node_ttl("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn bare_boolean_flags_mean_true() {
        let s = Settings::parse_from(["ringcast", "--redis-optional", "--pin"]).unwrap();
        assert!(s.redis_optional && s.pin);
        let s =
            Settings::parse_from(["ringcast", "--pin", "false", "--tcp-nodelay", "off"]).unwrap();
        assert!(!s.pin && !s.tcp_nodelay);
        let s = Settings::parse_from(["ringcast", "--redis-optional", "--shards", "2"]).unwrap();
        assert!(s.redis_optional);
        assert_eq!(s.shards, 2);
        // Other flags still need their value.
        assert!(Settings::parse_from(["ringcast", "--shards"]).is_err());
    }

    /// dist/ringcast.toml says its values are the defaults: keep it so (it
    /// once said `pin = true` after the default became false).
    #[test]
    fn example_config_states_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/ringcast.toml");
        let file = Settings::parse_from(["ringcast", "--config", path]).unwrap();
        assert_eq!(format!("{file:?}"), format!("{:?}", Settings::defaults()));
    }

    /// Reactor-level defaults live in the reactor; the help text repeats
    /// them for users, so it is held to them here.
    #[test]
    fn stated_defaults_are_the_defaults() {
        let (wrong, prose) = stated_defaults();
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert_eq!(prose, ["shards", "redis", "max_connections"]);
    }

    #[test]
    fn defaults_are_sane() {
        let s = Settings::defaults();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9502");
        assert_eq!(s.max_message_size, 1 << 20);
        assert!(s.max_connections >= 1);
        assert!(s.shard_count() >= 1);
    }
}
