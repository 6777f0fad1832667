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

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringcast_codec::OpCode;

use crate::config::Settings;
use crate::id::ConnId;
use crate::shard::{Core, Io, Mail};

pub use ringcast_codec::Request;

/// A complete data message from a client.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl Message<'_> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }
}

/// An encoded server frame. Encoding happens once; cloning shares the same
/// buffer, so one `Frame` can go to any number of clients on any shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(pub(crate) Bytes);

impl Frame {
    /// A text frame.
    pub fn text(s: &str) -> Frame {
        Frame(crate::bufpool::frame(OpCode::Text, s.as_bytes()))
    }

    /// A binary frame.
    pub fn binary(b: &[u8]) -> Frame {
        Frame(crate::bufpool::frame(OpCode::Binary, b))
    }

    /// Encoded size in bytes (header and payload).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a frame has at least a header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An encoded frame received from another node (a push or topic message
    /// on the backplane): accepted only if it is exactly one unmasked, final
    /// text or binary frame, so nothing else can reach a client.
    pub(crate) fn from_wire(b: Bytes) -> Option<Frame> {
        let (&b0, &b1) = (b.first()?, b.get(1)?);
        if !matches!(b0, 0x81 | 0x82) || b1 & 0x80 != 0 {
            return None;
        }
        let (header, len) = match b1 & 0x7f {
            126 => (
                4,
                u64::from(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)),
            ),
            127 => (10, u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)),
            n => (2, u64::from(n)),
        };
        (b.len() as u64 == header + len).then_some(Frame(b))
    }

    /// Payload size (the header's length field tells how long the header is).
    pub(crate) fn payload_len(&self) -> usize {
        let header = match self.0.get(1).map(|b| b & 0x7f) {
            None => return 0,
            Some(126) => 4,
            Some(127) => 10,
            Some(_) => 2,
        };
        self.0.len().saturating_sub(header)
    }
}

impl From<&str> for Frame {
    fn from(s: &str) -> Frame {
        Frame::text(s)
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Frame {
        Frame::text(&s)
    }
}

impl From<&String> for Frame {
    fn from(s: &String) -> Frame {
        Frame::text(s)
    }
}

impl From<&[u8]> for Frame {
    fn from(b: &[u8]) -> Frame {
        Frame::binary(b)
    }
}

impl From<Vec<u8>> for Frame {
    fn from(b: Vec<u8>) -> Frame {
        Frame::binary(&b)
    }
}

/// Same opcode as the message: text stays text, binary stays binary.
impl From<Message<'_>> for Frame {
    fn from(m: Message<'_>) -> Frame {
        match m {
            Message::Text(s) => Frame::text(s),
            Message::Binary(b) => Frame::binary(b),
        }
    }
}

impl From<&Frame> for Frame {
    fn from(f: &Frame) -> Frame {
        f.clone()
    }
}

/// A plain HTTP response (for `on_request` and refused upgrades). Sent with
/// `Content-Length` and `Connection: close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    content_type: Cow<'static, str>,
    body: Cow<'static, [u8]>,
}

impl Response {
    /// Any status, content type and body.
    pub fn new(
        status: u16,
        content_type: impl Into<Cow<'static, str>>,
        body: impl Into<Cow<'static, [u8]>>,
    ) -> Response {
        Response {
            status,
            content_type: content_type.into(),
            body: body.into(),
        }
    }

    /// `text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Response {
        let body = match body.into() {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        };
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// 200 with `text/html; charset=utf-8`.
    pub fn html(body: impl Into<Cow<'static, str>>) -> Response {
        let mut r = Response::text(200, body);
        r.content_type = Cow::Borrowed("text/html; charset=utf-8");
        r
    }

    /// 404 Not Found.
    pub fn not_found() -> Response {
        Response::text(404, "not found\n")
    }

    /// 426 Upgrade Required (with `Sec-WebSocket-Version: 13`), for a plain
    /// GET of a WebSocket path.
    pub fn upgrade_required() -> Response {
        Response::text(
            426,
            "this is a WebSocket endpoint: connect with a WebSocket client\n",
        )
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The bytes on the wire; `head_only` for HEAD requests.
    pub(crate) fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = if self.status == 426 {
            ringcast_codec::error_response(426, &String::from_utf8_lossy(&self.body))
        } else {
            ringcast_codec::http_response(self.status, &self.content_type, &self.body)
        };
        if head_only {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                out.truncate(end + 4);
            }
        }
        out
    }
}

type OpenFn<D> = dyn Fn(&mut Ctx<'_, D>, ConnId, &Request) + Send + Sync;
type MessageFn<D> = dyn Fn(&mut Ctx<'_, D>, ConnId, Message<'_>) + Send + Sync;
type CloseFn<D> = dyn Fn(&mut Ctx<'_, D>, ConnId, u16, &str) + Send + Sync;
type RequestFn<D> = dyn Fn(&mut Ctx<'_, D>, &Request) -> Response + Send + Sync;
type UpgradeFn = dyn Fn(&Request) -> Result<(), Response> + Send + Sync;

/// The user's callbacks, shared (read-only) by every shard.
pub(crate) struct Handlers<D> {
    pub open: Option<Box<OpenFn<D>>>,
    pub message: Option<Box<MessageFn<D>>>,
    pub close: Option<Box<CloseFn<D>>>,
    pub request: Option<Box<RequestFn<D>>>,
    pub upgrade: Option<Box<UpgradeFn>>,
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

/// What handlers use to act: send, publish, close, look up data.
///
/// A `Ctx` belongs to one shard; `push`, `close` and `subscribe` accept any
/// connection id and forward to the owning shard when needed.
pub struct Ctx<'a, D> {
    pub(crate) core: &'a mut Core<D>,
    pub(crate) io: &'a mut dyn Io,
}

impl<D: Default + 'static> Ctx<'_, D> {
    /// Sends a message to one connection on any shard, and in cluster mode
    /// (`--redis`) on any node. Returns false if the connection is known to
    /// be gone (or its node cannot be reached); true if it was queued or
    /// handed to its shard or to the backplane.
    pub fn push(&mut self, conn: ConnId, msg: impl Into<Frame>) -> bool {
        let frame = msg.into();
        self.core.push(self.io, conn, frame)
    }

    /// Sends a message to every open WebSocket on every shard of this node
    /// (not to other nodes: use a topic for that). Encoded once; other
    /// shards get one mail each carrying the shared buffer.
    pub fn broadcast(&mut self, msg: impl Into<Frame>) {
        let frame = msg.into();
        self.core.broadcast(self.io, frame)
    }

    /// Adds `conn` to `topic`. Returns false if it already was a member or
    /// is gone.
    pub fn subscribe(&mut self, conn: ConnId, topic: &str) -> bool {
        self.core.subscribe(self.io, conn, topic, None)
    }

    /// Removes `conn` from `topic`. Returns false if it was not a member.
    pub fn unsubscribe(&mut self, conn: ConnId, topic: &str) -> bool {
        self.core.unsubscribe(self.io, conn, topic)
    }

    /// Sends a message to every subscriber of `topic`, on every shard, and
    /// in cluster mode on every node. All subscribers receive a topic's
    /// messages in one and the same order.
    pub fn publish(&mut self, topic: &str, msg: impl Into<Frame>) {
        let frame = msg.into();
        self.core.publish(self.io, topic, frame)
    }

    /// Starts the closing handshake with `code` and `reason` (reason is cut
    /// to 123 bytes). Data already queued is sent first.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.core.close_conn(self.io, conn, code, reason)
    }

    /// Open WebSockets in the whole process (per-shard counts summed; may
    /// lag other shards by a few events).
    pub fn connection_count(&self) -> usize {
        self.core.shared.gauges.total()
    }

    /// The open WebSockets owned by this shard.
    pub fn local_connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.core.local_ids()
    }

    /// This connection's data, if it is open and owned by this shard.
    pub fn data(&mut self, conn: ConnId) -> Option<&mut D> {
        self.core.data_mut(conn)
    }

    /// The client's address, if the connection is owned by this shard.
    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.core.peer_addr(conn)
    }

    /// Index of the shard running this handler.
    pub fn shard(&self) -> usize {
        self.core.shard
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.core.shards
    }

    /// True once a shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.io.draining()
    }

    /// Prometheus text exposition of the server's metrics.
    pub fn render_metrics(&self) -> String {
        self.core.shared.metrics.render()
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
    /// Like [`Ctx::push`]. Waits (up to 2 s) while the target mailbox is full.
    pub fn push(&self, conn: ConnId, msg: impl Into<Frame>) -> bool {
        if conn.node() != self.shared.node {
            return self.shared.push_remote(conn, msg.into(), None).is_ok();
        }
        if conn.shard() >= self.reactor.shards() {
            return false;
        }
        self.mail(
            conn.shard(),
            Mail::Push {
                to: conn,
                frame: msg.into(),
            },
        )
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
    pub fn publish(&self, topic: &str, msg: impl Into<Frame>) {
        let owner = crate::pubsub::owner(topic, self.reactor.shards());
        let m = crate::pubsub::publish_mail(topic, msg.into());
        self.mail(owner, m);
    }

    /// Like [`Ctx::close`].
    pub fn close(&self, conn: ConnId, code: u16, reason: &str) {
        if conn.node() == self.shared.node && conn.shard() < self.reactor.shards() {
            self.mail(
                conn.shard(),
                Mail::Close {
                    to: conn,
                    code,
                    reason: reason.into(),
                },
            );
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
    fn mail(&self, shard: usize, mut m: Mail) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match self.reactor.mail(shard, m) {
                Ok(()) => return true,
                Err(back) => {
                    if std::time::Instant::now() >= deadline {
                        tracing::warn!(
                            shard,
                            "shard did not take the message (stopped or overloaded); dropped"
                        );
                        return false;
                    }
                    m = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }
}
