"""Who may register what, recycled pids, and hostile input on the socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from agentshelpers import (
    Daemon,
    all_on,
    current_affinity,
    daemon,
    env_for_children,
    kill_quietly,
    needs_2cpus,
    needs_root,
    policy_text,
    request,
    starttime,
    wait_until,
    workdir,
)

pytestmark = [needs_root, needs_2cpus]
NOBODY = 65534


def as_nobody(sock_path: str, requests: list[dict[str, Any]], hold: bool = False) -> Any:
    """Fork a child that drops to uid/gid 65534 (nobody/nogroup), sends `requests` on
    one connection and returns the answers. hold=True: the child then waits for a
    byte on a pipe before exiting; returns (answers, child pid, release function)."""
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on, only os._exit
        code = 1
        try:
            os.close(r)
            os.close(w2)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = []
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.settimeout(10)
                c.connect(sock_path)
                f = c.makefile("rwb")
                for i, req in enumerate(requests):
                    f.write((json.dumps({"v": 1, "id": i, **req}) + "\n").encode())
                    f.flush()
                    out.append(json.loads(f.readline()))
                os.write(w, json.dumps(out).encode() + b"\n")
                os.close(w)
                if hold:
                    os.read(r2, 1)
            code = 0
        except BaseException as e:  # pragma: no cover - reported through the pipe
            with contextlib.suppress(OSError):
                os.write(w, json.dumps({"child_error": repr(e)}).encode() + b"\n")
        os._exit(code)
    os.close(w)
    os.close(r2)
    with os.fdopen(r, "rb") as f:
        answers = json.loads(f.readline())

    def release() -> None:
        with contextlib.suppress(OSError):
            os.write(w2, b"x")
        os.close(w2)
        os.waitpid(pid, 0)

    if hold:
        return answers, pid, release
    release()
    return answers


def test_non_root_peer_may_not_register_another_uids_process() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        root_proc = subprocess.Popen(["sleep", "30"])
        try:
            ans = as_nobody(str(dm.socket), [{"op": "register", "agent_id": "x",
                                              "pid": root_proc.pid}])
            assert isinstance(ans, list), ans
            a = ans[0]
            assert a["ok"] is False
            assert a["error"]["code"] == "not_permitted"
            msg = a["error"]["message"]
            assert f"uid {NOBODY} may register only its own processes" in msg
            assert f"process {root_proc.pid} runs as uid 0" in msg
            assert all_on(root_proc.pid, current_affinity())
            assert dm.agents() == []
        finally:
            kill_quietly(root_proc)


def test_non_root_peer_registers_itself_but_cannot_touch_roots_agent() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        root_proc = subprocess.Popen(["sleep", "30"])
        try:
            assert dm.request("register", agent_id="rootagent", pid=root_proc.pid)["ok"]
            ans, child, release = as_nobody(str(dm.socket), [
                {"op": "register", "agent_id": "mine"},
                {"op": "step", "pid": root_proc.pid, "count": 1, "samples_ns": [5]},
                {"op": "unregister", "pid": root_proc.pid},
            ], hold=True)
            try:
                assert ans[0]["ok"], ans
                assert ans[0]["result"]["pid"] == child and ans[0]["result"]["home_cpu"] == 1
                assert all_on(child, "1")
                assert [a["error"]["code"] for a in ans[1:]] == ["not_permitted"] * 2
                rows = {r["agent_id"]: r for r in dm.agents()}
                assert rows["mine"]["uid"] == NOBODY and rows["rootagent"]["uid"] == 0
            finally:
                release()
            wait_until(lambda: [r["agent_id"] for r in dm.agents()] == ["rootagent"], 5.0,
                       what="nobody's agent dropped at its exit")
        finally:
            kill_quietly(root_proc)


def test_register_refuses_missing_and_recycled_processes() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        p = subprocess.Popen(["sleep", "30"])
        try:
            st = starttime(p.pid)
            a = dm.request("register", agent_id="x", pid=p.pid, starttime=st + 1)
            assert not a["ok"] and a["error"]["code"] == "no_such_process"
            assert "pid was reused" in a["error"]["message"]
            assert all_on(p.pid, current_affinity())
            assert dm.request("register", agent_id="x", pid=p.pid, starttime=st)["ok"]
        finally:
            kill_quietly(p)
        a = dm.request("register", agent_id="gone", pid=p.pid)
        assert not a["ok"] and a["error"]["code"] == "no_such_process"
        a = dm.request("register", agent_id="kthread", pid=2)
        assert not a["ok"] and a["error"]["code"] == "bad_request"


RECYCLE = r'''
import json, os, signal, socket, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from agentshelpers import all_on, request, starttime, wait_ticks, wait_until
argv, sock = json.loads(sys.argv[2]), sys.argv[3]
env = dict(os.environ)
d = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(sys.argv[4], "wb"),
                     stderr=subprocess.STDOUT, env=env)
out = {}
def up():
    try:
        return request(sock, "ping", timeout=1)["ok"]
    except OSError:
        return False
try:
    wait_until(up, 20)
    p1 = subprocess.Popen(["sleep", "60"])
    x, st1 = p1.pid, starttime(p1.pid)
    out["register"] = request(sock, "register", agent_id="p1", pid=x)
    out["p1_pinned"] = all_on(x, "1")
    # freeze the daemon, let p1 die and hand its pid to a new process
    os.kill(d.pid, signal.SIGSTOP)
    p1.kill(); p1.wait()
    time.sleep(0.05)  # starttime has 10 ms resolution: make the two differ
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:  # this pid namespace only
        f.write(str(x - 1))
    p2 = subprocess.Popen(["sleep", "60"])
    out["reused"] = p2.pid == x
    out["st_differ"] = starttime(p2.pid) != st1
    os.kill(d.pid, signal.SIGCONT)
    # several ticks of each loop (exits, new threads, placement), counted: after a bare
    # sleep a slow daemon may not have ticked, and "untouched" would prove nothing
    wait_ticks(lambda: request(sock, "status")["result"], 7)
    out["p2_affinity_untouched"] = all_on(p2.pid, "0-1")
    out["agents_after"] = request(sock, "agents")["result"]
    out["register_old_identity"] = request(sock, "register", agent_id="p1", pid=x, starttime=st1)
    out["p2_still_untouched"] = all_on(p2.pid, "0-1")
    p2.kill(); p2.wait()
finally:
    d.send_signal(signal.SIGTERM)
    out["daemon_rc"] = d.wait(20)
print(json.dumps(out))
'''


def test_a_recycled_pid_is_never_pinned() -> None:
    """Real pid reuse, in a pid namespace of the test's own (ns_last_pid there)."""
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"]).returncode != 0:
        pytest.skip("cannot create a pid namespace here")
    if os.sched_getaffinity(0) != {0, 1}:
        pytest.skip("the scenario compares against affinity 0-1")
    with workdir() as d:
        (d / "agentlatd.toml").write_text(policy_text())
        argv = [sys.executable, "-m", "agentlatd", "run", "--config", str(d / "agentlatd.toml"),
                "--state-dir", str(d / "state"), "--socket", str(d / "agentlatd.sock")]
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", RECYCLE, here,
             json.dumps(argv), str(d / "agentlatd.sock"), str(d / "daemon.log")],
            capture_output=True, text=True, env=env_for_children(), timeout=120)
        assert out.returncode == 0, out.stderr + (d / "daemon.log").read_text()
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["register"]["ok"] and res["p1_pinned"], res
        if not res["reused"] or not res["st_differ"]:
            pytest.skip("the kernel did not hand out the same pid again")
        assert res["p2_affinity_untouched"], res
        assert res["agents_after"] == [], res
        assert res["register_old_identity"]["error"]["code"] == "no_such_process", res
        assert res["p2_still_untouched"]
        assert res["daemon_rc"] == 0


# ---------------------------------------------------------------------------
# hostile input


def raw(sock_path: str, data: bytes, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Send raw bytes; read answers until the daemon closes or stays quiet."""
    out: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(timeout)
        c.connect(sock_path)
        c.sendall(data)
        buf = b""
        want = data.count(b"\n")
        while len(out) < want:
            try:
                chunk = c.recv(1 << 16)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                out.append(json.loads(line))
    return out


@pytest.fixture(scope="module")
def bad_input_daemon() -> Iterator[Daemon]:
    """One daemon for every bad-input case below: each case opens its own connection (no
    state carries over: nothing bad is ever registered), so a fresh daemon per case only
    added a start (~2 s on a quiet 2-core machine, 19 times); the one daemon must now also
    answer every bad line in a row and serve on."""
    with workdir() as d, daemon(d, policy_text()) as dm:
        yield dm


@pytest.mark.parametrize("line, code", [
    (b"not json", "bad_json"),
    (b"[1,2]", "bad_json"),
    (b'{"v":2,"op":"ping"}', "unsupported_version"),
    (b'{"v":1,"op":"reboot"}', "unknown_op"),
    (b'{"v":1,"op":"register"}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"x","pid":"1"}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"x","pid":-5}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"x","pid":1e3}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"x","pid":99999999999}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"x","pid":true}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"../../etc/passwd\\n","pid":1}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"' + b"a" * 200 + b'"}', "bad_request"),
    (b'{"v":1,"op":"register","agent_id":"x","latency_class":"realtime"}', "bad_request"),
    (b'{"v":1,"op":"step","count":3,"samples_ns":[1,2]}', "bad_request"),
    (b'{"v":1,"op":"step","hist":{"99999":1}}', "bad_request"),
    (b'{"v":1,"op":"step","hist":{"10":-1}}', "bad_request"),
    (b'{"v":1,"op":"step","count":1,"samples_ns":[1]}', "not_registered"),
    (b'{"v":1,"op":"unregister"}', "not_registered"),
    (b"[" * 100000 + b"]" * 10, "too_large"),
])
def test_bad_input_gets_an_error_code_and_a_sentence(bad_input_daemon: Daemon, line: bytes,
                                                     code: str) -> None:
    dm = bad_input_daemon
    assert dm.proc.poll() is None, dm.log[-2000:]
    ans = raw(str(dm.socket), line + b"\n")
    assert len(ans) == 1, ans
    assert ans[0]["ok"] is False and ans[0]["error"]["code"] == code, ans
    msg = ans[0]["error"]["message"]
    assert isinstance(msg, str) and len(msg) > 10
    assert dm.request("ping")["ok"]  # still serving
    assert dm.proc.poll() is None, dm.log[-2000:]


def test_one_bad_client_never_stalls_the_others() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        # pipelined good and bad requests on one connection: answers in order, ids kept
        lines = b"".join([b'{"v":1,"op":"ping","id":1}\n', b"garbage\n",
                          b'{"v":1,"op":"ping","id":"two"}\n', b'{"v":1,"op":"nope","id":3}\n'])
        ans = raw(str(dm.socket), lines)
        assert [a.get("id") for a in ans] == [1, None, "two", 3]
        assert [a["ok"] for a in ans] == [True, False, True, False]

        # a line over 64 KiB: answered too_large, connection closed
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(5)
            c.connect(str(dm.socket))
            c.sendall(b"x" * (70 * 1024))
            buf = b""
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                buf += chunk
            assert json.loads(buf.splitlines()[0])["error"]["code"] == "too_large"

        # a client that connects and never sends, one that floods without reading,
        # and a half-sent line: others are still answered at once
        idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        idle.connect(str(dm.socket))
        flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        flood.connect(str(dm.socket))
        flood.setblocking(False)
        half = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        half.connect(str(dm.socket))
        half.sendall(b'{"v":1,"op":"pi')
        sent = 0
        dropped = False
        try:
            msg = b'{"v":1,"op":"status"}\n' * 200
            end = time.monotonic() + 3.0
            while time.monotonic() < end and not dropped:
                try:
                    sent += flood.send(msg)
                except BlockingIOError:
                    time.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    dropped = True  # it never read its answers: the daemon let it go
            t0 = time.monotonic()
            assert request(dm.socket, "ping")["ok"]
            assert time.monotonic() - t0 < 1.0
        finally:
            for s in (idle, flood, half):
                s.close()
        assert sent > 0
        if dropped:
            assert "does not read its answers" in dm.log
        assert dm.request("ping")["ok"]
        assert dm.proc.poll() is None


def test_sighup_with_a_bad_policy_keeps_serving() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        dm.config.write_text(policy_text() + "\n[metrics]\nbogus = 1\n")
        dm.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in dm.log, 5.0, what="reload refused")
        assert "metrics.bogus" in dm.log.split("reload refused")[1].splitlines()[0]
        assert dm.request("ping")["ok"]
        dm.config.write_text(policy_text(home="1", exclusive="shared") + textwrap.dedent("""
            [classes.normal]
            pin = true
            """))
        dm.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "policy reloaded" in dm.log, 5.0, what="reload")


def test_a_trickled_partial_line_is_reaped_after_the_idle_timeout() -> None:
    """Slowloris: bytes without a complete request do not keep a connection alive."""
    import selectors
    import threading

    from agentlatd.api.server import Server, bind_socket
    with workdir() as d:
        sel = selectors.DefaultSelector()
        server = Server(sel, bind_socket(str(d / "s.sock")), {"ping": lambda c, e: {}},
                        idle_timeout=0.5)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                for key, mask in sel.select(0.02):
                    key.data(mask)
                server.process()
                server.reap_idle()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(d / "s.sock"))
                s.sendall(b'{"v":1,"op":"pi')
                s.settimeout(0.1)
                closed = False
                end = time.monotonic() + 3.0
                while time.monotonic() < end and not closed:
                    with contextlib.suppress(OSError):
                        s.send(b" ")
                    try:
                        closed = s.recv(100) == b""
                    except TimeoutError:
                        pass
                    except ConnectionResetError:
                        closed = True
                assert closed
        finally:
            stop.set()
            t.join(5)
            server.close()
            sel.close()


def test_one_uid_cannot_take_every_connection() -> None:
    pol = policy_text().replace("[daemon]\n", "[daemon]\nmax_clients = 64\n")
    with workdir() as d, daemon(d, pol) as dm:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            res = "error"
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                held = []
                for _ in range(16):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(str(dm.socket))
                    held.append(s)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect(str(dm.socket))
                res = s.recv(4096).decode()
            except BaseException as e:  # pragma: no cover - reported through the pipe
                res = repr(e)
            with contextlib.suppress(OSError):
                os.write(w, res.encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode()
        os.waitpid(pid, 0)
        ans = json.loads(msg)
        assert ans["error"]["code"] == "limit_exceeded" and "uid 65534" in ans["error"]["message"]
        assert dm.request("ping")["ok"]  # root is not limited by nobody's connections
