//! Echo throughput: one server shard against one client process, each pinned
//! to its own CPU with `taskset`, run once per backend.
//!
//! ```text
//! cargo build --release -p ringcast-reactor --examples
//! B=target/release/examples/echo_bench
//! taskset -c 0 $B server --backend io-uring --listen 127.0.0.1:7300 &
//! taskset -c 1 $B client --addr 127.0.0.1:7300 --conns 64 --size 16384 --secs 10
//! kill %1
//! ```
//!
//! Client modes: `--depth 1` (default) writes one message on every
//! connection, then reads every echo back (request/response rounds);
//! `--depth D` keeps D messages in flight per connection with a nonblocking
//! epoll loop (pipelined, to saturate the server). The server is a one-shard
//! reactor whose handler copies each received chunk into a `Bytes` and queues
//! it; on exit (SIGINT) it prints its own CPU time (getrusage) and MB echoed
//! per CPU-second, a figure that is robust against other load on the machine.

use bytes::Bytes;
use ringcast_reactor::{start, BackendChoice, CloseReason, Config, Conn, Ctx, Handler, TimerId};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The buffers docs/reactor.md §13 was measured with (the reactor's defaults
/// then), so its commands still reproduce its figures.
const MEASURED_BUF_COUNT: u16 = 4096;
const MEASURED_BUF_SIZE: u32 = 16 * 1024;

static ECHOED: AtomicU64 = AtomicU64::new(0);
static RECVS: AtomicU64 = AtomicU64::new(0);

struct Echo;
impl Handler for Echo {
    type Mail = ();
    fn on_open(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: SocketAddr) {}
    fn on_data(&mut self, ctx: &mut Ctx<'_, ()>, c: Conn, d: &mut [u8]) {
        ECHOED.fetch_add(d.len() as u64, Ordering::Relaxed);
        RECVS.fetch_add(1, Ordering::Relaxed);
        ctx.send(c, Bytes::copy_from_slice(d));
    }
    fn on_close(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: CloseReason) {}
    fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, _: &mut Ctx<'_, ()>) {}
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().ok().expect("bad argument"))
        .unwrap_or(default)
}

fn server(args: &[String]) {
    use nix::sys::signal::{SigSet, Signal};
    let backend: BackendChoice = arg(args, "--backend", BackendChoice::Auto);
    let listen: SocketAddr = arg(args, "--listen", "127.0.0.1:7300".parse().unwrap());
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block().unwrap();
    let buf_count: u16 = arg(args, "--buf-count", MEASURED_BUF_COUNT);
    let buf_size: u32 = arg(args, "--buf-size", MEASURED_BUF_SIZE);
    let cfg = Config {
        listen,
        shards: 1,
        backend,
        buf_count,
        buf_size,
        ..Default::default()
    };
    let r = start(cfg, |_| Echo).expect("start");
    eprintln!("echo_bench server on {} ({})", listen, r.backend());
    let h = r.handle();
    std::thread::spawn(move || {
        let _ = sigs.wait();
        h.stop(Duration::from_secs(1));
    });
    let h = r.handle();
    r.join().unwrap();
    eprintln!("server stats: {:?}", h.stats()[0]);
    // CPU the server spent (whole process: the shard does all the work).
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let (user, sys) = (secs(u.user_time()), secs(u.system_time()));
    let bytes = ECHOED.load(Ordering::Relaxed) as f64;
    println!(
        "server {}: echoed {:.0} MB in {} recv callbacks; CPU user {user:.2}s sys {sys:.2}s; {:.0} MB echoed per CPU-second",
        backend,
        bytes / 1e6,
        RECVS.load(Ordering::Relaxed),
        bytes / 1e6 / (user + sys)
    );
}

/// Pipelined client: nonblocking sockets in an edge-triggered epoll set,
/// each connection keeping `depth * size` bytes in flight, so the server
/// always has work queued (used to saturate the server CPU).
fn client_pipelined(addr: SocketAddr, conns: usize, size: usize, secs: u64, depth: usize) {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    let ep = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    let mut socks: Vec<TcpStream> = (0..conns)
        .map(|i| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.set_nonblocking(true).unwrap();
            let fl = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET;
            ep.add(&s, EpollEvent::new(fl, i as u64)).unwrap();
            s
        })
        .collect();
    let target = depth * size;
    let msg = vec![0x5Au8; size];
    let mut scratch = vec![0u8; 256 * 1024];
    let mut inflight = vec![0usize; conns];
    let mut events = vec![EpollEvent::empty(); 256];
    let mut total = 0u64;
    let t0 = Instant::now();
    let fill = |s: &mut TcpStream, inflight: &mut usize| {
        while *inflight < target {
            match s.write(&msg[..size.min(target - *inflight)]) {
                Ok(n) => *inflight += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
    };
    for (i, s) in socks.iter_mut().enumerate() {
        fill(s, &mut inflight[i]);
    }
    while t0.elapsed() < Duration::from_secs(secs) {
        let n = ep.wait(&mut events, EpollTimeout::from(100u16)).unwrap();
        for ev in &events[..n] {
            let i = ev.data() as usize;
            let s = &mut socks[i];
            loop {
                match s.read(&mut scratch) {
                    Ok(0) => panic!("server closed"),
                    Ok(k) => {
                        inflight[i] -= k;
                        total += k as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            fill(s, &mut inflight[i]);
        }
    }
    let el = t0.elapsed().as_secs_f64();
    println!(
        "conns {conns} size {size} depth {depth}: {:.1} MB/s echoed ({:.0} MB in {el:.1}s)",
        total as f64 / el / 1e6,
        total as f64 / 1e6
    );
}

fn client(args: &[String]) {
    let addr: SocketAddr = arg(args, "--addr", "127.0.0.1:7300".parse().unwrap());
    let conns: usize = arg(args, "--conns", 64);
    let size: usize = arg(args, "--size", 16384);
    let secs: u64 = arg(args, "--secs", 10);
    let depth: usize = arg(args, "--depth", 1);
    if depth > 1 {
        return client_pipelined(addr, conns, size, secs, depth);
    }
    let mut socks: Vec<TcpStream> = (0..conns)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    let msg = vec![0x5Au8; size];
    let mut back = vec![0u8; size];
    let t0 = Instant::now();
    let mut rounds = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        for s in socks.iter_mut() {
            s.write_all(&msg).unwrap();
        }
        for s in socks.iter_mut() {
            s.read_exact(&mut back).unwrap();
        }
        rounds += 1;
    }
    let el = t0.elapsed().as_secs_f64();
    let msgs = rounds as f64 * conns as f64;
    println!(
        "conns {conns} size {size}: {:.1} MB/s echoed, {:.0} msgs/s ({rounds} rounds in {el:.1}s)",
        msgs * size as f64 / el / 1e6,
        msgs / el
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server(&args[2..]),
        Some("client") => client(&args[2..]),
        _ => eprintln!("usage: echo_bench server [--backend B] [--listen A] [--buf-count N] [--buf-size BYTES] | client [--addr A] [--conns N] [--size BYTES] [--secs S] [--depth D]"),
    }
}
