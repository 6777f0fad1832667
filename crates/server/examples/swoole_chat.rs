//! The Swoole WebSocket chat, on ringcast:
//! <https://wiki.swoole.com/en/#/websocket_server>
//!
//!     cargo run --example swoole_chat -- --listen 127.0.0.1:9502
//!
//! Takes the same flags as the `ringcast` binary.
use ringcast::{Server, Settings};

fn main() -> std::io::Result<()> {
    let settings = Settings::from_args_or_exit();
    ringcast::logging::init(&settings.log_level, settings.log_format);

    Server::new(settings)
        // $server->on('open', ...): greet the new client.
        .on_open(|ctx, conn, _request| {
            ctx.push(conn, format!("hello, welcome {conn}"));
        })
        // $server->on('message', ...): push every message to every client.
        // One frame is encoded and shared by all recipients on all shards.
        .on_message(|ctx, _conn, msg| ctx.broadcast(msg))
        // $server->on('close', ...)
        .on_close(|_ctx, conn, code, _reason| {
            println!("client-{conn} is closed ({code})");
        })
        .run()
}
