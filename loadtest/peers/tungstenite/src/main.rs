//! `peer-tungstenite`: a tokio-tungstenite server used as a comparison peer
//! by `make bench`. Written the way the tokio-tungstenite examples do it:
//! `accept_hdr_async` + `StreamExt::split`, echo via `forward`, and for
//! `/broadcast` a shared registry of per-connection unbounded mpsc senders
//! (the "peer map" of the crate's own chat example).
//!
//! Routes: `/echo` (every text/binary message is sent back) and `/broadcast`
//! (every message goes to every connection on the route, sender included).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use futures_util::{future, SinkExt, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(about = "tokio-tungstenite peer server: /echo and /broadcast")]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:9601")]
    listen: SocketAddr,
    /// Largest accepted message, in bytes (same limit as the other servers).
    #[arg(long, default_value_t = 1 << 20)]
    max_message_size: usize,
    /// Worker threads; 0 means "CPUs available to this process" (1 under `taskset -c 0`).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
}

/// One sender per `/broadcast` connection, keyed by a connection id.
type PeerMap = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let workers = match args.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(serve(args, workers))
}

async fn serve(args: Args, workers: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!(
        "peer-tungstenite listening on {} ({workers} worker threads)",
        listener.local_addr()?
    );
    // Library defaults for the buffers (128 KiB read buffer, 128 KiB write
    // buffer target); only the message size limit is aligned with ringcast.
    let config = WebSocketConfig::default()
        .max_message_size(Some(args.max_message_size))
        .max_frame_size(Some(args.max_message_size));
    let peers = PeerMap::default();
    let next_id = AtomicU64::new(0);
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(handle(stream, config, peers.clone(), id));
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

async fn handle(stream: TcpStream, config: WebSocketConfig, peers: PeerMap, id: u64) {
    // Same as the other two servers: no Nagle delay on small frames.
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    // The callback's signature is tungstenite's; its error type is large by design.
    #[allow(clippy::result_large_err)]
    let route = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().path().to_owned();
        match path.as_str() {
            "/echo" | "/broadcast" => Ok(resp),
            _ => {
                let mut not_found = ErrorResponse::new(Some("not found".into()));
                *not_found.status_mut() = 404.try_into().expect("valid status");
                Err(not_found)
            }
        }
    };
    let ws =
        match tokio_tungstenite::accept_hdr_async_with_config(stream, route, Some(config)).await {
            Ok(ws) => ws,
            Err(_) => return,
        };
    let (sink, stream) = ws.split();
    if path == "/echo" {
        // `forward` feeds the sink while input is ready and flushes when the
        // stream would block, so pipelined messages share one write.
        let _ = stream
            .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
            .forward(sink)
            .await;
        return;
    }
    broadcast(sink, stream, peers, id).await;
}

async fn broadcast<Si, St>(mut sink: Si, stream: St, peers: PeerMap, id: u64)
where
    Si: futures_util::Sink<Message> + Unpin,
    St: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    peers.lock().expect("peer map").insert(id, tx);

    let fan_out = stream.try_for_each(|msg| {
        if msg.is_text() || msg.is_binary() {
            let peers = peers.lock().expect("peer map");
            for peer in peers.values() {
                // A closed receiver just means that peer is going away.
                let _ = peer.send(msg.clone());
            }
        }
        future::ok(())
    });
    let deliver = async {
        while let Some(msg) = rx.recv().await {
            // Queue everything already waiting, then flush once.
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(more).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = fan_out => {}
        _ = deliver => {}
    }
    peers.lock().expect("peer map").remove(&id);
}
