//! The `ringcast` binary's application: its routes on one port.
//!
//! | path         | plain GET                 | WebSocket                              |
//! |--------------|---------------------------|----------------------------------------|
//! | `/`          | the chat page             | 404                                    |
//! | `/healthz`   | 200 `ok` / 503 `draining` | 404                                    |
//! | `/metrics`   | Prometheus text           | 404                                    |
//! | `/chat`      | 426                       | chat protocol (docs/protocol.md)       |
//! | `/echo`      | 426                       | every message back, same opcode        |
//! | `/broadcast` | 426                       | every message to every `/broadcast` client |
//!
//! Everything else is 404. It is written against the public API only, like
//! any user application.

use crate::api::{Message, Response, Server};
use crate::config::Settings;
use crate::{chat, metrics, page};

/// Which WebSocket route a connection took (its per-connection data).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Route {
    /// `/echo`
    #[default]
    Echo,
    /// `/broadcast`
    Broadcast,
    /// `/chat`
    Chat,
}

/// The topic every `/broadcast` connection subscribes to.
const BROADCAST_TOPIC: &str = "route:broadcast";

fn route_of(path: &str) -> Option<Route> {
    match path {
        "/echo" => Some(Route::Echo),
        "/broadcast" => Some(Route::Broadcast),
        "/chat" => Some(Route::Chat),
        _ => None,
    }
}

/// The binary's server: every route above, configured by `settings`.
pub fn app(settings: Settings) -> Server<Route> {
    let chat_limits = chat::Limits::from_settings(&settings);
    Server::<Route>::with_data(settings)
        .on_upgrade(|req| match route_of(req.path()) {
            Some(_) => Ok(()),
            None => Err(Response::not_found()),
        })
        .on_request(|ctx, req| {
            if req.method() != "GET" && req.method() != "HEAD" {
                return Response::text(405, "method not allowed\n");
            }
            match req.path() {
                "/" => Response::new(200, page::CONTENT_TYPE, page::INDEX_HTML.as_bytes()),
                "/healthz" if ctx.is_draining() => Response::text(503, "draining"),
                "/healthz" => Response::text(200, "ok"),
                "/metrics" => Response::new(
                    200,
                    metrics::CONTENT_TYPE,
                    ctx.render_metrics().into_bytes(),
                ),
                p if route_of(p).is_some() => Response::upgrade_required(),
                _ => Response::not_found(),
            }
        })
        .on_open(|ctx, conn, req| {
            let route = route_of(req.path()).unwrap_or_default();
            if let Some(r) = ctx.data(conn) {
                *r = route;
            }
            if route == Route::Broadcast {
                ctx.subscribe(conn, BROADCAST_TOPIC);
            }
        })
        .on_message(
            move |ctx, conn, msg: Message<'_>| match ctx.data(conn).copied() {
                Some(Route::Echo) => {
                    ctx.push(conn, msg);
                }
                Some(Route::Broadcast) => ctx.publish(BROADCAST_TOPIC, msg),
                Some(Route::Chat) => chat::on_message(ctx, conn, msg, &chat_limits),
                None => {}
            },
        )
        .on_channel_event(chat::render_event)
        .on_notice(chat::on_notice)
}
