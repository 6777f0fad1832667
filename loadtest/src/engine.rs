//! The generator core: one thread, one epoll instance (edge-triggered), many
//! nonblocking client connections.
//!
//! Each connection goes Connecting → Handshaking → Open → Closing → Closed.
//! Reads land in one buffer shared by all connections and are decoded in
//! place by the codec (zero-copy for whole frames); writes go out with
//! `writev` from a per-connection [`Out`] queue that keeps its capacity and
//! holds large repeated bodies by reference, so a steady load allocates and
//! copies nothing. A scenario plugs in through [`Handler`].

use std::io::{self, IoSlice, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::ops::{AddAssign, ControlFlow};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use ringcast_codec::{ClientHandshake, Decoder, DecoderConfig, MaskGen, Message, OpCode, Role};
use serde::{Deserialize, Serialize};

use crate::clock::now_ns;
pub use crate::out::Out;
use crate::target::Target;

/// Size of the shared read buffer: a few 16 KiB frames per read call.
const READ_BUF: usize = 256 * 1024;
/// Slices per `writev`.
const MAX_IOV: usize = 64;
/// How long a close handshake may take before the socket is just dropped.
const CLOSE_GRACE_NS: u64 = 1_000_000_000;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// TCP connect in progress.
    Connecting,
    /// Upgrade request sent, waiting for the 101.
    Handshaking,
    /// WebSocket open.
    Open,
    /// We sent a close frame and wait for the server to finish.
    Closing,
    /// Socket gone.
    Closed,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it (close handshake done or grace period over).
    Normal,
    /// TCP connect failed (refused, unreachable, no ports left).
    ConnectFailed,
    /// The server answered the upgrade with this status (502: invalid 101).
    HandshakeFailed(u16),
    /// Connect or handshake took longer than the timeout.
    Timeout,
    /// The server sent a close frame or closed TCP while we were open.
    PeerClosed,
    /// Read or write error (e.g. connection reset).
    Reset,
    /// The server broke RFC 6455.
    Protocol,
}

/// Counters kept by the engine over its whole life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStats {
    /// Connections started.
    pub started: u64,
    /// Upgrades completed.
    pub opened: u64,
    /// TCP connects that failed.
    pub connect_failed: u64,
    /// Upgrades refused or invalid.
    pub handshake_failed: u64,
    /// Connects or upgrades that timed out.
    pub timed_out: u64,
    /// Open connections the server closed or reset before we did.
    pub dropped: u64,
    /// Protocol violations by the server.
    pub protocol_errors: u64,
    /// Wire bytes written and read (frames and handshakes).
    pub bytes_out: u64,
    /// See `bytes_out`.
    pub bytes_in: u64,
}

impl ConnStats {
    /// Connections that never opened.
    pub fn failed(&self) -> u64 {
        self.connect_failed + self.handshake_failed + self.timed_out
    }

    /// The error line for a run where some of `wanted` connections failed.
    pub fn failure_summary(&self, wanted: usize) -> String {
        format!(
            "{} of {} connections failed (connect {}, upgrade {}, timeout {})",
            self.failed(),
            wanted,
            self.connect_failed,
            self.handshake_failed,
            self.timed_out
        )
    }
}

/// Sums counters field by field (totals over runs or worker processes).
impl AddAssign for ConnStats {
    fn add_assign(&mut self, other: Self) {
        self.started += other.started;
        self.opened += other.opened;
        self.connect_failed += other.connect_failed;
        self.handshake_failed += other.handshake_failed;
        self.timed_out += other.timed_out;
        self.dropped += other.dropped;
        self.protocol_errors += other.protocol_errors;
        self.bytes_out += other.bytes_out;
        self.bytes_in += other.bytes_in;
    }
}

/// A scenario's side of the loop. `out` is the connection's send queue:
/// append whole frames to it and the engine writes them after the callback.
pub trait Handler {
    /// The upgrade completed after `connect_ns` nanoseconds. Return false to
    /// close the connection right away (connect storm).
    fn on_open(&mut self, out: &mut Out, id: usize, now: u64, connect_ns: u64) -> bool;
    /// A complete text (`text == true`) or binary message arrived.
    fn on_message(&mut self, out: &mut Out, id: usize, data: &[u8], text: bool, now: u64);
    /// The connection ended; `was_open` says whether its upgrade had completed.
    fn on_close(&mut self, _id: usize, _reason: CloseReason, _was_open: bool, _now: u64) {}
}

struct Conn {
    stream: Option<TcpStream>,
    phase: Phase,
    handshake: Option<Box<ClientHandshake>>,
    decoder: Option<Box<Decoder>>,
    out: Out,
    started_ns: u64,
    deadline_ns: u64,
}

/// Settings of one engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Server to connect to.
    pub target: Target,
    /// Loopback source addresses to spread connections over (empty: let the
    /// kernel pick 127.0.0.1).
    pub sources: Vec<Ipv4Addr>,
    /// Connect + upgrade deadline.
    pub connect_timeout_ns: u64,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// Seed of the masking-key generator.
    pub seed: u64,
}

/// One epoll loop with its connections.
pub struct Engine {
    epoll: Epoll,
    events: Vec<EpollEvent>,
    conns: Vec<Conn>,
    rbuf: Vec<u8>,
    cfg: EngineConfig,
    decoder_cfg: DecoderConfig,
    next_source: usize,
    masks: MaskGen,
    stats: ConnStats,
    pending: usize,
    open: usize,
    closing: usize,
}

impl Engine {
    /// A new engine with no connections.
    pub fn new(cfg: EngineConfig) -> io::Result<Engine> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        Ok(Engine {
            epoll,
            events: vec![EpollEvent::empty(); 1024],
            conns: Vec::new(),
            rbuf: vec![0; READ_BUF],
            decoder_cfg: DecoderConfig {
                role: Role::Client,
                max_message_size: cfg.max_message_size,
                allow_rsv1: false,
            },
            masks: MaskGen::new(cfg.seed),
            next_source: 0,
            cfg,
            stats: ConnStats::default(),
            pending: 0,
            open: 0,
            closing: 0,
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// Connections connecting or handshaking.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Connections in their close handshake.
    pub fn closing(&self) -> usize {
        self.closing
    }

    /// All connections ever started (ids are `0..len`).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True before the first [`Engine::connect`].
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Phase of connection `id`.
    pub fn phase(&self, id: usize) -> Phase {
        self.conns[id].phase
    }

    /// Starts a new connection and returns its id (ids are dense, in order).
    pub fn connect(&mut self, h: &mut impl Handler) -> usize {
        let now = now_ns();
        let id = self.conns.len();
        self.conns.push(Conn {
            stream: None,
            phase: Phase::Connecting,
            handshake: None,
            decoder: None,
            out: Out::default(),
            started_ns: now,
            deadline_ns: now + self.cfg.connect_timeout_ns,
        });
        self.stats.started += 1;
        self.pending += 1;
        match self.open_socket() {
            Ok(stream) => {
                let flags = EpollFlags::EPOLLIN
                    | EpollFlags::EPOLLOUT
                    | EpollFlags::EPOLLRDHUP
                    | EpollFlags::EPOLLET;
                if self
                    .epoll
                    .add(&stream, EpollEvent::new(flags, id as u64))
                    .is_err()
                {
                    self.finish(id, CloseReason::ConnectFailed, h);
                } else {
                    self.conns[id].stream = Some(stream);
                }
            }
            Err(_) => self.finish(id, CloseReason::ConnectFailed, h),
        }
        id
    }

    fn open_socket(&mut self) -> io::Result<TcpStream> {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // Small frames must not wait for Nagle (all three servers set it too).
        socket::setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
        if !self.cfg.sources.is_empty() {
            let src = self.cfg.sources[self.next_source % self.cfg.sources.len()];
            self.next_source += 1;
            // Pick the port at connect time, per (source, destination) pair,
            // so each source address gets the whole ephemeral range.
            socket::setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)?;
            socket::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
        }
        match socket::connect(fd.as_raw_fd(), &SockaddrIn::from(self.cfg.target.addr)) {
            Ok(()) | Err(Errno::EINPROGRESS) => Ok(TcpStream::from(fd)),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits up to `timeout_ms` for socket events and handles them.
    pub fn poll(&mut self, h: &mut impl Handler, timeout_ms: u16) -> io::Result<usize> {
        let n = match self.epoll.wait(&mut self.events, timeout_ms) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for i in 0..n {
            let ev = self.events[i];
            self.dispatch(ev.data() as usize, ev.events(), h);
        }
        Ok(n)
    }

    fn dispatch(&mut self, id: usize, flags: EpollFlags, h: &mut impl Handler) {
        let broken = EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP;
        match self.conns[id].phase {
            Phase::Closed => return,
            Phase::Connecting => {
                if !flags.intersects(EpollFlags::EPOLLOUT | broken) {
                    return;
                }
                let failed = match &self.conns[id].stream {
                    Some(s) => !matches!(s.take_error(), Ok(None)),
                    None => true,
                };
                if failed {
                    self.finish(id, CloseReason::ConnectFailed, h);
                    return;
                }
                self.start_handshake(id, h);
            }
            _ => {}
        }
        let ends = EpollFlags::EPOLLRDHUP | broken;
        if flags.intersects(EpollFlags::EPOLLIN | ends) {
            self.read_ready(id, flags.intersects(ends), h);
        }
        if flags.contains(EpollFlags::EPOLLOUT) && self.conns[id].phase != Phase::Closed {
            self.flush(id, h);
        }
    }

    fn start_handshake(&mut self, id: usize, h: &mut impl Handler) {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.masks.next_u64().to_ne_bytes());
        key[8..].copy_from_slice(&self.masks.next_u64().to_ne_bytes());
        let hs = ClientHandshake::new(&self.cfg.target.host, &self.cfg.target.path, key, &[]);
        let conn = &mut self.conns[id];
        conn.out.push(hs.request());
        conn.handshake = Some(Box::new(hs));
        conn.phase = Phase::Handshaking;
        self.flush(id, h);
    }

    /// Reads until the socket is drained. A short read means the receive
    /// queue was empty at that moment; new data raises a new edge, so no
    /// extra read that would only return EAGAIN is needed — unless the peer
    /// also hung up (no later edge would come for that).
    fn read_ready(&mut self, id: usize, hangup: bool, h: &mut impl Handler) {
        loop {
            let Some(stream) = self.conns[id].stream.as_mut() else {
                return;
            };
            let n = match stream.read(&mut self.rbuf) {
                Ok(0) => {
                    let reason = match self.conns[id].phase {
                        Phase::Closing => CloseReason::Normal,
                        Phase::Open => CloseReason::PeerClosed,
                        _ => CloseReason::HandshakeFailed(0),
                    };
                    self.finish(id, reason, h);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.finish(id, CloseReason::Reset, h);
                    return;
                }
            };
            self.stats.bytes_in += n as u64;
            self.feed(id, n, h);
            if self.conns[id].phase == Phase::Closed {
                return;
            }
            self.flush(id, h);
            if n < self.rbuf.len() && !hangup {
                return;
            }
        }
    }

    /// Handles `self.rbuf[..n]` for connection `id`.
    fn feed(&mut self, id: usize, n: usize, h: &mut impl Handler) {
        let now = now_ns();
        let mut start = 0;
        if self.conns[id].phase == Phase::Handshaking {
            let conn = &mut self.conns[id];
            let Some(hs) = conn.handshake.as_mut() else {
                return;
            };
            match hs.push_response(&self.rbuf[..n]) {
                Ok(None) => return,
                Ok(Some(used)) => {
                    start = used;
                    conn.handshake = None;
                    // The request is sent; its buffer is not needed any more.
                    conn.out = Out::default();
                    conn.decoder = Some(Box::new(Decoder::new(self.decoder_cfg)));
                    conn.phase = Phase::Open;
                    self.pending -= 1;
                    self.open += 1;
                    self.stats.opened += 1;
                    let keep = h.on_open(&mut conn.out, id, now, now - conn.started_ns);
                    if !keep {
                        self.begin_close(id, h);
                    }
                }
                Err(e) => {
                    self.finish(id, CloseReason::HandshakeFailed(e.status), h);
                    return;
                }
            }
        }
        if start >= n {
            return;
        }
        let Engine {
            conns,
            rbuf,
            masks,
            stats,
            ..
        } = self;
        let conn = &mut conns[id];
        let Some(decoder) = conn.decoder.as_mut() else {
            return;
        };
        let out = &mut conn.out;
        let mut peer_close = false;
        let result = decoder.decode(&mut rbuf[start..n], |msg| {
            match msg {
                Message::Text(t) => h.on_message(out, id, t.as_bytes(), true, now),
                Message::Binary(b) => h.on_message(out, id, b, false, now),
                Message::Ping(p) => out.frame(OpCode::Pong, p, masks.next_mask()),
                Message::Pong(_) => {}
                Message::Close(_) => peer_close = true,
            }
            ControlFlow::Continue(())
        });
        if let Err(e) = result {
            stats.protocol_errors += 1;
            let mut payload = [0u8; 2];
            payload.copy_from_slice(&e.code.to_be_bytes());
            out.frame(OpCode::Close, &payload, masks.next_mask());
            self.flush(id, h);
            self.finish(id, CloseReason::Protocol, h);
            return;
        }
        // The server started the close: answer it, then wait for EOF. (A
        // close frame while we are closing just answers ours; the server
        // closes TCP next.)
        if peer_close && conn.phase == Phase::Open {
            self.stats.dropped += 1;
            self.send_close(id);
            self.open -= 1;
            self.closing += 1;
            self.conns[id].phase = Phase::Closing;
            self.conns[id].deadline_ns = now + CLOSE_GRACE_NS;
            h.on_close(id, CloseReason::PeerClosed, true, now);
        }
    }

    fn send_close(&mut self, id: usize) {
        let mask = self.masks.next_mask();
        self.conns[id]
            .out
            .frame(OpCode::Close, &1000u16.to_be_bytes(), mask);
    }

    /// Writes as much of the connection's queue as the socket takes. The
    /// rest goes out on the next EPOLLOUT edge.
    fn flush(&mut self, id: usize, h: &mut impl Handler) {
        let conn = &mut self.conns[id];
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        if conn.phase == Phase::Connecting {
            return;
        }
        while conn.out.unsent() > 0 {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let k = conn.out.io_slices(&mut iov);
            match stream.write_vectored(&iov[..k]) {
                // Nothing taken though bytes were offered: never loop on it.
                Ok(0) => {
                    self.finish(id, CloseReason::Reset, h);
                    return;
                }
                Ok(n) => {
                    conn.out.advance(n);
                    self.stats.bytes_out += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.finish(id, CloseReason::Reset, h);
                    return;
                }
            }
        }
    }

    /// Lets `f` append frames to an open connection's queue, then writes.
    /// Returns false (and does nothing) if the connection is not open.
    pub fn send_with(&mut self, id: usize, h: &mut impl Handler, f: impl FnOnce(&mut Out)) -> bool {
        if self.conns[id].phase != Phase::Open {
            return false;
        }
        f(&mut self.conns[id].out);
        self.flush(id, h);
        true
    }

    /// Bytes queued but not yet accepted by the socket.
    pub fn unsent(&self, id: usize) -> usize {
        self.conns[id].out.unsent()
    }

    /// Starts a close handshake (open connections) or abandons a connection
    /// still connecting.
    pub fn begin_close(&mut self, id: usize, h: &mut impl Handler) {
        match self.conns[id].phase {
            Phase::Open => {
                self.send_close(id);
                self.open -= 1;
                self.closing += 1;
                let conn = &mut self.conns[id];
                conn.phase = Phase::Closing;
                conn.deadline_ns = now_ns() + CLOSE_GRACE_NS;
                self.flush(id, h);
            }
            Phase::Connecting | Phase::Handshaking => self.finish(id, CloseReason::Normal, h),
            Phase::Closing | Phase::Closed => {}
        }
    }

    /// Begins closing every connection.
    pub fn close_all(&mut self, h: &mut impl Handler) {
        for id in 0..self.conns.len() {
            self.begin_close(id, h);
        }
    }

    /// Ends connections whose connect, upgrade or close took too long.
    pub fn check_timeouts(&mut self, h: &mut impl Handler) {
        if self.pending == 0 && self.closing == 0 {
            return;
        }
        let now = now_ns();
        for id in 0..self.conns.len() {
            let c = &self.conns[id];
            if now < c.deadline_ns {
                continue;
            }
            match c.phase {
                Phase::Connecting | Phase::Handshaking => self.finish(id, CloseReason::Timeout, h),
                Phase::Closing => self.finish(id, CloseReason::Normal, h),
                Phase::Open | Phase::Closed => {}
            }
        }
    }

    /// Drops the socket and frees the connection's buffers.
    fn finish(&mut self, id: usize, reason: CloseReason, h: &mut impl Handler) {
        let conn = &mut self.conns[id];
        let was = conn.phase;
        if was == Phase::Closed {
            return;
        }
        // Closing the fd also removes it from the epoll set.
        conn.stream = None;
        conn.handshake = None;
        conn.decoder = None;
        conn.out = Out::default();
        conn.phase = Phase::Closed;
        match was {
            Phase::Connecting | Phase::Handshaking => {
                self.pending -= 1;
                match reason {
                    CloseReason::ConnectFailed => self.stats.connect_failed += 1,
                    CloseReason::Timeout => self.stats.timed_out += 1,
                    CloseReason::Normal => {}
                    _ => self.stats.handshake_failed += 1,
                }
            }
            Phase::Open => {
                self.open -= 1;
                if reason != CloseReason::Normal {
                    self.stats.dropped += 1;
                }
            }
            Phase::Closing => self.closing -= 1,
            Phase::Closed => {}
        }
        // Server-initiated closes were reported when the close frame came.
        if was != Phase::Closing {
            h.on_close(id, reason, was == Phase::Open, now_ns());
        }
    }
}
