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
//! The client keeps every connection busy: each round it writes one message
//! on every connection, then reads every echo back (verifying length). It
//! prints echoed bytes/s and messages/s. The server is a one-shard reactor
//! whose handler copies each received chunk into a `Bytes` and queues it.

use bytes::Bytes;
use ringcast_reactor::{start, BackendChoice, CloseReason, Config, Conn, Ctx, Handler, TimerId};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

struct Echo;
impl Handler for Echo {
    type Mail = ();
    fn on_open(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: SocketAddr) {}
    fn on_data(&mut self, ctx: &mut Ctx<'_, ()>, c: Conn, d: &mut [u8]) {
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
    let cfg = Config {
        listen,
        shards: 1,
        backend,
        ..Default::default()
    };
    let r = start(cfg, |_| Echo).expect("start");
    eprintln!("echo_bench server on {} ({})", listen, r.backend());
    let h = r.handle();
    std::thread::spawn(move || {
        let _ = sigs.wait();
        h.stop(Duration::from_secs(1));
    });
    r.join().unwrap();
}

fn client(args: &[String]) {
    let addr: SocketAddr = arg(args, "--addr", "127.0.0.1:7300".parse().unwrap());
    let conns: usize = arg(args, "--conns", 64);
    let size: usize = arg(args, "--size", 16384);
    let secs: u64 = arg(args, "--secs", 10);
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
        _ => eprintln!("usage: echo_bench server [--backend B] [--listen A] | client [--addr A] [--conns N] [--size BYTES] [--secs S]"),
    }
}
