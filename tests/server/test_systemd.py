"""The systemd protocol, without systemd: the test plays the service manager.

* sd_notify: the test binds the NOTIFY_SOCKET datagram socket (abstract
  `@name` and path forms) and reads READY=1, STATUS=, WATCHDOG=1, STOPPING=1.
* Socket activation: the test creates the listening socket, passes it as fd 3
  with LISTEN_FDS=1 and LISTEN_PID=<child pid>, and talks to ringcast through it.
"""
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from websockets.sync.client import connect

from conftest import BIN, free_port


def ws(url):
    return connect(url, open_timeout=15, close_timeout=15, ping_interval=None, compression=None)


class NotifySocket:
    """The manager's end of NOTIFY_SOCKET."""

    def __init__(self, abstract=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = None
        if abstract:
            name = f"ringcast-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            # Short directory: sun_path holds at most 107 bytes.
            self.dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
            path = os.path.join(self.dir, "notify")
            self.sock.bind(path)
            self.env = path
        self.messages = []

    def next(self, timeout):
        """The next datagram (decoded), or None after `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        msg = data.decode()
        self.messages.append(msg)
        return msg

    def wait_for(self, pred, timeout=30.0, what="message"):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout}s; got {self.messages}")
            msg = self.next(left)
            if msg is not None and pred(msg):
                return msg

    def close(self):
        self.sock.close()
        if self.dir:
            for f in os.listdir(self.dir):
                os.unlink(os.path.join(self.dir, f))
            os.rmdir(self.dir)


def assignments(msg):
    """'A=1\\nB=2' -> {'A': '1', 'B': '2'} (sd_notify's newline-separated format)."""
    return dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """The test plays the service manager: nothing inherited from a manager
    that may be running the test itself (e.g. a CI runner under systemd)."""
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def notify():
    socks = []

    def make(abstract=True):
        n = NotifySocket(abstract)
        socks.append(n)
        return n

    yield make
    for n in socks:
        n.close()


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def per_shard_connections(text):
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^ringcast_connections\{shard="(\d+)"\} (\S+)$', text, re.M)
    }


# ---- sd_notify -------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [True, False], ids=["abstract", "path"])
def test_ready_status_stopping(ringcast, notify, abstract):
    n = notify(abstract)
    srv = ringcast("--shards", "2", env={"NOTIFY_SOCKET": n.env}, wait=False)

    n.wait_for(lambda m: assignments(m).get("READY") == "1", what="READY=1")
    # READY=1 means every shard listens: the first attempt must succeed.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10):
        pass

    # STATUS= reports the connection count; three clients must show up in it.
    clients = [ws(srv.url("/echo")) for _ in range(3)]
    try:
        for c in clients:
            c.send("x")
            assert c.recv(timeout=15) == "x"
        n.wait_for(
            lambda m: re.search(r"\b3 connections?\b", assignments(m).get("STATUS", "")) is not None,
            timeout=60,
            what="STATUS= with 3 connections",
        )
        assert any("STATUS" in assignments(m) for m in n.messages)

        # SIGTERM starts a drain: STOPPING=1 is sent, then the process exits 0.
        srv.signal(signal.SIGTERM)
        n.wait_for(lambda m: assignments(m).get("STOPPING") == "1", what="STOPPING=1")
    finally:
        for c in clients:
            try:
                c.close()
            except Exception:
                pass
    assert srv.wait(timeout=30) == 0, srv.output()
    ready_at = next(i for i, m in enumerate(n.messages) if assignments(m).get("READY") == "1")
    stop_at = next(i for i, m in enumerate(n.messages) if assignments(m).get("STOPPING") == "1")
    assert ready_at < stop_at


def test_watchdog_pings_when_enabled(ringcast, notify):
    n = notify()
    # 2 s watchdog: ringcast must ping about every second while its loops run.
    srv = ringcast("--shards", "2", env={"NOTIFY_SOCKET": n.env, "WATCHDOG_USEC": "2000000"})
    n.wait_for(lambda m: assignments(m).get("READY") == "1", what="READY=1")
    for _ in range(3):
        n.wait_for(lambda m: assignments(m).get("WATCHDOG") == "1", timeout=30, what="WATCHDOG=1")
    # Still pinging with traffic flowing.
    with ws(srv.url("/echo")) as c:
        c.send("ping?")
        assert c.recv(timeout=15) == "ping?"
        n.wait_for(lambda m: assignments(m).get("WATCHDOG") == "1", timeout=30, what="WATCHDOG=1")


def test_no_watchdog_pings_without_watchdog_usec(ringcast, notify):
    n = notify()
    ringcast(env={"NOTIFY_SOCKET": n.env}, wait=False)
    n.wait_for(lambda m: assignments(m).get("READY") == "1", what="READY=1")
    # Collect whatever arrives for a few seconds: no WATCHDOG=1 among it.
    deadline = time.monotonic() + 3
    while (left := deadline - time.monotonic()) > 0:
        n.next(left)
    assert not any(assignments(m).get("WATCHDOG") for m in n.messages), n.messages


# ---- socket activation --------------------------------------------------------------


class Activated:
    """ringcast started the way systemd starts it for a .socket unit."""

    def __init__(self, backend, fd_sock, args, log_path, env=None):
        self.log_path = log_path
        self.log = open(self.log_path, "wb")
        full_env = dict(os.environ, LISTEN_FDS="1", RUST_BACKTRACE="1")
        full_env.pop("LISTEN_PID", None)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.update(env or {})
        fd = fd_sock.fileno()

        def child_setup():
            # The inherited socket must be fd 3 (SD_LISTEN_FDS_START); dup2 also
            # clears close-on-exec on the copy.
            os.dup2(fd, 3)

        # LISTEN_PID must be the pid that execs ringcast: the shell's own pid ($$),
        # which `exec` keeps.
        self.proc = subprocess.Popen(
            ["sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"',
             BIN, "--backend", backend, *args],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            close_fds=False,  # Popen would otherwise close fd 3 after child_setup
            preexec_fn=child_setup,
        )

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def activated(backend, tmp_path):
    started = []

    def start(fd_sock, *args, env=None):
        a = Activated(backend, fd_sock, list(args), tmp_path / f"ringcast-activated-{len(started)}.log", env)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def listening_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


def wait_ready(n, proc, output):
    try:
        n.wait_for(lambda m: assignments(m).get("READY") == "1", what="READY=1")
    except AssertionError:
        raise AssertionError(f"exit={proc.poll()} output:\n{output()}")


def test_socket_activation_echo_and_shards(activated, notify):
    lsock = listening_socket()
    port = lsock.getsockname()[1]
    # --listen names another port: the inherited socket must win, nothing else binds.
    other = free_port()
    n = notify()
    rc = activated(lsock, "--listen", f"127.0.0.1:{other}", "--shards", "2",
                   "--ping-interval", "0", env={"NOTIFY_SOCKET": n.env})
    # The test's copy is not needed any more: only ringcast's fd 3 listens now.
    lsock.close()
    wait_ready(n, rc.proc, rc.output)

    with ws(f"ws://127.0.0.1:{port}/echo") as c:
        c.send("through the inherited socket")
        assert c.recv(timeout=15) == "through the inherited socket"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", other), timeout=5).close()

    # Both shards accept from the one inherited listener.
    clients = []
    try:
        for i in range(16):
            c = ws(f"ws://127.0.0.1:{port}/echo")
            c.send(str(i))
            assert c.recv(timeout=15) == str(i)
            clients.append(c)
        # 16 clients + the scrape itself (earlier connections may take a moment
        # to be counted as closed).
        deadline = time.monotonic() + 30
        while True:
            per_shard = per_shard_connections(metrics(port))
            if sum(per_shard.values()) == 16 + 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert set(per_shard) == {"0", "1"}, per_shard
        assert sum(per_shard.values()) == 16 + 1, per_shard
        assert all(v >= 1 for v in per_shard.values()), f"one shard got every connection: {per_shard}"
    finally:
        for c in clients:
            c.close()
    assert rc.proc.poll() is None, rc.output()


def raw_upgrade(path="/echo"):
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def masked_text_frame(text):
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_text_frame(sock):
    head = b""
    while len(head) < 2:
        chunk = sock.recv(2 - len(head))
        assert chunk, "connection closed"
        head += chunk
    assert head[0] == 0x81 and head[1] < 126, head
    body = b""
    while len(body) < head[1]:
        chunk = sock.recv(head[1] - len(body))
        assert chunk, "connection closed"
        body += chunk
    return body.decode()


def test_restart_through_the_socket_loses_no_connection(activated, notify):
    """The test holds the listening socket, as systemd does. A connection
    attempt made while the old process drains must wait in the accept queue
    (not be accepted by the draining process) and be served by the next one."""
    lsock = listening_socket()
    port = lsock.getsockname()[1]
    n1 = notify()
    # One shard: when the held client below gets its close frame, the only
    # shard has begun draining and has stopped accepting.
    old = activated(lsock, "--shards", "1", "--shutdown-timeout", "60s", "--close-timeout", "60s",
                    env={"NOTIFY_SOCKET": n1.env})
    wait_ready(n1, old.proc, old.output)

    # A client that ignores the close frame keeps the drain going.
    held = socket.create_connection(("127.0.0.1", port), timeout=30)
    queued = None
    try:
        held.sendall(raw_upgrade())
        assert read_head(held).startswith(b"HTTP/1.1 101"), "held client not upgraded"
        old.proc.send_signal(signal.SIGTERM)
        n1.wait_for(lambda m: assignments(m).get("STOPPING") == "1", what="STOPPING=1")
        first = held.recv(2)
        assert first[:1] == b"\x88", f"expected a close frame, got {first!r}"  # drain has begun

        # A new client arrives mid-restart: the kernel completes its TCP
        # handshake on the still-open socket; its upgrade request waits.
        queued = socket.create_connection(("127.0.0.1", port), timeout=60)
        queued.sendall(raw_upgrade())

        held.close()  # the last client leaves: the old process finishes its drain
        held = None
        assert old.proc.wait(timeout=60) == 0, old.output()

        n2 = notify()
        new = activated(lsock, "--shards", "2", env={"NOTIFY_SOCKET": n2.env})
        wait_ready(n2, new.proc, new.output)
        head = read_head(queued)
        assert head.startswith(b"HTTP/1.1 101"), f"queued client got {head!r}; old output:\n{old.output()}"
        queued.sendall(masked_text_frame("made it across the restart"))
        assert read_text_frame(queued) == "made it across the restart"
    finally:
        for s in (held, queued):
            if s is not None:
                s.close()
        lsock.close()


@pytest.mark.parametrize("kind", ["udp", "connected", "file"])
def test_socket_activation_rejects_wrong_fd(activated, kind, tmp_path):
    keep = []
    if kind == "udp":
        bad = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        bad.bind(("127.0.0.1", 0))
        expect = "datagram"
    elif kind == "connected":
        lsock = listening_socket()
        bad = socket.create_connection(lsock.getsockname(), timeout=5)
        keep.append(lsock)
        expect = "not listening"
    else:
        bad = open(tmp_path / "not-a-socket", "w")
        expect = "not a socket"
    try:
        rc = activated(bad, "--listen", f"127.0.0.1:{free_port()}")
        code = rc.proc.wait(timeout=30)
        out = rc.output()
        assert code != 0, out
        assert "fd 3" in out and expect in out, out
    finally:
        bad.close()
        for s in keep:
            s.close()


# ---- the shipped files ------------------------------------------------------------------

DIST = Path(__file__).resolve().parents[2] / "dist"


def unit_settings(path):
    """key -> [values] of a unit file (comments and sections dropped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_example_config_is_accepted(ringcast):
    # Every key of dist/ringcast.toml parses (unknown keys would be an error);
    # --listen on the command line wins over the file's.
    srv = ringcast("--config", str(DIST / "ringcast.toml"))
    with urllib.request.urlopen(srv.http("/healthz"), timeout=10) as r:
        assert r.status == 200


def test_service_unit_contents():
    svc = unit_settings(DIST / "ringcast.service")
    # `make install` puts the binary in $(PREFIX)/bin, PREFIX=/usr/local by default.
    assert svc["ExecStart"][0].split()[0] == "/usr/local/bin/ringcast"
    assert svc["Type"] == ["notify"]
    assert svc["LimitNOFILE"] == ["1048576"]
    assert "WatchdogSec" in svc and svc["DynamicUser"] == ["yes"]
    assert svc["CapabilityBoundingSet"] == [""]
    assert svc["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    allow = svc["SystemCallFilter"][0].split()
    assert allow[0] == "@system-service"
    assert {"io_uring_setup", "io_uring_enter", "io_uring_register"} <= set(allow)
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "RestrictNamespaces",
                "LockPersonality", "MemoryDenyWriteExecute", "RestrictRealtime"):
        assert svc.get(key) == ["yes"], key
    assert svc["ProtectSystem"] == ["strict"]
    assert svc["SystemCallArchitectures"] == ["native"]
    sock = unit_settings(DIST / "ringcast.socket")
    assert sock["ListenStream"] == ["9502"]
    assert sock["Accept"] == ["no"]
    assert sock["Service"] == ["ringcast.service"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze(tmp_path):
    # verify wants ExecStart's binary to exist: point it at the one under test.
    svc = (DIST / "ringcast.service").read_text().replace("/usr/local/bin/ringcast", BIN)
    (tmp_path / "ringcast.service").write_text(svc)
    shutil.copy(DIST / "ringcast.socket", tmp_path / "ringcast.socket")
    r = subprocess.run(["systemd-analyze", "verify", "ringcast.service", "ringcast.socket"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    # Exposure 1.2 ("OK") when written; fail if hardening regresses past 2.5.
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=25", "--no-pager",
                        "./ringcast.service"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"Overall exposure level for ringcast.service: (\d+\.\d+)", r.stdout)
    assert m and float(m.group(1)) <= 2.5, r.stdout


def test_every_flag_is_documented():
    """docs/operations.md lists every flag of `ringcast --help` (and so every
    config key, which are the same names)."""
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=60).stdout
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", out, re.M)) - {"--help", "--version"}
    assert len(flags) > 10, out
    docs = (DIST.parent / "docs" / "operations.md").read_text()
    missing = sorted(f for f in flags if f"`{f}`" not in docs)
    assert not missing, f"flags missing from docs/operations.md: {missing}"
