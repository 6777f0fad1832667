"""The /chat protocol (docs/protocol.md) with real clients."""
import asyncio
import json

import pytest
from websockets.asyncio.client import connect

T = 30  # generous per-receive timeout for a loaded CI machine


async def open_client(srv):
    # Unbounded receive queue: a test that is not reading must not stall the
    # close handshake behind flow control.
    return await connect(srv.url("/chat"), open_timeout=T, max_size=None, max_queue=None)


async def recv_json(ws, timeout=T):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, kind, timeout=T):
    """Next event of `kind`, skipping others."""
    while True:
        ev = await recv_json(ws, timeout)
        if ev["type"] == kind:
            return ev


async def join(ws, room, name):
    await ws.send(json.dumps({"type": "join", "room": room, "name": name}))
    while True:
        ev = await recv_type(ws, "join")
        if ev["name"] == name:
            return ev


def test_fifty_clients_one_room_same_order(ringcast):
    srv = ringcast("--shards", "2")
    n_clients, per_client = 50, 10

    async def run():
        clients = [await open_client(srv) for _ in range(n_clients)]
        try:
            for i, c in enumerate(clients):
                ev = await join(c, "big", f"user{i}")
                assert ev["members"] == i + 1
                assert ev["room"] == "big"
            # Everyone is in: each client's stream now holds every join after its own.
            for i, c in enumerate(clients):
                joins = [await recv_type(c, "join") for _ in range(n_clients - 1 - i)]
                assert [j["name"] for j in joins] == [f"user{k}" for k in range(i + 1, n_clients)]

            async def talk(i, c):
                for k in range(per_client):
                    await c.send(json.dumps({"type": "message", "room": "big", "text": f"{i}:{k}"}))

            async def listen(c):
                return [await recv_type(c, "message") for _ in range(n_clients * per_client)]

            listeners = [asyncio.create_task(listen(c)) for c in clients]
            await asyncio.gather(*(talk(i, c) for i, c in enumerate(clients)))
            seen = await asyncio.gather(*listeners)
        finally:
            await asyncio.gather(*(c.close() for c in clients))

        first = [(m["name"], m["text"]) for m in seen[0]]
        assert len(first) == n_clients * per_client
        for other in seen[1:]:
            assert [(m["name"], m["text"]) for m in other] == first
        # Each sender's messages arrive in the order they were sent.
        for i in range(n_clients):
            mine = [t for name, t in first if name == f"user{i}"]
            assert mine == [f"{i}:{k}" for k in range(per_client)]
        # One sequence number per room event, shared by all members.
        seqs = [m["seq"] for m in seen[0]]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert all(isinstance(m["ts"], int) for m in seen[0])

    asyncio.run(run())


def test_room_isolation(ringcast):
    srv = ringcast("--shards", "2")

    async def run():
        a, b, c = [await open_client(srv) for _ in range(3)]
        await join(a, "x", "ann")
        await join(b, "x", "bob")
        await recv_type(a, "join")  # bob's join, seen by ann
        await join(c, "y", "cy")
        await a.send(json.dumps({"type": "message", "room": "x", "text": "for x"}))
        await c.send(json.dumps({"type": "message", "room": "y", "text": "for y"}))
        for ws in (a, b):
            ev = await recv_type(ws, "message")
            assert (ev["room"], ev["name"], ev["text"]) == ("x", "ann", "for x")
        ev = await recv_type(c, "message")
        assert (ev["room"], ev["name"], ev["text"]) == ("y", "cy", "for y")
        # Markers prove nothing else was queued for anyone.
        await a.send(json.dumps({"type": "message", "room": "x", "text": "end"}))
        for ws in (a, b):
            assert (await recv_json(ws))["text"] == "end"
        await c.send(json.dumps({"type": "message", "room": "y", "text": "end"}))
        assert (await recv_json(c))["text"] == "end"
        for ws in (a, b, c):
            await ws.close()

    asyncio.run(run())


def test_one_connection_in_two_rooms_with_two_names(ringcast):
    srv = ringcast()

    async def run():
        a = await open_client(srv)
        await join(a, "r1", "alpha")
        await join(a, "r2", "beta")
        await a.send(json.dumps({"type": "message", "room": "r2", "text": "hi"}))
        ev = await recv_type(a, "message")
        assert (ev["room"], ev["name"]) == ("r2", "beta")
        await a.close()

    asyncio.run(run())


def test_leave_and_disconnect_announce(ringcast):
    srv = ringcast("--shards", "2")

    async def run():
        a, b = await open_client(srv), await open_client(srv)
        await join(a, "lobby", "ann")
        await join(b, "lobby", "bob")
        await b.send(json.dumps({"type": "leave", "room": "lobby"}))
        ev = await recv_type(a, "leave")
        assert ev == {**ev, "type": "leave", "room": "lobby", "name": "bob", "members": 1}
        # B is out: A's messages no longer reach it (checked with a marker in another room).
        await join(b, "side", "bob")
        await a.send(json.dumps({"type": "message", "room": "lobby", "text": "only ann"}))
        assert (await recv_type(a, "message"))["text"] == "only ann"
        await b.send(json.dumps({"type": "message", "room": "side", "text": "marker"}))
        assert (await recv_json(b))["text"] == "marker"

        await join(b, "lobby", "bob2")
        ev = await recv_type(a, "join")
        assert (ev["name"], ev["members"]) == ("bob2", 2)
        await b.close()
        ev = await recv_type(a, "leave")
        assert (ev["name"], ev["members"]) == ("bob2", 1)
        await a.close()

    asyncio.run(run())


ERRORS = [
    ("not json", "invalid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"room": "r"}', "type"),
    ('{"type": 5}', "type"),
    ('{"type": "dance"}', "unknown type"),
    ('{"type": "join", "name": "n"}', "room"),
    ('{"type": "join", "room": "r"}', "name"),
    ('{"type": "join", "room": 7, "name": "n"}', "room"),
    ('{"type": "join", "room": "", "name": "n"}', "room"),
    ('{"type": "message", "text": "t"}', "room"),
    ('{"type": "message", "room": "r"}', "text"),
    ('{"type": "message", "room": "never-joined", "text": "t"}', "not in room"),
    ('{"type": "leave", "room": "never-joined"}', "not in room"),
    (json.dumps({"type": "join", "room": "r", "name": "n" * 65}), "64"),
    (json.dumps({"type": "join", "room": "r" * 65, "name": "n"}), "64"),
]


def test_errors_go_to_the_sender_and_keep_the_connection(ringcast):
    srv = ringcast()

    async def run():
        a, b = await open_client(srv), await open_client(srv)
        await join(b, "r", "watcher")
        for text, needle in ERRORS:
            await a.send(text)
            ev = await recv_json(a)
            assert ev["type"] == "error", (text, ev)
            assert needle in ev["error"], (text, ev)
            assert set(ev) == {"type", "error"}
        await a.send(b"\x00binary")
        ev = await recv_json(a)
        assert ev["type"] == "error" and "binary" in ev["error"]
        # Text over the limit, in a joined room.
        await join(a, "r", "ann")
        await recv_type(b, "join")
        await a.send(json.dumps({"type": "message", "room": "r", "text": "t" * 4097}))
        ev = await recv_json(a)
        assert ev["type"] == "error" and "4096" in ev["error"]
        await a.send(json.dumps({"type": "join", "room": "r", "name": "again"}))
        ev = await recv_json(a)
        assert ev["type"] == "error" and "already" in ev["error"]
        # Still open and working; the watcher saw none of the errors.
        await a.send(json.dumps({"type": "message", "room": "r", "text": "t" * 4096}))
        assert (await recv_type(a, "message"))["text"] == "t" * 4096
        ev = await recv_json(b)
        assert ev["type"] == "message" and ev["name"] == "ann"
        await a.close()
        await b.close()

    asyncio.run(run())


def test_chat_limits_are_flags(ringcast):
    srv = ringcast("--chat-max-name", "3", "--chat-max-room", "4", "--chat-max-text", "5", "--chat-max-rooms", "2")

    async def run():
        a = await open_client(srv)
        for text, needle in [
            (json.dumps({"type": "join", "room": "r", "name": "abcd"}), "3"),
            (json.dumps({"type": "join", "room": "abcde", "name": "a"}), "4"),
        ]:
            await a.send(text)
            ev = await recv_json(a)
            assert ev["type"] == "error" and needle in ev["error"], ev
        await join(a, "r1", "a")
        await join(a, "r2", "a")
        await a.send(json.dumps({"type": "join", "room": "r3", "name": "a"}))
        ev = await recv_json(a)
        assert ev["type"] == "error" and "2" in ev["error"], ev
        await a.send(json.dumps({"type": "message", "room": "r1", "text": "123456"}))
        ev = await recv_json(a)
        assert ev["type"] == "error" and "5" in ev["error"], ev
        # Leaving frees a slot.
        await a.send(json.dumps({"type": "leave", "room": "r2"}))
        await join(a, "r3", "a")
        await a.close()

    asyncio.run(run())
