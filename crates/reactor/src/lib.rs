//! ringcast-reactor: per-core shards on io_uring (with an epoll fallback),
//! lock-free cross-shard mailboxes and timer wheels.
//!
//! # Model
//!
//! [`start`] spawns one shard thread per CPU (or [`Config::shards`]), each
//! pinned to its CPU and owning: its listening socket(s), a connection table,
//! a timer wheel, an inbound mailbox and one backend instance (an io_uring
//! ring or an epoll set). Nothing is shared between shards on the I/O path;
//! shards talk only through mailboxes.
//!
//! Each shard builds its own [`Handler`] on its thread (so it need not be
//! `Send`). The reactor feeds it accepted connections, received bytes,
//! timer expiries and mail; the handler answers through [`Ctx`]: queue
//! refcounted buffers (`bytes::Bytes`, shared without copies across
//! recipients), close, abort, shut down writing, arm timers, mail other shards.
//! Callbacks are never re-entered: requests are carried out after the
//! callback returns, and the consequence (`on_close`) arrives as a separate
//! call. Output queues are unbounded: [`Ctx::queued_bytes`] tells a handler
//! how much a connection has not taken yet, and what to do about a slow one
//! is the handler's policy.
//!
//! See `docs/reactor.md` for the design, the platform facts behind each
//! choice, and measured figures.
//!
//! # Example
//!
//! ```no_run
//! use ringcast_reactor::*;
//! struct Echo;
//! impl Handler for Echo {
//!     type Mail = ();
//!     fn on_open(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: std::net::SocketAddr) {}
//!     fn on_data(&mut self, ctx: &mut Ctx<'_, ()>, c: Conn, data: &mut [u8]) {
//!         ctx.send(c, bytes::Bytes::copy_from_slice(data));
//!     }
//!     fn on_close(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: CloseReason) {}
//!     fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
//!     fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
//!     fn on_shutdown(&mut self, _: &mut Ctx<'_, ()>) {}
//! }
//! let cfg = Config { listen: "127.0.0.1:7000".parse().unwrap(), ..Default::default() };
//! let running = start(cfg, |_shard| Echo).unwrap();
//! println!("backend: {}", running.backend().as_str());
//! running.join().unwrap();
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]

mod config;
mod conn;
mod core;
mod ctx;
mod epoll;
mod handler;
mod lend;
mod listener;
mod mailbox;
mod outq;
mod runtime;
mod shard;
mod shared;
mod stats;
mod sys;
mod timer;
mod uring;
mod waker;

pub use crate::config::{Backend, BackendChoice, Config};
pub use crate::conn::Conn;
pub use crate::ctx::Ctx;
pub use crate::handler::{CloseReason, Handler};
pub use crate::lend::{Input, Lender};
pub use crate::runtime::{io_uring_support, start, Handle, Running};
pub use crate::stats::ShardStats;
pub use crate::timer::TimerId;
