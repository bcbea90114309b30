"""A device deleted and re-created under the same name never gets the old one's original.

The bug pinned: a journal keying device knobs by name alone. A veth deleted and
re-created as "agt0" (its administrator setting a new rps_cpus) got the deleted
device's original written over that value at stop, at `rollback` after a
kill -9, and at the restart after a crash. Here a real daemon in its own
network namespace tunes agt0, the administrator replaces agt0 with a new veth
whose rps_cpus they chose, and every path that restores originals must leave
that value alone (and say "device replaced, original not restored").

Safety: everything happens inside a network namespace the test creates and
deletes; the policy names only agt0 (devices.include), IRQs and sysctls off.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
from servicehelpers import REPO, ns_read, ns_run, policy_text, run_daemon, veth_netns, wait_until

from agentlatd.apply import journal_read

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")]

RPS = "/sys/class/net/agt0/queues/rx-0/rps_cpus"


def _mask(v: str) -> int:
    return int(v.replace(",", ""), 16)


def _cli(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "agentlatd", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _replace_agt0(ns: str, admins: int) -> None:
    """What an administrator does: delete agt0, make a new veth, set its rps_cpus
    (before it takes the name, so no daemon tick can come in between), name it agt0."""
    for argv in (["link", "del", "agt0"],
                 ["link", "add", "agtnew", "numrxqueues", "2", "numtxqueues", "2", "type",
                  "veth", "peer", "name", "agtnewp", "numrxqueues", "2", "numtxqueues", "2"]):
        subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True, timeout=30)
    for q in ("rx-0", "rx-1"):
        r = ns_run(ns, "sh", "-c", f"echo {admins:x} > /sys/class/net/agtnew/queues/{q}/rps_cpus")
        assert r.returncode == 0, r.stderr
    for argv in (["link", "set", "agtnew", "name", "agt0"],
                 ["link", "set", "agtnewp", "name", "agt1"],
                 ["link", "set", "agt0", "up"], ["link", "set", "agt1", "up"]):
        subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True, timeout=30)


@pytest.mark.parametrize("path", ["sigterm", "sigterm-after-a-tick", "kill9-rollback",
                                  "kill9-restart"])
def test_device_replaced_under_the_same_name_keeps_its_new_value(
        tmp_path: pathlib.Path, path: str) -> None:
    # a tick between the replacement and the stop: the engine drops the old
    # entry and journals the new device's own value; without one, the restore
    # itself must notice
    interval = 0.2 if path == "sigterm-after-a-tick" else 3600.0
    with veth_netns() as ns:
        assert _mask(ns_read(ns, RPS)) == 0
        pol = policy_text(include="agt0", rps=True, interval=interval)
        with run_daemon(tmp_path, pol, netns=ns) as d:
            wait_until(lambda: _mask(ns_read(ns, RPS)) != 0, 30, "agt0 tuned")
            tuned = _mask(ns_read(ns, RPS))
            # the administrator's value: neither the original (0) nor agentlatd's
            admins = next(m for m in (2, 1, 3) if m != tuned)
            old_ifindex = int(ns_read(ns, "/sys/class/net/agt0/ifindex"))
            _replace_agt0(ns, admins)
            assert int(ns_read(ns, "/sys/class/net/agt0/ifindex")) != old_ifindex
            if path == "sigterm-after-a-tick":
                # the daemon tunes the new agt0 too (its plan is the same)
                wait_until(lambda: _mask(ns_read(ns, RPS)) == tuned, 30, "new agt0 tuned")
            else:
                assert _mask(ns_read(ns, RPS)) == admins
            if path.startswith("kill9"):
                d.signal(signal.SIGKILL)
                d.wait(10)
            else:
                d.signal(signal.SIGTERM)
                assert d.wait(30) == 0, d.log
            log = d.log
        state = tmp_path / "state"
        if path == "kill9-rollback":
            # the printed commands a person would paste skip the new device
            printed = _cli(ns, "rollback", "--print", "--state-dir", str(state))
            assert printed.returncode == 0, printed.stderr
            assert "agt0" in printed.stdout and "ifindex" in printed.stdout, printed.stdout
            sh = ns_run(ns, "sh", "-c", printed.stdout)
            assert "device replaced, original not restored" in sh.stderr, (printed.stdout,
                                                                           sh.stderr)
            assert _mask(ns_read(ns, RPS)) == admins, printed.stdout
            r = _cli(ns, "rollback", "--json", "--state-dir", str(state))
            assert r.returncode == 0, r.stdout + r.stderr
            rep = json.loads(r.stdout)
            assert {x["status"] for x in rep["results"] if x["target"].startswith("agt0")} \
                == {"replaced"}, rep
            assert any("device replaced, original not restored" in x["message"]
                       for x in rep["results"]), rep
        elif path == "kill9-restart":
            assert journal_read.load(str(state / "journal.json")) is not None
            with run_daemon(tmp_path, pol, netns=ns) as d2:
                wait_until(lambda: "journal:" in d2.log, 30, "the journal recovered")
                # the new daemon tunes the new device and journals ITS value
                wait_until(lambda: _mask(ns_read(ns, RPS)) == tuned, 30, "new agt0 tuned")
                d2.signal(signal.SIGTERM)
                assert d2.wait(30) == 0, d2.log
                log = d2.log
        assert _mask(ns_read(ns, RPS)) == admins, log
        assert _mask(ns_read(ns, RPS.replace("rx-0", "rx-1"))) == admins, log
        assert not (state / "journal.json").exists(), log
