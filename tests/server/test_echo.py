"""/echo with a real client, and the plain HTTP routes."""
import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from wsutil import RawWS, http_get

MIB = 1 << 20
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 100_000, MIB - 1, MIB]


def test_echo_text_and_binary_every_size(ringcast):
    srv = ringcast("--shards", "2")

    async def run():
        async with connect(srv.url("/echo"), max_size=None, open_timeout=20) as ws:
            for n in SIZES:
                text = "é" * (n // 2) + "a" * (n % 2)  # valid UTF-8 of exactly n bytes
                assert len(text.encode()) == n
                await ws.send(text)
                got = await asyncio.wait_for(ws.recv(), 30)
                assert isinstance(got, str) and got == text, f"text of {n} bytes"
                data = bytes(i % 251 for i in range(n))
                await ws.send(data)
                got = await asyncio.wait_for(ws.recv(), 30)
                assert isinstance(got, bytes) and got == data, f"binary of {n} bytes"

    asyncio.run(run())


def test_echo_many_messages_keep_order(ringcast):
    srv = ringcast()

    async def run():
        async with connect(srv.url("/echo"), open_timeout=20) as ws:
            for i in range(500):
                await ws.send(f"m{i}")
            for i in range(500):
                assert await asyncio.wait_for(ws.recv(), 30) == f"m{i}"

    asyncio.run(run())


def test_message_over_limit_closes_1009(ringcast):
    srv = ringcast("--max-message-size", "1000")

    async def run():
        async with connect(srv.url("/echo"), open_timeout=20) as ws:
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000
            await ws.send("x" * 1001)
            with pytest.raises(ConnectionClosedError) as e:
                await asyncio.wait_for(ws.recv(), 30)
            assert e.value.rcvd is not None and e.value.rcvd.code == 1009

    asyncio.run(run())


def test_default_limit_is_one_mib(ringcast):
    srv = ringcast()
    ws = RawWS(srv.port, "/echo")
    try:
        from wsutil import frame
        ws.send(frame(0x2, b"\0" * (MIB + 1)))
        code, _ = ws.recv_close()
        assert code == 1009
    finally:
        ws.close()


def test_http_routes(ringcast):
    srv = ringcast()
    status, headers, body = http_get(srv.port, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"<html" in body.lower()

    status, _, body = http_get(srv.port, "/healthz")
    assert (status, body) == (200, b"ok")

    status, headers, body = http_get(srv.port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b"ringcast_connections" in body

    status, _, _ = http_get(srv.port, "/nope")
    assert status == 404

    for path in ("/chat", "/echo", "/broadcast"):
        status, headers, body = http_get(srv.port, path)
        assert status == 426, path
        assert headers.get("sec-websocket-version") == "13"
        assert body


def test_upgrade_to_unknown_path_is_404(ringcast):
    srv = ringcast()

    async def run():
        with pytest.raises(InvalidStatus) as e:
            async with connect(srv.url("/elsewhere"), open_timeout=20):
                pass
        assert e.value.response.status_code == 404

    asyncio.run(run())


def test_bad_upgrade_requests(ringcast):
    srv = ringcast()
    # Wrong version: 426 naming the supported one.
    status, headers, _ = http_get(
        srv.port,
        "/echo",
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
         "Sec-WebSocket-Version": "8"},
    )
    assert status == 426 and headers.get("sec-websocket-version") == "13"
    # Missing key: 400.
    status, _, _ = http_get(
        srv.port, "/echo", {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    )
    assert status == 400
    # Garbage request line: 400, and the server lives on.
    from wsutil import http_request
    status, _, _ = http_request(srv.port, b"\x16\x03\x01 hello\r\n\r\n")
    assert status == 400
    assert http_get(srv.port, "/healthz")[0] == 200


def test_query_string_head_and_methods(ringcast):
    srv = ringcast()

    async def run():
        async with connect(srv.url("/echo?token=abc"), open_timeout=20) as ws:
            await ws.send("with a query")
            assert await ws.recv() == "with a query"

    asyncio.run(run())
    assert http_get(srv.port, "/healthz?probe=1")[:3:2] == (200, b"ok")
    from wsutil import http_request
    status, headers, _ = http_request(srv.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and int(headers["content-length"]) > 0
    status, _, _ = http_request(
        srv.port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert status == 405
