"""Helpers for the daemon-process tests (tests/integration/test_service_*.py and
test_metrics.py): a real `agentlatd run` subprocess, the systemd notify socket
bound by the test (as systemd binds it), network namespaces with a veth pair,
and policies that steer nothing on the host.

Safety: the policies here name only devices the tests create inside their own
network namespace (devices.include), or none at all; IRQ affinity is off
(/proc/irq is host-wide); RFS is off (net.core.rps_sock_flow_entries is
host-wide). Everything a test creates is deleted in a finally.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

REPO = pathlib.Path(__file__).resolve().parents[2]

# [devices] include that matches nothing on any host
NOTHING = "agentlatd-test-none-*"


def policy_text(*, include: str = NOTHING, rps: bool = True, interval: float = 0.5,
                metrics_listen: str = "", textfile: str = "", log_level: str = "debug",
                extra: str = "") -> str:
    """A policy that steers only devices matching `include` (never IRQs, never sysctls)."""
    return f"""
[daemon]
interval = {interval}
log_level = "{log_level}"
irqbalance = "ignore"

[devices]
include = ["{include}"]
exclude = []

[tuning]
irq_affinity = false
rps = {str(rps).lower()}
rps_flow_cnt = 0
xps = false
coalesce = false
threaded_napi = false

[metrics]
listen = "{metrics_listen}"
textfile = "{textfile}"
{extra}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------
# the notify socket


@dataclass
class NotifySocket:
    """An AF_UNIX datagram socket bound at `path`: what systemd listens on."""

    path: str
    sock: socket.socket
    messages: list[tuple[float, list[str]]] = field(default_factory=list)

    @classmethod
    def bind(cls, directory: pathlib.Path) -> NotifySocket:
        path = str(directory / "notify")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        return cls(path, s)

    def close(self) -> None:
        self.sock.close()

    def poll(self, timeout: float) -> list[str] | None:
        """The next datagram's lines, or None after `timeout` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        lines = data.decode().split("\n")
        self.messages.append((time.monotonic(), lines))
        return lines

    def wait_for(self, assignment: str, timeout: float) -> list[str]:
        """Read datagrams until one holds `assignment` (e.g. "READY=1")."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {assignment} within {timeout} s; got "
                                     f"{[m for _, m in self.messages]}")
            msg = self.poll(left)
            if msg is not None and assignment in msg:
                return msg

    def collect(self) -> list[list[str]]:
        """Every datagram received so far, reading what is still queued."""
        while self.poll(0.05) is not None:
            pass
        return [m for _, m in self.messages]

    def drain(self, seconds: float) -> list[tuple[float, list[str]]]:
        """Everything that arrives in the next `seconds` seconds."""
        start = len(self.messages)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.poll(left)
        return self.messages[start:]


# ---------------------------------------------------------------------------
# the daemon


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    config: pathlib.Path
    state_dir: pathlib.Path
    socket_path: pathlib.Path
    log_path: pathlib.Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, op: str, timeout: float = 10.0, **fields: object) -> dict[str, object]:
        """One request on the registration socket; the decoded answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(timeout)
            c.connect(str(self.socket_path))
            msg = {"v": 1, "op": op, "id": 1, **fields}
            c.sendall((json.dumps(msg) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = c.recv(65536)
                if not chunk:
                    break
                buf += chunk
        ans: dict[str, object] = json.loads(buf)
        return ans


def daemon_argv(config: pathlib.Path, state_dir: pathlib.Path, sock: pathlib.Path,
                netns: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "agentlatd", "run", "--config", str(config),
            "--state-dir", str(state_dir), "--socket", str(sock)]
    if netns is not None:
        # ip netns exec execs the command in the same process: the pid the
        # test sees is the daemon's
        argv = ["ip", "netns", "exec", netns, *argv]
    return argv


@contextlib.contextmanager
def run_daemon(tmp: pathlib.Path, policy: str, *, notify: NotifySocket | None = None,
               netns: str | None = None, env: dict[str, str] | None = None,
               prefix: list[str] | None = None,
               pass_fds: tuple[int, ...] = ()) -> Iterator[Daemon]:
    """Start `agentlatd run` with `policy`; kill it (if still running) on exit."""
    config = tmp / "agentlatd.toml"
    config.write_text(policy)
    state_dir = tmp / "state"
    sock = tmp / "agentlatd.sock"
    log_path = tmp / "daemon.log"
    e = {k: v for k, v in os.environ.items()
         if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                      "LISTEN_PID", "JOURNAL_STREAM")}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["PYTHONUNBUFFERED"] = "1"
    if notify is not None:
        e["NOTIFY_SOCKET"] = notify.path
    e.update(env or {})
    argv = (prefix or []) + daemon_argv(config, state_dir, sock, netns)
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, env=e, cwd=str(tmp),
                                pass_fds=pass_fds)
    d = Daemon(proc, config, state_dir, sock, log_path)
    try:
        yield d
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_until(pred: object, timeout: float, what: str, interval: float = 0.05) -> None:
    assert callable(pred)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------------------
# network namespaces


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def veth_netns(queues: int = 2) -> Iterator[str]:
    """A fresh network namespace holding veth pair agt0/agt1 (up) and lo (up)."""
    name = f"alt-svc-{secrets.token_hex(4)}"
    _ip("netns", "add", name)
    try:
        q = ["numrxqueues", str(queues), "numtxqueues", str(queues)]
        _ip("-n", name, "link", "add", "agt0", *q, "type", "veth", "peer", "name", "agt1", *q)
        for dev in ("lo", "agt0", "agt1"):
            _ip("-n", name, "link", "set", dev, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        assert not os.path.exists(f"/run/netns/{name}"), f"netns {name} left behind"


def ns_read(netns: str, path: str) -> str:
    """Read a file as seen from inside the namespace (its own /sys/class/net)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", path], check=True,
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def ns_run(netns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, timeout=timeout)
