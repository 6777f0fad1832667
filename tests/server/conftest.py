"""Shared fixtures: start a real `ringcast` process on a free loopback port,
and a real `redis-server` for the cluster tests.

Every test that takes the `ringcast` fixture runs once per backend in
RINGCAST_BACKENDS (both io-uring and epoll by default).
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("RINGCAST_BIN", str(ROOT / "target" / "debug" / "ringcast"))
BACKENDS = os.environ.get("RINGCAST_BACKENDS", "io-uring epoll").split()
REDIS_SERVER = os.environ.get("RINGCAST_REDIS_SERVER", "redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ringcast exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"ringcast did not listen on {port} within {timeout}s")


class Server:
    """One running ringcast process."""

    def __init__(self, backend: str, args, env=None, log_path=None, wait=True, port=None):
        self.backend = backend
        self.port = port or free_port()
        self.args = [BIN, "--listen", f"127.0.0.1:{self.port}", "--backend", backend, *args]
        full_env = dict(os.environ)
        full_env.setdefault("RUST_BACKTRACE", "1")
        if env:
            full_env.update(env)
        self.log_path = log_path
        self.log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        if wait:
            wait_port(self.port, self.proc)

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def signal(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        if not self.log_path:
            return ""
        self.log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.log is not subprocess.DEVNULL:
            self.log.close()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def ringcast(backend, tmp_path):
    """Factory: ringcast(*extra_args, env=None, wait=True, port=None) -> Server.
    Processes are killed after the test."""
    started = []

    def start(*args, env=None, wait=True, port=None):
        srv = Server(
            backend, list(args), env=env, log_path=tmp_path / f"ringcast-{len(started)}.log", wait=wait, port=port
        )
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


class Redis:
    """A real redis-server on a free loopback port, data in `dir`, no
    persistence (a restart starts empty, like a crashed cache)."""

    def __init__(self, dir: Path, port=None):
        self.dir = dir
        self.port = port or free_port()
        self.proc = None
        self.log = None
        self.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 15.0) -> None:
        exe = shutil.which(REDIS_SERVER)
        if exe is None:
            pytest.fail(
                f"`{REDIS_SERVER}` not found: the cluster tests need a real Redis. "
                "Run ./scripts/install-test-deps.sh (or set RINGCAST_REDIS_SERVER to the binary).",
                pytrace=False,
            )
        self.log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--dir", str(self.dir)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.cmd("PING") == "PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer PING within {timeout}s:\n{self.output()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, like a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.log:
            self.log.close()
            self.log = None

    def restart(self) -> None:
        """Same port, empty data set."""
        self.kill()
        self.start()

    def output(self) -> str:
        p = self.dir / "redis.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def cmd(self, *args, timeout: float = 10.0):
        """One command over RESP; returns str, int, list or None; raises on an error reply."""
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(out)
            return _resp(s.makefile("rb"))


def _resp(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp(f) for _ in range(n)]
    raise ValueError(f"bad RESP line {line!r}")


@pytest.fixture
def redis(tmp_path):
    """A real redis-server for this test (fails the test if none is installed)."""
    d = tmp_path / "redis"
    d.mkdir()
    r = Redis(d)
    yield r
    r.kill()
