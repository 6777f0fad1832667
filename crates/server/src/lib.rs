//! ringcast: a WebSocket event server for Linux.
//!
//! Build a [`Server`] from handlers (`on_open`, `on_message`, `on_close`,
//! optionally `on_request` for plain HTTP) and act through [`Ctx`]: `push`
//! to any connection, `broadcast`, `subscribe`/`publish` on topics, `close`.
//! Each connection lives on one shard (an event-loop thread) for its whole
//! life and its handlers run there, so per-connection data needs no locks.
//!
//! Channels: `subscribe` and `join` (presence, with an opaque payload such
//! as a user id) group connections; `publish` sends a ready frame and
//! `publish_event` an app payload that the channel's owner shard numbers and
//! [`Server::on_channel_event`] renders once. `channel`, `channels` and
//! `members` answer queries.
//!
//! Module map (each concern in one place):
//!
//! - `api`: the public types: `Server`, `Ctx`, `Message`, `Frame`, `Response`.
//! - `shard`: the per-shard reactor handler: connection table, the
//!   per-connection WebSocket state machine (`shard::ws`), HTTP, frames.
//! - `route`: where a connection id lives (this shard, another, another node).
//! - `channel`: channels with presence: owner shard, ordering, fan-out, queries.
//! - `backplane`: the Redis link between nodes; `cluster`: its wiring into
//!   the server (settings, routing its events to shards).
//! - `chat`: the `/chat` JSON protocol, an app on the public API.
//! - `routes`: the binary's routes (`/`, `/chat`, `/echo`, `/broadcast`, ...).
//! - `config`: flags and the TOML file. `limits`: connection counting.
//! - `run`, `signals`, `logging`, `cli`: process plumbing.
//! - `metrics`, `systemd`, `page`: Prometheus, sd_notify, the chat page.

mod api;
#[cfg(feature = "cluster")]
pub mod backplane;
mod bufpool;
mod channel;
mod chat;
pub mod cli;
#[cfg(feature = "cluster")]
mod cluster;
#[cfg(not(feature = "cluster"))]
#[path = "cluster_off.rs"]
mod cluster;
pub mod config;
mod id;
mod limits;
pub mod logging;
pub mod metrics;
mod page;
mod route;
pub mod routes;
mod run;
mod shard;
mod signals;
pub mod systemd;

pub use api::{Ctx, Data, Frame, Message, Request, Response, Running, Server, ServerHandle};
pub use channel::{ChannelEvent, ChannelInfo, EventKind};
pub use config::Settings;
pub use id::ConnId;
pub use ringcast_reactor::{io_uring_support, BackendChoice};
pub use route::PushError;
