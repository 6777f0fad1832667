"""Graceful shutdown on SIGTERM / SIGINT."""
import asyncio
import signal
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wsutil import RawWS, read_http_response


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_every_client_1001_and_exits_0(ringcast, sig):
    srv = ringcast("--shards", "2", "--ping-interval", "0")

    async def run():
        clients = []
        for i in range(6):
            path = ["/echo", "/chat", "/broadcast"][i % 3]
            clients.append(await connect(srv.url(path), open_timeout=20, ping_interval=None))
        for c in clients[::3]:
            await c.send("hi")
            assert await asyncio.wait_for(c.recv(), 20) == "hi"
        srv.signal(sig)

        async def closed_code(c):
            try:
                while True:
                    await asyncio.wait_for(c.recv(), 30)
            except ConnectionClosed as e:
                return e.rcvd.code if e.rcvd else None

        return await asyncio.gather(*(closed_code(c) for c in clients))

    codes = asyncio.run(run())
    assert codes == [1001] * 6
    assert srv.wait(timeout=30) == 0


def test_unresponsive_client_does_not_block_exit(ringcast):
    srv = ringcast("--shutdown-timeout", "1s", "--ping-interval", "0")
    ws = RawWS(srv.port, "/echo")
    try:
        start = time.monotonic()
        srv.signal(signal.SIGTERM)
        code, reason = ws.recv_close()
        assert code == 1001
        # Never answer the close: the server gives up after the timeout.
        assert srv.wait(timeout=30) == 0
        assert time.monotonic() - start >= 0.8
    finally:
        ws.close()


def test_no_new_connections_while_draining_and_healthz_503(ringcast):
    srv = ringcast("--shutdown-timeout", "20s", "--handshake-timeout", "20s", "--ping-interval", "0")
    # A request that started before the drain is still answered...
    pending = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    pending.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    # ...and a client that ignores the close keeps the drain going meanwhile.
    holder = RawWS(srv.port, "/echo")
    try:
        time.sleep(0.3)
        srv.signal(signal.SIGTERM)
        assert holder.recv_close()[0] == 1001
        pending.sendall(b"\r\n")
        status, _, body = read_http_response(pending)
        assert (status, body) == (503, b"draining")
        # The listener is closed: new connections are refused.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
        # The holder finally answers; the process exits cleanly.
        from wsutil import frame
        holder.send(frame(0x8, b"\x03\xe9"))
        assert holder.expect_eof()
        assert srv.wait(timeout=30) == 0
    finally:
        pending.close()
        holder.close()
