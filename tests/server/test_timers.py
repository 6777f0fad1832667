"""Heartbeat pings, the idle timeout and the handshake (slowloris) timeout.
Short flag values keep the tests quick; every wait has a wide margin."""
import asyncio
import socket
import time

from websockets.asyncio.client import connect

from wsutil import RawWS, frame, read_http_response

PING, PONG, TEXT = 0x9, 0xA, 0x1


def test_ping_arrives(ringcast):
    srv = ringcast("--ping-interval", "1s", "--idle-timeout", "0")
    ws = RawWS(srv.port, "/echo")
    try:
        fin, op, payload = ws.recv_frame()
        assert op == PING
        # And again, periodically.
        ws.send(frame(PONG, payload))
        fin, op, _ = ws.recv_frame()
        assert op == PING
    finally:
        ws.close()


def test_idle_connection_is_closed_1001(ringcast):
    srv = ringcast("--idle-timeout", "1s", "--ping-interval", "0")
    ws = RawWS(srv.port, "/echo")
    try:
        start = time.monotonic()
        code, reason = ws.recv_close()
        assert code == 1001
        assert reason == "idle timeout"
        assert time.monotonic() - start >= 0.9
        # The client answers the close; the server then closes TCP.
        ws.send(frame(0x8, b"\x03\xe9"))
        assert ws.expect_eof()
    finally:
        ws.close()


def test_ignored_pings_do_not_keep_a_connection(ringcast):
    srv = ringcast("--idle-timeout", "1500ms", "--ping-interval", "300ms")
    ws = RawWS(srv.port, "/echo")
    try:
        code, _ = ws.recv_close()  # pings arrive but are never answered
        assert code == 1001
    finally:
        ws.close()


def test_pongs_count_as_activity(ringcast):
    srv = ringcast("--idle-timeout", "1s", "--ping-interval", "200ms")

    async def run():
        # The client answers pings automatically and sends nothing else.
        async with connect(srv.url("/echo"), ping_interval=None, open_timeout=20) as ws:
            await asyncio.sleep(3.5)
            await ws.send("still open")
            assert await asyncio.wait_for(ws.recv(), 20) == "still open"

    asyncio.run(run())


def test_data_counts_as_activity(ringcast):
    srv = ringcast("--idle-timeout", "1s", "--ping-interval", "0")
    ws = RawWS(srv.port, "/echo")
    try:
        for i in range(8):
            time.sleep(0.4)
            ws.send(frame(TEXT, b"tick"))
            assert ws.recv_data() == (TEXT, b"tick")
    finally:
        ws.close()


def test_handshake_timeout_closes_slow_requests(ringcast):
    srv = ringcast("--handshake-timeout", "1s")
    # Part of a request head, then nothing.
    slow = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    slow.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
    # Nothing at all.
    silent = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    try:
        start = time.monotonic()
        status, _, _ = read_http_response(slow)
        assert status == 408
        assert slow.recv(100) == b""
        assert time.monotonic() - start >= 0.5
        data = silent.recv(4096)
        assert data == b"" or data.startswith(b"HTTP/1.1 408")
    finally:
        slow.close()
        silent.close()


def test_handshake_timeout_does_not_touch_open_websockets(ringcast):
    srv = ringcast("--handshake-timeout", "500ms", "--idle-timeout", "0", "--ping-interval", "0")
    ws = RawWS(srv.port, "/echo")
    try:
        time.sleep(1.5)
        ws.send(frame(TEXT, b"alive"))
        assert ws.recv_data() == (TEXT, b"alive")
    finally:
        ws.close()
