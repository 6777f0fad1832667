"""Cluster mode (docs/scaling.md): two real ringcast processes sharing one
real redis-server (started per test on a free port), real WebSocket clients.
Each test runs on both backends through the `ringcast` fixture.

Waits poll with generous deadlines; no timing is asserted.
"""
import asyncio
import json
import signal
import time
import urllib.request

from websockets.asyncio.client import connect

from test_chat import T, recv_json, recv_type


# ---- helpers -----------------------------------------------------------------


def node(ringcast, redis, *args):
    """One cluster node on its own port, two shards (so rooms have an owner
    shard that differs from some members' shard)."""
    return ringcast("--redis", redis.url(), "--shards", "2", *args)


async def client(srv, path="/chat"):
    return await connect(srv.url(path), open_timeout=T, max_size=None, max_queue=None)


async def send(ws, **obj):
    await ws.send(json.dumps(obj))


async def join(ws, room, name):
    """Joins and returns the joiner's own join event (its first from the room)."""
    await send(ws, type="join", room=room, name=name)
    ev = await recv_json(ws)
    assert (ev["type"], ev["name"]) == ("join", name), ev
    return ev


async def everyone_talks(clients, per_client, say, listen):
    """Every client sends `per_client` messages (`say(i, ws, k)`) while all
    of them listen (`listen(ws)` returns what one client received)."""
    listeners = [asyncio.create_task(listen(c)) for c in clients]

    async def talk(i, c):
        for k in range(per_client):
            await say(i, c, k)

    await asyncio.gather(*(talk(i, c) for i, c in enumerate(clients)))
    return await asyncio.gather(*listeners)


def assert_one_order(streams, per_client):
    """`streams`: per client, the (sender index, text) it received, in order.
    All the same, complete, and each sender's texts `i:0`, `i:1`, ... in order."""
    first = streams[0]
    assert len(first) == len(streams) * per_client
    for i, other in enumerate(streams[1:], 1):
        assert other == first, f"client {i} (node {i % 2}) saw another order"
    for i in range(len(streams)):
        mine = [text for sender, text in first if sender == i]
        assert mine == [f"{i}:{k}" for k in range(per_client)], f"client {i}'s messages out of order"


def metrics(srv):
    """Unlabelled samples of /metrics as {name: value}."""
    with urllib.request.urlopen(srv.http("/metrics"), timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_until(pred, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def backplane_up(srv):
    return metrics(srv).get("ringcast_backplane_up") == 1


def numsub(redis, channel):
    reply = redis.cmd("PUBSUB", "NUMSUB", channel)
    return int(reply[1])


# ---- order, counts, push -------------------------------------------------------


def test_one_room_across_two_nodes_same_order(ringcast, redis):
    nodes = [node(ringcast, redis), node(ringcast, redis)]
    n_clients, per_client = 8, 20

    async def run():
        clients = [await client(nodes[i % 2]) for i in range(n_clients)]
        try:
            for i, c in enumerate(clients):
                ev = await join(c, "big", f"user{i}")
                # The count is cluster-wide: members on both nodes.
                assert ev["members"] == i + 1, ev
                assert isinstance(ev["id"], str) and ev["id"].isdigit(), ev

            async def say(i, c, k):
                await send(c, type="message", room="big", text=f"{i}:{k}")

            async def listen(c):
                """Every event after the own join: later joins, then all messages."""
                events, messages = [], 0
                while messages < n_clients * per_client:
                    ev = await recv_json(c)
                    events.append(ev)
                    messages += ev["type"] == "message"
                return events

            return await everyone_talks(clients, per_client, say, listen)
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    seen = asyncio.run(run())
    streams = [[(int(e["name"][4:]), e["text"]) for e in evs if e["type"] == "message"] for evs in seen]
    assert_one_order(streams, per_client)
    for i, evs in enumerate(seen):
        joins = [e["name"] for e in evs if e["type"] == "join"]
        assert joins == [f"user{k}" for k in range(i + 1, n_clients)], (i, joins)
        # One sequence number per room event, the same on both nodes, no gap
        # from the client's own join (seq i + 1) on.
        assert [e["seq"] for e in evs] == list(range(i + 2, i + 2 + len(evs))), i
    seqs = [[e["seq"] for e in evs if e["type"] == "message"] for evs in seen]
    assert all(s == seqs[0] for s in seqs)


def test_member_counts_across_nodes(ringcast, redis):
    a_node, b_node = node(ringcast, redis), node(ringcast, redis)

    async def run():
        a, b, c = await client(a_node), await client(b_node), await client(a_node)
        assert (await join(a, "count", "ann"))["members"] == 1
        assert (await join(b, "count", "bob"))["members"] == 2
        assert (await recv_type(a, "join"))["members"] == 2
        assert (await join(c, "count", "cy"))["members"] == 3
        for ws in (a, b):
            ev = await recv_type(ws, "join")
            assert (ev["name"], ev["members"]) == ("cy", 3)
        # A leave on node B, seen on node A with the cluster-wide count.
        await send(b, type="leave", room="count")
        for ws in (a, c):
            ev = await recv_type(ws, "leave")
            assert (ev["name"], ev["members"]) == ("bob", 2), ev
        # A disconnect on node A, seen by the other member on node A... and
        # the next joiner on node B gets the count of both nodes.
        await c.close()
        ev = await recv_type(a, "leave")
        assert (ev["name"], ev["members"]) == ("cy", 1), ev
        d = await client(b_node)
        assert (await join(d, "count", "dee"))["members"] == 2
        assert (await recv_type(a, "join"))["members"] == 2
        for ws in (a, b, d):
            await ws.close()

    asyncio.run(run())
    # Each node keeps its own count in Redis; the room is gone when empty.
    wait_until(lambda: redis.cmd("EXISTS", "ringcast:members:chat:count") == 0, "the room to leave Redis")


def test_direct_message_to_a_connection_on_another_node(ringcast, redis):
    a_node, b_node = node(ringcast, redis), node(ringcast, redis)

    async def run():
        a, a2, b = await client(a_node), await client(a_node), await client(b_node)
        a_id = (await join(a, "dm", "ann"))["id"]
        b_id = (await join(b, "dm", "bob"))["id"]
        assert (await recv_type(a, "join"))["id"] == b_id
        assert a_id != b_id
        # Node A → node B, many in a row: all arrive, in order.
        for k in range(50):
            await send(a, type="direct", to=b_id, text=f"psst {k}")
        for k in range(50):
            ev = await recv_type(b, "direct")
            assert (ev["from"], ev["text"]) == (a_id, f"psst {k}"), ev
        # And back, to the id the message came from.
        await send(b, type="direct", to=a_id, text="hi ann")
        ev = await recv_type(a, "direct")
        assert (ev["from"], ev["text"]) == (b_id, "hi ann")
        # Same node still works without Redis in the path.
        a2_id = (await join(a2, "dm2", "al"))["id"]
        await send(a, type="direct", to=a2_id, text="local")
        assert (await recv_type(a2, "direct"))["text"] == "local"
        # A node nobody runs: the sender is told, the connection stays.
        nobody = str((1000 << 54) | (1 << 44) | 1)
        await send(a, type="direct", to=nobody, text="lost")
        ev = await recv_type(a, "error")
        assert "not delivered" in ev["error"] and "1000" in ev["error"], ev
        await send(a, type="direct", to="bob", text="x")
        assert "`to`" in (await recv_type(a, "error"))["error"]
        for ws in (a, a2, b):
            await ws.close()

    asyncio.run(run())


def test_broadcast_route_and_api_topics_span_nodes(ringcast, redis):
    a_node, b_node = node(ringcast, redis), node(ringcast, redis)
    n_clients, per_client = 6, 10

    async def run():
        clients = [await client((a_node, b_node)[i % 2], "/broadcast") for i in range(n_clients)]
        # Subscriptions reach Redis asynchronously: wait until a probe from
        # each node reaches everyone.
        for origin in clients[:2]:
            while True:
                await origin.send("probe")
                got = []
                for c in clients:
                    try:
                        while (m := await asyncio.wait_for(c.recv(), 1)) != "probe":
                            pass
                        got.append(True)
                    except asyncio.TimeoutError:
                        got.append(False)
                if all(got):
                    break
        # Drain stray probes: a marker from the first client ends them.
        await clients[0].send("marker")
        for c in clients:
            while await asyncio.wait_for(c.recv(), T) != "marker":
                pass

        async def say(i, c, k):
            await c.send(f"{i}:{k}")

        async def listen(c):
            return [await asyncio.wait_for(c.recv(), T) for _ in range(n_clients * per_client)]

        seen = await everyone_talks(clients, per_client, say, listen)
        await asyncio.gather(*(c.close() for c in clients))
        return seen

    seen = asyncio.run(run())
    assert_one_order([[(int(m.split(":")[0]), m) for m in msgs] for msgs in seen], per_client)


def test_node_subscribes_only_to_rooms_with_local_members(ringcast, redis):
    a_node, b_node = node(ringcast, redis), node(ringcast, redis)
    channel = "ringcast:topic:chat:sub"

    async def run():
        assert numsub(redis, channel) == 0
        a = await client(a_node)
        await join(a, "sub", "ann")
        assert numsub(redis, channel) == 1  # subscribed before the join event
        b = await client(b_node)
        await join(b, "sub", "bob")
        assert numsub(redis, channel) == 2
        a2 = await client(a_node)
        await join(a2, "sub", "al")
        assert numsub(redis, channel) == 2  # one subscription per node
        await send(a, type="leave", room="sub")
        await recv_type(a2, "leave")
        assert numsub(redis, channel) == 2  # node A still has a member
        await a2.close()
        await recv_type(b, "leave")
        wait_until(lambda: numsub(redis, channel) == 1, "node A to unsubscribe")
        await b.close()
        wait_until(lambda: numsub(redis, channel) == 0, "node B to unsubscribe")
        await a.close()

    asyncio.run(run())


# ---- failures ------------------------------------------------------------------


def test_killed_node_leaves_the_counts(ringcast, redis):
    ttl = 2.0  # heartbeat 0.4 s: a dead node is gone within ttl + heartbeat
    args = ("--redis-node-ttl", f"{ttl}s")
    a_node, b_node = node(ringcast, redis, *args), node(ringcast, redis, *args)

    async def run():
        a, b1, b2 = await client(a_node), await client(b_node), await client(b_node)
        await join(a, "crash", "ann")
        await join(b1, "crash", "b1")
        assert (await join(b2, "crash", "b2"))["members"] == 3
        for _ in range(2):
            await recv_type(a, "join")
        b_node.signal(signal.SIGKILL)
        killed = time.monotonic()
        # The surviving node's member hears the new count: a `members` event
        # published when node B's liveness key has expired and it is reaped.
        ev = await recv_type(a, "members", timeout=T)
        took = time.monotonic() - killed
        assert (ev["room"], ev["members"]) == ("crash", 1), ev
        print(f"node B's members left the count {took:.2f}s after SIGKILL (bound: {ttl * 1.2:.1f}s)")
        # The next join on the surviving node counts the survivors only.
        c = await client(a_node)
        assert (await join(c, "crash", "cy"))["members"] == 2
        assert (await recv_type(a, "join"))["members"] == 2
        await a.close()
        await c.close()
        for ws in (b1, b2):
            await ws.close()

    asyncio.run(run())
    assert b_node.wait(timeout=10) == -signal.SIGKILL


def test_redis_restart_mid_session(ringcast, redis):
    a_node, b_node = node(ringcast, redis), node(ringcast, redis)

    async def run():
        a1, a2, b1 = await client(a_node), await client(a_node), await client(b_node)
        await join(a1, "r", "a1")
        await join(a2, "r", "a2")
        assert (await join(b1, "r", "b1"))["members"] == 3

        redis.kill()
        wait_until(lambda: not backplane_up(a_node) and not backplane_up(b_node), "both nodes to see Redis down")

        # Local chat goes on: the sender's node delivers to its own members
        # and tells the sender the message stayed on this node.
        await send(a1, type="message", room="r", text="while down")
        for ws in (a1, a2):
            ev = await recv_type(ws, "message")
            assert (ev["name"], ev["text"]) == ("a1", "while down"), ev
        err = await recv_type(a1, "error")
        assert "this node only" in err["error"], err
        # A join while down is answered with the node-local count.
        a3 = await client(a_node)
        assert (await join(a3, "r", "a3"))["members"] == 3  # a1, a2, a3
        b2 = await client(b_node)
        assert (await join(b2, "r", "b2"))["members"] == 2  # b1, b2
        await send(b2, type="leave", room="r")
        await recv_type(b1, "leave")

        redis.restart()
        wait_until(lambda: backplane_up(a_node) and backplane_up(b_node), "both nodes to reconnect")
        for srv in (a_node, b_node):
            m = metrics(srv)
            assert m["ringcast_backplane_reconnects_total"] >= 1, m
            assert m["ringcast_backplane_errors_total"] >= 1, m
            log = srv.output()
            assert "lost Redis" in log and "reconnected to Redis" in log, log

        # Cross-node chat resumes; "while down" never reached node B.
        await send(a1, type="message", room="r", text="after")
        for ws in (a1, a2, a3, b1):
            ev = await recv_type(ws, "message")
            assert (ev["name"], ev["text"]) == ("a1", "after"), ev
        await send(b1, type="message", room="r", text="from b")
        for ws in (a1, a2, a3, b1):
            assert (await recv_type(ws, "message"))["text"] == "from b"
        # Counts were registered again by both nodes (Redis lost them all).
        b3 = await client(b_node)
        assert (await join(b3, "r", "b3"))["members"] == 5  # a1 a2 a3 b1 b3
        for ws in (a1, a2, a3, b1, b2, b3):
            await ws.close()

    asyncio.run(run())


def test_redis_unreachable_at_start_is_an_error(ringcast, redis):
    port = redis.port
    redis.kill()
    srv = ringcast("--redis", f"redis://127.0.0.1:{port}/0", wait=False)
    code = srv.wait(timeout=60)
    out = srv.output()
    assert code == 1, out
    assert "cannot connect to Redis" in out and "--redis-optional" in out, out


def test_redis_optional_starts_alone_and_joins_later(ringcast, redis, tmp_path):
    port = redis.port
    redis.kill()
    # Settings from the config file, like a deployment would.
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(f'redis = "redis://127.0.0.1:{port}/0"\nredis-optional = true\nredis_prefix = "t1"\n')
    a_node = ringcast("--config", str(cfg), "--shards", "2")
    assert metrics(a_node)["ringcast_backplane_up"] == 0

    async def run():
        a = await client(a_node)
        assert (await join(a, "late", "ann"))["members"] == 1  # single node meanwhile
        redis.start()
        wait_until(lambda: backplane_up(a_node), "node A to connect")
        b_node = ringcast("--config", str(cfg), "--shards", "2")
        b = await client(b_node)
        assert (await join(b, "late", "bob"))["members"] == 2
        await send(b, type="message", room="late", text="hello A")
        assert (await recv_type(a, "message"))["text"] == "hello A"
        await a.close()
        await b.close()

    asyncio.run(run())
    assert "t1:alive:" in " ".join(redis.cmd("KEYS", "t1:*"))
    assert "Redis unavailable at start" in a_node.output()


def test_clean_shutdown_leaves_the_cluster_at_once(ringcast, redis):
    a_node, b_node = node(ringcast, redis), node(ringcast, redis)

    async def run():
        a, b = await client(a_node), await client(b_node)
        await join(a, "bye", "ann")
        assert (await join(b, "bye", "bob"))["members"] == 2
        b_node.signal(signal.SIGTERM)
        # Node B closes its member (1001) and, once drained, removes its
        # counts from Redis: node A hears the new count at once, as bob's
        # leave or (when the drain outran the leave) as a count update.
        while True:
            ev = await recv_json(a)
            if ev["type"] in ("leave", "members"):
                break
        assert ev["members"] == 1 and ev.get("name", "bob") == "bob", ev
        await a.close()

    asyncio.run(run())
    assert b_node.wait(timeout=30) == 0, b_node.output()
    assert "left the cluster cleanly" in b_node.output()


def test_backplane_metrics(ringcast, redis):
    single = ringcast("--shards", "1")
    assert not any(k.startswith("ringcast_backplane") for k in metrics(single))
    a_node = node(ringcast, redis)
    before = metrics(a_node)
    for name in ("up", "published_total", "received_total", "errors_total", "reconnects_total"):
        assert f"ringcast_backplane_{name}" in before, name
    assert before["ringcast_backplane_up"] == 1

    async def run():
        a = await client(a_node)
        await join(a, "m", "ann")
        await send(a, type="message", room="m", text="x")
        await recv_type(a, "message")
        await a.close()

    asyncio.run(run())
    after = metrics(a_node)
    # The join and the message went out to Redis and came back.
    assert after["ringcast_backplane_published_total"] >= before["ringcast_backplane_published_total"] + 2
    assert after["ringcast_backplane_received_total"] >= before["ringcast_backplane_received_total"] + 2
