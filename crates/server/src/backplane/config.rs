//! Backplane configuration: every limit has a default and can be changed.

use std::time::Duration;

use super::BackplaneError;

/// Settings of the Redis backplane. `BackplaneConfig::new(url)` gives the defaults.
#[derive(Clone, Debug)]
pub struct BackplaneConfig {
    /// `redis://[:password@]HOST:PORT/DB`. The DB number only namespaces keys: Redis
    /// pub/sub channels are server-wide, so clusters sharing one Redis need distinct prefixes.
    pub url: String,
    /// Namespace of every channel and key (`--redis-prefix`, default `ringcast`).
    pub prefix: String,
    /// Fixed node id (1..=`max_node_id`). `None`: allocated at start by
    /// `INCR {prefix}:node_seq` (or picked at random when Redis is down at start in
    /// optional mode).
    pub node_id: Option<u16>,
    /// Largest node id: must match the node field of the server's connection ids
    /// (`ConnId`: 10 bits, 1023).
    pub max_node_id: u16,
    /// Start even when Redis is unreachable and connect later (`--redis-optional`).
    pub optional: bool,
    /// Maximum number of publish/push/join/subscribe/barrier requests waiting for the
    /// backplane thread; beyond it the `try` methods return `SendError::Full`.
    pub queue_capacity: usize,
    /// Maximum requests sent to Redis in one pipeline (one round trip).
    pub max_batch: usize,
    /// Lifetime of this node's liveness key; a node silent for this long drops out of the
    /// member counts.
    pub node_ttl: Duration,
    /// How often the liveness key is refreshed and dead nodes are reaped.
    pub heartbeat: Duration,
    /// First reconnect delay; doubles per failed attempt (with jitter) up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
    /// Timeout of one TCP connect + handshake to Redis.
    pub connect_timeout: Duration,
    /// Timeout of one command/pipeline round trip; beyond it the connection counts as lost.
    pub response_timeout: Duration,
}

impl BackplaneConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        BackplaneConfig {
            url: url.into(),
            prefix: "ringcast".to_string(),
            node_id: None,
            max_node_id: 1023,
            optional: false,
            queue_capacity: 65_536,
            max_batch: 1024,
            node_ttl: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }

    /// Checks the settings; the error names the offending setting.
    pub fn validate(&self) -> Result<(), BackplaneError> {
        let bad = |m: String| Err(BackplaneError::Config(m));
        if self.prefix.is_empty() {
            return bad("redis prefix must not be empty".into());
        }
        if self
            .prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return bad(format!(
                "redis prefix {:?} must not contain whitespace or control characters",
                self.prefix
            ));
        }
        if self.max_node_id == 0 {
            return bad("max node id must be at least 1".into());
        }
        if let Some(n) = self.node_id {
            if n == 0 || n > self.max_node_id {
                return bad(format!(
                    "node id {n} must be in 1..={} (0 is reserved for single-node mode)",
                    self.max_node_id
                ));
            }
        }
        if self.queue_capacity == 0 {
            return bad("backplane queue capacity must be at least 1".into());
        }
        if self.max_batch == 0 {
            return bad("backplane max batch must be at least 1".into());
        }
        if self.heartbeat.is_zero() || self.node_ttl < self.heartbeat * 2 {
            return bad(format!(
                "node ttl ({:?}) must be at least twice the heartbeat ({:?}), heartbeat > 0",
                self.node_ttl, self.heartbeat
            ));
        }
        if self.node_ttl.as_millis() > u128::from(u32::MAX) {
            return bad(format!("node ttl {:?} is too large", self.node_ttl));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return bad(format!(
                "reconnect delays must satisfy 0 < min ({:?}) <= max ({:?})",
                self.reconnect_min, self.reconnect_max
            ));
        }
        if self.connect_timeout.is_zero() || self.response_timeout.is_zero() {
            return bad("redis connect/response timeouts must be > 0".into());
        }
        Ok(())
    }
}

/// The URL with any password replaced, for log lines and error messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BackplaneConfig::new("redis://127.0.0.1:6379/0")
            .validate()
            .unwrap();
    }

    #[test]
    fn rejects_bad_settings() {
        let mut c = BackplaneConfig::new("redis://x");
        c.heartbeat = c.node_ttl;
        assert!(c.validate().unwrap_err().to_string().contains("heartbeat"));
        let mut c = BackplaneConfig::new("redis://x");
        c.prefix = "a b".into();
        assert!(c.validate().is_err());
        let mut c = BackplaneConfig::new("redis://x");
        c.node_id = Some(0);
        assert!(c.validate().is_err());
        c.node_id = Some(1024);
        assert!(c.validate().is_err());
        c.node_id = Some(1023);
        assert!(c.validate().is_ok());
        let mut c = BackplaneConfig::new("redis://x");
        c.reconnect_min = c.reconnect_max * 2;
        assert!(c.validate().is_err());
    }

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_url("redis://:hunter2@db:6379/1"),
            "redis://***@db:6379/1"
        );
        assert_eq!(redact_url("redis://db:6379/1"), "redis://db:6379/1");
        assert_eq!(redact_url("db:6379"), "db:6379");
    }
}
