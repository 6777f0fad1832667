"""Shared fixtures: start a real `ringcast` process on a free loopback port.

Every test that takes the `ringcast` fixture runs once per backend in
RINGCAST_BACKENDS (both io-uring and epoll by default).
"""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("RINGCAST_BIN", str(ROOT / "target" / "debug" / "ringcast"))
BACKENDS = os.environ.get("RINGCAST_BACKENDS", "io-uring epoll").split()


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
