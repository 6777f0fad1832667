//! `peer-fastws`: a fastwebsockets server used as a comparison peer by
//! `make bench`, written the way the fastwebsockets docs and examples show:
//! hyper 1 `http1` connection with upgrades, `fastwebsockets::upgrade::upgrade`,
//! a `FragmentCollector` read/write loop for `/echo`, and for `/broadcast`
//! a `tokio::sync::broadcast` channel with the socket split into a reader
//! and a writer half (`WebSocket::split(tokio::io::split)`).
//!
//! Routes: `/echo`, `/broadcast` (every message to every connection on the
//! route, sender included) and `GET /healthz`.

use std::net::SocketAddr;

use clap::Parser;
use fastwebsockets::upgrade::{self, UpgradeFut};
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError,
};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

#[derive(Parser, Debug)]
#[command(about = "fastwebsockets peer server: /echo and /broadcast")]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:9602")]
    listen: SocketAddr,
    /// Largest accepted message, in bytes (same limit as the other servers).
    #[arg(long, default_value_t = 1 << 20)]
    max_message_size: usize,
    /// Messages a slow `/broadcast` subscriber may fall behind before it
    /// starts losing the oldest ones (`tokio::sync::broadcast` capacity).
    #[arg(long, default_value_t = 4096)]
    broadcast_capacity: usize,
    /// Worker threads; 0 means "CPUs available to this process" (1 under `taskset -c 0`).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
}

/// What `/broadcast` fans out: the opcode (text or binary) and the payload.
type Hub = broadcast::Sender<(OpCode, Bytes)>;

#[derive(Clone)]
struct Shared {
    hub: Hub,
    max_message_size: usize,
}

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
        "peer-fastws listening on {} ({workers} worker threads)",
        listener.local_addr()?
    );
    let (hub, _) = broadcast::channel(args.broadcast_capacity);
    let shared = Shared {
        hub,
        max_message_size: args.max_message_size,
    };
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // Same as the other two servers: no Nagle delay on small frames.
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let service = service_fn(move |req| route(req, shared.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades()
                        .await;
                });
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut resp = Response::new(Empty::new());
    *resp.status_mut() = code;
    resp
}

async fn route(
    mut req: Request<Incoming>,
    shared: Shared,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return Ok(status(StatusCode::OK));
    }
    if !matches!(path.as_str(), "/echo" | "/broadcast") {
        return Ok(status(StatusCode::NOT_FOUND));
    }
    if !upgrade::is_upgrade_request(&req) {
        return Ok(status(StatusCode::BAD_REQUEST));
    }
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        // `unconstrained` as in the crate's echo example: no cooperative
        // budget yields in the middle of a hot connection.
        let _ = if path == "/echo" {
            tokio::task::unconstrained(echo(fut, shared.max_message_size)).await
        } else {
            tokio::task::unconstrained(fan_out(fut, shared)).await
        };
    });
    Ok(response)
}

async fn echo(fut: UpgradeFut, max_message_size: usize) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(max_message_size);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn fan_out(fut: UpgradeFut, shared: Shared) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(shared.max_message_size);
    let (rx, mut tx) = ws.split(tokio::io::split);
    let mut rx = FragmentCollectorRead::new(rx);
    let mut inbox = shared.hub.subscribe();
    // Pongs and close replies the reader owes go through the writer.
    let (owed_tx, mut owed_rx) = mpsc::channel::<Frame<'static>>(8);
    let hub = shared.hub;

    let reader = async move {
        loop {
            let frame = rx
                .read_frame(&mut |owed: Frame<'_>| {
                    let owned = Frame::new(
                        true,
                        owed.opcode,
                        None,
                        Payload::Owned(owed.payload.to_vec()),
                    );
                    let owed_tx = owed_tx.clone();
                    async move { owed_tx.send(owned).await.map_err(|_| "writer gone") }
                })
                .await?;
            match frame.opcode {
                OpCode::Close => return Ok::<(), WebSocketError>(()),
                OpCode::Text | OpCode::Binary => {
                    // No receivers only happens while everyone is leaving.
                    let _ = hub.send((frame.opcode, Bytes::copy_from_slice(&frame.payload)));
                }
                _ => {}
            }
        }
    };
    let writer = async move {
        loop {
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Ok((opcode, payload)) => {
                        let frame = Frame::new(true, opcode, None, Payload::Borrowed(&payload));
                        tx.write_frame(frame).await?;
                    }
                    // This subscriber fell more than `broadcast_capacity`
                    // messages behind: the oldest were dropped (the load
                    // generator reports them as lost).
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                owed = owed_rx.recv() => match owed {
                    Some(frame) => {
                        let closing = frame.opcode == OpCode::Close;
                        tx.write_frame(frame).await?;
                        if closing {
                            return Ok(());
                        }
                    }
                    None => return Ok::<(), WebSocketError>(()),
                },
            }
        }
    };
    // The reader ending drops its side of `owed`, which ends the writer after
    // it has sent any close reply still owed.
    let (read, write) = tokio::join!(reader, writer);
    read.and(write)
}
