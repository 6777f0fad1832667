"""/metrics and /healthz against a real ringcast process (both backends).

A known workload (echo and chat connections, bad handshakes, a reset) must
move the Prometheus counters by exactly the expected amounts. Every scrape is
itself a TCP connection the server counts, so the test measures deltas from a
quiet baseline and accounts for its own scrapes.
"""
import base64
import os
import re
import signal
import socket
import struct
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from websockets.sync.client import connect

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.eE+]+|NaN|[+-]Inf)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# ---- helpers -----------------------------------------------------------------


def http_get(port, path, timeout=10):
    """Plain HTTP GET; returns (status, headers, body)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


class Scrape:
    """One parsed /metrics response."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.types = {}
        helps = set()
        for line in text.splitlines():
            if line.startswith("# HELP "):
                helps.add(line.split()[2])
            elif line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                assert name not in self.types, f"duplicate TYPE for {name}"
                self.types[name] = kind
            elif line.startswith("#") or not line:
                continue
            else:
                m = SAMPLE_RE.match(line)
                assert m, f"malformed sample line {line!r}"
                name, labels, value = m.group(1), m.group(2) or "", m.group(3)
                family = name
                assert family in self.types, f"sample before its # TYPE: {line!r}"
                assert family in helps, f"sample without # HELP: {line!r}"
                key = (name, frozenset(LABEL_RE.findall(labels)))
                assert key not in self.samples, f"duplicate series {line!r}"
                self.samples[key] = float(value)

    def get(self, name, **labels):
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name):
        """{labels-dict-as-tuple: value} for every series of a family."""
        return {tuple(sorted(k[1])): v for k, v in self.samples.items() if k[0] == name}

    def total(self, name):
        return sum(self.series(name).values())

    def by_label(self, name, label):
        return {dict(k)[label]: v for k, v in self.series(name).items()}


class Scraper:
    """Scrapes /metrics and counts its own scrapes (each is one TCP connection)."""

    def __init__(self, port):
        self.port = port
        self.count = 0

    def scrape(self):
        status, headers, body = http_get(self.port, "/metrics")
        self.count += 1
        assert status == 200, (status, body)
        ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        assert ctype.startswith("text/plain"), ctype
        assert "version=0.0.4" in ctype, ctype
        return Scrape(body)

    def until(self, pred, what, timeout=30.0):
        """Scrape until pred(scrape) holds. Closes are counted when the server
        sees them, a moment after the client is done, so exact values are
        awaited rather than assumed."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.scrape()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {what}:\n" + s.text)
            time.sleep(0.05)

    def settled(self, timeout=30.0):
        """A quiet scrape after which nothing but the scraper's own requests
        happens: the fixture's readiness probe may sit in another shard's accept
        queue for a while on a loaded machine and be counted late."""
        deadline = time.monotonic() + timeout
        prev = self.quiet(timeout)
        while True:
            n = self.count
            cur = self.quiet(timeout)
            if cur.total("ringcast_connections_accepted_total") - prev.total(
                "ringcast_connections_accepted_total"
            ) == self.count - n:
                return cur
            if time.monotonic() > deadline:
                raise AssertionError("server never settled:\n" + cur.text)
            prev = cur

    def quiet(self, timeout=30.0):
        """Scrape until the only open connection is the scrape itself, i.e.
        everything earlier has been counted as closed, and return that scrape."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.scrape()
            if s.total("ringcast_connections") == 1:
                return s
            if time.monotonic() > deadline:
                raise AssertionError("connections never settled:\n" + s.text)
            time.sleep(0.05)


def ws(url):
    """A websockets client without compression or keepalive pings, so payload
    bytes and message counts are exactly what the test sends."""
    return connect(url, open_timeout=15, close_timeout=15, ping_interval=None, compression=None, max_size=None)


def raw_request(port, request: bytes, timeout=10.0):
    """Sends raw bytes, returns the HTTP status code of the reply (and closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    assert m, f"no HTTP status line in {data[:200]!r}"
    return int(m.group(1))


def upgrade_request(path="/echo", version="13", extra=""):
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode()


def reset_after_handshake(port):
    """Completes a WebSocket handshake, then aborts the TCP connection (RST)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(upgrade_request("/echo"))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "closed during handshake"
        data += chunk
    assert data.startswith(b"HTTP/1.1 101"), data
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def start_without_probe(ringcast, *args):
    """Starts ringcast and waits for sd_notify READY=1 instead of probing the
    port: a probe connection may be accepted (and counted) late on a loaded
    machine, which would spoil exact counts."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        name = f"ringcast-metrics-{uuid.uuid4().hex}"
        notify.bind("\0" + name)
        notify.settimeout(30)
        srv = ringcast(*args, env={"NOTIFY_SOCKET": "@" + name}, wait=False)
        while True:
            try:
                msg = notify.recv(4096).decode()
            except socket.timeout:
                raise AssertionError("no READY=1 within 30 s:\n" + srv.output())
            if "READY=1" in msg.split("\n"):
                return srv


def delta(after, before, name, **labels):
    return after.get(name, **labels) - before.get(name, **labels)


# ---- tests -------------------------------------------------------------------


def test_metrics_format_and_documented_names(ringcast, backend):
    srv = ringcast("--shards", "2")
    s = Scraper(srv.port).quiet()
    required = {
        "ringcast_connections": "gauge",
        "ringcast_connections_accepted_total": "counter",
        "ringcast_connections_closed_total": "counter",
        "ringcast_messages_received_total": "counter",
        "ringcast_messages_sent_total": "counter",
        "ringcast_bytes_received_total": "counter",
        "ringcast_bytes_sent_total": "counter",
        "ringcast_slow_consumer_total": "counter",
        "ringcast_rooms": "gauge",
        "ringcast_handshake_failures_total": "counter",
        "ringcast_backend_info": "gauge",
    }
    for name, kind in required.items():
        assert s.types.get(name) == kind, f"{name}: {s.types.get(name)}"
    # The gauge is per shard.
    assert set(s.by_label("ringcast_connections", "shard")) == {"0", "1"}
    # Exactly one backend, the one asked for.
    expected = {"io-uring": "io_uring", "epoll": "epoll"}[backend]
    assert s.series("ringcast_backend_info") == {(("backend", expected),): 1.0}
    # Counter families follow the naming convention.
    for name, kind in s.types.items():
        assert name.startswith("ringcast_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
    # Every family is documented for operators.
    docs = DOCS.read_text()
    for name in s.types:
        assert f"`{name}`" in docs, f"{name} is not documented in docs/operations.md"


def test_counters_match_a_known_workload(ringcast):
    srv = start_without_probe(ringcast, "--shards", "2", "--ping-interval", "0")
    sc = Scraper(srv.port)
    base = sc.settled()
    scrapes_before = sc.count
    calib = sc.quiet()
    # From one quiet scrape to the next: exactly the scrapes in between were
    # accepted and closed, and no message was counted. This also tells how a
    # plain HTTP request's close is classified.
    k = sc.count - scrapes_before
    assert delta(calib, base, "ringcast_connections_accepted_total") == k
    closed_by_scrape = {
        r: v - base.by_label("ringcast_connections_closed_total", "reason").get(r, 0)
        for r, v in calib.by_label("ringcast_connections_closed_total", "reason").items()
    }
    scrape_reason = [r for r, v in closed_by_scrape.items() if v == k]
    assert len(scrape_reason) == 1 and sum(closed_by_scrape.values()) == k, closed_by_scrape
    scrape_reason = scrape_reason[0]
    # A plain request answered 200 is a normal close, not a failed handshake.
    assert scrape_reason == "normal", closed_by_scrape
    for name in ("ringcast_messages_received_total", "ringcast_messages_sent_total",
                 "ringcast_bytes_received_total", "ringcast_bytes_sent_total"):
        assert delta(calib, base, name) == 0, name
    base, scrapes_at_base = calib, sc.count

    sent_msgs = recv_msgs = sent_bytes = recv_bytes = 0
    connections = 0

    # Echo: N clients, M messages each (text and binary), closed with 1000.
    n_echo, m_echo = 4, 3
    for i in range(n_echo):
        with ws(srv.url("/echo")) as c:
            connections += 1
            for j in range(m_echo):
                payload = f"echo {i}/{j} " + "é" * j if j % 2 == 0 else os.urandom(100 + j)
                c.send(payload)
                assert c.recv(timeout=15) == payload
                size = len(payload.encode()) if isinstance(payload, str) else len(payload)
                sent_msgs += 1
                recv_msgs += 1
                sent_bytes += size
                recv_bytes += size
            c.close(code=1000)

    # Chat: two members, a join each, two messages, one leave, one 1001 close.
    a = ws(srv.url("/chat"))
    b = ws(srv.url("/chat"))
    connections += 2
    received_by = {"a": [], "b": []}

    def send(c, text):
        nonlocal sent_msgs, sent_bytes
        c.send(text)
        sent_msgs += 1
        sent_bytes += len(text.encode())

    def expect(c, who, type_):
        msg = c.recv(timeout=15)
        assert isinstance(msg, str) and f'"type":"{type_}"' in msg.replace(" ", ""), msg
        received_by[who].append(msg)

    send(a, '{"type":"join","room":"metrics","name":"a"}')
    expect(a, "a", "join")
    send(b, '{"type":"join","room":"metrics","name":"b"}')
    expect(a, "a", "join")
    expect(b, "b", "join")
    send(a, '{"type":"message","room":"metrics","text":"hello ✓"}')
    expect(a, "a", "message")
    expect(b, "b", "message")
    send(b, '{"type":"message","room":"metrics","text":"hi"}')
    expect(a, "a", "message")
    expect(b, "b", "message")
    send(b, '{"type":"leave","room":"metrics"}')
    expect(a, "a", "leave")
    b.close(code=1000)
    a.close(code=1001)
    for msgs in received_by.values():
        recv_msgs += len(msgs)
        recv_bytes += sum(len(m.encode()) for m in msgs)

    # Handshake failures: bad version (426), oversized head (431), unknown path (404).
    assert raw_request(srv.port, upgrade_request(version="12")) == 426
    big = "X-Filler: " + "a" * (16 * 1024) + "\r\n"
    assert raw_request(srv.port, upgrade_request(extra=big)) == 431
    assert raw_request(srv.port, upgrade_request(path="/no-such-endpoint")) == 404
    connections += 3

    # A client that vanishes with a TCP reset after the handshake.
    reset_after_handshake(srv.port)
    connections += 1

    after = sc.quiet()
    scrapes = sc.count - scrapes_at_base  # all closed but the last one, which is open

    assert delta(after, base, "ringcast_connections_accepted_total") == connections + scrapes
    assert delta(after, base, "ringcast_messages_received_total") == sent_msgs
    assert delta(after, base, "ringcast_bytes_received_total") == sent_bytes
    assert delta(after, base, "ringcast_messages_sent_total") == recv_msgs
    assert delta(after, base, "ringcast_bytes_sent_total") == recv_bytes
    assert delta(after, base, "ringcast_slow_consumer_total") == 0

    expected_closed = {"normal": n_echo + 1, "going_away": 1, "handshake_failed": 3, "reset": 1}
    expected_closed[scrape_reason] = expected_closed.get(scrape_reason, 0) + scrapes
    got_closed = {
        r: v - base.by_label("ringcast_connections_closed_total", "reason").get(r, 0)
        for r, v in after.by_label("ringcast_connections_closed_total", "reason").items()
    }
    got_closed = {r: v for r, v in got_closed.items() if v}
    assert got_closed == expected_closed

    hs = {
        s: v - base.by_label("ringcast_handshake_failures_total", "status").get(s, 0)
        for s, v in after.by_label("ringcast_handshake_failures_total", "status").items()
    }
    assert {s: v for s, v in hs.items() if v} == {"426": 1, "431": 1, "404": 1}
    # The room is gone once everybody left.
    assert after.get("ringcast_rooms") == 0


def test_rooms_gauge_and_per_shard_connections(ringcast):
    srv = ringcast("--shards", "2", "--ping-interval", "0")
    sc = Scraper(srv.port)
    clients = []
    try:
        for i in range(3):
            c = ws(srv.url("/chat"))
            clients.append(c)
            c.send(f'{{"type":"join","room":"gauge-{i}","name":"u{i}"}}')
            assert '"join"' in c.recv(timeout=15)
        # The three clients plus the scrape itself; earlier scrapes may take a
        # moment to be counted as closed.
        s = sc.until(lambda s: s.total("ringcast_connections") == 3 + 1, "4 open connections")
        assert s.get("ringcast_rooms") == 3
        assert set(s.by_label("ringcast_connections", "shard")) == {"0", "1"}
    finally:
        for c in clients:
            c.close()
    sc.until(lambda s: s.get("ringcast_rooms") == 0, "rooms back to 0")


def test_slow_consumer_is_counted(ringcast):
    # close-timeout: the lazy client never answers the close frame either.
    srv = ringcast("--max-backpressure", "64KiB", "--slow-consumer", "close", "--ping-interval", "0",
                   "--close-timeout", "1s")
    sc = Scraper(srv.port)
    # A /broadcast subscriber that never reads, with a tiny receive buffer.
    lazy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.settimeout(30)
    lazy.connect(("127.0.0.1", srv.port))
    try:
        lazy.sendall(upgrade_request("/broadcast"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += lazy.recv(1)  # byte by byte: leave every frame unread
        assert head.startswith(b"HTTP/1.1 101"), head
        # The publisher is subscribed too; it reads each message back before
        # sending the next, so its own queue never grows. The kernel buffers
        # towards the lazy client fill up after a few MiB, then its queue at
        # the server passes 64 KiB.
        with ws(srv.url("/broadcast")) as pub:
            chunk = "x" * 32768
            for i in range(1, 2049):  # at most 64 MiB
                pub.send(chunk)
                assert pub.recv(timeout=15) == chunk
                if i % 32 == 0 and sc.scrape().get("ringcast_connections_closed_total",
                                                    reason="slow_consumer") == 1:
                    break
            s = sc.until(lambda s: s.get("ringcast_connections_closed_total", reason="slow_consumer") == 1,
                         "the lazy client closed as a slow consumer")
            assert s.get("ringcast_slow_consumer_total") >= 1
            # The publisher kept up and was not touched.
            pub.send("still here")
            assert pub.recv(timeout=15) == "still here"
    finally:
        lazy.close()


def test_healthz_ok_then_503_while_draining(ringcast):
    # One shard, so the echo round trip below orders events on it; long
    # timeouts so the drain lasts until the test is done.
    srv = ringcast("--shards", "1", "--shutdown-timeout", "60s", "--handshake-timeout", "60s")
    status, _, body = http_get(srv.port, "/healthz")
    assert (status, body.strip()) == (200, "ok")

    # A health check already in flight when the drain begins: the request line
    # is sent, the rest of the head only later.
    probe = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        probe.sendall(b"GET /healthz HTTP/1.1\r\n")
        # The shard has read those bytes once it answered a message sent after them.
        with ws(srv.url("/echo")) as c:
            c.send("barrier")
            assert c.recv(timeout=15) == "barrier"

        srv.signal(signal.SIGTERM)
        # The drain has begun on the shard once it stops accepting.
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "listener still accepting 30 s after SIGTERM"
            time.sleep(0.05)

        probe.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        while True:
            chunk = probe.recv(4096)
            if not chunk:
                break
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), reply
        assert body.strip() == b"draining", reply
    finally:
        probe.close()
    assert srv.wait(timeout=60) == 0, srv.output()
