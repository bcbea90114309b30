"""The daemon as systemd runs it: a real `agentlatd run` process, the notify
socket bound by the test, signals, and real sysfs writes in a network
namespace the test creates (veth agt0/agt1; the daemon runs inside it with
`ip netns exec`, so /sys/class/net there holds only the test's devices).

Shown here:
  - READY=1 after the first apply, with a STATUS= line; the socket answers
  - WATCHDOG=1 every WATCHDOG_USEC/2 (2 s -> ~1 s), also between ticks of a
    longer interval; none when WATCHDOG_PID names another process
  - SIGHUP with a bad policy: the key path is logged, the old policy stays in
    force (nothing of the bad one is applied), the socket still answers;
    SIGHUP with a good policy takes effect
  - SIGTERM rolls back every change (rps_cpus of agt0) and exits 0
  - kill -9, then the unit's own ExecStopPost command restores the journal
  - under exactly the unit's CapabilityBoundingSet the daemon still applies
    and rolls back (CAP_NET_ADMIN is what rps_cpus needs)
  - socket activation: a listening socket passed as fd 3 (LISTEN_FDS) is
    served, and left in place at exit (it belongs to agentlatd.socket)
"""

from __future__ import annotations

import itertools
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from typing import Any, cast

import pytest
from agentshelpers import wait_ticks
from servicehelpers import (
    NotifySocket,
    policy_text,
    run_daemon,
    veth_netns,
    wait_until,
)

UNIT = pathlib.Path(__file__).resolve().parents[2] / "systemd" / "agentlatd.service"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def notify(tmp_path: pathlib.Path) -> NotifySocket:
    n = NotifySocket.bind(tmp_path)
    yield n  # type: ignore[misc]
    n.close()


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


def _rps(netns: str) -> dict[str, str]:
    """rps_cpus of every rx queue of agt0, as the namespace shows them."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "sh", "-c",
         "for f in /sys/class/net/agt0/queues/rx-*/rps_cpus; do echo $f $(cat $f); done"],
        check=True, capture_output=True, text=True, timeout=30).stdout
    return dict(line.split() for line in out.splitlines())


def _is_zero_mask(v: str) -> bool:
    return int(v.replace(",", ""), 16) == 0


def _unit_value(key: str) -> str:
    m = re.search(rf"^{key}=(.*)$", UNIT.read_text(), re.M)
    assert m is not None, f"{key}= not in {UNIT}"
    return m.group(1).strip()


# ---------------------------------------------------------------------------


def test_ready_after_first_apply_with_status_and_the_socket_answers(
        tmp_path: pathlib.Path, notify: NotifySocket) -> None:
    with run_daemon(tmp_path, policy_text(), notify=notify) as d:
        msg = notify.wait_for("READY=1", timeout=60)
        assert d.alive(), d.log
        statuses = [ln for _, m in notify.messages for ln in m if ln.startswith("STATUS=")]
        assert statuses, f"no STATUS= line: {notify.messages}"
        assert "\n" not in statuses[-1]
        assert any(ln.startswith("STATUS=") for ln in msg) or statuses
        ans = d.request("status")
        assert ans.get("ok") is True, ans
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.log
    assert any("STOPPING=1" in m for m in notify.collect()), notify.messages


def test_watchdog_pings_every_half_watchdog_usec_even_between_ticks(
        tmp_path: pathlib.Path, notify: NotifySocket) -> None:
    # ticks every 3 s; WATCHDOG_USEC = 2 s: pings must come every ~1 s anyway
    with run_daemon(tmp_path, policy_text(interval=3.0), notify=notify,
                    env={"WATCHDOG_USEC": "2000000"}) as d:
        notify.wait_for("READY=1", timeout=60)
        got = notify.drain(4.6)
        assert d.alive(), d.log
    pings = [t for t, m in got if "WATCHDOG=1" in m]
    assert len(pings) >= 3, f"{len(pings)} pings in 4.6 s: {got}"
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.5 <= g <= 1.5 for g in gaps), f"ping gaps {gaps} (want ~1.0 s)"
    assert 0.8 <= sum(gaps) / len(gaps) <= 1.2, gaps


def test_no_watchdog_pings_for_another_pids_watchdog(
        tmp_path: pathlib.Path, notify: NotifySocket) -> None:
    # WATCHDOG_PID names pid 1: the variables were inherited, not ours to use
    with run_daemon(tmp_path, policy_text(interval=0.5), notify=notify,
                    env={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) as d:
        notify.wait_for("READY=1", timeout=60)
        start = len(notify.messages)
        # four counted ticks of each loop (>= 1.5 s at interval 0.5, three ping periods of
        # WATCHDOG_USEC) before looking: after a bare 1.5 s wait a slow daemon may not have
        # run at all, and "no ping" would prove nothing
        wait_ticks(lambda: cast("dict[str, Any]", d.request("status")["result"]), 4)
        notify.collect()
        got = notify.messages[start:]
        assert d.alive(), d.log
    assert not [m for _, m in got if "WATCHDOG=1" in m], got


@pytest.mark.netns
def test_sighup_bad_policy_keeps_the_old_one_good_policy_takes_effect(
        tmp_path: pathlib.Path, notify: NotifySocket) -> None:
    _needs_root()
    with veth_netns() as ns:
        before = _rps(ns)
        assert before and all(_is_zero_mask(v) for v in before.values()), before
        # old policy: agt0 in scope, RPS off -> nothing to change
        with run_daemon(tmp_path, policy_text(include="agt0", rps=False), notify=notify,
                        netns=ns) as d:
            notify.wait_for("READY=1", timeout=60)
            assert _rps(ns) == before

            # bad policy: wants RPS, but has a typo; nothing of it may apply
            d.config.write_text(policy_text(include="agt0", rps=True,
                                            extra="[heat]\nhott = 0.5\n"))
            d.signal(signal.SIGHUP)
            notify.wait_for("RELOADING=1", timeout=20)
            notify.wait_for("READY=1", timeout=20)  # the reload is over, failed or not
            wait_until(lambda: "heat.hott" in d.log, 10, "the bad key path in the log")
            line = next(ln for ln in d.log.splitlines() if "heat.hott" in ln)
            assert str(d.config) in line, line
            # three ticks of each loop under the old policy, counted: after a bare sleep a
            # slow daemon may not have ticked, and "nothing of it applied" would prove nothing
            wait_ticks(lambda: cast("dict[str, Any]", d.request("status")["result"]), 3)
            assert d.alive(), d.log
            assert _rps(ns) == before, "a part of the bad policy was applied"
            ans = d.request("status")
            assert ans.get("ok") is True, ans

            # good policy: RPS on -> rps_cpus of agt0 move to the completion CPUs
            d.config.write_text(policy_text(include="agt0", rps=True))
            d.signal(signal.SIGHUP)
            notify.wait_for("RELOADING=1", timeout=20)
            notify.wait_for("READY=1", timeout=20)
            wait_until(lambda: not any(_is_zero_mask(v) for v in _rps(ns).values()), 20,
                       "rps_cpus of agt0 changed by the reloaded policy")
            assert d.alive(), d.log
            d.signal(signal.SIGTERM)
            assert d.wait(30) == 0, d.log
        assert _rps(ns) == before, "SIGTERM did not roll back"


@pytest.mark.netns
def test_sigterm_rolls_back_every_change_and_exits_0(
        tmp_path: pathlib.Path, notify: NotifySocket) -> None:
    _needs_root()
    with veth_netns(queues=4) as ns:
        before = _rps(ns)
        with run_daemon(tmp_path, policy_text(include="agt0", rps=True), notify=notify,
                        netns=ns) as d:
            notify.wait_for("READY=1", timeout=60)
            changed = _rps(ns)
            assert all(not _is_zero_mask(v) for v in changed.values()), changed
            assert (d.state_dir / "journal.json").exists()
            d.signal(signal.SIGTERM)
            rc = d.wait(30)
            log = d.log
        assert rc == 0, log
        assert _rps(ns) == before, f"not rolled back: {_rps(ns)} vs {before}\n{log}"
        assert not (d.state_dir / "journal.json").exists(), "journal left after a clean stop"
        stops = [m for m in notify.collect() if "STOPPING=1" in m]
        assert stops, notify.messages


@pytest.mark.netns
def test_kill_9_then_the_units_execstoppost_restores(
        tmp_path: pathlib.Path, notify: NotifySocket) -> None:
    """What systemd does after a crash: ExecStopPost (taken from the unit file) rolls back."""
    _needs_root()
    cmd = shlex.split(_unit_value("ExecStopPost").lstrip("-"))
    assert cmd[:2] == ["/usr/bin/agentlatd", "rollback"], cmd
    with veth_netns() as ns:
        before = _rps(ns)
        with run_daemon(tmp_path, policy_text(include="agt0", rps=True), notify=notify,
                        netns=ns) as d:
            notify.wait_for("READY=1", timeout=60)
            assert all(not _is_zero_mask(v) for v in _rps(ns).values())
            d.signal(signal.SIGKILL)
            d.wait(10)
        assert all(not _is_zero_mask(v) for v in _rps(ns).values()), "kill -9 rolled back?"
        # the unit's command, with the test's state dir for /run/agentlatd
        argv = [sys.executable, "-m", "agentlatd",
                *[str(d.state_dir) if a == "/run/agentlatd" else a for a in cmd[1:]]]
        r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHONPATH": str(UNIT.parents[1])})
        assert r.returncode == 0, r.stdout + r.stderr
        assert _rps(ns) == before, r.stdout + r.stderr


@pytest.mark.netns
def test_runs_with_only_the_units_capability_bounding_set(
        tmp_path: pathlib.Path, notify: NotifySocket) -> None:
    _needs_root()
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed")
    caps = _unit_value("CapabilityBoundingSet").split()
    assert caps and all(c.startswith("CAP_") for c in caps), caps
    bset = "-all," + ",".join("+" + c[4:].lower() for c in caps)
    with veth_netns() as ns:
        before = _rps(ns)
        # ip netns exec (needs CAP_SYS_ADMIN) -> setpriv drops to the unit's set -> daemon
        prefix = ["ip", "netns", "exec", ns, "setpriv", f"--bounding-set={bset}",
                  "--inh-caps=-all", "--"]
        with run_daemon(tmp_path, policy_text(include="agt0", rps=True), notify=notify,
                        prefix=prefix) as d:
            notify.wait_for("READY=1", timeout=60)
            status = pathlib.Path(f"/proc/{d.proc.pid}/status").read_text()
            eff = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
            assert eff & (1 << 21) == 0, "CAP_SYS_ADMIN still effective: bounding set not applied"
            assert eff & (1 << 12), "CAP_NET_ADMIN missing"
            wait_until(lambda: all(not _is_zero_mask(v) for v in _rps(ns).values()), 20,
                       "rps_cpus changed under the capped daemon")
            d.signal(signal.SIGTERM)
            assert d.wait(30) == 0, d.log
            assert "EPERM" not in d.log, d.log
        assert _rps(ns) == before


def test_socket_activation_serves_the_passed_socket_and_leaves_it(
        tmp_path: pathlib.Path, notify: NotifySocket) -> None:
    path = tmp_path / "agentlatd.sock"
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(str(path))
    lsock.listen(16)
    fd = os.dup(lsock.fileno())
    # like systemd between fork and exec: fd 3, LISTEN_PID = the exec'd pid
    launcher = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                "os.execv(sys.argv[2], sys.argv[2:])")
    try:
        with run_daemon(tmp_path, policy_text(), notify=notify,
                        prefix=[sys.executable, "-c", launcher, str(fd)],
                        pass_fds=(fd,)) as d:
            os.close(fd)
            notify.wait_for("READY=1", timeout=60)
            ans = d.request("status")
            assert ans.get("ok") is True, ans
            assert "passed by systemd" in d.log, d.log
            d.signal(signal.SIGTERM)
            assert d.wait(30) == 0, d.log
        assert path.exists(), "the daemon removed agentlatd.socket's socket file"
        # still the same listening socket: systemd's copy keeps accepting
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(str(path))
        c.close()
    finally:
        lsock.close()
