//! A line-based TCP chat room on reactor shards (try it with `nc` or `telnet`).
//!
//! ```text
//! cargo run -p ringcast-reactor --example tcp_chat -- --listen 127.0.0.1:7000 --backend epoll
//! nc 127.0.0.1 7000      # in two or more terminals
//! ```
//!
//! Every line a client sends reaches every other client, on every shard,
//! prefixed with the sender's id (`shard.connection`). Join and leave notices
//! go to everyone. A line is framed once into a `Bytes` and that one buffer is
//! queued on every local recipient and mailed (refcounted) to the other
//! shards. Ctrl-C stops gracefully: a signal thread calls `Handle::stop`.
//!
//! Policies: lines longer than 4 KiB are refused (the client is told and
//! disconnected); a client with more than `MAX_QUEUE` bytes it has not read
//! yet (a slow reader) misses messages until it catches up. The reactor
//! only reports `queued_bytes`; the decision is taken here, before queueing.

use bytes::Bytes;
use ringcast_reactor::{start, BackendChoice, CloseReason, Config, Conn, Ctx, Handler, TimerId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

const MAX_LINE: usize = 4096;
/// Output a client may have pending before further lines skip it.
const MAX_QUEUE: usize = 1 << 20;

/// A chat line, framed once, shared by every recipient.
struct Broadcast {
    /// (shard, connection id) of the sender, who does not get an echo.
    from: (usize, u64),
    line: Bytes,
}

struct Client {
    name: String,
    partial: Vec<u8>,
}

struct Chat {
    clients: HashMap<Conn, Client>,
}

impl Chat {
    /// Deliver locally and mail every other shard.
    fn broadcast(&mut self, ctx: &mut Ctx<'_, Broadcast>, from: (usize, u64), line: Bytes) {
        self.deliver(ctx, from, &line);
        let me = ctx.shard();
        for shard in (0..ctx.shards()).filter(|&s| s != me) {
            if ctx
                .mail(
                    shard,
                    Broadcast {
                        from,
                        line: line.clone(),
                    },
                )
                .is_err()
            {
                eprintln!(
                    "shard {}: mailbox to shard {shard} full; message dropped",
                    ctx.shard()
                );
            }
        }
    }

    fn deliver(&mut self, ctx: &mut Ctx<'_, Broadcast>, from: (usize, u64), line: &Bytes) {
        for conn in self.clients.keys() {
            if (ctx.shard(), conn.id()) != from && ctx.queued_bytes(*conn) <= MAX_QUEUE {
                ctx.send(*conn, line.clone());
            }
        }
    }
}

impl Handler for Chat {
    type Mail = Broadcast;

    fn on_open(&mut self, ctx: &mut Ctx<'_, Broadcast>, conn: Conn, peer: SocketAddr) {
        let name = format!("{}.{}", ctx.shard(), conn.id());
        ctx.send(
            conn,
            Bytes::from(format!("welcome {peer}, you are [{name}]\n")),
        );
        let notice = Bytes::from(format!("* [{name}] joined\n"));
        self.clients.insert(
            conn,
            Client {
                name,
                partial: Vec::new(),
            },
        );
        self.broadcast(ctx, (ctx.shard(), conn.id()), notice);
    }

    fn on_data(&mut self, ctx: &mut Ctx<'_, Broadcast>, conn: Conn, data: &mut [u8]) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        client.partial.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(nl) = client.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = client.partial.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            if !text.is_empty() {
                lines.push(Bytes::from(format!("[{}] {}\n", client.name, text)));
            }
        }
        if client.partial.len() > MAX_LINE {
            ctx.send(conn, Bytes::from_static(b"* line too long, bye\n"));
            ctx.close(conn);
            return;
        }
        for line in lines {
            self.broadcast(ctx, (ctx.shard(), conn.id()), line);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Broadcast>, conn: Conn, _why: CloseReason) {
        if let Some(c) = self.clients.remove(&conn) {
            let notice = Bytes::from(format!("* [{}] left\n", c.name));
            self.broadcast(ctx, (ctx.shard(), conn.id()), notice);
        }
    }

    fn on_timer(&mut self, _: &mut Ctx<'_, Broadcast>, _: TimerId, _: u64) {}

    fn on_mail(&mut self, ctx: &mut Ctx<'_, Broadcast>, mail: Broadcast) {
        self.deliver(ctx, mail.from, &mail.line);
    }

    fn on_shutdown(&mut self, ctx: &mut Ctx<'_, Broadcast>) {
        let bye = Bytes::from_static(b"* server shutting down\n");
        for conn in self.clients.keys() {
            ctx.send(*conn, bye.clone());
            ctx.close(*conn);
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: tcp_chat [--listen ADDR] [--backend auto|io-uring|epoll] [--shards N]");
    std::process::exit(2)
}

fn main() {
    let mut cfg = Config {
        listen: "127.0.0.1:7000".parse().unwrap(),
        ..Default::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => cfg.listen = val().parse().unwrap_or_else(|_| usage()),
            "--backend" => {
                cfg.backend = val().parse::<BackendChoice>().unwrap_or_else(|e| {
                    eprintln!("{e}");
                    usage()
                })
            }
            "--shards" => cfg.shards = val().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }

    // Block SIGINT/SIGTERM before the shard threads exist (they inherit the
    // mask), then wait for them synchronously on this thread.
    use nix::sys::signal::{SigSet, Signal};
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block().expect("block signals");

    let running = match start(cfg, |_| Chat {
        clients: HashMap::new(),
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcp_chat: {e}");
            std::process::exit(1);
        }
    };
    eprintln!(
        "tcp_chat listening on {:?} with {} shards on {}",
        running.local_addrs(),
        running.handle().shards(),
        running.backend().as_str()
    );
    let handle = running.handle();
    std::thread::spawn(move || {
        if let Ok(sig) = sigs.wait() {
            eprintln!("{sig:?}: stopping");
            handle.stop(Duration::from_secs(5));
        }
    });
    if let Err(e) = running.join() {
        eprintln!("tcp_chat: {e}");
        std::process::exit(1);
    }
}
