"""Hostile clients on the registration socket.

A real `agentlatd run` subprocess on a temporary socket, with a policy that
steers nothing on the host (tests/integration/agentshelpers.py: no device in
scope, every device knob off, interactive home CPUs "shared"). Each bad request
must get an error answer with a code and a sentence; the daemon must keep
serving everyone else; its memory (VmRSS) and file descriptors must stay
within the bounds stated below.

Stated bounds (checked here, and in docs/hostile.md):
  - RSS_SLACK_KIB: the daemon's VmRSS after an abuse run is at most this much
    above its VmRSS before it (Python keeps freed arenas, so not zero);
  - while N partial lines are held open, VmRSS grows by at most
    N * PER_CONN_KIB + RSS_SLACK_KIB (a partial line is capped at 64 KiB,
    protocol.MAX_LINE, read in 64 KiB chunks);
  - open fds return to their count before the run (+ FD_SLACK).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from agentshelpers import (
    Daemon,
    current_affinity,
    daemon,
    policy_text,
    request,
    thread_affinities,
    wait_until,
    workdir,
)
from hostilehelpers import (
    connect,
    exchange,
    fd_count,
    is_error,
    ping_ms,
    read_answers,
    rss_anon_kib,
    rss_kib,
    wait_for_pid_state,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the daemon restores "
                                                          "affinity of other processes)")

RSS_SLACK_KIB = 16 * 1024
PER_CONN_KIB = 192  # 64 KiB line cap + one 64 KiB recv chunk + bookkeeping
FD_SLACK = 2
# a long-lived connection's register+unregister cycle: the median window's heap growth
# (test_a_long_lived_connection_...): a leak the size of the bug 238, no leak 0..82
MAX_BYTES_PER_CYCLE = 150


def _policy(max_clients: int | None = None) -> str:
    text = policy_text()
    if max_clients is not None:
        text = text.replace("[daemon]\n", f"[daemon]\nmax_clients = {max_clients}\n", 1)
    return text


@contextlib.contextmanager
def _nofile(n: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(n, hard)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---------------------------------------------------------------------------
# malformed JSON, binary garbage, unknown versions: one answer with a code each

BAD_LINES: list[tuple[bytes, str]] = [
    (b"{", "bad_json"),
    (b'{"v":1,"op":"ping"', "bad_json"),
    (b'{"v":1,"op":"ping"} trailing', "bad_json"),
    (b"null", "bad_json"),
    (b'"ping"', "bad_json"),
    (b"42", "bad_json"),
    (b"[" * 50000, "bad_json"),  # deep nesting under the line cap: RecursionError
    (b'{"v":1,"op":"ping","id":' + b"[" * 20000 + b"]" * 20000 + b"}", "bad_json"),
    (b'{"v":1e999,"op":"ping"}', "unsupported_version"),
    (b'{"v":NaN,"op":"ping"}', "unsupported_version"),
    (b"\xef\xbb\xbf{}", "unknown_op"),  # BOM: json.loads skips it; {} names no op
    (b'\xff\xfe{\x00"\x00v\x00"\x00', "bad_json"),  # UTF-16
    (b"\x00\x01\x02\x03", "bad_json"),
    (b'{"v":1,"op":"ping","id":"\xc0\xaf"}', "bad_json"),  # overlong UTF-8
    (b'{"v":1,"op":"register","agent_id":"\\ud800"}', "bad_request"),  # lone surrogate
    (b'{"v":1,"op":"register","agent_id":"a\\u0000b"}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"x","deadline_ns":1e400}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"x","devices":"eth0"}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"x","devices":[' + b'"d",' * 100 + b'"d"]}',
     "bad_request"),
    (b'{"v":1,"op":"step","samples_ns":[' + b"1," * 5000 + b"1]}", "bad_request"),
    (b'{"v":1,"op":"step","hist":{"1":1e300}}', "bad_request"),
    (b'{"v":1,"op":"ping","id":{"a":1}}', "bad_request"),
    (b'{"v":1,"op":"ping","id":"' + b"i" * 500 + b'"}', "bad_request"),
    (b'{"v":1,"op":null}', "unknown_op"),
    (b'{"v":1,"op":["ping"]}', "unknown_op"),
    (b'{"v":1,"op":"__init__"}', "unknown_op"),
    (b'{"v":1}', "unknown_op"),
]

VERSIONS: list[Any] = [0, 2, -1, 1 << 64, "1", None, 1.5, [], {}, True, 1.0, "v1"]


def test_every_bad_line_gets_an_error_with_a_code_in_order_on_one_connection() -> None:
    with workdir() as d, daemon(d, _policy()) as dm:
        with connect(dm.socket) as s:
            for i, (line, code) in enumerate(BAD_LINES):
                s.sendall(line + b"\n")
                (ans,), closed = read_answers(s, 1)
                assert is_error(ans, code), (i, line[:60], ans)
                assert not closed
            # the same connection still works after all of that
            s.sendall(b'{"v":1,"op":"ping","id":"after"}\n')
            (ans,), _ = read_answers(s, 1)
            assert ans["ok"] and ans["id"] == "after"
        assert dm.proc.poll() is None


@pytest.fixture(scope="module")
def versions_daemon() -> Iterator[Daemon]:
    """One daemon for every version case below: each case is one ping on its own connection
    (no state carries over), so a daemon per case only added a start each; the one daemon
    must now also refuse every version in a row and serve on."""
    with workdir() as d, daemon(d, _policy()) as dm:
        yield dm


@pytest.mark.parametrize("v", VERSIONS, ids=[repr(v) for v in VERSIONS])
def test_unknown_protocol_versions_are_refused_with_a_code(versions_daemon: Daemon, v: Any) -> None:
    dm = versions_daemon
    assert dm.proc.poll() is None, dm.log[-2000:]
    line = json.dumps({"v": v, "op": "ping", "id": 5}).encode() + b"\n"
    (ans,) = exchange(dm.socket, line)
    assert is_error(ans, "unsupported_version"), ans
    assert ans["id"] == 5  # the id comes back even on a version error
    assert "version 1" in ans["error"]["message"]
    assert dm.request("ping")["ok"]
    assert dm.proc.poll() is None, dm.log[-2000:]


def test_binary_garbage_is_answered_line_by_line_and_the_daemon_serves_on() -> None:
    rnd = random.Random(7)
    chunks = []
    for _ in range(400):
        n = rnd.randint(1, 2000)
        chunks.append(bytes(rnd.getrandbits(8) for _ in range(n)).replace(b"\n", b"\x00") + b"\n")
    data = b"".join(chunks)
    want = sum(1 for ln in data.split(b"\n")[:-1] if ln.strip())
    with workdir() as d, daemon(d, _policy()) as dm:
        rss0 = rss_kib(dm.proc.pid)
        got: list[dict[str, Any]] = []
        with connect(dm.socket) as s:
            t = threading.Thread(target=s.sendall, args=(data,))
            t.start()
            got, closed = read_answers(s, want, timeout=30)
            t.join(10)
        assert len(got) == want and not closed
        assert all(is_error(a) and a["error"]["code"] in ("bad_json", "bad_request") for a in got)
        assert ping_ms(dm.socket) < 1000
        assert rss_kib(dm.proc.pid) - rss0 < RSS_SLACK_KIB


def test_one_mib_line_is_refused_and_others_are_served_meanwhile() -> None:
    with workdir() as d, daemon(d, _policy()) as dm:
        rss0 = rss_kib(dm.proc.pid)
        for newline in (False, True):
            with connect(dm.socket) as s:
                s.setblocking(False)
                sent = 0
                data = b"A" * (1 << 20) + (b"\n" if newline else b"")
                end = time.monotonic() + 10
                refused = False
                while sent < len(data) and time.monotonic() < end:
                    try:
                        sent += s.send(data[sent:sent + 65536])
                    except BlockingIOError:
                        time.sleep(0.005)
                    except (BrokenPipeError, ConnectionResetError):
                        refused = True
                        break
                # others are answered at once while that connection is being refused
                assert ping_ms(dm.socket) < 1000
                s.setblocking(True)
                got, closed = read_answers(s, 1, timeout=5)
                assert got and is_error(got[0], "too_large"), got
                assert "65536" in got[0]["error"]["message"]
                assert closed or refused or sent < len(data)
                # the daemon read at most the cap before it gave up on the line
                assert sent < len(data) or refused or closed
        assert dm.proc.poll() is None
        assert rss_kib(dm.proc.pid) - rss0 < RSS_SLACK_KIB


# ---------------------------------------------------------------------------
# slowloris: partial lines held open


def test_partial_lines_held_open_cost_bounded_memory_and_stall_no_one() -> None:
    n = 200
    with workdir() as d, daemon(d, _policy()) as dm, _nofile(4096):
        ping_ms(dm.socket)
        rss0, fds0 = rss_kib(dm.proc.pid), fd_count(dm.proc.pid)
        held: list[socket.socket] = []
        try:
            for i in range(n):
                s = connect(dm.socket)
                # just under the 64 KiB cap, never finished
                s.sendall(b'{"v":1,"op":"ping","id":' + b" " * (60 * 1024 + i))
                held.append(s)
            wait_until(lambda: dm.status()["connections"] >= n + 1, 10, what="all held")
            lat = sorted(ping_ms(dm.socket) for _ in range(50))
            assert lat[-1] < 500, lat  # nobody waits for the slow ones
            peak = rss_kib(dm.proc.pid)
            assert peak - rss0 <= n * PER_CONN_KIB + RSS_SLACK_KIB, (rss0, peak)
            print(f"\n{n} partial lines of ~60 KiB held: VmRSS {rss0} -> {peak} KiB, "
                  f"ping p100 {lat[-1]:.1f} ms")
            # a trickle: one byte at a time on 20 of them, others still answered
            stop = time.monotonic() + 2.0
            while time.monotonic() < stop:
                for s in held[:20]:
                    s.send(b" ")
                assert ping_ms(dm.socket) < 500
                time.sleep(0.05)
        finally:
            for s in held:
                s.close()
        wait_until(lambda: dm.status()["connections"] <= 1, 10, what="held ones dropped")
        assert fd_count(dm.proc.pid) <= fds0 + FD_SLACK
        assert rss_kib(dm.proc.pid) - rss0 < n * PER_CONN_KIB + RSS_SLACK_KIB


def _serve(server: Any, sel: selectors.BaseSelector, stop: threading.Event) -> None:
    while not stop.is_set():
        for key, mask in sel.select(0.02):
            key.data(mask)
        server.process()
        server.reap_idle()


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickle"])
def test_a_partial_line_is_reaped_after_the_idle_timeout(tmp_path: Any, trickle: bool) -> None:
    """In-process Server (api/server.py) on a real socket with a 0.5 s idle timeout.

    Regression (trickle): Conn.last was reset by every recv(), so a client that
    trickled a partial line one byte at a time kept its connection slot and up
    to 64 KiB forever; the agents engineer fixed server.py after this test found
    it (only a complete request resets the idle clock now)."""
    from agentlatd.api.server import Server, bind_socket
    sel = selectors.DefaultSelector()
    sock = bind_socket(str(tmp_path / "s.sock"))
    server = Server(sel, sock, {"ping": lambda c, env: {"pong": True}}, idle_timeout=0.5)
    stop = threading.Event()
    t = threading.Thread(target=_serve, args=(server, sel, stop), daemon=True)
    t.start()
    try:
        with connect(tmp_path / "s.sock") as s:
            s.sendall(b'{"v":1,"op":"pi')
            end = time.monotonic() + 3.0
            closed = False
            while time.monotonic() < end and not closed:
                if trickle:
                    with contextlib.suppress(OSError):
                        s.send(b" ")
                s.settimeout(0.2)
                try:
                    closed = s.recv(100) == b""
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    closed = True
            assert closed, "the partial line's connection is still open after 3 s"
    finally:
        stop.set()
        t.join(5)
        server.close()
        sel.close()


# ---------------------------------------------------------------------------
# 1000 concurrent clients, and the connection limit


def test_a_thousand_concurrent_clients_are_all_answered() -> None:
    n = 1000
    with workdir() as d, daemon(d, _policy()) as dm, _nofile(4096):
        ping_ms(dm.socket)
        rss0, fds0 = rss_kib(dm.proc.pid), fd_count(dm.proc.pid)
        socks: list[socket.socket] = []
        t0 = time.monotonic()
        try:
            for _ in range(n):
                socks.append(connect(dm.socket, timeout=30))
            ops = [b"ping", b"status", b"agents"]
            for i, s in enumerate(socks):
                s.sendall(b'{"v":1,"op":"%s","id":%d}\n' % (ops[i % 3], i))
            for i, s in enumerate(socks):
                (ans,), _ = read_answers(s, 1, timeout=30)
                assert ans["ok"] and ans["id"] == i, ans
            st = dm.status()
            assert st["connections"] >= n + 1
            # and a second round on the same connections, all pipelined
            for i, s in enumerate(socks):
                s.sendall(b'{"v":1,"op":"ping","id":%d}\n' % (i + n))
            assert all(read_answers(s, 1, timeout=30)[0][0]["id"] == i + n
                       for i, s in enumerate(socks))
        finally:
            for s in socks:
                s.close()
        elapsed = time.monotonic() - t0
        assert elapsed < 60, elapsed
        print(f"\n{n} concurrent clients, 2 requests each: {elapsed:.2f} s, "
              f"VmRSS {rss0} -> {rss_kib(dm.proc.pid)} KiB")
        wait_until(lambda: dm.status()["connections"] <= 1, 15, what="1000 closed")
        assert fd_count(dm.proc.pid) <= fds0 + FD_SLACK
        assert rss_kib(dm.proc.pid) - rss0 < RSS_SLACK_KIB


def test_the_connection_limit_answers_limit_exceeded_and_recovers() -> None:
    with workdir() as d, daemon(d, _policy(max_clients=50)) as dm:
        socks = [connect(dm.socket) for _ in range(50)]
        try:
            for s in socks[:3]:  # they are accepted (answered)
                s.sendall(b'{"v":1,"op":"ping"}\n')
                assert read_answers(s, 1)[0][0]["ok"]
            with connect(dm.socket) as extra:
                got, closed = read_answers(extra, 1, timeout=5)
                assert got and is_error(got[0], "limit_exceeded"), got
                assert "max_clients" in got[0]["error"]["message"]
                assert closed or not read_answers(extra, 1, timeout=1)[0]
        finally:
            socks.pop().close()
        try:
            wait_until(lambda: _ping_ok(dm.socket), 10, what="a slot again")
        finally:
            for s in socks:
                s.close()
        assert dm.proc.poll() is None


def test_one_uid_cannot_take_every_connection_slot() -> None:
    """A non-root uid gets at most max(16, max_clients / 8) connections (api/server.py):
    with max_clients = 50 its 17th is refused while root still gets in."""
    from hostilehelpers import NOBODY, as_uid

    def hog(path: str) -> list[Any]:
        socks, out = [], []
        for _ in range(20):
            s = connect(path)
            socks.append(s)
            with contextlib.suppress(OSError):  # a refused one may be closed already
                s.sendall(b'{"v":1,"op":"ping"}\n')
            got, _ = read_answers(s, 1, timeout=5)
            out.append(got[0]["ok"] if got and got[0]["ok"] else
                       (got[0]["error"]["code"] if got else "closed"))
        for s in socks:
            s.close()
        return out

    with workdir() as d, daemon(d, _policy(max_clients=50)) as dm:
        res = as_uid(NOBODY, NOBODY, lambda: hog(str(dm.socket)))
        assert res[:16] == [True] * 16 and set(res[16:]) == {"limit_exceeded"}, res
        assert _ping_ok(dm.socket)


def _ping_ok(path: Any) -> bool:
    try:
        return bool(exchange(path, b'{"v":1,"op":"ping"}\n', timeout=2)[0]["ok"])
    except (OSError, IndexError, KeyError):
        return False


# ---------------------------------------------------------------------------
# clients dying mid-request


DIER = r"""
import json, os, signal, socket, sys
path, how = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
if how == "mid-line":
    s.sendall(b'{"v":1,"op":"register","agent_id":"dier","latency_')
elif how == "before-answer":
    s.sendall(b'{"v":1,"op":"register","agent_id":"dier"}\n')
elif how == "pipelined":
    s.sendall(b'{"v":1,"op":"register","agent_id":"dier"}\n' + b'{"v":1,"op":"status"}\n' * 50)
elif how == "half-close":
    s.sendall(b'{"v":1,"op":"register","agent_id":"dier"}\n')
    s.shutdown(socket.SHUT_WR)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_clients_dying_mid_request_leak_nothing() -> None:
    hows = ["mid-line", "before-answer", "pipelined", "half-close"]
    with workdir() as d, daemon(d, _policy()) as dm:
        ping_ms(dm.socket)
        fds0 = fd_count(dm.proc.pid)
        rss0 = rss_kib(dm.proc.pid)
        for i in range(60):
            p = subprocess.run([sys.executable, "-c", DIER, str(dm.socket), hows[i % 4]],
                               timeout=30, check=False, capture_output=True)
            assert p.returncode == -signal.SIGKILL, p.stderr
            if i % 10 == 0:
                assert ping_ms(dm.socket) < 1000
        wait_until(lambda: dm.agents() == [], 10, what="registrations of dead clients dropped")
        wait_until(lambda: dm.status()["connections"] <= 1, 10, what="their connections closed")
        wait_until(lambda: dm.status()["journal_entries"] == 0, 10, what="no journal entry left")
        assert fd_count(dm.proc.pid) <= fds0 + FD_SLACK
        assert rss_kib(dm.proc.pid) - rss0 < RSS_SLACK_KIB
        assert dm.proc.poll() is None


def test_unregister_then_connect_keeps_the_daemon_up() -> None:
    """Regression: unregistering a live agent closed its pidfd while it was still
    registered in the daemon's selector; the next accept() got the same fd
    number and selector.register() raised KeyError out of the main loop
    (fixed in daemon.py/registry.py by the agents engineer: close_pidfd)."""
    with workdir() as d, daemon(d, _policy()) as dm:
        child = subprocess.Popen(["sleep", "30"])
        try:
            for _ in range(5):
                with connect(dm.socket) as s:
                    for req in ({"op": "register", "agent_id": "a", "pid": child.pid},
                                {"op": "unregister", "pid": child.pid}):
                        s.sendall(json.dumps({"v": 1, "id": 1, **req}).encode() + b"\n")
                        (ans,), _ = read_answers(s, 1)
                        assert ans["ok"], ans
                    for _ in range(3):
                        assert _ping_ok(dm.socket)
            assert dm.proc.poll() is None
        finally:
            child.kill()
            child.wait()


def test_a_long_lived_connection_registering_many_agents_does_not_grow_the_daemon() -> None:
    """Regression (found by bench/soak.py: VmRSS +200 KiB/min under churn): each
    registration left ~150 bytes on its connection (Conn.owned, never read) and
    each unregister ~130 more (autoreg.declined, never pruned without
    auto_register rules), for as long as the daemon ran: ~290 bytes per
    register+unregister cycle.

    A leak grows the heap in every stretch of cycles; the allocator does not:
    its growth comes in one-off steps (a pool or arena touched for the first
    time, a high-water mark when a loaded host delays a tick and work piles up:
    single windows of +300..+1000 bytes per cycle at load 10-40, then nothing),
    and a mean over the whole run mixes those steps into the leak's rate
    (72..209 bytes per cycle with no leak at load 10). So
    the 2000 cycles are measured as 8 windows of 250, as anonymous RSS growth
    (RssAnon: heap, not shared-library pages touched for the first time), and
    the MEDIAN window must stay under MAX_BYTES_PER_CYCLE: three noisy windows of
    eight cannot fail it, a steady leak fails it. Measured at load 7-75: no leak,
    medians 0, 8, 8, 16, 82; a leak the size of the bug (both sets put back in
    the daemon by hand, ~215 bytes per cycle on average), median 238: fails."""
    windows, per_window = 8, 250

    def cycles(s: socket.socket, k: int) -> None:
        for i in range(k):
            p = subprocess.Popen(["sleep", "30"])
            try:
                for req in ({"op": "register", "agent_id": f"a{i}", "pid": p.pid},
                            {"op": "unregister", "pid": p.pid}):
                    s.sendall(json.dumps({"v": 1, **req}).encode() + b"\n")
                    (ans,), _ = read_answers(s, 1)
                    assert ans["ok"], ans
            finally:
                p.kill()
                p.wait()

    with workdir() as d, daemon(d, _policy()) as dm, connect(dm.socket) as s:
        cycles(s, 300)  # warm-up: first use of every code path and pool
        anon = [rss_anon_kib(dm.proc.pid)]
        for _ in range(windows):
            cycles(s, per_window)
            anon.append(rss_anon_kib(dm.proc.pid))
        per = [(b - a) * 1024 / per_window for a, b in itertools.pairwise(anon)]
        med = statistics.median(per)
        print(f"\n{windows} x {per_window} register+unregister cycles on one connection: RssAnon "
              f"{anon[0]} -> {anon[-1]} KiB; bytes per cycle by window {[round(x) for x in per]}, "
              f"median {med:.0f}")
        assert med < MAX_BYTES_PER_CYCLE, (anon, per)


# ---------------------------------------------------------------------------
# pids that do not exist, that just exited, zombies, kernel threads, bad types


def _free_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for pid in range(pid_max - 1, 300, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free pid")


def test_requests_naming_pids_that_do_not_exist_or_just_exited() -> None:
    with workdir() as d, daemon(d, _policy()) as dm:
        free = _free_pid()
        done = subprocess.Popen(["true"])
        done.wait()
        zombie = subprocess.Popen(["sleep", "0.01"])
        assert wait_for_pid_state(zombie.pid, "Z")  # exited, not yet reaped
        try:
            cases: list[tuple[dict[str, Any], str]] = [
                ({"op": "register", "agent_id": "x", "pid": free}, "no_such_process"),
                ({"op": "register", "agent_id": "x", "pid": done.pid}, "no_such_process"),
                ({"op": "register", "agent_id": "x", "pid": zombie.pid}, "no_such_process"),
                ({"op": "register", "agent_id": "x", "pid": 2}, "bad_request"),  # kthreadd
                ({"op": "register", "agent_id": "x", "pid": 0}, "bad_request"),
                ({"op": "register", "agent_id": "x", "pid": -1}, "bad_request"),
                ({"op": "register", "agent_id": "x", "pid": 1 << 22}, "bad_request"),
                ({"op": "register", "agent_id": "x", "pid": str(free)}, "bad_request"),
                ({"op": "register", "agent_id": "x", "pid": 1.0}, "bad_request"),
                ({"op": "register", "agent_id": "x", "pid": [1]}, "bad_request"),
                ({"op": "unregister", "pid": free}, "not_registered"),
                ({"op": "unregister", "pid": done.pid}, "not_registered"),
                ({"op": "step", "pid": free, "count": 1, "samples_ns": [5]}, "not_registered"),
                ({"op": "step", "pid": zombie.pid, "count": 0}, "not_registered"),
            ]
            for req, code in cases:
                ans = request(dm.socket, req.pop("op"), **req)
                assert is_error(ans, code), (req, ans)
            assert dm.agents() == []
            # a process that exits right after its register was sent, many times
            codes = set()
            for i in range(20):
                p = subprocess.Popen(["sleep", f"0.{i % 5:02d}"])
                ans = dm.request("register", agent_id=f"short{i}", pid=p.pid)
                codes.add("ok" if ans["ok"] else ans["error"]["code"])
                p.wait()
            assert codes <= {"ok", "no_such_process"}, codes
            wait_until(lambda: dm.agents() == [], 10, what="short-lived agents dropped")
        finally:
            zombie.wait()
        assert dm.proc.poll() is None


def test_a_recycled_pid_named_with_its_old_starttime_is_refused() -> None:
    with workdir() as d, daemon(d, _policy()) as dm:
        p = subprocess.Popen(["sleep", "30"])
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                st = int(f.read().rpartition(")")[2].split()[19])
            for wrong in (st - 1, st + 1, 0, 1 << 61):
                ans = dm.request("register", agent_id="x", pid=p.pid, starttime=wrong)
                assert is_error(ans, "no_such_process"), ans
            assert set(thread_affinities(p.pid).values()) == {current_affinity()}
        finally:
            p.kill()
            p.wait()


# ---------------------------------------------------------------------------
# the whole abuse run against one daemon: memory and fds before/after


def test_memory_and_fds_stay_bounded_over_an_abuse_run() -> None:
    with workdir() as d, daemon(d, _policy()) as dm, _nofile(4096):
        for _ in range(20):
            ping_ms(dm.socket)
        pid = dm.proc.pid
        rss0, fds0 = rss_kib(pid), fd_count(pid)
        rnd = random.Random(11)
        for rnd_i in range(3):
            # bad lines, pipelined
            data = b"".join(line + b"\n" for line, _ in BAD_LINES)
            assert len(exchange(dm.socket, data, timeout=30)) == len(BAD_LINES)
            # oversized lines
            for _ in range(5):
                with contextlib.suppress(OSError), connect(dm.socket) as s:
                    s.sendall(b"B" * (256 * 1024))
            # garbage
            g = bytes(rnd.getrandbits(8) for _ in range(200_000)).replace(b"\n", b" ")
            with contextlib.suppress(OSError), connect(dm.socket) as s:
                s.sendall(b"\n".join(g[i:i + 1000] for i in range(0, len(g), 1000)) + b"\n")
                read_answers(s, 200, timeout=10)
            # 300 clients at once
            socks = [connect(dm.socket) for _ in range(300)]
            for s in socks:
                s.sendall(b'{"v":1,"op":"status"}\n')
            for s in socks:
                read_answers(s, 1)
                s.close()
            # dying clients
            for i in range(8):
                subprocess.run([sys.executable, "-c", DIER, str(dm.socket),
                                ["mid-line", "before-answer", "pipelined", "half-close"][i % 4]],
                               timeout=30, check=False, capture_output=True)
            assert ping_ms(dm.socket) < 1000, rnd_i
        wait_until(lambda: dm.status()["connections"] <= 1, 15, what="everything closed")
        wait_until(lambda: dm.agents() == [], 10, what="no agent left")
        rss1, fds1 = rss_kib(pid), fd_count(pid)
        assert rss1 - rss0 < RSS_SLACK_KIB, (rss0, rss1)
        assert fds1 <= fds0 + FD_SLACK, (fds0, fds1)
        # record the figures for docs/hostile.md
        print(f"\nabuse run: VmRSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}")


# ---------------------------------------------------------------------------
# one uid flooding pipelined requests


def _flood(path: str, conns: int, seconds: float) -> dict[str, Any]:
    """Pipeline pings from `conns` connections for `seconds`; count the answers."""
    counts: dict[str, Any] = {"ok": 0, "rate_limited": 0, "other": 0, "retry_after_ms": []}
    lock = threading.Lock()
    until = time.monotonic() + seconds
    batch = b'{"v":1,"op":"ping","id":7}\n' * 64

    def one() -> None:
        s = connect(path)
        s.settimeout(0.2)
        buf = b""

        def reader() -> None:
            nonlocal buf
            while time.monotonic() < until + 1.0:
                try:
                    data = s.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                *lines, buf = buf.split(b"\n")
                with lock:
                    for ln in lines:
                        a = json.loads(ln)
                        if a["ok"]:
                            counts["ok"] += 1
                        elif a["error"]["code"] == "rate_limited":
                            counts["rate_limited"] += 1
                            if len(counts["retry_after_ms"]) < 5:
                                counts["retry_after_ms"].append(a["error"].get("retry_after_ms"))
                        else:
                            counts["other"] += 1

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        while time.monotonic() < until:
            with contextlib.suppress(TimeoutError):
                s.sendall(batch)
        t.join(3.0)
        s.close()

    ts = [threading.Thread(target=one, daemon=True) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 5)
    return counts


def test_one_uid_flooding_pipelined_requests_is_rate_limited_and_others_are_served() -> None:
    """The bug pinned: a uid pipelining requests from many connections got every one
    of them handled, as fast as it sent them (110 % CPU, others' ping p99 1.9 s,
    bench/flood.py): its token bucket (here 200/s, burst 50) now bounds what it
    gets handled, the rest is answered rate_limited with retry_after_ms, and
    another uid sending at the same time is never limited."""
    from hostilehelpers import NOBODY, as_uid
    rate, burst, seconds = 200, 50, 2.0
    pol = policy_text().replace(
        "[daemon]\n", f"[daemon]\nuid_requests_per_s = {rate}.0\nuid_request_burst = {burst}\n", 1)
    with workdir() as d, daemon(d, pol) as dm:
        path = str(dm.socket)
        box: dict[str, Any] = {}
        t0 = time.monotonic()
        flooder = threading.Thread(target=lambda: box.update(
            r=as_uid(NOBODY, NOBODY, lambda: _flood(path, 8, seconds))))
        flooder.start()

        def polite() -> list[Any]:
            out = []
            for _ in range(40):
                ans = exchange(path, b'{"v":1,"op":"ping"}\n', timeout=10)[0]
                out.append(ans["ok"] or ans["error"]["code"])
                time.sleep(0.02)
            return out

        got = as_uid(60001, NOBODY, polite)
        flooder.join(seconds + 30)
        elapsed = time.monotonic() - t0
        flood = box["r"]
        assert got == [True] * 40, got
        # the bucket: at most burst + rate x elapsed handled (+ slack for timing)
        assert flood["ok"] <= burst + rate * elapsed * 1.1 + 20, (flood, elapsed)
        assert flood["ok"] >= burst, flood  # limited, not shut out: the full bucket at least
        assert flood["rate_limited"] >= 1 and flood["other"] == 0, flood
        assert all(isinstance(ms, int) and ms >= 1 for ms in flood["retry_after_ms"]), flood
        assert dm.proc.poll() is None and _ping_ok(dm.socket)


def test_one_uid_cannot_hold_more_requests_in_flight_than_its_limit() -> None:
    """In-process Server, uid_max_inflight = 2, a handler that never answers (as a
    registration waits for its batch): a third request of the same uid, on a
    third connection, is answered rate_limited at once; another uid is not."""
    from hostilehelpers import NOBODY, as_uid

    from agentlatd.api.server import PENDING, Server, bind_socket
    with workdir() as d:
        path = str(d / "s.sock")
        sel = selectors.DefaultSelector()
        sock = bind_socket(path, mode=0o666)
        server = Server(sel, sock, {"register": lambda c, env: PENDING,
                                    "ping": lambda c, env: {"pong": True}}, uid_max_inflight=2)
        stop = threading.Event()
        t = threading.Thread(target=_serve, args=(server, sel, stop), daemon=True)
        t.start()

        def hold(uid_tag: str) -> list[Any]:
            socks = [connect(path) for _ in range(3)]
            out: list[Any] = []
            for s in socks:
                s.sendall(b'{"v":1,"op":"register","id":"r","agent_id":"a"}\n')
                got, _ = read_answers(s, 1, timeout=0.5)
                out.append(got[0]["error"] if got else None)
            for s in socks:
                s.close()
            return out

        try:
            got = as_uid(NOBODY, NOBODY, lambda: hold("nobody"))
            assert got[:2] == [None, None], got  # both still waiting: in flight
            assert got[2]["code"] == "rate_limited" and got[2]["retry_after_ms"] >= 1, got
            assert "in flight" in got[2]["message"], got
            other = as_uid(60001, NOBODY, lambda: exchange(path, b'{"v":1,"op":"ping"}\n'))
            assert other[0]["ok"], other
        finally:
            stop.set()
            t.join(5)
            server.close()
            sel.close()
