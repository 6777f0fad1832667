//! Backplane component tests against a real `redis-server` (one per test, on a free port,
//! in a temporary directory). Each `Backplane` is one "node". Waits poll with generous
//! deadlines so a loaded 2-core machine does not make them flaky.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use common::redis::{free_port, Redis, Resp};
use ringcast::backplane::{
    Answer, Backplane, BackplaneConfig, BackplaneError, FailKind, FailedOp, Inbound, Present,
    Query, RoomCount, SendError,
};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- nodes and events

/// Collects a node's events.
#[derive(Clone, Default)]
struct Events(Arc<(Mutex<Vec<Inbound>>, Condvar)>);

impl Events {
    fn sink(&self) -> impl Fn(Inbound) + Send + 'static {
        let me = self.clone();
        move |ev| {
            me.0 .0.lock().unwrap().push(ev);
            me.0 .1.notify_all();
        }
    }

    /// Waits until `f` finds what it wants in the events so far.
    fn wait_for<T>(&self, what: &str, mut f: impl FnMut(&[Inbound]) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut evs = self.0 .0.lock().unwrap();
        loop {
            if let Some(v) = f(&evs) {
                return v;
            }
            let now = Instant::now();
            if now >= deadline {
                let tail: Vec<_> = evs.iter().rev().take(20).collect();
                panic!("timed out waiting for {what}; last events (newest first): {tail:#?}");
            }
            evs = self.0 .1.wait_timeout(evs, deadline - now).unwrap().0;
        }
    }

    fn all(&self) -> Vec<Inbound> {
        self.0 .0.lock().unwrap().clone()
    }

    fn messages(&self, topic: &str) -> Vec<Bytes> {
        msgs(&self.all(), topic)
    }
}

/// Payloads of the messages on `topic`, in arrival order.
fn msgs(evs: &[Inbound], topic: &str) -> Vec<Bytes> {
    evs.iter()
        .filter_map(|e| match e {
            Inbound::Message {
                topic: t, payload, ..
            } if t == topic => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

fn has(evs: &[Inbound], f: impl Fn(&Inbound) -> bool) -> Option<()> {
    evs.iter().any(f).then_some(())
}

/// Test timings: fast heartbeat/reconnect so the tests run in seconds.
fn config(url: &str) -> BackplaneConfig {
    let mut c = BackplaneConfig::new(url);
    c.prefix = "rctest".into();
    c.heartbeat = Duration::from_millis(250);
    c.node_ttl = Duration::from_millis(1500);
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(500);
    c
}

/// Backplane log lines go to the test's captured output (shown when a test fails).
fn init_log() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ringcast=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

fn node(cfg: BackplaneConfig) -> (Backplane, Events) {
    init_log();
    let ev = Events::default();
    let bp = Backplane::start(cfg, ev.sink()).expect("backplane start");
    (bp, ev)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn counter(bp: &Backplane, name: &str) -> u64 {
    let mut out = String::new();
    bp.stats().render(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing in:\n{out}"))
        .parse()
        .unwrap()
}

fn barrier(bp: &Backplane, ev: &Events, tag: u64) {
    bp.barrier(tag).unwrap();
    ev.wait_for("barrier", |e| {
        has(e, |x| matches!(x, Inbound::Barrier { tag: t } if *t == tag))
    });
}

/// A cluster join/leave of `conn` in `room` showing `members`.
fn member_event(evs: &[Inbound], room: &str, conn: u64, joined: bool, members: u64) -> Option<()> {
    has(evs, |x| {
        matches!(x, Inbound::Member { room: r, conn: c, joined: j, members: m, cluster: true, .. }
            if r == room && *c == conn && *j == joined && *m == members)
    })
}

/// The room sequence number of `conn`'s cluster join/leave event.
fn member_seq(evs: &[Inbound], room: &str, conn: u64, joined: bool) -> Option<u64> {
    evs.iter().find_map(|x| match x {
        Inbound::Member {
            room: r,
            conn: c,
            joined: j,
            seq,
            cluster: true,
            ..
        } if r == room && *c == conn && *j == joined => *seq,
        _ => None,
    })
}

/// A count update in `room` to `members`, later in the room's order than `after`.
fn count_event(evs: &[Inbound], room: &str, members: u64, after: u64) -> Option<()> {
    has(
        evs,
        |x| matches!(x, Inbound::Count { room: r, members: m, seq } if r == room && *m == members && *seq > after),
    )
}

/// Asks `q` with `tag` (unique per node) and waits for the answer.
fn ask(bp: &Backplane, ev: &Events, tag: u64, q: Query) -> Answer {
    bp.query(tag, q).unwrap();
    ev.wait_for("answer", |e| {
        e.iter().find_map(|x| match x {
            Inbound::Answer { tag: t, answer } if *t == tag => Some(answer.clone()),
            _ => None,
        })
    })
}

/// The (node, conn, payload) of a members answer.
fn present(a: &Answer) -> Vec<(u16, u64, String)> {
    match a {
        Answer::Members { members, .. } => members
            .iter()
            .map(
                |Present {
                     node,
                     conn,
                     payload,
                 }| {
                    (*node, *conn, String::from_utf8(payload.to_vec()).unwrap())
                },
            )
            .collect(),
        other => panic!("not a members answer: {other:?}"),
    }
}

fn members_of(room: &str) -> Query {
    Query::Members { room: room.into() }
}

fn count_of(room: &str) -> Query {
    Query::Count { room: room.into() }
}

fn rooms(prefix: &str) -> Query {
    Query::Rooms {
        prefix: prefix.into(),
    }
}

/// `(room, members)` of a rooms answer.
fn room_counts(a: &Answer) -> Vec<(String, u64)> {
    match a {
        Answer::Rooms { rooms, .. } => rooms
            .iter()
            .map(|RoomCount { room, members, .. }| (room.clone(), *members))
            .collect(),
        other => panic!("not a rooms answer: {other:?}"),
    }
}

fn presence_key(node: u16, room: &str) -> Vec<u8> {
    format!("rctest:presence:{node}:{room}").into_bytes()
}

// ---------------------------------------------------------------- tests

#[test]
fn every_node_sees_one_order_under_concurrent_publishers() {
    let redis = Redis::start();
    let (a, ea) = node(config(&redis.url()));
    let (bn, eb) = node(config(&redis.url()));
    assert_ne!(a.node_id(), bn.node_id());
    a.join("chat", 1, b("alice")).unwrap();
    bn.join("chat", 2, b("bob")).unwrap();
    for e in [&ea, &eb] {
        e.wait_for("second join", |ev| {
            has(ev, |x| {
                matches!(
                    x,
                    Inbound::Member {
                        joined: true,
                        members: 2,
                        ..
                    }
                )
            })
        });
    }

    const PER: usize = 500;
    let senders: Vec<(Backplane, u64)> = vec![
        (a.clone(), 1),
        (a.clone(), 2),
        (bn.clone(), 3),
        (bn.clone(), 4),
    ];
    let threads: Vec<_> = senders
        .into_iter()
        .map(|(bp, id)| {
            thread::spawn(move || {
                for i in 0..PER {
                    let msg = b(&format!("{id}:{i}"));
                    // Room messages (numbered by Redis) and plain ones share the order.
                    let send = || {
                        if id % 2 == 0 {
                            bp.publish_room("chat", msg.clone(), Some(id))
                        } else {
                            bp.publish("chat", msg.clone(), Some(id))
                        }
                    };
                    while let Err(e) = send() {
                        assert_eq!(e, SendError::Full);
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = 4 * PER;
    for e in [&ea, &eb] {
        e.wait_for("all messages", |ev| {
            let n = ev
                .iter()
                .filter(|x| matches!(x, Inbound::Message { topic, .. } if topic == "chat"))
                .count();
            (n >= total).then_some(())
        });
    }
    let (ma, mb) = (ea.messages("chat"), eb.messages("chat"));
    assert_eq!(ma.len(), total, "node A got duplicates");
    assert_eq!(ma, mb, "the two nodes saw different orders");
    // Each sender's messages in send order, none missing.
    let mut next: HashMap<String, usize> = HashMap::new();
    for m in &ma {
        let s = std::str::from_utf8(m).unwrap();
        let (id, i) = s.split_once(':').unwrap();
        let want = next.entry(id.to_string()).or_insert(0);
        assert_eq!(
            i.parse::<usize>().unwrap(),
            *want,
            "sender {id} out of order"
        );
        *want += 1;
    }
    assert!(next.values().all(|&n| n == PER));
    // Room sequence numbers: identical on both nodes, and consecutive after the joins
    // (join 1, join 2, then one per room message).
    let seqs = |e: &Events| -> Vec<(Bytes, u64)> {
        e.all()
            .into_iter()
            .filter_map(|x| match x {
                Inbound::Message {
                    seq: Some(s),
                    payload,
                    ..
                } => Some((payload, s)),
                _ => None,
            })
            .collect()
    };
    let (sa, sb) = (seqs(&ea), seqs(&eb));
    assert_eq!(sa, sb);
    assert_eq!(sa.len(), 2 * PER);
    assert!(
        sa.iter().zip(3..).all(|((_, s), want)| *s == want),
        "room seq not consecutive"
    );
    let last_join_seq = ea.all().iter().find_map(|x| match x {
        Inbound::Member {
            members: 2, seq, ..
        } => *seq,
        _ => None,
    });
    assert_eq!(last_join_seq, Some(2));
    // Origins come back with the messages.
    assert!(ea.all().iter().any(|x| matches!(
        x,
        Inbound::Message {
            origin: Some(3),
            ..
        }
    )));
    assert!(counter(&a, "ringcast_backplane_published_total") >= 2 * PER as u64);
    assert!(counter(&bn, "ringcast_backplane_received_total") >= total as u64);
    assert_eq!(counter(&a, "ringcast_backplane_errors_total"), 0);
}

#[test]
fn unsubscribe_stops_delivery_and_subscriptions_are_refcounted() {
    let redis = Redis::start();
    let (a, ea) = node(config(&redis.url()));
    let (bn, _eb) = node(config(&redis.url()));
    // Two references on "news", one on "marker".
    a.subscribe("news").unwrap();
    a.subscribe("news").unwrap();
    a.subscribe("marker").unwrap();
    barrier(&a, &ea, 1);

    bn.publish("news", b("1"), None).unwrap();
    ea.wait_for("news 1", |e| (msgs(e, "news").len() == 1).then_some(()));

    // One reference left: still subscribed.
    a.unsubscribe("news");
    barrier(&a, &ea, 2);
    bn.publish("news", b("2"), None).unwrap();
    ea.wait_for("news 2", |e| (msgs(e, "news").len() == 2).then_some(()));

    // Last reference gone: nothing more arrives, even from this node itself.
    a.unsubscribe("news");
    barrier(&a, &ea, 3);
    bn.publish("news", b("3"), None).unwrap();
    a.publish("news", b("4"), None).unwrap();
    bn.publish("marker", b("end"), None).unwrap();
    ea.wait_for("marker", |e| (!msgs(e, "marker").is_empty()).then_some(()));
    // Redis delivers B's "news 3" before B's "marker" if A were still subscribed.
    assert_eq!(ea.messages("news"), vec![b("1"), b("2")]);
    // An unbalanced unsubscribe is an error, not a crash.
    let before = counter(&a, "ringcast_backplane_errors_total");
    a.unsubscribe("news");
    barrier(&a, &ea, 4);
    assert_eq!(counter(&a, "ringcast_backplane_errors_total"), before + 1);
}

#[test]
fn push_reaches_a_connection_on_another_node() {
    let redis = Redis::start();
    let (a, ea) = node(config(&redis.url()));
    let (bn, eb) = node(config(&redis.url()));

    a.push(bn.node_id(), 77, b("hello b"), Some(5)).unwrap();
    eb.wait_for("push", |e| {
        has(e, |x| {
            matches!(x, Inbound::Push { conn: 77, origin: Some(5), payload } if payload == "hello b")
        })
    });
    // To itself: looped back without Redis.
    a.push(a.node_id(), 78, b("self"), None).unwrap();
    ea.wait_for("loopback push", |e| {
        has(e, |x| matches!(x, Inbound::Push { conn: 78, .. }))
    });
    // To a node nobody runs: a Failed event for the origin, counted.
    let ghost = a.node_id().max(bn.node_id()) + 100;
    a.push(ghost, 1, b("lost"), Some(6)).unwrap();
    ea.wait_for("push failure", |e| {
        has(e, |x| {
            matches!(x, Inbound::Failed { op: FailedOp::Push { node, conn: 1 }, kind: FailKind::NoListener,
                origin: Some(6), payload, .. }
                if *node == ghost && payload == "lost")
        })
    });
    assert_eq!(counter(&a, "ringcast_backplane_errors_total"), 1);
    assert!(eb
        .all()
        .iter()
        .all(|x| !matches!(x, Inbound::Failed { .. })));
}

#[test]
fn member_counts_are_cluster_wide_and_dead_nodes_drop_out() {
    let redis = Redis::start();
    let cfg = config(&redis.url());
    let (a, ea) = node(cfg.clone());
    let (bn, eb) = node(cfg.clone());
    let (c, ec) = node(cfg.clone());

    a.join("room", 11, b("a1")).unwrap();
    ea.wait_for("a1 joined", |e| member_event(e, "room", 11, true, 1));
    bn.join("room", 21, b("b1")).unwrap();
    bn.join("room", 22, b("b2")).unwrap();
    for e in [&ea, &eb] {
        e.wait_for("b2 joined", |e| member_event(e, "room", 22, true, 3));
    }
    // The join event carries the joining conn, the payload and the room's sequence number.
    assert!(ea.all().iter().any(|x| matches!(x,
        Inbound::Member { conn: 22, joined: true, members: 3, seq: Some(3), payload, .. } if payload == "b2")));
    c.join("room", 31, b("c1")).unwrap();
    for e in [&ea, &eb, &ec] {
        e.wait_for("c1 joined", |e| member_event(e, "room", 31, true, 4));
    }
    bn.leave("room", 21, b("b1"));
    for e in [&ea, &eb, &ec] {
        e.wait_for("b1 left", |e| member_event(e, "room", 21, false, 3));
    }

    // C dies without a word: its member drops out within node_ttl + heartbeat.
    let c_id = c.node_id();
    let died = Instant::now();
    drop(c);
    for e in [&ea, &eb] {
        e.wait_for("C's member reaped", |e| count_event(e, "room", 2, 0));
    }
    let took = died.elapsed();
    assert!(
        took <= cfg.node_ttl + cfg.heartbeat * 4 + Duration::from_secs(3),
        "dead node took {took:?} to drop out"
    );
    assert!(took >= cfg.node_ttl / 2, "reaped too early ({took:?})");
    // The next join counts only live nodes.
    a.join("room", 12, b("a2")).unwrap();
    let a2_seq = eb.wait_for("a2 joined", |e| {
        member_event(e, "room", 12, true, 3)?;
        member_seq(e, "room", 12, true)
    });

    // A clean shutdown removes B's members at once.
    assert!(bn.shutdown(Duration::from_secs(10)));
    ea.wait_for("B left cleanly", |e| count_event(e, "room", 2, a2_seq));
    assert_eq!(bn.publish("room", b("x"), None), Err(SendError::Closed));
    assert!(!bn.is_up());

    // Heartbeats (PING on the subscription connection included) kept A up throughout.
    assert!(ea.all().iter().all(|x| !matches!(x, Inbound::Down { .. })));
    assert_eq!(counter(&a, "ringcast_backplane_reconnects_total"), 0);

    // Redis data: only A's field remains, B's and C's liveness keys are gone.
    let hash = redis.cmd(&[b"HGETALL", b"rctest:members:room"]);
    assert_eq!(
        hash,
        Resp::Array(vec![
            Resp::Bulk(Some(a.node_id().to_string().into_bytes())),
            Resp::Bulk(Some(b"2".to_vec())),
        ])
    );
    for n in [bn.node_id(), c_id] {
        let key = format!("rctest:alive:{n}");
        assert_eq!(redis.cmd(&[b"EXISTS", key.as_bytes()]), Resp::Int(0));
    }
}

#[test]
fn recovers_from_a_redis_restart() {
    let mut redis = Redis::start();
    let (a, ea) = node(config(&redis.url()));
    let (bn, eb) = node(config(&redis.url()));
    a.join("room", 1, b("a1")).unwrap();
    bn.join("room", 2, b("b1")).unwrap();
    for e in [&ea, &eb] {
        e.wait_for("both joined", |e| {
            has(e, |x| {
                matches!(
                    x,
                    Inbound::Member {
                        joined: true,
                        members: 2,
                        cluster: true,
                        ..
                    }
                )
            })
        });
    }
    a.publish("room", b("before"), Some(1)).unwrap();
    // Both nodes, the sender included (it delivers on the way back from
    // Redis): killing Redis before A has read it would lose it for A.
    for e in [&ea, &eb] {
        e.wait_for("before", |e| {
            (msgs(e, "room") == vec![b("before")]).then_some(())
        });
    }

    redis.kill();
    for e in [&ea, &eb] {
        e.wait_for("down", |e| has(e, |x| matches!(x, Inbound::Down { .. })));
    }
    assert!(!a.is_up() && !bn.is_up());
    assert_eq!(counter(&a, "ringcast_backplane_up"), 0);

    // While down: publishes fail back to their origin, counted; joins show locally.
    let errors = counter(&a, "ringcast_backplane_errors_total");
    a.publish_room("room", b("while down"), Some(9)).unwrap();
    ea.wait_for("failed publish", |e| {
        has(e, |x| matches!(x, Inbound::Failed { op: FailedOp::Publish { .. }, kind: FailKind::Down, origin: Some(9),
            topic: Some(t), payload, .. }
            if t == "room" && payload == "while down"))
    });
    // Pushes to this node's own connections do not need Redis.
    a.push(a.node_id(), 1, b("local push"), None).unwrap();
    ea.wait_for("local push while down", |e| {
        has(
            e,
            |x| matches!(x, Inbound::Push { payload, .. } if payload == "local push"),
        )
    });
    assert!(counter(&a, "ringcast_backplane_errors_total") > errors);
    a.join("room", 3, b("a2")).unwrap();
    ea.wait_for("local join", |e| {
        has(e, |x| {
            matches!(
                x,
                Inbound::Member {
                    conn: 3,
                    members: 2,
                    cluster: false,
                    ..
                }
            )
        })
    });

    // Stay down long enough for several failed reconnect attempts (backoff 50..500 ms).
    thread::sleep(Duration::from_millis(1500));
    assert!(!a.is_up());
    redis.restart();
    for e in [&ea, &eb] {
        e.wait_for("up again", |e| {
            has(e, |x| matches!(x, Inbound::Up { .. })).filter(|_| {
                e.iter().rposition(|x| matches!(x, Inbound::Up { .. }))
                    > e.iter().rposition(|x| matches!(x, Inbound::Down { .. }))
            })
        });
        // Both re-registered: A has 2 members, B has 1.
        e.wait_for("counts re-registered", |e| count_event(e, "room", 3, 0));
    }
    assert!(a.is_up() && bn.is_up());
    assert!(counter(&a, "ringcast_backplane_reconnects_total") >= 1);
    assert!(counter(&bn, "ringcast_backplane_reconnects_total") >= 1);

    // Resubscribed: cross-node delivery works again, both ways.
    a.publish("room", b("after a"), Some(1)).unwrap();
    bn.publish("room", b("after b"), Some(2)).unwrap();
    for e in [&ea, &eb] {
        e.wait_for("after", |e| {
            let m = msgs(e, "room");
            (m.contains(&b("after a")) && m.contains(&b("after b"))).then_some(())
        });
    }
    assert_eq!(ea.messages("room"), eb.messages("room"));
    bn.push(a.node_id(), 1, b("push after"), None).unwrap();
    ea.wait_for("push after restart", |e| {
        has(
            e,
            |x| matches!(x, Inbound::Push { payload, .. } if payload == "push after"),
        )
    });
    // A join now counts every member of both nodes.
    bn.join("room", 4, b("b2")).unwrap();
    ea.wait_for("join after restart", |e| {
        member_event(e, "room", 4, true, 4)
    });
}

#[test]
fn unreachable_redis_at_start() {
    let port = free_port(); // nothing listens here
    let url = format!("redis://127.0.0.1:{port}/0");

    let t = Instant::now();
    let err = Backplane::start(config(&url), |_| {}).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "start took {:?}",
        t.elapsed()
    );
    assert!(matches!(err, BackplaneError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("--redis-optional"),
        "{msg}"
    );

    for url in ["http://nope", "not a url", "rediss://127.0.0.1:1/0"] {
        let bad = Backplane::start(config(url), |_| {}).unwrap_err();
        assert!(matches!(bad, BackplaneError::Config(_)), "{url}: {bad:?}");
    }

    // Optional: starts disconnected with the given id and connects once Redis is there.
    let mut cfg = config(&url);
    cfg.optional = true;
    cfg.node_id = Some(42);
    let (a, ea) = node(cfg);
    assert_eq!(a.node_id(), 42);
    assert!(!a.is_up());
    a.publish("t", b("early"), Some(7)).unwrap();
    ea.wait_for("failed early publish", |e| {
        has(e, |x| {
            matches!(
                x,
                Inbound::Failed {
                    origin: Some(7),
                    ..
                }
            )
        })
    });
    a.subscribe("t").unwrap();

    let _redis = Redis::start_on(port);
    ea.wait_for("up", |e| has(e, |x| matches!(x, Inbound::Up { node: 42 })));
    assert!(a.is_up());
    a.publish("t", b("late"), Some(7)).unwrap();
    ea.wait_for("late message", |e| {
        (msgs(e, "t") == vec![b("late")]).then_some(())
    });
    // The first connection is not a reconnect.
    assert_eq!(counter(&a, "ringcast_backplane_reconnects_total"), 0);
}

#[test]
fn fixed_node_id_held_by_a_live_node_is_refused() {
    let redis = Redis::start();
    let mut cfg = config(&redis.url());
    cfg.node_id = Some(7);
    let (_a, _ea) = node(cfg.clone());
    let err = Backplane::start(cfg, |_| {}).unwrap_err();
    assert_eq!(err, BackplaneError::NodeIdInUse { node: 7 });
    assert!(err.to_string().contains("node id 7"));
}

#[test]
fn full_queue_is_refused_and_counted() {
    // No Redis at all: every publish fails, and the callback blocks on the first one so
    // the backplane thread stops draining its queue.
    let mut cfg = config(&format!("redis://127.0.0.1:{}/0", free_port()));
    cfg.optional = true;
    cfg.queue_capacity = 8;
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let entered = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let (g, en, f) = (gate.clone(), entered.clone(), failed.clone());
    let a = Backplane::start(cfg, move |ev| {
        if matches!(ev, Inbound::Failed { .. }) {
            f.fetch_add(1, Ordering::SeqCst);
            en.store(true, Ordering::SeqCst);
            let mut open = g.0.lock().unwrap();
            while !*open {
                open = g.1.wait(open).unwrap();
            }
        }
    })
    .unwrap();
    a.publish("t", b("first"), Some(1)).unwrap();
    let deadline = Instant::now() + WAIT;
    while !entered.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "first publish never failed");
        thread::sleep(Duration::from_millis(5));
    }
    for i in 0..8 {
        a.publish("t", b("queued"), Some(i)).unwrap();
    }
    assert_eq!(
        a.publish("t", b("one too many"), Some(99)),
        Err(SendError::Full)
    );
    assert_eq!(a.join("room", 1, b("x")), Err(SendError::Full));
    // Releases are never refused.
    a.unsubscribe("t");
    // The first failed publish + 2 refusals.
    assert_eq!(counter(&a, "ringcast_backplane_errors_total"), 3);

    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    let deadline = Instant::now() + WAIT;
    while failed.load(Ordering::SeqCst) < 9 {
        assert!(
            Instant::now() < deadline,
            "queued publishes were not failed back"
        );
        thread::sleep(Duration::from_millis(5));
    }
    // 2 refusals + 9 failed publishes + 1 unbalanced unsubscribe.
    let deadline = Instant::now() + WAIT;
    while counter(&a, "ringcast_backplane_errors_total") < 12 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    a.publish("t", b("room again"), None).unwrap();
}

#[test]
fn malformed_messages_are_counted_and_dropped() {
    let redis = Redis::start();
    let (a, ea) = node(config(&redis.url()));
    a.subscribe("t").unwrap();
    barrier(&a, &ea, 1);
    redis.cmd(&[b"PUBLISH", b"rctest:topic:t", b"garbage"]);
    redis.cmd(&[b"PUBLISH", b"rctest:topic:t", b"rc1 p 1 -\nx"]);
    let node_channel = format!("rctest:node:{}", a.node_id());
    redis.cmd(&[b"PUBLISH", node_channel.as_bytes(), b"rc1 m - -\nx"]);
    redis.cmd(&[b"PUBLISH", b"rctest:topic:t", b"rc1 m 5 -\nfine"]);
    ea.wait_for("valid message", |e| {
        (!msgs(e, "t").is_empty()).then_some(())
    });
    assert_eq!(ea.messages("t"), vec![b("fine")]);
    assert_eq!(counter(&a, "ringcast_backplane_errors_total"), 3);
    assert!(a.is_up());
}

#[test]
fn round_trip_latency_report() {
    // Not a benchmark: prints what routing through Redis costs on this machine.
    let redis = Redis::start();
    let (tx, rx) = std::sync::mpsc::channel();
    let a = Backplane::start(config(&redis.url()), move |ev| {
        if let Inbound::Message { .. } | Inbound::Barrier { .. } = ev {
            let _ = tx.send(Instant::now());
        }
    })
    .unwrap();
    a.subscribe("lat").unwrap();
    a.barrier(0).unwrap();
    rx.recv_timeout(WAIT).unwrap();
    let mut us: Vec<u128> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            a.publish("lat", b("x"), None).unwrap();
            (rx.recv_timeout(WAIT).unwrap() - t).as_micros()
        })
        .collect();
    us.sort_unstable();
    eprintln!(
        "publish -> Redis -> deliver round trip over {} runs: p50 {} us, p99 {} us, max {} us",
        us.len(),
        us[us.len() / 2],
        us[us.len() * 99 / 100],
        us[us.len() - 1]
    );
}

#[test]
fn recovers_when_redis_drops_the_subscription_connection() {
    // What Redis does to a subscriber that falls behind (client-output-buffer-limit).
    let redis = Redis::start();
    let (a, ea) = node(config(&redis.url()));
    let (bn, eb) = node(config(&redis.url()));
    a.subscribe("t").unwrap();
    barrier(&a, &ea, 1);
    let killed = redis.cmd(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
    assert!(matches!(killed, Resp::Int(n) if n >= 2), "{killed:?}");
    for e in [&ea, &eb] {
        e.wait_for("down", |e| has(e, |x| matches!(x, Inbound::Down { .. })));
        e.wait_for("up again", |e| {
            (e.iter().filter(|x| matches!(x, Inbound::Up { .. })).count() == 2).then_some(())
        });
    }
    bn.publish("t", b("after"), None).unwrap();
    ea.wait_for("delivery resumed", |e| {
        (msgs(e, "t") == vec![b("after")]).then_some(())
    });
    assert_eq!(counter(&a, "ringcast_backplane_reconnects_total"), 1);
}

#[test]
fn presence_queries_agree_across_nodes_and_follow_joins_and_leaves() {
    let redis = Redis::start();
    let (a, ea) = node(config(&redis.url()));
    let (bn, eb) = node(config(&redis.url()));
    let (na, nb) = (a.node_id(), bn.node_id());
    a.join("chat:lobby", 1, b("alice")).unwrap();
    a.join("chat:lobby", 2, b("bob")).unwrap();
    // Asked right after the joins, without waiting: answered after them.
    let first = ask(&a, &ea, 1, members_of("chat:lobby"));
    assert_eq!(
        present(&first),
        [(na, 1, "alice".into()), (na, 2, "bob".into())]
    );
    bn.join("chat:lobby", 3, b("carol")).unwrap();
    bn.join("chat:x", 4, b("dave")).unwrap();
    bn.join("other", 5, b("eve")).unwrap();
    ea.wait_for("carol joined", |e| {
        member_event(e, "chat:lobby", 3, true, 3)
    });

    // Both nodes see the same members, counts and rooms.
    let want = vec![
        (na, 1, "alice".to_string()),
        (na, 2, "bob".to_string()),
        (nb, 3, "carol".to_string()),
    ];
    let (ma, mb) = (
        ask(&a, &ea, 2, members_of("chat:lobby")),
        ask(&bn, &eb, 2, members_of("chat:lobby")),
    );
    assert_eq!(present(&ma), want);
    assert_eq!(ma, mb);
    // The answer sits right after carol's join in the room's order (seq 3).
    let carol_seq = member_seq(&ea.all(), "chat:lobby", 3, true).unwrap();
    assert!(matches!(ma, Answer::Members { seq, .. } if seq == carol_seq));
    for (bp, ev) in [(&a, &ea), (&bn, &eb)] {
        assert_eq!(
            ask(bp, ev, 3, count_of("chat:lobby")),
            Answer::Count {
                room: "chat:lobby".into(),
                seq: carol_seq,
                members: 3
            }
        );
        let chat = ask(bp, ev, 4, rooms("chat:"));
        assert_eq!(
            room_counts(&chat),
            [("chat:lobby".to_string(), 3), ("chat:x".to_string(), 1)]
        );
        let all = ask(bp, ev, 5, rooms(""));
        assert_eq!(room_counts(&all).len(), 3);
        assert!(room_counts(&ask(bp, ev, 6, rooms("nope"))).is_empty());
    }

    // A leave removes that member only; a second join of a conn keeps one entry.
    a.leave("chat:lobby", 2, b("bob"));
    assert_eq!(
        present(&ask(&a, &ea, 7, members_of("chat:lobby"))),
        [(na, 1, "alice".into()), (nb, 3, "carol".into())]
    );
    eb.wait_for("bob left", |e| member_event(e, "chat:lobby", 2, false, 2));
    assert_eq!(
        present(&ask(&bn, &eb, 7, members_of("chat:lobby"))),
        [(na, 1, "alice".into()), (nb, 3, "carol".into())]
    );
    bn.join("chat:lobby", 3, b("carol again")).unwrap();
    bn.leave("chat:lobby", 3, b("carol"));
    assert_eq!(
        present(&ask(&bn, &eb, 8, members_of("chat:lobby"))),
        [(na, 1, "alice".into()), (nb, 3, "carol again".into())]
    );

    // A room nobody is in.
    assert_eq!(
        ask(&a, &ea, 9, count_of("empty")),
        Answer::Count {
            room: "empty".into(),
            seq: 0,
            members: 0
        }
    );
    assert!(present(&ask(&a, &ea, 10, members_of("empty"))).is_empty());
    // The last member's leave removes the node's presence hash with its count.
    bn.leave("chat:x", 4, b("dave"));
    barrier(&bn, &eb, 1);
    let key = presence_key(nb, "chat:x");
    assert_eq!(redis.cmd(&[b"EXISTS", &key]), Resp::Int(0));
    assert_eq!(
        room_counts(&ask(&a, &ea, 11, rooms("chat:"))),
        [("chat:lobby".to_string(), 2)]
    );
    assert_eq!(counter(&a, "ringcast_backplane_errors_total"), 0);
}

#[test]
fn dead_and_retired_nodes_drop_out_of_queries() {
    let redis = Redis::start();
    let cfg = config(&redis.url());
    let (a, ea) = node(cfg.clone());
    let (bn, _eb) = node(cfg.clone());
    let (c, _ec) = node(cfg.clone());
    let (na, nb, nc) = (a.node_id(), bn.node_id(), c.node_id());
    a.join("room", 11, b("a1")).unwrap();
    bn.join("room", 21, b("b1")).unwrap();
    c.join("room", 31, b("c1")).unwrap();
    c.join("c-only", 32, b("c2")).unwrap();
    // The three joins race: whichever came last shows 3.
    ea.wait_for("all three joined", |e| {
        has(e, |x| {
            matches!(x, Inbound::Member { room, joined: true, members: 3, .. } if room == "room")
        })
    });
    assert_eq!(present(&ask(&a, &ea, 1, members_of("room"))).len(), 3);

    // C dies without a word: once its liveness key is gone it is out of every answer,
    // and the reaper removes its payloads from Redis.
    drop(c);
    ea.wait_for("C reaped", |e| count_event(e, "room", 2, 0));
    assert_eq!(
        present(&ask(&a, &ea, 2, members_of("room"))),
        [(na, 11, "a1".into()), (nb, 21, "b1".into())]
    );
    assert_eq!(
        room_counts(&ask(&a, &ea, 3, rooms(""))),
        [("room".to_string(), 2)]
    );
    for room in ["room", "c-only"] {
        let key = presence_key(nc, room);
        assert_eq!(redis.cmd(&[b"EXISTS", &key]), Resp::Int(0), "{room}");
    }

    // A clean shutdown removes B's payloads at once.
    assert!(bn.shutdown(Duration::from_secs(10)));
    assert_eq!(
        redis.cmd(&[b"EXISTS", &presence_key(nb, "room")]),
        Resp::Int(0)
    );
    assert_eq!(
        present(&ask(&a, &ea, 4, members_of("room"))),
        [(na, 11, "a1".into())]
    );
    assert!(matches!(
        ask(&a, &ea, 5, count_of("room")),
        Answer::Count { members: 1, .. }
    ));
    assert_eq!(bn.query(1, count_of("room")), Err(SendError::Closed));
}

#[test]
fn reconnect_re_registers_payloads_and_queries_fail_while_down() {
    let mut redis = Redis::start();
    let (a, ea) = node(config(&redis.url()));
    let (bn, eb) = node(config(&redis.url()));
    let (na, nb) = (a.node_id(), bn.node_id());
    a.join("room", 1, b("a1")).unwrap();
    ea.wait_for("a1 joined", |e| member_event(e, "room", 1, true, 1));
    bn.join("room", 2, b("b1")).unwrap();
    eb.wait_for("b1 joined", |e| member_event(e, "room", 2, true, 2));

    redis.kill();
    ea.wait_for("down", |e| has(e, |x| matches!(x, Inbound::Down { .. })));
    let errors = counter(&a, "ringcast_backplane_errors_total");
    match ask(&a, &ea, 1, members_of("room")) {
        Answer::Failed {
            query,
            kind: FailKind::Down,
            reason,
        } => {
            assert_eq!(query, members_of("room"));
            assert!(reason.contains("down"), "{reason}");
        }
        other => panic!("answered while down: {other:?}"),
    }
    assert!(counter(&a, "ringcast_backplane_errors_total") > errors);
    // Joins and leaves while down are remembered and registered on reconnect.
    a.join("room", 3, b("a2")).unwrap();
    a.leave("room", 1, b("a1"));

    redis.restart(); // empty data set: everything comes from the nodes' resync
    for e in [&ea, &eb] {
        e.wait_for("counts re-registered", |e| count_event(e, "room", 2, 0));
    }
    let want = vec![(na, 3, "a2".to_string()), (nb, 2, "b1".to_string())];
    assert_eq!(present(&ask(&a, &ea, 2, members_of("room"))), want);
    assert_eq!(present(&ask(&bn, &eb, 2, members_of("room"))), want);
}
