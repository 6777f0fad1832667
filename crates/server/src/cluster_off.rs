//! Cluster mode is not in this build (the `cluster` feature is off): no
//! Redis, no tokio. A node on its own; `--redis` is refused at start.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use ringcast_reactor::Handle;

use crate::config::Settings;
use crate::id::ConnId;
use crate::shard::Mail;

/// There is never a link to other nodes (no value of this type exists).
pub(crate) enum Link {}

impl Link {
    pub fn node_id(&self) -> u16 {
        match *self {}
    }

    pub fn metrics(&self) -> Box<dyn Fn(&mut String) + Send + Sync> {
        match *self {}
    }

    pub fn connect(&self, _: Handle<Mail>) {
        match *self {}
    }

    pub fn shutdown(&self, _: Duration) {
        match *self {}
    }

    pub fn members(&self, _: &str) -> io::Result<Vec<(ConnId, Bytes)>> {
        match *self {}
    }

    pub fn channels(&self, _: &str) -> io::Result<Vec<(String, usize)>> {
        match *self {}
    }

    pub fn count(&self, _: &str) -> io::Result<usize> {
        match *self {}
    }
}

/// Single node only: `--redis` is an error that says why.
pub(crate) fn start(s: &Settings) -> io::Result<Option<Link>> {
    if s.redis.is_empty() {
        return Ok(None);
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "--redis needs cluster support: this ringcast was built without the `cluster` feature",
    ))
}
