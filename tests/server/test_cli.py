"""Flags, the TOML config file and start-up errors."""
import asyncio
import json
import os
import socket
import subprocess

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from conftest import BIN


def exited(srv, timeout=30):
    code = srv.wait(timeout=timeout)
    return code, srv.output()


def test_help_lists_every_flag():
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for flag in [
        "--listen", "--shards", "--backend", "--max-connections", "--max-connections-per-ip",
        "--max-message-size", "--max-backpressure", "--slow-consumer", "--idle-timeout",
        "--ping-interval", "--handshake-timeout", "--allowed-origins", "--shutdown-timeout",
        "--log-level", "--log-format", "--config", "--backlog",
    ]:
        assert flag in out.stdout, flag


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--idle-timeout", "soon"),
        ("--max-message-size", "lots"),
        ("--slow-consumer", "ignore"),
        ("--log-format", "xml"),
        ("--shards", "-1"),
        ("--allowed-origins", "evil.example"),
        ("--max-connections", "0"),
    ],
)
def test_bad_flag_value_exits_2_naming_the_flag(ringcast, flag, value):
    srv = ringcast(flag, value, wait=False)
    code, out = exited(srv)
    assert code == 2
    assert flag in out


def test_bad_backend_exits_2(tmp_path):
    out = subprocess.run([BIN, "--backend", "kqueue"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--backend" in out.stderr


def test_unknown_flag_exits_2():
    out = subprocess.run([BIN, "--colour", "blue"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--colour" in out.stderr


def test_unknown_config_key_exits_2(ringcast, tmp_path):
    cfg = tmp_path / "ringcast.toml"
    cfg.write_text('idle_timeout = "30s"\nping_intervall = "5s"\n')
    srv = ringcast("--config", str(cfg), wait=False)
    code, out = exited(srv)
    assert code == 2
    assert "ping_intervall" in out
    assert "unknown key" in out


@pytest.mark.parametrize(
    "line,key",
    [
        ('idle-timeout = "soon"', "idle-timeout"),
        ("max_message_size = true", "max_message_size"),
        ('slow_consumer = "maybe"', "slow_consumer"),
        ("shards = [1, 2]", "shards"),
        ("[listen]\nport = 1", "listen"),
    ],
)
def test_bad_config_value_exits_2_naming_the_key(ringcast, tmp_path, line, key):
    cfg = tmp_path / "ringcast.toml"
    cfg.write_text(line + "\n")
    srv = ringcast("--config", str(cfg), wait=False)
    code, out = exited(srv)
    assert code == 2
    assert f"`{key}`" in out


def test_config_file_syntax_error_exits_2(ringcast, tmp_path):
    cfg = tmp_path / "ringcast.toml"
    cfg.write_text("this is not toml\n")
    srv = ringcast("--config", str(cfg), wait=False)
    code, out = exited(srv)
    assert code == 2
    assert str(cfg) in out


def test_missing_config_file_exits_2(ringcast, tmp_path):
    srv = ringcast("--config", str(tmp_path / "absent.toml"), wait=False)
    code, out = exited(srv)
    assert code == 2
    assert "absent.toml" in out


def echo_limit(srv, size):
    """True if a message of `size` bytes is echoed, False if it closes 1009."""

    async def run():
        async with connect(srv.url("/echo"), open_timeout=20, max_size=None) as ws:
            await ws.send("x" * size)
            try:
                return await asyncio.wait_for(ws.recv(), 20) == "x" * size
            except ConnectionClosedError as e:
                assert e.rcvd.code == 1009
                return False

    return asyncio.run(run())


def test_config_file_applies_and_flags_win(ringcast, tmp_path):
    cfg = tmp_path / "ringcast.toml"
    cfg.write_text('max-message-size = "1KiB"\nchat_max_rooms = 4\nallowed_origins = ["https://a.example"]\n')
    srv = ringcast("--config", str(cfg))
    assert echo_limit(srv, 1024)
    assert not echo_limit(srv, 1025)
    srv2 = ringcast("--config", str(cfg), "--max-message-size", "2KiB")
    assert echo_limit(srv2, 2048)
    assert not echo_limit(srv2, 2049)


def test_address_in_use_is_one_clear_line(ringcast):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        srv = ringcast(wait=False, port=port)
        code, out = exited(srv)
        assert code != 0
        lines = [l for l in out.splitlines() if l.strip()]
        assert len(lines) == 1, out
        assert "address already in use" in lines[0]
        assert f"127.0.0.1:{port}" in lines[0]
    finally:
        taken.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind any port")
def test_permission_denied_is_one_clear_line(ringcast):
    srv = ringcast(wait=False, port=80)
    code, out = exited(srv)
    assert code != 0
    assert "permission denied" in out


def test_json_logs(ringcast):
    srv = ringcast("--log-format", "json", "--log-level", "debug")

    async def run():
        async with connect(srv.url("/echo"), open_timeout=20) as ws:
            await ws.send("x")
            await ws.recv()

    asyncio.run(run())
    srv.signal()
    assert srv.wait(timeout=30) == 0
    lines = [l for l in srv.output().splitlines() if l.strip()]
    assert lines
    for line in lines:
        rec = json.loads(line)
        assert "level" in rec
