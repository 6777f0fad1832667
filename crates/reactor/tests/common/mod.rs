//! Shared helpers for the reactor integration tests.
#![allow(dead_code)]

use ringcast_reactor::*;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for anything a test waits on: reaching it is a failure
/// (a hang), never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Run `$body(choice)` once per backend as two tests.
#[macro_export]
macro_rules! both_backends {
    ($f:ident) => {
        mod $f {
            #[test]
            fn epoll() {
                super::$f(ringcast_reactor::BackendChoice::Epoll)
            }
            #[test]
            fn io_uring() {
                super::$f(ringcast_reactor::BackendChoice::IoUring)
            }
        }
    };
}

/// The tests' configuration: what they rely on is set here rather than
/// taken from `Config::default()` (the server's production values).
pub fn cfg(backend: BackendChoice, shards: usize) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards,
        pin: false,
        backend,
        buf_count: 256,
        // Several reads per chunk in the echo and streaming tests.
        buf_size: 16 * 1024,
        // A flush on a loaded machine must not time out unless a test says so.
        close_timeout: PATIENCE,
        ..Default::default()
    }
}

/// Poll `cond` until true; panic with `what` after `PATIENCE`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    let mut nap = Duration::from_millis(1);
    while !cond() {
        assert!(t0.elapsed() < PATIENCE, "timed out waiting for: {what}");
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

/// Wait until every shard's table is empty (no connection, no zombie slot).
pub fn wait_table_empty<M: Send + 'static>(h: &Handle<M>) {
    wait_until("connection tables to empty", || {
        h.stats().iter().all(|s| s.connections == 0 && s.slots == 0)
    });
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Byte `i` of connection `c`'s test stream.
pub fn pattern(c: u64, i: u64) -> u8 {
    let x = (c.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x ^ (x >> 29) ^ (x >> 47)) as u8
}

pub fn fill(c: u64, from: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(c, from + k as u64);
    }
}

/// xorshift64* — deterministic test randomness without a dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// Counts of handler events across shards.
#[derive(Default)]
pub struct Events {
    pub opened: AtomicUsize,
    pub closed: AtomicUsize,
    pub reasons: Mutex<Vec<CloseReason>>,
    /// Times a streaming handler stopped queueing for a full connection.
    pub paused: AtomicUsize,
    /// Times it resumed once `queued_bytes` showed the queue drained.
    pub resumed: AtomicUsize,
    pub backends: Mutex<Vec<Backend>>,
}

impl Events {
    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Echo handler with hooks for the tests.
pub struct Echo {
    pub ev: Arc<Events>,
    pub open: std::collections::HashSet<Conn>,
}

impl Echo {
    pub fn new(ev: Arc<Events>) -> Self {
        Echo {
            ev,
            open: Default::default(),
        }
    }
}

impl Handler for Echo {
    type Mail = ();
    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, conn: Conn, _peer: SocketAddr) {
        assert!(self.open.insert(conn), "duplicate on_open");
        self.ev.backends.lock().unwrap().push(ctx.backend());
        self.ev.opened.fetch_add(1, Ordering::SeqCst);
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_, ()>, conn: Conn, data: &mut [u8]) {
        assert!(self.open.contains(&conn));
        ctx.send(conn, bytes::Bytes::copy_from_slice(data));
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_, ()>, conn: Conn, why: CloseReason) {
        assert!(self.open.remove(&conn), "on_close without on_open / twice");
        self.ev.reasons.lock().unwrap().push(why);
        self.ev.closed.fetch_add(1, Ordering::SeqCst);
    }
    fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, ctx: &mut Ctx<'_, ()>) {
        for c in self.open.clone() {
            ctx.close(c);
        }
    }
}

/// Start the test [`Echo`] handler with `c`; returns the server and the
/// events its shards record.
pub fn start_echo(c: Config) -> (Running<()>, Arc<Events>) {
    let ev = Arc::new(Events::default());
    let e2 = ev.clone();
    let r = start(c, move |_| Echo::new(e2.clone())).expect("start");
    (r, ev)
}

/// Assert every close recorded so far had reason `want`.
pub fn assert_all_closed_by(ev: &Events, want: CloseReason) {
    let reasons = ev.reasons.lock().unwrap();
    assert!(
        reasons.iter().all(|r| *r == want),
        "want all {want:?}: {reasons:?}"
    );
}

/// Stop, join, and check every on_open got its on_close.
pub fn stop_and_join<M: Send + 'static>(r: Running<M>, ev: &Events) {
    r.handle().stop(Duration::from_secs(30));
    r.join().expect("join");
    assert_eq!(
        ev.opened(),
        ev.closed(),
        "every on_open has exactly one on_close"
    );
}

/// Assert every connection saw the backend that was asked for.
pub fn assert_backend(choice: BackendChoice, ev: &Events) {
    let want = match choice {
        BackendChoice::Epoll => Backend::Epoll,
        BackendChoice::IoUring => Backend::IoUring,
        BackendChoice::Auto => return,
    };
    assert!(ev.backends.lock().unwrap().iter().all(|b| *b == want));
}

/// A TCP client socket with a small receive buffer (set before connect, so
/// the window stays small), blocking, with generous timeouts.
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use nix::sys::socket::{
        connect as nconnect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
        SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::RcvBuf, &rcvbuf).unwrap();
    let SocketAddr::V4(v4) = addr else {
        panic!("ipv4 only")
    };
    nconnect(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Close with an RST instead of a FIN (SO_LINGER = 0).
pub fn reset(s: TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let l = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&s, sockopt::Linger, &l).unwrap();
    drop(s);
}
