//! The public API: build a [`Server`] from handlers, act through [`Ctx`].
//!
//! ```no_run
//! use ringcast::{Server, Settings};
//!
//! Server::new(Settings::defaults())
//!     .on_open(|ctx, conn, _req| { ctx.push(conn, "welcome"); })
//!     .on_message(|ctx, _conn, msg| ctx.broadcast(msg))
//!     .on_close(|_ctx, conn, code, _reason| println!("{conn} left with {code}"))
//!     .run()
//!     .unwrap();
//! ```
//!
//! Handlers run on the shard (event-loop thread) that owns the connection, so
//! per-connection data (`ctx.data(conn)`) needs no lock. A panic in a handler
//! closes that connection with 1011 and is logged; the shard carries on.

mod ctx;
mod frame;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::channel::{ChannelEvent, ChannelInfo, ChannelMail, Event};
use crate::config::Settings;
use crate::id::ConnId;
use crate::route::{Dest, Router};
use crate::shard::Mail;

pub use ctx::Ctx;
pub use frame::{Data, Frame, Message, Response};
pub use ringcast_codec::Request;

type OpenFn<D> = dyn Fn(&mut Ctx<'_, D>, ConnId, &Request) + Send + Sync;
type MessageFn<D> = dyn Fn(&mut Ctx<'_, D>, ConnId, Message<'_>) + Send + Sync;
type CloseFn<D> = dyn Fn(&mut Ctx<'_, D>, ConnId, u16, &str) + Send + Sync;
type RequestFn<D> = dyn Fn(&mut Ctx<'_, D>, &Request) -> Response + Send + Sync;
type UpgradeFn = dyn Fn(&Request) -> Result<(), Response> + Send + Sync;
type NoticeFn<D> = dyn Fn(&mut Ctx<'_, D>, ConnId, &str) + Send + Sync;
/// The app's renderer of channel events (see [`Server::on_channel_event`]).
pub(crate) type RenderFn = dyn Fn(&ChannelEvent<'_>) -> Option<Frame> + Send + Sync;

/// The user's callbacks, shared (read-only) by every shard.
pub(crate) struct Handlers<D> {
    pub open: Option<Box<OpenFn<D>>>,
    pub message: Option<Box<MessageFn<D>>>,
    pub close: Option<Box<CloseFn<D>>>,
    pub request: Option<Box<RequestFn<D>>>,
    pub upgrade: Option<Box<UpgradeFn>>,
    pub notice: Option<Box<NoticeFn<D>>>,
    pub render: Option<Arc<RenderFn>>,
}

/// A WebSocket server built from handlers. `D` is the per-connection user
/// data (created with `D::default()` when a connection opens).
pub struct Server<D = ()> {
    pub(crate) settings: Settings,
    pub(crate) handlers: Handlers<D>,
}

impl Server<()> {
    /// A server with no per-connection data.
    pub fn new(settings: Settings) -> Server<()> {
        Server::with_data(settings)
    }
}

impl<D: Default + 'static> Server<D> {
    /// A server whose connections each carry a `D`: `Server::<MyData>::with_data(settings)`.
    pub fn with_data(settings: Settings) -> Server<D> {
        Server {
            settings,
            handlers: Handlers {
                open: None,
                message: None,
                close: None,
                request: None,
                upgrade: None,
                notice: None,
                render: None,
            },
        }
    }

    /// Called once a WebSocket is open (after the 101 went out).
    pub fn on_open<F>(mut self, f: F) -> Self
    where
        F: Fn(&mut Ctx<'_, D>, ConnId, &Request) + Send + Sync + 'static,
    {
        self.handlers.open = Some(Box::new(f));
        self
    }

    /// Called for every complete text or binary message.
    pub fn on_message<F>(mut self, f: F) -> Self
    where
        F: Fn(&mut Ctx<'_, D>, ConnId, Message<'_>) + Send + Sync + 'static,
    {
        self.handlers.message = Some(Box::new(f));
        self
    }

    /// Called once when an open WebSocket ends, with the close code of the
    /// closing handshake (the peer's, else ours; 1006 if the TCP connection
    /// died without one) and its reason. `ctx.data(conn)` still works here.
    pub fn on_close<F>(mut self, f: F) -> Self
    where
        F: Fn(&mut Ctx<'_, D>, ConnId, u16, &str) + Send + Sync + 'static,
    {
        self.handlers.close = Some(Box::new(f));
        self
    }

    /// Answers plain HTTP requests (no upgrade). Default: 404.
    pub fn on_request<F>(mut self, f: F) -> Self
    where
        F: Fn(&mut Ctx<'_, D>, &Request) -> Response + Send + Sync + 'static,
    {
        self.handlers.request = Some(Box::new(f));
        self
    }

    /// Decides whether a valid upgrade request may become a WebSocket (e.g.
    /// by path); `Err(response)` refuses it. Default: accept every path.
    pub fn on_upgrade<F>(mut self, f: F) -> Self
    where
        F: Fn(&Request) -> Result<(), Response> + Send + Sync + 'static,
    {
        self.handlers.upgrade = Some(Box::new(f));
        self
    }

    /// Renders channel events (joins, leaves and messages published with
    /// [`Ctx::publish_event`]) into frames: called once per event, on the
    /// channel's owner shard, with the event's number and the member count;
    /// the frame goes to every subscriber. `None` drops the event. Without
    /// a renderer only ready frames ([`Ctx::publish`]) reach subscribers.
    pub fn on_channel_event<F>(mut self, f: F) -> Self
    where
        F: Fn(&ChannelEvent<'_>) -> Option<Frame> + Send + Sync + 'static,
    {
        self.handlers.render = Some(Arc::new(f));
        self
    }

    /// Called on `conn`'s shard when something it sent could not be
    /// delivered as asked (cluster mode: Redis down or refusing), with a
    /// readable reason. Default: nothing.
    pub fn on_notice<F>(mut self, f: F) -> Self
    where
        F: Fn(&mut Ctx<'_, D>, ConnId, &str) + Send + Sync + 'static,
    {
        self.handlers.notice = Some(Box::new(f));
        self
    }

    /// Starts the shards and returns at once (no signal handling).
    pub fn start(self) -> io::Result<Running> {
        crate::run::start(self)
    }

    /// Starts, then serves until SIGTERM or SIGINT, drains (close 1001 to
    /// every client, up to `shutdown-timeout`) and returns. Blocks those two
    /// signals in the calling thread and the threads it starts, so call it
    /// from `main` before spawning threads of your own (a thread that does
    /// not block them could take the signal and end the process).
    pub fn run(self) -> io::Result<()> {
        crate::run::run(self)
    }
}

/// A started server.
pub struct Running {
    pub(crate) reactor: ringcast_reactor::Running<Mail>,
    pub(crate) handle: ServerHandle,
    pub(crate) _supervisor: Option<crate::run::Supervisor>,
}

impl Running {
    /// The addresses the shards listen on (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.reactor.local_addrs()
    }

    /// The I/O backend in use: `"io_uring"` or `"epoll"`.
    pub fn backend(&self) -> &'static str {
        self.reactor.backend().as_str()
    }

    /// A handle usable from any thread.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Waits until every shard has stopped (see [`ServerHandle::stop`]).
    /// In cluster mode this node then leaves the cluster: its members are
    /// removed from the counts at once (others see the new counts).
    pub fn join(self) -> io::Result<()> {
        let r = self.reactor.join();
        if let Some(link) = &self.handle.shared.cluster {
            link.shutdown(Duration::from_secs(2));
        }
        r
    }
}

/// Acts on the server from any thread (not only from handlers).
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) reactor: ringcast_reactor::Handle<Mail>,
    pub(crate) shared: Arc<crate::shard::Shared>,
}

impl ServerHandle {
    fn router(&self) -> Router {
        Router {
            node: self.shared.node,
            shards: self.reactor.shards(),
            here: None,
        }
    }

    /// Like [`Ctx::push`]. Waits (up to 2 s) while the target mailbox is full.
    pub fn push(&self, conn: ConnId, msg: impl Into<Frame>) -> bool {
        match self.router().route(conn) {
            Dest::Shard(s) => self.mail(
                s,
                Mail::Push {
                    to: conn,
                    frame: msg.into(),
                },
            ),
            Dest::Node(_) => self.shared.push_remote(conn, msg.into(), None).is_ok(),
            Dest::Here | Dest::Gone => false,
        }
    }

    /// Like [`Ctx::broadcast`].
    pub fn broadcast(&self, msg: impl Into<Frame>) {
        let frame = msg.into();
        for shard in 0..self.reactor.shards() {
            self.mail(
                shard,
                Mail::Broadcast {
                    frame: frame.clone(),
                },
            );
        }
    }

    /// Like [`Ctx::publish`].
    pub fn publish(&self, channel: &str, msg: impl Into<Frame>) {
        self.send_to_owner(crate::channel::publish_mail(channel, msg.into()));
    }

    /// Like [`Ctx::publish_event`], with no sending connection.
    pub fn publish_event(&self, channel: &str, payload: impl Into<Bytes>) {
        self.send_to_owner(ChannelMail::Publish {
            topic: channel.into(),
            event: Event::Message {
                origin: None,
                payload: payload.into(),
            },
        });
    }

    fn send_to_owner(&self, m: ChannelMail) {
        let owner = crate::channel::owner(m.topic().unwrap_or_default(), self.reactor.shards());
        self.mail(owner, Mail::Channel(m));
    }

    /// Like [`Ctx::close`].
    pub fn close(&self, conn: ConnId, code: u16, reason: &str) {
        if let Some(s) = self.router().local_shard(conn) {
            let reason = reason.into();
            self.mail(
                s,
                Mail::Close {
                    to: conn,
                    code,
                    reason,
                },
            );
        }
    }

    /// Like [`Ctx::channel`].
    pub fn channel(&self, channel: &str) -> Option<ChannelInfo> {
        self.shared.directory.info(channel)
    }

    /// Like [`Ctx::channels`].
    pub fn channels(&self, prefix: &str) -> Vec<(String, ChannelInfo)> {
        self.shared.directory.channels(prefix)
    }

    /// Like [`Ctx::members`].
    pub fn members(&self, channel: &str) -> Vec<(ConnId, Bytes)> {
        self.shared.directory.members(channel)
    }

    /// The presence members of `channel` on every node: in cluster mode
    /// asked of Redis (waiting up to 2 s; an error if it does not answer),
    /// else as [`members`](Self::members). Blocks: call it from your own
    /// threads, never from a handler.
    pub fn cluster_members(&self, channel: &str) -> io::Result<Vec<(ConnId, Bytes)>> {
        match &self.shared.cluster {
            Some(link) => link.members(channel),
            None => Ok(self.members(channel)),
        }
    }

    /// Channels with presence members on any node whose name starts with
    /// `prefix`, with their member counts, sorted by name (cluster mode:
    /// from Redis, like [`cluster_members`](Self::cluster_members)). Plain
    /// subscriptions are counted per node only: see [`channels`](Self::channels).
    pub fn cluster_channels(&self, prefix: &str) -> io::Result<Vec<(String, usize)>> {
        match &self.shared.cluster {
            Some(link) => link.channels(prefix),
            None => Ok(self
                .channels(prefix)
                .into_iter()
                .filter(|(_, i)| i.members > 0)
                .map(|(n, i)| (n, i.members))
                .collect()),
        }
    }

    /// The presence member count of `channel` on every node.
    pub fn cluster_count(&self, channel: &str) -> io::Result<usize> {
        match &self.shared.cluster {
            Some(link) => link.count(channel),
            None => Ok(self.channel(channel).map_or(0, |i| i.members)),
        }
    }

    /// Open WebSockets in the whole process.
    pub fn connection_count(&self) -> usize {
        self.shared.gauges.total()
    }

    /// Begins the graceful shutdown: stop accepting, close every client with
    /// 1001, wait up to `drain` for them.
    pub fn stop(&self, drain: Duration) {
        self.shared.notifier.stopping();
        self.reactor.stop(drain);
    }

    /// Outside the shards there is no outbox: wait for room rather than lose
    /// the message, but not forever (a stopped shard never makes room).
    fn mail(&self, shard: usize, m: Mail) -> bool {
        let wait = Duration::from_secs(2);
        let pause = Duration::from_micros(200);
        let taken = crate::shard::mail_waiting(&self.reactor, shard, m, wait, pause, || false);
        if !taken {
            tracing::warn!(
                shard,
                "shard did not take the message (stopped or overloaded); dropped"
            );
        }
        taken
    }
}
