"""agentlatd.sdnotify against real AF_UNIX datagram sockets (path and abstract).

Each test binds the receiving end itself, as systemd would, and reads what
arrived: the wire format (one datagram, VAR=value lines), the watchdog cadence
rules (WATCHDOG_USEC/2, WATCHDOG_PID), and that a send that fails is logged
and counted instead of being swallowed (the reason sdnotify 0.3.2 is not used).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentlatd import sdnotify
from agentlatd.sdnotify import Notifier


def _recv(sock: socket.socket) -> list[str]:
    sock.settimeout(2)
    data = sock.recv(4096)
    return data.decode().split("\n")


@pytest.fixture
def path_sock(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    p = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(p)
    try:
        yield p, s
    finally:
        s.close()


@pytest.fixture
def abstract_sock() -> Iterator[tuple[str, socket.socket]]:
    name = f"agentlatd-test-{secrets.token_hex(6)}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    try:
        yield "@" + name, s
    finally:
        s.close()


def test_path_socket_gets_ready_and_status_in_one_datagram(path_sock: tuple[str, socket.socket]) -> None:
    addr, rx = path_sock
    n = Notifier.from_env({"NOTIFY_SOCKET": addr})
    assert n.enabled
    assert n.ready("3 agents; hot CPUs: none;\n 12 changes")
    assert _recv(rx) == ["READY=1", "STATUS=3 agents; hot CPUs: none; 12 changes"]
    assert n.sent == 1 and n.errors == 0


def test_abstract_socket(abstract_sock: tuple[str, socket.socket]) -> None:
    addr, rx = abstract_sock
    n = Notifier.from_env({"NOTIFY_SOCKET": addr})
    assert n.stopping("rolling back")
    assert _recv(rx) == ["STOPPING=1", "STATUS=rolling back"]


def test_reloading_carries_monotonic_usec(path_sock: tuple[str, socket.socket]) -> None:
    addr, rx = path_sock
    n = Notifier(addr)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    msg = _recv(rx)
    assert msg[0] == "RELOADING=1"
    key, _, val = msg[1].partition("=")
    assert key == "MONOTONIC_USEC" and int(val) >= before


def test_status_not_resent_when_unchanged(path_sock: tuple[str, socket.socket]) -> None:
    addr, rx = path_sock
    n = Notifier(addr)
    assert n.status("a") and n.status("a") and n.status("b")
    assert _recv(rx) == ["STATUS=a"]
    assert _recv(rx) == ["STATUS=b"]
    assert n.sent == 2


def test_no_notify_socket_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready() and n.watchdog_interval is None and n.watchdog_due() is None
    assert n.errors == 0


def test_unset_removes_the_variables(path_sock: tuple[str, socket.socket]) -> None:
    env = {"NOTIFY_SOCKET": path_sock[0], "WATCHDOG_USEC": "2000000",
           "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = Notifier.from_env(env, unset=True)
    assert n.enabled and n.watchdog_interval == 1.0
    assert env == {"PATH": "/bin"}


def test_watchdog_interval_is_half_of_watchdog_usec_and_honours_pid(
        path_sock: tuple[str, socket.socket]) -> None:
    addr, rx = path_sock
    mine = Notifier.from_env({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "2000000",
                              "WATCHDOG_PID": "4242"}, pid=4242)
    assert mine.watchdog_interval == 1.0
    other = Notifier.from_env({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "2000000",
                               "WATCHDOG_PID": "4243"}, pid=4242)
    assert other.watchdog_interval is None  # inherited from a parent: not ours to ping
    nopid = Notifier.from_env({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "30000000"})
    assert nopid.watchdog_interval == 15.0
    for bad in ("0", "-5", "soon"):
        assert Notifier.from_env({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": bad}).watchdog_interval is None

    # cadence: due at once, then every interval (driven with an explicit clock)
    assert mine.watchdog_if_due(now=100.0)
    assert not mine.watchdog_if_due(now=100.5)
    assert mine.watchdog_due(now=100.5) == pytest.approx(0.5)
    assert mine.watchdog_if_due(now=101.0)
    assert _recv(rx) == ["WATCHDOG=1"] and _recv(rx) == ["WATCHDOG=1"]
    rx.settimeout(0.05)
    with pytest.raises(TimeoutError):
        rx.recv(4096)


def test_failed_send_is_logged_and_counted_not_swallowed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = str(tmp_path / "nobody-listens")
    n = Notifier(gone, watchdog_usec=2_000_000)
    with caplog.at_level(logging.DEBUG, logger="agentlatd.sdnotify"):
        assert not n.watchdog()
        assert not n.watchdog()
    assert n.errors == 2 and n.sent == 0
    errs = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errs) == 1  # a dead socket is reported once, not at every ping
    assert "ENOENT" in errs[0].getMessage() and gone in errs[0].getMessage()
    assert "WATCHDOG=1" in errs[0].getMessage()

    # the socket comes back: the next send works and says so
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(gone)
    try:
        with caplog.at_level(logging.INFO, logger="agentlatd.sdnotify"):
            assert n.watchdog()
        assert _recv(s) == ["WATCHDOG=1"]
        assert any("works again" in r.getMessage() for r in caplog.records)
    finally:
        s.close()


def test_bad_notify_socket_value_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="agentlatd.sdnotify"):
        n = Notifier.from_env({"NOTIFY_SOCKET": "relative/path"})
    assert not n.enabled
    assert "neither a path nor an abstract" in caplog.text


def test_assignment_must_be_one_line(path_sock: tuple[str, socket.socket]) -> None:
    n = Notifier(path_sock[0])
    for bad in ("READY", "STATUS=a\nREADY=1"):
        with pytest.raises(ValueError):
            n.notify(bad)


# -- socket activation ---------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, os, sys
    from agentlatd import sdnotify
    env = dict(os.environ)
    fds = sdnotify.listen_fds(env)
    s = sdnotify.inherited_socket(sys.argv[1], dict(os.environ))
    out = {"fds": fds, "left": sorted(k for k in env if k.startswith("LISTEN_")),
           "got": s is not None}
    if s is not None:
        c, _ = s.accept()
        c.sendall(b"hello")
        c.close()
    print(json.dumps(out))
""")


def test_inherited_listening_socket_from_listen_fds(tmp_path: Path) -> None:
    """A child gets a listening socket as fd 3 with LISTEN_PID = its own pid, like systemd does."""
    path = str(tmp_path / "agentlatd.sock")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(4)
    # like systemd between fork and exec: move the socket to fd 3, set
    # LISTEN_PID to the pid that will exec the daemon, exec
    launcher = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                "os.execv(sys.executable, [sys.executable, '-c', sys.argv[2], sys.argv[3]])")
    hi = os.dup(lsock.fileno())
    cmd = [sys.executable, "-c", launcher, str(hi), _CHILD, path]
    proc = subprocess.Popen(cmd, pass_fds=(hi,), stdout=subprocess.PIPE, text=True)
    os.close(hi)
    try:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(10)
        c.connect(path)
        assert c.recv(16) == b"hello"
        c.close()
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        lsock.close()
    doc = json.loads(out)
    assert doc == {"fds": [3], "left": [], "got": True}


def test_listen_fds_for_another_pid_are_not_ours() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert sdnotify.listen_fds(env) == []
    assert env == {}  # unset anyway: they were never ours


def test_wrong_kind_of_inherited_fd_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d.bind(str(tmp_path / "dgram"))
    try:
        assert not sdnotify.is_unix_stream_listener(d.fileno())
    finally:
        d.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "a.sock"))
    s.listen(1)
    try:
        assert sdnotify.is_unix_stream_listener(s.fileno(), str(tmp_path / "a.sock"))
        assert not sdnotify.is_unix_stream_listener(s.fileno(), str(tmp_path / "b.sock"))
    finally:
        s.close()
    r, w = os.pipe()
    try:
        assert not sdnotify.is_unix_stream_listener(r)
    finally:
        os.close(r)
        os.close(w)
