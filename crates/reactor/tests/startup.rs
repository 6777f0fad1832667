//! Start-up, backend selection, listeners, timers, and shard failure.

mod common;
use bytes::Bytes;
use common::*;
use ringcast_reactor::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `auto` picks a backend, reports it, and it is the one connections use.
#[test]
fn auto_picks_and_reports_backend() {
    let (r, ev) = start_echo(cfg(BackendChoice::Auto, 2));
    let expected = if io_uring_support().is_ok() {
        Backend::IoUring
    } else {
        Backend::Epoll
    };
    eprintln!(
        "auto chose {} (io_uring_support: {:?})",
        r.backend(),
        io_uring_support()
    );
    assert_eq!(r.backend(), expected);
    assert_eq!(r.handle().backend(), expected);
    let mut s = connect(r.local_addrs()[0]);
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    assert_eq!(ev.backends.lock().unwrap().as_slice(), &[expected]);
    drop(s);
    stop_and_join(r, &ev);
}

/// This machine supports io_uring, so asking for it must work (and the
/// support check must say so). Fails loudly where io_uring is unavailable.
#[test]
fn io_uring_is_available_here() {
    if let Err(why) = io_uring_support() {
        panic!("io_uring unavailable: {why}");
    }
}

/// Bind errors come back from `start`, not from a thread.
fn addr_in_use(backend: BackendChoice) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = Config {
        listen: taken.local_addr().unwrap(),
        ..cfg(backend, 2)
    };
    let ev = Arc::new(Events::default());
    match start(c, move |_| Echo::new(ev.clone())) {
        Ok(_) => panic!("bind should fail"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}"),
    }
}
both_backends!(addr_in_use);

/// A port-0 start gives every shard the same real port.
fn port_zero_shared_port(backend: BackendChoice) {
    let (r, ev) = start_echo(cfg(backend, 3));
    let addrs = r.local_addrs();
    assert_eq!(addrs.len(), 1);
    assert_ne!(addrs[0].port(), 0);
    // Enough connections that SO_REUSEPORT hashing reaches every shard.
    let socks: Vec<_> = (0..200).map(|_| connect(addrs[0])).collect();
    wait_until("accepted", || ev.opened() == 200);
    let per: Vec<u64> = r.stats().iter().map(|s| s.accepted).collect();
    eprintln!("{backend}: accepted per shard {per:?}");
    assert!(per.iter().all(|&n| n > 0), "SO_REUSEPORT spread: {per:?}");
    drop(socks);
    wait_table_empty(&r.handle());
    stop_and_join(r, &ev);
}
both_backends!(port_zero_shared_port);

/// Inherited listening socket (socket activation): all shards accept on it.
fn inherited_listener(backend: BackendChoice) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let c = Config {
        inherited: vec![OwnedFd::from(l)],
        ..cfg(backend, 2)
    };
    let (r, ev) = start_echo(c);
    assert_eq!(r.local_addrs(), vec![addr]);
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || {
                for k in 0..50u64 {
                    let mut s = connect(addr);
                    let mut msg = [0u8; 100];
                    fill(t * 100 + k, 0, &mut msg);
                    s.write_all(&msg).unwrap();
                    let mut back = [0u8; 100];
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(msg, back);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    wait_until("closed", || ev.closed() == 200);
    let per: Vec<u64> = r.stats().iter().map(|s| s.accepted).collect();
    eprintln!("{backend}: inherited fd, accepted per shard {per:?}");
    assert_eq!(per.iter().sum::<u64>(), 200);
    assert!(
        per.iter().all(|&n| n > 0),
        "accepts spread over shards: {per:?}"
    );
    stop_and_join(r, &ev);
}
both_backends!(inherited_listener);

/// A non-listening inherited fd is refused with a clear error.
#[test]
fn inherited_not_listening() {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let c = Config {
        inherited: vec![OwnedFd::from(s)],
        ..cfg(BackendChoice::Epoll, 1)
    };
    let ev = Arc::new(Events::default());
    let e = start(c, move |_| Echo::new(ev.clone()))
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("not a listening socket"), "{e}");
}

/// Timers: one-shot, cancel, periodic re-arm from on_timer, reset of a
/// pending timer; never early.
struct Timers {
    log: Arc<Mutex<Vec<(u64, Duration, Duration)>>>,
    armed_at: std::collections::HashMap<u64, (Instant, Duration)>,
    periodic_left: u32,
    conn: Option<Conn>,
}
impl Handler for Timers {
    type Mail = ();
    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, c: Conn, _: SocketAddr) {
        self.conn = Some(c);
        let now = ctx.now();
        let mut arm = |ctx: &mut Ctx<'_, ()>, d: Duration, data: u64| {
            self.armed_at.insert(data, (now, d));
            ctx.timer(d, data)
        };
        arm(ctx, Duration::from_millis(30), 1);
        let t2 = arm(ctx, Duration::from_millis(30), 2);
        ctx.cancel_timer(t2);
        arm(ctx, Duration::from_millis(5), 3);
        let t4 = arm(ctx, Duration::from_secs(3600), 4);
        let t4b = ctx.reset_timer(t4, Duration::from_millis(20));
        assert_eq!(t4, t4b);
        self.armed_at.insert(4, (now, Duration::from_millis(20)));
    }
    fn on_data(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: &mut [u8]) {}
    fn on_close(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: CloseReason) {}
    fn on_timer(&mut self, ctx: &mut Ctx<'_, ()>, id: TimerId, data: u64) {
        let (at, want) = self.armed_at[&data];
        let waited = ctx.now() - at;
        self.log.lock().unwrap().push((data, want, waited));
        if let Some(c) = self.conn {
            ctx.send(c, Bytes::from(format!("T{data}\n")));
        }
        if data == 3 && self.periodic_left > 0 {
            self.periodic_left -= 1;
            self.armed_at
                .insert(3, (ctx.now(), Duration::from_millis(5)));
            assert_eq!(ctx.reset_timer(id, Duration::from_millis(5)), id);
        }
    }
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, ctx: &mut Ctx<'_, ()>) {
        if let Some(c) = self.conn.take() {
            ctx.close(c);
        }
    }
}

fn timers(backend: BackendChoice) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    let r = start(cfg(backend, 1), move |_| Timers {
        log: l2.clone(),
        armed_at: Default::default(),
        periodic_left: 4,
        conn: None,
    })
    .unwrap();
    let s = connect(r.local_addrs()[0]);
    let mut lines = BufReader::new(s);
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let mut l = String::new();
        lines.read_line(&mut l).unwrap();
        seen.push(l.trim().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["T1", "T3", "T3", "T3", "T3", "T3", "T4"]);
    for (data, want, waited) in log.lock().unwrap().iter() {
        assert!(
            waited >= want,
            "timer {data} fired early: {waited:?} < {want:?}"
        );
    }
    r.handle().stop(Duration::from_secs(10));
    r.join().unwrap();
}
both_backends!(timers);

/// A panicking handler takes its shard down; the other shards are asked to
/// stop, and `join` reports the panic instead of hanging.
struct Bomb;
impl Handler for Bomb {
    type Mail = ();
    fn on_open(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: SocketAddr) {}
    fn on_data(&mut self, _: &mut Ctx<'_, ()>, _: Conn, data: &mut [u8]) {
        if data.starts_with(b"boom") {
            panic!("handler exploded");
        }
    }
    fn on_close(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: CloseReason) {}
    fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, _: &mut Ctx<'_, ()>) {}
}

fn shard_panic_is_reported(backend: BackendChoice) {
    let r = start(cfg(backend, 2), |_| Bomb).unwrap();
    let mut s = connect(r.local_addrs()[0]);
    s.write_all(b"boom").unwrap();
    let err = r.join().expect_err("join must report the panic");
    assert!(err.to_string().contains("handler exploded"), "{err}");
}
both_backends!(shard_panic_is_reported);

/// `Ctx::stop_all` from inside a handler stops every shard.
struct StopOnData(Arc<std::sync::atomic::AtomicUsize>);
impl Handler for StopOnData {
    type Mail = ();
    fn on_open(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: SocketAddr) {}
    fn on_data(&mut self, ctx: &mut Ctx<'_, ()>, _: Conn, _: &mut [u8]) {
        ctx.stop_all();
    }
    fn on_close(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: CloseReason) {}
    fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, ctx: &mut Ctx<'_, ()>) {
        assert!(ctx.is_draining());
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn stop_all_from_handler(backend: BackendChoice) {
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    let c = Config {
        drain_timeout: Duration::from_millis(200),
        ..cfg(backend, 3)
    };
    let r = start(c, move |_| StopOnData(n2.clone())).unwrap();
    let mut s = connect(r.local_addrs()[0]);
    s.write_all(b"x").unwrap();
    r.join().unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 3, "on_shutdown on every shard");
}
both_backends!(stop_all_from_handler);

/// `Handle` is usable from any thread (a Redis thread, a signal thread).
#[test]
fn handle_is_send_sync_clone() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<Handle<u64>>();
    assert_send_sync_clone::<Handle<Bytes>>();
    assert_send_sync_clone::<Handle<std::sync::Arc<String>>>();
    fn assert_send<T: Send>() {}
    assert_send::<Running<Bytes>>();
}

/// `Echo` that first tells each client which shard serves it (one byte).
struct Greeter(Echo);
impl Handler for Greeter {
    type Mail = ();
    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, conn: Conn, peer: SocketAddr) {
        self.0.on_open(ctx, conn, peer);
        ctx.send(conn, Bytes::from(vec![ctx.shard() as u8]));
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_, ()>, conn: Conn, data: &mut [u8]) {
        self.0.on_data(ctx, conn, data)
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_, ()>, conn: Conn, why: CloseReason) {
        self.0.on_close(ctx, conn, why)
    }
    fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, ctx: &mut Ctx<'_, ()>) {
        self.0.on_shutdown(ctx)
    }
}

/// Start `Greeter` shards on a listening socket passed as inherited.
fn start_inherited(c: Config) -> (Running<()>, SocketAddr, Arc<Events>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let c = Config {
        inherited: vec![OwnedFd::from(l)],
        ..c
    };
    let ev = Arc::new(Events::default());
    let e2 = ev.clone();
    let r = start(c, move |_| Greeter(Echo::new(e2.clone()))).unwrap();
    (r, addr, ev)
}

/// Connect, read which shard serves us, and complete one echo round trip
/// (so the connection is fully set up before the caller opens the next).
fn open_served(addr: SocketAddr, tag: u64) -> (std::net::TcpStream, usize) {
    let mut s = connect(addr);
    let mut shard = [0u8; 1];
    s.read_exact(&mut shard).unwrap();
    let mut msg = [0u8; 64];
    fill(tag, 0, &mut msg);
    s.write_all(&msg).unwrap();
    let mut back = [0u8; 64];
    s.read_exact(&mut back).unwrap();
    assert_eq!(msg, back);
    (s, shard[0] as usize)
}

/// Socket activation: one inherited listener, connections opened one after
/// another (each idle once set up). The round robin puts them on the shards
/// in turn, whichever shard the kernel woke to accept them.
fn inherited_round_robin(backend: BackendChoice) {
    const N: usize = 21;
    let (r, addr, ev) = start_inherited(cfg(backend, 2));
    let mut served = [0usize; 2];
    let mut socks = Vec::new();
    for k in 0..N {
        let (s, shard) = open_served(addr, k as u64);
        served[shard] += 1;
        socks.push(s);
    }
    wait_until("stats published", || {
        r.stats().iter().map(|s| s.accepted).sum::<u64>() == N as u64
    });
    let stats = r.stats();
    let accepted: Vec<u64> = stats.iter().map(|s| s.accepted).collect();
    let handed: Vec<u64> = stats.iter().map(|s| s.handed_off).collect();
    eprintln!("{backend}: served {served:?}, accepted {accepted:?}, handed off {handed:?}");
    assert_eq!(
        accepted,
        served.map(|n| n as u64),
        "stats agree with the clients"
    );
    for n in served {
        assert!(n > 0 && n.abs_diff(N / 2) <= 1, "uneven split: {served:?}");
    }
    assert!(stats.iter().all(|s| s.rejected == 0));
    drop(socks);
    wait_table_empty(&r.handle());
    assert_backend(backend, &ev);
    stop_and_join(r, &ev);
}
both_backends!(inherited_round_robin);

/// The round robin passes over a shard whose table is full, and refuses a
/// connection only when every shard is full.
fn inherited_round_robin_skips_full_shard(backend: BackendChoice) {
    let c = Config {
        max_connections: 3,
        ..cfg(backend, 2)
    };
    let (r, addr, ev) = start_inherited(c);
    let mut on: [Vec<std::net::TcpStream>; 2] = Default::default();
    for k in 0..6 {
        let (s, shard) = open_served(addr, k);
        on[shard].push(s);
    }
    assert_eq!([on[0].len(), on[1].len()], [3, 3], "round robin");
    // Free shard 0; shard 1 stays full.
    on[0].clear();
    wait_until("shard 0 empty, shard 1 full", || {
        let s = r.stats();
        s[0].slots == 0 && s[1].slots == 3
    });
    for k in 6..9 {
        let (s, shard) = open_served(addr, k);
        assert_eq!(shard, 0, "connection {k} went to the full shard");
        on[0].push(s);
    }
    // Both full now: the next connection is closed unregistered.
    let mut s = connect(addr);
    match s.read(&mut [0u8; 1]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be refused, got {other:?}"),
    }
    wait_until("rejection counted", || {
        r.stats().iter().map(|s| s.rejected).sum::<u64>() == 1
    });
    drop(on);
    wait_table_empty(&r.handle());
    stop_and_join(r, &ev);
}
both_backends!(inherited_round_robin_skips_full_shard);

/// `on_start`: once per shard, on the shard's thread, before any other
/// callback, and done everywhere when `start` returns. Timers armed and
/// mail sent there work.
#[derive(Default)]
struct StartLog {
    started: Mutex<Vec<(usize, String)>>,
    timer_fired: std::sync::atomic::AtomicUsize,
    mail_got: std::sync::atomic::AtomicUsize,
}
struct Starter {
    log: Arc<StartLog>,
    started: bool,
}
impl Starter {
    fn check(&self) {
        assert!(self.started, "callback before on_start");
    }
}
impl Handler for Starter {
    type Mail = usize;
    fn on_start(&mut self, ctx: &mut Ctx<'_, usize>) {
        assert!(!self.started, "on_start twice");
        self.started = true;
        let name = std::thread::current().name().unwrap_or("").to_string();
        self.log.started.lock().unwrap().push((ctx.shard(), name));
        ctx.timer(Duration::from_millis(5), 7);
        let next = (ctx.shard() + 1) % ctx.shards();
        ctx.mail(next, ctx.shard()).unwrap();
    }
    fn on_open(&mut self, _: &mut Ctx<'_, usize>, _: Conn, _: SocketAddr) {
        self.check();
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_, usize>, c: Conn, data: &mut [u8]) {
        self.check();
        ctx.send(c, Bytes::copy_from_slice(data));
    }
    fn on_close(&mut self, _: &mut Ctx<'_, usize>, _: Conn, _: CloseReason) {}
    fn on_timer(&mut self, _: &mut Ctx<'_, usize>, _: TimerId, data: u64) {
        self.check();
        assert_eq!(data, 7);
        self.log.timer_fired.fetch_add(1, Ordering::SeqCst);
    }
    fn on_mail(&mut self, ctx: &mut Ctx<'_, usize>, from: usize) {
        self.check();
        assert_eq!((from + 1) % ctx.shards(), ctx.shard());
        self.log.mail_got.fetch_add(1, Ordering::SeqCst);
    }
    fn on_shutdown(&mut self, _: &mut Ctx<'_, usize>) {
        self.check();
    }
}

fn on_start_runs_first(backend: BackendChoice) {
    let log = Arc::new(StartLog::default());
    let l2 = log.clone();
    let r = start(cfg(backend, 2), move |_| Starter {
        log: l2.clone(),
        started: false,
    })
    .unwrap();
    let mut started = log.started.lock().unwrap().clone();
    started.sort();
    assert_eq!(
        started,
        [
            (0, "ringcast-shard-0".to_string()),
            (1, "ringcast-shard-1".to_string())
        ],
        "on_start once per shard, on its thread, before start returns"
    );
    let mut s = connect(r.local_addrs()[0]);
    s.write_all(b"hi").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    wait_until("timers armed in on_start fire", || {
        log.timer_fired.load(Ordering::SeqCst) == 2
    });
    wait_until("mail sent in on_start arrives", || {
        log.mail_got.load(Ordering::SeqCst) == 2
    });
    drop(s);
    r.handle().stop(Duration::from_secs(10));
    r.join().unwrap();
    assert_eq!(log.started.lock().unwrap().len(), 2, "on_start only once");
}
both_backends!(on_start_runs_first);
