"""What a new user meets in the first hour with a running daemon: each quiet failure
says something, and `agentlatd status` shows the daemon. Real daemons on real sockets
(agentshelpers: no device in scope, nothing on the host is written)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from agentshelpers import daemon, env_for_children, policy_text, wait_until, workdir

from agentlatd.client import Connection, Unavailable

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (daemon, other uids)")


@contextlib.contextmanager
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "60"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentlatd", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env_for_children())


def test_registration_is_not_logged() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm, sleeper() as p:
        assert dm.request("register", agent_id="planner", pid=p.pid)["ok"]
        wait_until(lambda: f"agent 'planner' pid {p.pid} registered" in dm.log, 10,
                   what="the registration in the log")
        assert "class interactive" in dm.log


def test_include_pattern_matching_nothing_is_silent() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        wait_until(lambda: "devices.include pattern 'agentlatd-test-none-*' matches no device"
                   in dm.log, 10, what="the warning for devices.include")
        assert "WARNING" in next(ln for ln in dm.log.splitlines() if "devices.include" in ln)
        # said once, not at every tick (the daemon ticks every 0.2 s)
        tick = dm.status()["tick"]
        wait_until(lambda: dm.status()["tick"] >= tick + 5, 10, what="five more ticks")
        assert dm.log.count("matches no device") == 1, dm.log


# every CPU of this host as a completion CPU: no home CPU is left (a list naming CPUs the
# host lacks is refused at load: tests/hostile/test_policy_values.py)
ALL_CPUS = f"0-{(os.cpu_count() or 1) - 1}"


def test_policy_with_no_home_cpus_is_accepted_silently() -> None:
    """Degraded mode: said in the log, in the registration answer and in `agents`,
    at start and after a SIGHUP to such a policy."""
    with workdir() as d, daemon(d, policy_text(completion=ALL_CPUS, home="auto")) as dm, \
            sleeper() as p:
        wait_until(lambda: "no home CPU on this host" in dm.log, 10, what="the degraded warning")
        ans = dm.request("register", agent_id="a", pid=p.pid)
        assert ans["ok"] and "no home CPU on this host" in ans["result"]["problem"], ans
        (row,) = dm.agents()
        assert row["home_cpu"] is None and "degraded" in row["problem"]
        out = cli("agents", "--socket", str(dm.socket)).stdout
        assert "no home CPU" in out.replace("\n", " ").replace("  ", " "), out
    with workdir() as d, daemon(d, policy_text()) as dm, sleeper() as p:
        assert dm.request("register", agent_id="b", pid=p.pid)["ok"]
        wait_until(lambda: dm.agents()[0]["home_cpu"] == 1, 10, what="placed on CPU 1")
        dm.config.write_text(policy_text(completion=ALL_CPUS, home="auto"))
        dm.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "no home CPU on this host" in dm.log, 10, what="the warning after SIGHUP")
        wait_until(lambda: "degraded" in (dm.agents()[0]["problem"] or ""), 10,
                   what="the agent's problem after SIGHUP")


def test_permission_denied_on_the_socket_gives_no_hint() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, as uid/gid 65533 (not in nogroup)
            msg = "connected"
            try:
                os.setgroups([])
                os.setgid(65533)
                os.setuid(65533)
                Connection(str(dm.socket)).close()
            except Unavailable as e:
                msg = str(e.strerror)
            except BaseException as e:
                msg = repr(e)
            finally:
                os.write(w, msg.encode())
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            msg = f.read()
        os.waitpid(pid, 0)
        assert "Permission denied" in msg and "group nogroup" in msg and "usermod -aG nogroup" in msg, msg


def test_status_never_asks_the_running_daemon() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm, sleeper() as p:
        assert dm.request("register", agent_id="planner", pid=p.pid)["ok"]
        st = cli("status", "--interval", "0", "--socket", str(dm.socket), "--json")
        assert st.returncode == 0, st.stderr
        view = json.loads(st.stdout)["daemon"]
        assert view["pid"] == dm.proc.pid and view["agents"] == 1
        assert view["policy"] == str(dm.config) and view["yielded"] == []
        assert {"uptime_s", "journal_entries", "drift", "tuner_error"} <= set(view)
        text = cli("status", "--interval", "0", "--socket", str(dm.socket)).stdout
        assert text.startswith(f"Daemon: pid {dm.proc.pid}, up "), text
        assert "agents 1, changes held" in text and "last tick's errors: none" in text
    gone = cli("status", "--interval", "0", "--socket", str(d / "agentlatd.sock"), "--json")
    doc = json.loads(gone.stdout)
    assert doc["daemon"] is None and "No such file" in doc["daemon_unavailable"]


def test_trace_is_silent_while_it_runs() -> None:
    """Up to an hour of tracing: stderr says what is traced and how far along it is."""
    with sleeper() as p:
        r = cli("trace", "--pid", str(p.pid), "--method", "schedstat", "--duration", "2.5")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("agentlatd trace: tracing ") and "for 2.5 s" in lines[0], lines
    assert any(ln.startswith("agentlatd trace: 1 of 2.5 s") for ln in lines), lines
    assert "of 2.5 s" not in r.stdout  # the report stays clean for scripts


@contextlib.contextmanager
def veth_netns() -> Iterator[tuple[str, str]]:
    """A fresh network namespace holding one veth pair (both ends), removed after."""
    tag = secrets.token_hex(3)
    ns, a, b = f"fh-{tag}", f"fha{tag}", f"fhb{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b],
                       check=True, timeout=30)
        for dev in (a, b):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True, timeout=30)
        yield ns, a
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)


def test_drift_appears_only_in_metrics() -> None:
    """Another writer changes a knob agentlatd set: the log says so (and `status` shows
    the knob yielded), not only a metric."""
    with veth_netns() as (ns, dev), workdir() as d:
        pol = policy_text(extra="").replace('include = ["agentlatd-test-none-*"]',
                                            f'include = ["{dev}"]').replace("rps = false",
                                                                            "rps = true")
        rps = f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"
        with daemon(d, pol, prefix=("ip", "netns", "exec", ns)) as dm:
            wait_until(lambda: dm.status()["journal_entries"] > 0, 20, what="RPS steered")
            subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo 2 > {rps}"], check=True,
                           timeout=30)
            wait_until(lambda: f"drift: net.rps_cpus {dev}/rx-0 is 1, agentlatd wrote 0" in dm.log,
                       10, what="the drift in the log")
            line = next(ln for ln in dm.log.splitlines() if "drift:" in ln)
            assert "WARNING" in line and "yielded" in line, line
            text = subprocess.run([sys.executable, "-m", "agentlatd", "status", "--interval", "0",
                                   "--socket", str(dm.socket)], capture_output=True, text=True,
                                  timeout=60, env=env_for_children()).stdout
            assert f"yielded to another writer: net.rps_cpus {dev}/rx-0" in text, text
