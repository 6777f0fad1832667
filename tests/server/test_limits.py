"""Every limit: connection counts, Origin, header size, message size, slow
consumers."""
import asyncio
import threading
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from wsutil import RawWS, frame, http_request, upgrade_request

TEXT, BINARY = 0x1, 0x2


def refused_status(srv, path="/echo", **kw):
    """Status of a refused upgrade, or None if it was accepted (then closed)."""

    async def run():
        try:
            async with connect(srv.url(path), open_timeout=20, **kw):
                return None
        except InvalidStatus as e:
            return e.response.status_code

    return asyncio.run(run())


def eventually(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_max_connections_503(ringcast):
    srv = ringcast("--max-connections", "3", "--shards", "2")
    held = [RawWS(srv.port, "/echo") for _ in range(3)]
    try:
        status, _, body = http_request(srv.port, upgrade_request(srv.port, "/echo"))
        assert status == 503
        assert b"too many connections" in body
        # Plain HTTP is not a WebSocket: still served.
        assert http_request(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
        held.pop().close()
        # Room again once the server has seen the close.
        assert eventually(lambda: refused_status(srv) is None)
    finally:
        for ws in held:
            ws.close()


def test_max_connections_per_ip_503(ringcast):
    srv = ringcast("--max-connections-per-ip", "2", "--shards", "2")
    held = [RawWS(srv.port, "/echo") for _ in range(2)]
    try:
        status, _, body = http_request(srv.port, upgrade_request(srv.port, "/echo"))
        assert status == 503
        assert b"address" in body
        # Another client address has its own count (any 127/8 address is loopback).
        other = RawWS(srv.port, "/echo", source="127.0.0.2")
        other.close()
        held.pop().close()
        assert eventually(lambda: refused_status(srv) is None)
    finally:
        for ws in held:
            ws.close()


def test_origin_allow_list(ringcast):
    srv = ringcast("--allowed-origins", "https://good.example, https://also.example:8443")
    assert refused_status(srv, origin="https://good.example") is None
    assert refused_status(srv, origin="https://also.example:8443") is None
    assert refused_status(srv, origin="https://evil.example") == 403
    assert refused_status(srv, origin="https://good.example.evil") == 403
    # No Origin header (not a browser): allowed.
    status, _, _ = http_request(srv.port, upgrade_request(srv.port, "/echo"))
    assert status == 101


def test_any_origin_by_default(ringcast):
    srv = ringcast()
    assert refused_status(srv, origin="https://anything.example") is None


def test_header_over_limit_431(ringcast):
    srv = ringcast()
    filler = {"X-Filler": "a" * 9000}
    status, _, _ = http_request(srv.port, upgrade_request(srv.port, "/echo", filler))
    assert status == 431
    srv2 = ringcast("--max-header-size", "16KiB")
    status, _, _ = http_request(srv2.port, upgrade_request(srv2.port, "/echo", filler))
    assert status == 101


def test_message_size_flag_1009(ringcast):
    srv = ringcast("--max-message-size", "64KiB")
    ws = RawWS(srv.port, "/echo")
    try:
        ws.send(frame(BINARY, b"x" * 65536))
        assert ws.recv_data() == (BINARY, b"x" * 65536)
        ws.send(frame(BINARY, b"x" * 65537))
        code, _ = ws.recv_close()
        assert code == 1009
    finally:
        ws.close()


def flood(port, count, size, window=8):
    """A /broadcast client that sends `count` messages of `size` bytes and reads
    everything it gets back (it is a recipient too); returns when all of its
    own messages came back, i.e. the server has processed the whole flood.
    At most `window` messages are in flight, so the sender itself never
    becomes a slow consumer."""
    sender = RawWS(port, "/broadcast")
    received = 0

    def drain():
        nonlocal received
        while received < count:
            op, payload = sender.recv_data()
            assert op != 0x8, f"the fast sender itself was closed: {payload!r}"
            if len(payload) == size:
                received += 1

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    chunk = frame(BINARY, b"f" * size)
    deadline = time.monotonic() + 120
    for i in range(count):
        while i - received >= window and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.0005)
        sender.send(chunk)
    t.join(timeout=120)
    assert received == count, f"sender got {received} of {count} back"
    return sender


def test_slow_consumer_closed_1008(ringcast):
    srv = ringcast("--max-backpressure", "256KiB", "--close-timeout", "60s", "--shards", "2")
    # A tiny receive buffer and no reading: its queue on the server grows.
    slow = RawWS(srv.port, "/broadcast", rcvbuf=4096)
    sender = None
    try:
        time.sleep(0.3)  # its subscription is active before the flood
        sender = flood(srv.port, count=400, size=16 * 1024)
        # Now read: some of the flood, then the close frame.
        data_frames = 0
        while True:
            fin, op, payload = slow.recv_frame()
            if op == 0x8:
                code = int.from_bytes(payload[:2], "big")
                break
            if op == BINARY:
                data_frames += 1
        assert code == 1008
        assert payload[2:] == b"slow consumer"
        assert data_frames < 400
        # The fast client was never affected.
        sender.send(frame(TEXT, b"ok"))
        assert sender.recv_data() == (TEXT, b"ok")
    finally:
        slow.close()
        if sender:
            sender.close()


def test_slow_consumer_drop_keeps_the_connection(ringcast):
    srv = ringcast("--max-backpressure", "256KiB", "--slow-consumer", "drop", "--shards", "2")
    slow = RawWS(srv.port, "/broadcast", rcvbuf=4096)
    sender = None
    try:
        time.sleep(0.3)
        sender = flood(srv.port, count=400, size=16 * 1024)
        # Read what was kept for the slow client. Once it has caught up, its
        # own message comes back (while it is still behind, the drop policy
        # may drop that too, so it is sent again after each quiet spell).
        kept = 0
        slow.sock.settimeout(2.0)
        while True:
            try:
                fin, op, payload = slow.recv_frame()
            except TimeoutError:
                slow.send(frame(TEXT, b"marker"))
                continue
            assert op != 0x8, "the drop policy must not close the connection"
            if op == TEXT and payload == b"marker":
                break
            if op == BINARY:
                kept += 1
        assert 0 < kept < 400
        # Metrics count the drops.
        from wsutil import http_get
        _, _, body = http_get(srv.port, "/metrics")
        line = [l for l in body.decode().splitlines() if l.startswith("ringcast_slow_consumer_total")]
        assert line and float(line[0].split()[-1]) >= 1
    finally:
        slow.close()
        if sender:
            sender.close()
