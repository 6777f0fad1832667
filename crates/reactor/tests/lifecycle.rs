//! Connection lifecycle on both backends: slow readers and short writes,
//! resets, half-close, closes with operations in flight, buffer-ring
//! exhaustion, shutdown with sends in flight, drain deadline.

mod common;
use bytes::Bytes;
use common::*;
use ringcast_reactor::*;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a [`Streamer`] checks its paused connections.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// Streams `total` pattern bytes (pattern id 7) to every connection, keeping
/// the output queue topped up to `pause_at` and resuming once `queued_bytes`
/// shows it drained to half of that: a backpressure policy of the kind the
/// reactor leaves to handlers. The reactor sends no drain notice, so paused
/// connections are polled from a timer.
struct Streamer {
    ev: Arc<Events>,
    total: usize,
    chunk: usize,
    sent: HashMap<Conn, usize>,
    /// Connections waiting for their queue to drain.
    paused: HashSet<Conn>,
    /// The poll timer is armed (while anything is paused).
    polling: bool,
    /// Close (flush then FIN) once everything is queued.
    close_at_end: bool,
    /// Final frame queued from on_shutdown.
    bye: Option<Bytes>,
    /// Stop queueing above this many bytes until half of it is left.
    pause_at: usize,
}

impl Streamer {
    fn new(ev: Arc<Events>, total: usize) -> Self {
        Streamer {
            ev,
            total,
            chunk: 64 * 1024,
            sent: HashMap::new(),
            paused: HashSet::new(),
            polling: false,
            close_at_end: true,
            bye: None,
            pause_at: 256 * 1024,
        }
    }

    fn pump(&mut self, ctx: &mut Ctx<'_, ()>, c: Conn) {
        loop {
            let Some(done) = self.sent.get_mut(&c) else {
                return;
            };
            if *done >= self.total {
                if self.close_at_end {
                    ctx.close(c);
                }
                return;
            }
            let n = self.chunk.min(self.total - *done);
            let mut buf = vec![0u8; n];
            fill(7, *done as u64, &mut buf);
            if !ctx.send(c, Bytes::from(buf)) {
                return; // closing (e.g. the peer reset): stop streaming
            }
            *done += n;
            if ctx.queued_bytes(c) > self.pause_at {
                self.paused.insert(c);
                self.ev.paused.fetch_add(1, Ordering::SeqCst);
                if !self.polling {
                    self.polling = true;
                    ctx.timer(DRAIN_POLL, 0);
                }
                return; // on_timer resumes it
            }
        }
    }
}

impl Handler for Streamer {
    type Mail = ();
    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, c: Conn, _: SocketAddr) {
        self.ev.opened.fetch_add(1, Ordering::SeqCst);
        self.ev.backends.lock().unwrap().push(ctx.backend());
        self.sent.insert(c, 0);
        self.pump(ctx, c);
    }
    fn on_data(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: &mut [u8]) {}
    fn on_timer(&mut self, ctx: &mut Ctx<'_, ()>, t: TimerId, _: u64) {
        let low = self.pause_at / 2;
        let drained: Vec<Conn> = self
            .paused
            .iter()
            .copied()
            .filter(|c| ctx.queued_bytes(*c) <= low)
            .collect();
        for c in drained {
            self.paused.remove(&c);
            self.ev.resumed.fetch_add(1, Ordering::SeqCst);
            self.pump(ctx, c);
        }
        // `pump` may have paused some again and found the timer still armed.
        if self.paused.is_empty() {
            self.polling = false;
        } else {
            ctx.reset_timer(t, DRAIN_POLL);
        }
    }
    fn on_close(&mut self, _: &mut Ctx<'_, ()>, c: Conn, why: CloseReason) {
        assert!(self.sent.remove(&c).is_some());
        self.paused.remove(&c);
        self.ev.reasons.lock().unwrap().push(why);
        self.ev.closed.fetch_add(1, Ordering::SeqCst);
    }
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, ctx: &mut Ctx<'_, ()>) {
        if let Some(bye) = &self.bye {
            for c in self.sent.keys() {
                ctx.send(*c, bye.clone());
                ctx.close(*c);
            }
        }
    }
}

/// Slow reader (4 KiB receive buffer) against a fast writer: the server sees
/// short writes, and its queue fill up and drain again (`queued_bytes`); the
/// client gets every byte in order, then EOF.
fn slow_reader(backend: BackendChoice) {
    let total = 6 * 1024 * 1024;
    let ev = Arc::new(Events::default());
    let e2 = ev.clone();
    let r = start(cfg(backend, 2), move |_| Streamer::new(e2.clone(), total)).unwrap();
    let addr = r.local_addrs()[0];
    let readers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect_small_rcvbuf(addr, 4096);
                let mut buf = vec![0u8; 1500];
                let mut off = 0usize;
                loop {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    for (k, b) in buf[..n].iter().enumerate() {
                        assert_eq!(*b, pattern(7, (off + k) as u64), "byte {}", off + k);
                    }
                    off += n;
                    if off % (512 * 1024) < n {
                        std::thread::sleep(Duration::from_millis(20)); // be slow
                    }
                }
                off
            })
        })
        .collect();
    for t in readers {
        assert_eq!(t.join().unwrap(), total);
    }
    wait_until("closed", || ev.closed() == 4);
    wait_table_empty(&r.handle());
    assert!(
        ev.paused.load(Ordering::SeqCst) >= 4,
        "each connection went over the limit"
    );
    assert!(ev.resumed.load(Ordering::SeqCst) >= 4, "and drained again");
    let partial: u64 = r.stats().iter().map(|s| s.partial_writes).sum();
    // Short writes happen when the queue is larger than the free socket
    // buffer at the moment of the write; how often is up to kernel timing
    // (the send buffer autotunes), so they are counted, not asserted. The
    // short-write arithmetic itself is unit-tested (outq).
    eprintln!("{backend}: partial writes {partial}");
    assert_all_closed_by(&ev, CloseReason::Local);
    assert_backend(backend, &ev);
    stop_and_join(r, &ev);
}
both_backends!(slow_reader);

/// Peers that reset the connection while the server is sending: no panic,
/// every on_open gets one on_close(Reset), the table empties.
fn reset_mid_send(backend: BackendChoice) {
    let ev = Arc::new(Events::default());
    let e2 = ev.clone();
    let r = start(cfg(backend, 2), move |_| {
        Streamer::new(e2.clone(), usize::MAX / 2)
    })
    .unwrap();
    let addr = r.local_addrs()[0];
    let n = 50;
    let clients: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = 0;
                while got < 100 * 1024 + i * 1000 {
                    let k = s.read(&mut buf).unwrap();
                    assert!(k > 0);
                    got += k;
                }
                reset(s);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_until("all closed", || ev.closed() == n);
    wait_table_empty(&r.handle());
    assert_all_closed_by(&ev, CloseReason::Reset);
    stop_and_join(r, &ev);
}
both_backends!(reset_mid_send);

/// Half-close by the peer: data sent before the FIN is all echoed, then the
/// server closes (default on_eof) and the client sees EOF.
fn half_close_by_peer(backend: BackendChoice) {
    let (r, ev) = start_echo(cfg(backend, 2));
    let addr = r.local_addrs()[0];
    let clients: Vec<_> = (0..20u64)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let len = 200 * 1024 + c as usize * 777;
                let mut data = vec![0u8; len];
                fill(c, 0, &mut data);
                let mut w = s.try_clone().unwrap();
                let writer = std::thread::spawn(move || {
                    w.write_all(&data).unwrap();
                    w.shutdown(std::net::Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                s.read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                assert_eq!(back.len(), len);
                for (i, b) in back.iter().enumerate() {
                    assert_eq!(*b, pattern(c, i as u64));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_until("closed", || ev.closed() == 20);
    wait_table_empty(&r.handle());
    assert_all_closed_by(&ev, CloseReason::PeerEof);
    assert_backend(backend, &ev);
    stop_and_join(r, &ev);
}
both_backends!(half_close_by_peer);

/// Half-close by the server: `shutdown_write` after a greeting; the client
/// sees greeting + EOF, can still send, and the server still receives.
struct Greeter {
    ev: Arc<Events>,
    got: Arc<Mutex<Vec<u8>>>,
}
impl Handler for Greeter {
    type Mail = ();
    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, c: Conn, _: SocketAddr) {
        self.ev.opened.fetch_add(1, Ordering::SeqCst);
        ctx.send(c, Bytes::from_static(b"hello\n"));
        ctx.shutdown_write(c);
        assert!(
            !ctx.send(c, Bytes::from_static(b"late")),
            "no sends after shutdown_write"
        );
    }
    fn on_data(&mut self, _: &mut Ctx<'_, ()>, _: Conn, data: &mut [u8]) {
        self.got.lock().unwrap().extend_from_slice(data);
    }
    fn on_close(&mut self, _: &mut Ctx<'_, ()>, _: Conn, why: CloseReason) {
        self.ev.reasons.lock().unwrap().push(why);
        self.ev.closed.fetch_add(1, Ordering::SeqCst);
    }
    fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, _: &mut Ctx<'_, ()>) {}
}

fn half_close_by_server(backend: BackendChoice) {
    let ev = Arc::new(Events::default());
    let got = Arc::new(Mutex::new(Vec::new()));
    let (e2, g2) = (ev.clone(), got.clone());
    let r = start(cfg(backend, 1), move |_| Greeter {
        ev: e2.clone(),
        got: g2.clone(),
    })
    .unwrap();
    let mut s = connect(r.local_addrs()[0]);
    let mut hello = Vec::new();
    s.read_to_end(&mut hello).unwrap();
    assert_eq!(hello, b"hello\n");
    s.write_all(b"still talking").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    wait_until("closed", || ev.closed() == 1);
    assert_eq!(&*got.lock().unwrap(), b"still talking");
    assert_eq!(ev.reasons.lock().unwrap()[0], CloseReason::PeerEof);
    wait_table_empty(&r.handle());
    stop_and_join(r, &ev);
}
both_backends!(half_close_by_server);

/// Closes while operations are in flight: the server aborts after 64 KiB
/// (recv armed, sends queued and in flight), or closes with a full queue the
/// peer never reads (close_timeout fires), while clients keep writing.
struct Closer {
    ev: Arc<Events>,
    seen: HashMap<Conn, usize>,
}
impl Handler for Closer {
    type Mail = ();
    fn on_open(&mut self, _: &mut Ctx<'_, ()>, c: Conn, _: SocketAddr) {
        self.ev.opened.fetch_add(1, Ordering::SeqCst);
        self.seen.insert(c, 0);
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_, ()>, c: Conn, data: &mut [u8]) {
        let n = self.seen.get_mut(&c).expect("data after close");
        *n += data.len();
        // Queue a lot more than we received, so sends are in flight.
        let big = Bytes::from(vec![0xAB; 32 * 1024]);
        ctx.send_parts(c, &[Bytes::copy_from_slice(data), big.clone(), big]);
        if *n >= 64 * 1024 {
            if c.index() & 1 == 0 {
                ctx.abort(c);
                assert!(!ctx.send(c, Bytes::from_static(b"x")));
            } else {
                ctx.close(c);
            }
        }
    }
    fn on_close(&mut self, _: &mut Ctx<'_, ()>, c: Conn, why: CloseReason) {
        assert!(self.seen.remove(&c).is_some());
        self.ev.reasons.lock().unwrap().push(why);
        self.ev.closed.fetch_add(1, Ordering::SeqCst);
    }
    fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, _: &mut Ctx<'_, ()>) {}
}

fn close_with_ops_in_flight(backend: BackendChoice) {
    let ev = Arc::new(Events::default());
    let e2 = ev.clone();
    let c = Config {
        close_timeout: Duration::from_millis(500),
        ..cfg(backend, 2)
    };
    let r = start(c, move |_| Closer {
        ev: e2.clone(),
        seen: HashMap::new(),
    })
    .unwrap();
    let addr = r.local_addrs()[0];
    let n = 40;
    let clients: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                let chunk = vec![i as u8; 8 * 1024];
                // Write until the server goes away; never read (half the
                // connections) or read a little then stop.
                if i % 3 == 0 {
                    let mut r = s.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let mut b = vec![0u8; 4096];
                        while matches!(r.read(&mut b), Ok(k) if k > 0) {}
                    });
                }
                for _ in 0..10_000 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
                if i % 4 == 0 {
                    reset(s);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_until("all closed", || ev.opened() == n && ev.closed() == n);
    wait_table_empty(&r.handle());
    stop_and_join(r, &ev);
}
both_backends!(close_with_ops_in_flight);

/// Many connections sending at once into a tiny buffer ring (4 x 1 KiB):
/// io_uring runs dry (ENOBUFS), re-arms as buffers return, and no byte is
/// lost or reordered. (On epoll the same config just means a 1 KiB scratch
/// buffer.)
fn buffer_ring_exhaustion(backend: BackendChoice) {
    let c = Config {
        buf_count: 4,
        buf_size: 1024,
        ..cfg(backend, 1)
    };
    let (r, ev) = start_echo(c);
    let addr = r.local_addrs()[0];
    let conns = 200usize;
    let per = 64 * 1024;
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8usize)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut socks: Vec<(u64, std::net::TcpStream)> = (t..conns)
                    .step_by(8)
                    .map(|c| (c as u64, connect(addr)))
                    .collect();
                barrier.wait();
                let mut data = vec![0u8; per];
                for (c, s) in socks.iter_mut() {
                    fill(*c, 0, &mut data);
                    s.write_all(&data).unwrap();
                }
                let mut back = vec![0u8; per];
                for (c, s) in socks.iter_mut() {
                    s.read_exact(&mut back).unwrap();
                    for (i, b) in back.iter().enumerate() {
                        assert_eq!(*b, pattern(*c, i as u64), "conn {c} byte {i}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let enobufs: u64 = r.stats().iter().map(|s| s.enobufs).sum();
    eprintln!("{backend}: ENOBUFS completions: {enobufs}");
    if backend == BackendChoice::IoUring {
        assert!(enobufs > 0, "the ring should have run dry");
    }
    wait_until("closed", || ev.closed() == conns);
    wait_table_empty(&r.handle());
    stop_and_join(r, &ev);
}
both_backends!(buffer_ring_exhaustion);

/// Two shards queueing all of `total` bytes per connection at once: never
/// pauses, never closes by itself; on_shutdown queues "BYE" and closes.
fn start_bye_streamer(backend: BackendChoice, total: usize) -> (Running<()>, Arc<Events>) {
    let ev = Arc::new(Events::default());
    let e2 = ev.clone();
    let r = start(cfg(backend, 2), move |_| {
        let mut s = Streamer::new(e2.clone(), total);
        s.close_at_end = false;
        s.bye = Some(Bytes::from_static(b"BYE"));
        s.pause_at = usize::MAX;
        s
    })
    .unwrap();
    (r, ev)
}

/// Stop while large sends are queued and in flight: on_shutdown queues a
/// final frame and closes; clients reading afterwards get every byte, the
/// final frame, then EOF; join succeeds.
fn shutdown_with_sends_in_flight(backend: BackendChoice) {
    let total = 2 * 1024 * 1024;
    let (r, ev) = start_bye_streamer(backend, total);
    let addr = r.local_addrs()[0];
    let mut socks: Vec<_> = (0..10).map(|_| connect_small_rcvbuf(addr, 8192)).collect();
    for s in socks.iter_mut() {
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        assert_eq!(one[0], pattern(7, 0));
    }
    wait_until("all opened", || ev.opened() == 10);
    let h = r.handle();
    h.stop(Duration::from_secs(60));
    let readers: Vec<_> = socks
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                assert_eq!(rest.len(), total - 1 + 3);
                for (i, b) in rest[..total - 1].iter().enumerate() {
                    assert_eq!(*b, pattern(7, i as u64 + 1));
                }
                assert_eq!(&rest[total - 1..], b"BYE");
            })
        })
        .collect();
    for t in readers {
        t.join().unwrap();
    }
    r.join().expect("join");
    assert_eq!(ev.closed(), 10);
    assert_all_closed_by(&ev, CloseReason::Local);
}
both_backends!(shutdown_with_sends_in_flight);

/// Stop with peers that never read: the drain deadline passes, the rest is
/// closed with CloseReason::Shutdown, and every shard exits.
fn drain_deadline(backend: BackendChoice) {
    let (r, ev) = start_bye_streamer(backend, 8 * 1024 * 1024);
    let addr = r.local_addrs()[0];
    let socks: Vec<_> = (0..6).map(|_| connect_small_rcvbuf(addr, 4096)).collect();
    wait_until("all opened", || ev.opened() == 6);
    r.handle().stop(Duration::from_millis(300));
    r.join().expect("join");
    assert_eq!(ev.closed(), 6);
    assert_all_closed_by(&ev, CloseReason::Shutdown);
    drop(socks);
}
both_backends!(drain_deadline);
