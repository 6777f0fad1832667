//! The library API against real sockets, on every backend this kernel allows:
//! handler panics close with 1011, and push / broadcast / publish / close /
//! per-connection data / ids work across shards.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::ws::{Client, TIMEOUT};
use ringcast::BackendChoice;
use ringcast::{ConnId, EventKind, Frame, Running, Server, Settings};

fn backends() -> Vec<BackendChoice> {
    let mut v = vec![BackendChoice::Epoll];
    match ringcast::io_uring_support() {
        Ok(()) => v.push(BackendChoice::IoUring),
        Err(why) => eprintln!("io_uring not tested here: {why}"),
    }
    v
}

fn settings(backend: BackendChoice, shards: usize) -> Settings {
    let mut s = Settings::defaults();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.backend = backend;
    s.shards = shards;
    s
}

fn addr(r: &Running) -> SocketAddr {
    r.local_addrs()[0]
}

#[test]
fn handler_panic_closes_that_connection_with_1011() {
    for backend in backends() {
        let closes = Arc::new(AtomicU32::new(0));
        let seen = closes.clone();
        let running = Server::new(settings(backend, 1))
            .on_message(|ctx, conn, msg| {
                if msg.as_text() == Some("boom") {
                    panic!("test panic in on_message");
                }
                ctx.push(conn, msg);
            })
            .on_close(move |_ctx, _conn, code, _reason| {
                if code == 1011 {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            })
            .start()
            .unwrap();
        let mut calm = Client::connect(addr(&running), "/");
        let mut victim = Client::connect(addr(&running), "/");
        victim.text("boom");
        assert_eq!(victim.recv_close_code(), 1011, "{backend}");
        victim.send(8, &1011u16.to_be_bytes());
        // The shard (the only one) still serves the other client.
        calm.text("still here");
        assert_eq!(calm.recv_text(), "still here");
        // And new ones.
        let mut fresh = Client::connect(addr(&running), "/");
        fresh.text("new");
        assert_eq!(fresh.recv_text(), "new");
        drop((calm, victim, fresh));
        let h = running.handle();
        h.stop(Duration::from_secs(5));
        running.join().unwrap();
        assert_eq!(closes.load(Ordering::SeqCst), 1, "{backend}");
    }
}

#[test]
fn panic_in_on_open_closes_1011() {
    for backend in backends() {
        let running = Server::new(settings(backend, 1))
            .on_open(|_ctx, _conn, req| {
                if req.path() == "/explode" {
                    panic!("test panic in on_open");
                }
            })
            .on_message(|ctx, conn, msg| {
                ctx.push(conn, msg);
            })
            .start()
            .unwrap();
        let mut c = Client::connect(addr(&running), "/explode");
        assert_eq!(c.recv_close_code(), 1011);
        let mut ok = Client::connect(addr(&running), "/fine");
        ok.text("x");
        assert_eq!(ok.recv_text(), "x");
        drop((c, ok));
        running.handle().stop(Duration::from_secs(5));
        running.join().unwrap();
    }
}

/// Per-connection data for the API test.
#[derive(Default)]
struct Counter {
    n: u32,
}

fn api_server(backend: BackendChoice) -> Running {
    Server::<Counter>::with_data(settings(backend, 2))
        .on_open(|ctx, conn, _req| {
            ctx.subscribe(conn, "news");
            ctx.push(conn, format!("id:{}", conn.as_u64()));
        })
        .on_message(|ctx, conn, msg| {
            let Some(t) = msg.as_text() else { return };
            if let Some(rest) = t.strip_prefix("to:") {
                let (id, body) = rest.split_once(':').unwrap();
                let to = ConnId::from_u64(id.parse().unwrap());
                ctx.push(to, body);
            } else if let Some(body) = t.strip_prefix("all:") {
                ctx.broadcast(body);
            } else if let Some(body) = t.strip_prefix("news:") {
                ctx.publish("news", body);
            } else if t == "count" {
                let n = ctx.connection_count();
                let local = ctx.local_connections().count();
                ctx.push(conn, format!("count:{n}:{local}"));
            } else if t == "bump" {
                let n = {
                    let d = ctx.data(conn).unwrap();
                    d.n += 1;
                    d.n
                };
                ctx.push(conn, format!("n:{n}"));
            } else if t == "leave" {
                ctx.unsubscribe(conn, "news");
                ctx.push(conn, "left");
            } else if t == "close" {
                ctx.close(conn, 4000, "bye");
            }
        })
        .start()
        .unwrap()
}

#[test]
fn push_broadcast_publish_close_and_data_across_shards() {
    for backend in backends() {
        let running = api_server(backend);
        // Open clients until both shards have one.
        let mut clients: Vec<(ConnId, Client)> = Vec::new();
        for _ in 0..64 {
            let mut c = Client::connect(addr(&running), "/");
            let id: u64 = c.recv_text().strip_prefix("id:").unwrap().parse().unwrap();
            clients.push((ConnId::from_u64(id), c));
            let shards: std::collections::HashSet<usize> =
                clients.iter().map(|(id, _)| id.shard()).collect();
            if shards.len() == 2 && clients.len() >= 3 {
                break;
            }
        }
        let a = clients
            .iter()
            .position(|(id, _)| id.shard() == 0)
            .expect("a client on shard 0");
        let b = clients
            .iter()
            .position(|(id, _)| id.shard() == 1)
            .expect("a client on shard 1");
        let ids: Vec<ConnId> = clients.iter().map(|(id, _)| *id).collect();
        assert!(ids.iter().all(|id| id.node() == 0));
        let unique: std::collections::HashSet<u64> = ids.iter().map(|id| id.as_u64()).collect();
        assert_eq!(unique.len(), ids.len(), "ids are unique");

        // push across shards, both ways
        let b_id = ids[b];
        clients[a].1.text(&format!("to:{}:hello b", b_id.as_u64()));
        assert_eq!(clients[b].1.recv_text(), "hello b");
        let a_id = ids[a];
        clients[b].1.text(&format!("to:{}:hello a", a_id.as_u64()));
        assert_eq!(clients[a].1.recv_text(), "hello a");

        // broadcast reaches everyone, sender included
        clients[a].1.text("all:everyone");
        for (_, c) in clients.iter_mut() {
            assert_eq!(c.recv_text(), "everyone");
        }

        // publish: one order for all subscribers
        for i in 0..20 {
            let k = if i % 2 == 0 { a } else { b };
            clients[k].1.text(&format!("news:{i}"));
        }
        let mut orders = Vec::new();
        for (_, c) in clients.iter_mut() {
            orders.push((0..20).map(|_| c.recv_text()).collect::<Vec<_>>());
        }
        assert!(orders.windows(2).all(|w| w[0] == w[1]), "{orders:?}");

        // unsubscribe: no more news for b
        clients[b].1.text("leave");
        assert_eq!(clients[b].1.recv_text(), "left");
        clients[a].1.text("news:after");
        for (i, (_, c)) in clients.iter_mut().enumerate() {
            if i != b {
                assert_eq!(c.recv_text(), "after");
            }
        }
        clients[b].1.text("bump");
        assert_eq!(clients[b].1.recv_text(), "n:1", "b got nothing else first");

        // per-connection data
        clients[a].1.text("bump");
        assert_eq!(clients[a].1.recv_text(), "n:1");
        clients[a].1.text("bump");
        assert_eq!(clients[a].1.recv_text(), "n:2");

        // counts
        clients[a].1.text("count");
        let count = clients[a].1.recv_text();
        let parts: Vec<&str> = count.split(':').collect();
        assert_eq!(parts[1].parse::<usize>().unwrap(), clients.len(), "{count}");
        assert!(parts[2].parse::<usize>().unwrap() >= 1);

        // the handle works from another thread
        let h = running.handle();
        assert_eq!(h.connection_count(), clients.len());
        h.broadcast("from outside");
        for (_, c) in clients.iter_mut() {
            assert_eq!(c.recv_text(), "from outside");
        }
        assert!(h.push(b_id, "pushed from outside"));
        assert_eq!(clients[b].1.recv_text(), "pushed from outside");

        // close with a code
        clients[a].1.text("close");
        assert_eq!(clients[a].1.recv_close_code(), 4000);

        // graceful stop: 1001 for the rest
        h.stop(Duration::from_secs(5));
        for (i, (_, c)) in clients.iter_mut().enumerate() {
            if i != a {
                assert_eq!(c.recv_close_code(), 1001);
            }
        }
        drop(clients);
        running.join().unwrap();
    }
}

/// A presence server: `/join/NAME` joins channel `presence-room` with NAME
/// as its payload; the renderer shows `kind:seq:members:payload`.
fn presence_server(settings: Settings) -> Running {
    const ROOM: &str = "presence-room";
    Server::new(settings)
        .on_channel_event(|ev| {
            let (kind, payload) = match ev.kind {
                EventKind::Join { payload, .. } => ("join", payload),
                EventKind::Leave { payload, .. } => ("leave", payload),
                EventKind::Message { payload, .. } => ("msg", payload),
                EventKind::Members => ("members", &b""[..]),
                _ => ("other", &b""[..]),
            };
            let p = String::from_utf8_lossy(payload);
            Some(Frame::text(&format!(
                "{kind}:{}:{}:{p}",
                ev.seq, ev.members
            )))
        })
        .on_open(|ctx, conn, req| {
            ctx.push(conn, format!("id:{}", conn.as_u64()));
            if req.path() == "/plain" {
                assert!(ctx.subscribe(conn, ROOM));
                return;
            }
            let name = req.path().strip_prefix("/join/").unwrap_or("?").to_string();
            assert!(ctx.join(conn, ROOM, name.clone().into_bytes()));
            assert!(!ctx.join(conn, ROOM, name.into_bytes()), "joined twice");
        })
        .on_message(|ctx, conn, msg| {
            let Some(t) = msg.as_text() else { return };
            if let Some(text) = t.strip_prefix("say:") {
                ctx.publish_event(ROOM, Some(conn), text.as_bytes().to_vec());
            } else if t == "leave" {
                assert!(ctx.unsubscribe(conn, ROOM));
            } else if t == "info" {
                let me = ctx.presence(conn, ROOM).map(|p| p.to_vec());
                let reply = match ctx.channel(ROOM) {
                    None => format!("info:none:{}", ctx.channels("presence-").len()),
                    Some(i) => {
                        let mut names: Vec<String> = ctx
                            .members(ROOM)
                            .into_iter()
                            .map(|(_, p)| String::from_utf8_lossy(&p).into_owned())
                            .collect();
                        names.sort();
                        let listed = ctx.channels("presence-").len();
                        let subs = ctx.subscriptions(conn).count();
                        format!(
                            "info:{}:{}:{}:{listed}:{subs}:{}",
                            i.subscriptions,
                            i.members,
                            names.join(","),
                            me.is_some()
                        )
                    }
                };
                ctx.push(conn, reply);
            }
        })
        .start()
        .unwrap()
}

#[test]
fn presence_channels_number_events_render_once_and_answer_queries() {
    for backend in backends() {
        let running = presence_server(settings(backend, 2));
        let join = |name: &str| {
            let mut c = Client::connect(addr(&running), &format!("/join/{name}"));
            let id: u64 = c.recv_text().strip_prefix("id:").unwrap().parse().unwrap();
            (ConnId::from_u64(id), c)
        };
        let (_, mut ann) = join("ann");
        // Its own join is the first event a joiner gets.
        assert_eq!(ann.recv_text(), "join:1:1:ann");
        let (_, mut bob) = join("bob");
        assert_eq!(bob.recv_text(), "join:2:2:bob");
        assert_eq!(ann.recv_text(), "join:2:2:bob");

        // App events: numbered in the same sequence, one order for all.
        for i in 0..10 {
            let c = if i % 2 == 0 { &mut ann } else { &mut bob };
            c.text(&format!("say:{i}"));
        }
        let a: Vec<String> = (0..10).map(|_| ann.recv_text()).collect();
        let b: Vec<String> = (0..10).map(|_| bob.recv_text()).collect();
        assert_eq!(a, b);
        let seqs: Vec<u64> = a
            .iter()
            .map(|e| e.split(':').nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(seqs, (3..13).collect::<Vec<u64>>());

        // Queries: counts, members with their payloads, prefix listing.
        ann.text("info");
        assert_eq!(ann.recv_text(), "info:2:2:ann,bob:1:1:true");

        // A leave is an event for the others; the leaver gets nothing more.
        bob.text("leave");
        assert_eq!(ann.recv_text(), "leave:13:1:bob");
        bob.text("info");
        assert_eq!(bob.recv_text(), "info:1:1:ann:1:0:false");
        ann.text("say:solo");
        assert_eq!(ann.recv_text(), "msg:14:1:solo");

        // From another thread.
        let h = running.handle();
        assert_eq!(h.channel("presence-room").map(|i| i.members), Some(1));
        assert_eq!(h.members("presence-room").len(), 1);
        h.publish_event("presence-room", b"outside".to_vec());
        assert_eq!(ann.recv_text(), "msg:15:1:outside");

        // Closing leaves: the channel is gone once empty.
        drop(ann);
        let deadline = std::time::Instant::now() + TIMEOUT;
        while h.channel("presence-room").is_some() {
            assert!(std::time::Instant::now() < deadline, "channel not emptied");
            std::thread::sleep(Duration::from_millis(10));
        }
        bob.text("info");
        assert_eq!(bob.recv_text(), "info:none:0");
        assert!(h.channels("").is_empty());
        h.stop(Duration::from_secs(5));
        drop(bob);
        running.join().unwrap();
    }
}

/// Cluster mode: two nodes on one real redis-server; presence queries from
/// the handle are cluster-wide, the per-node ones stay per node.
#[cfg(feature = "cluster")]
#[test]
fn cluster_wide_presence_queries_see_every_node() {
    let redis = common::redis::Redis::start();
    for backend in backends() {
        let node = |id: u16| {
            let mut s = settings(backend, 1);
            s.redis = redis.url();
            s.node_id = id;
            presence_server(s)
        };
        let (a, b) = (node(1), node(2));
        let connect = |r: &Running, name: &str| {
            let mut c = Client::connect(addr(r), &format!("/join/{name}"));
            let id: u64 = c.recv_text().strip_prefix("id:").unwrap().parse().unwrap();
            (ConnId::from_u64(id), c)
        };
        let (ann_id, mut ann) = connect(&a, "ann");
        assert_eq!(ann.recv_text(), "join:1:1:ann");
        let (bob_id, mut bob) = connect(&b, "bob");
        // Redis numbers the room's events and counts members on every node.
        assert_eq!(bob.recv_text(), "join:2:2:bob");
        assert_eq!(ann.recv_text(), "join:2:2:bob");
        for h in [a.handle(), b.handle()] {
            let mut m = h.cluster_members("presence-room").unwrap();
            m.sort();
            let want = vec![
                (ann_id, bytes::Bytes::from_static(b"ann")),
                (bob_id, bytes::Bytes::from_static(b"bob")),
            ];
            assert_eq!(m, want);
            assert_eq!(h.cluster_count("presence-room").unwrap(), 2);
            assert_eq!(
                h.cluster_channels("presence-").unwrap(),
                vec![("presence-room".to_string(), 2)]
            );
            assert!(h.cluster_channels("chat:").unwrap().is_empty());
            // This node's own view: one member each.
            assert_eq!(h.members("presence-room").len(), 1);
        }
        bob.text("leave");
        assert_eq!(ann.recv_text(), "leave:3:1:bob");
        let h = a.handle();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while h.cluster_count("presence-room").unwrap() != 1 {
            assert!(std::time::Instant::now() < deadline, "leave not counted");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(h.cluster_members("presence-room").unwrap().len(), 1);

        // A plain subscriber and a presence member on one node: whoever
        // leaves last, the node lets go of the channel in Redis.
        let mut plain = Client::connect(addr(&a), "/plain");
        plain.recv_text(); // its id
        ann.text("say:x");
        assert_eq!(ann.recv_text(), "msg:4:1:x");
        assert_eq!(plain.recv_text(), "msg:4:1:x");
        let subscribers =
            || match redis.cmd(&[b"PUBSUB", b"NUMSUB", b"ringcast:topic:presence-room"]) {
                common::redis::Resp::Array(v) => match v.get(1) {
                    Some(common::redis::Resp::Int(n)) => *n,
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            };
        assert_eq!(subscribers(), 1, "node A subscribed");
        drop(plain);
        ann.text("leave");
        let deadline = std::time::Instant::now() + TIMEOUT;
        while subscribers() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "node still subscribed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop((ann, bob));
        for r in [a, b] {
            r.handle().stop(Duration::from_secs(5));
            r.join().unwrap();
        }
    }
}
