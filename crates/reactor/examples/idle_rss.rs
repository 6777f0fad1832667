//! Measures resident memory per idle connection.
//!
//! ```text
//! cargo run --release -p ringcast-reactor --example idle_rss -- --backend io-uring --conns 10000
//! # optional: --buf-count N --buf-size BYTES (io_uring buffer ring / epoll scratch)
//! ```
//!
//! The server (this process, one shard, an echo handler that keeps no
//! per-connection state of its own) reads `VmRSS` from /proc/self/status:
//! 1. after start, before any connection;
//! 2. after `--conns` loopback clients connected and were accepted (idle);
//! 3. after every client sent 64 bytes and read the echo once (idle again).
//!
//! The clients live in a child process (this binary with `--client`), so each
//! process stays under the open-file limit and the client's memory is not
//! counted. Kernel socket memory is not part of RSS and is not included.

use bytes::Bytes;
use ringcast_reactor::{start, BackendChoice, CloseReason, Config, Conn, Ctx, Handler, TimerId};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The buffers docs/reactor.md §13 was measured with (the reactor's defaults
/// then), so its commands still reproduce its figures.
const MEASURED_BUF_COUNT: u16 = 4096;
const MEASURED_BUF_SIZE: u32 = 16 * 1024;

struct Echo(Arc<AtomicUsize>);
impl Handler for Echo {
    type Mail = ();
    fn on_open(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: SocketAddr) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_, ()>, c: Conn, d: &mut [u8]) {
        ctx.send(c, Bytes::copy_from_slice(d));
    }
    fn on_close(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: CloseReason) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, _: &mut Ctx<'_, ()>) {}
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn client(addr: &str, n: usize) {
    let mut socks: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    println!("connected");
    let mut cmd = String::new();
    let stdin = std::io::stdin();
    stdin.lock().read_line(&mut cmd).unwrap();
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    for s in socks.iter_mut() {
        s.write_all(&msg).unwrap();
    }
    for s in socks.iter_mut() {
        s.read_exact(&mut back).unwrap();
    }
    println!("echoed");
    cmd.clear();
    let _ = stdin.lock().read_line(&mut cmd); // wait for EOF
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--client") {
        return client(&args[2], args[3].parse().unwrap());
    }
    let mut backend = BackendChoice::Auto;
    let mut conns = 10_000usize;
    let mut buf_count = MEASURED_BUF_COUNT;
    let mut buf_size = MEASURED_BUF_SIZE;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => backend = it.next().unwrap().parse().unwrap(),
            "--conns" => conns = it.next().unwrap().parse().unwrap(),
            "--buf-count" => buf_count = it.next().unwrap().parse().unwrap(),
            "--buf-size" => buf_size = it.next().unwrap().parse().unwrap(),
            other => panic!("unknown argument {other}"),
        }
    }
    let open = Arc::new(AtomicUsize::new(0));
    let o2 = open.clone();
    let cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        backend,
        buf_count,
        buf_size,
        ..Default::default()
    };
    let r = start(cfg, move |_| Echo(o2.clone())).expect("start");
    let addr = r.local_addrs()[0];
    std::thread::sleep(Duration::from_millis(200));
    let rss0 = rss_kib();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--client", &addr.to_string(), &conns.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let t0 = Instant::now();
    while open.load(Ordering::Relaxed) < conns {
        assert!(t0.elapsed() < Duration::from_secs(60), "accepts stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = rss_kib();

    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "echo").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "echoed");
    std::thread::sleep(Duration::from_millis(500));
    let rss2 = rss_kib();
    drop(stdin);
    child.wait().unwrap();

    let per = |a: u64, b: u64| (b.saturating_sub(a) as f64 * 1024.0) / conns as f64;
    println!("backend: {}", r.backend());
    println!("connections: {conns}, provided buffers: {buf_count} x {buf_size} B");
    println!("VmRSS before: {rss0} KiB");
    println!(
        "VmRSS {conns} idle (accepted, nothing received): {rss1} KiB -> {:.0} bytes/connection",
        per(rss0, rss1)
    );
    println!(
        "VmRSS after one 64-byte echo each, idle again: {rss2} KiB -> {:.0} bytes/connection",
        per(rss0, rss2)
    );
    r.handle().stop(Duration::from_secs(5));
    r.join().unwrap();
}
