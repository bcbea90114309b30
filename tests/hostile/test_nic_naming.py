"""Who may steer a NIC by naming it at registration (docs/protocol.md, `devices`).

A NIC named in `register`'s `devices` counts as the agent's link: with
tuning.agent_links = "home" its RPS moves to the agent's home CPU, a
host-wide change. Only root and the admin group may name any NIC; another
peer may name only NICs the policy marks agent-nameable
(devices.agent_nameable, within the device scope), else the registration is
refused not_permitted and nothing moves.

A real `agentlatd run` inside a network namespace of this test (it sees only
the test's veth and lo: `ip netns exec` remounts sysfs), RPS the only knob on,
completion CPU 0, home CPU 1; the registering peer is uid nobody (setpriv).
The namespace, and with it the veth and its rps_cpus, is deleted in teardown.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from agentshelpers import Daemon, daemon, wait_until, workdir
from hostilehelpers import NOBODY, is_error, spawn_as
from test_security import _as

from agentlatd.cpuset import CpuSet

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, setuid)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip"),
    pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1"),
]

COMPLETION = CpuSet({0})
HOME = CpuSet({1})


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"ip {' '.join(args)}: {p.stderr.strip()}"


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    """(namespace, veth name): a veth pair, both ends in a namespace of our own."""
    sfx = secrets.token_hex(3)
    ns, dev = f"alnn-{sfx}", f"nn{sfx}"
    try:
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", f"np{sfx}")
        _ip("-n", ns, "link", "set", dev, "up")
        yield ns, dev
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        assert not os.path.exists(f"/run/netns/{ns}"), f"namespace {ns} left behind"


def _policy(dev: str, nameable: str = "") -> str:
    extra = f"agent_nameable = [\"{nameable}\"]\n" if nameable else ""
    return f"""
[daemon]
interval = 0.2
log_level = "debug"
socket_group = "nogroup"
irqbalance = "ignore"

[cpus]
completion = "{COMPLETION.to_list()}"
home = "{HOME.to_list()}"

[devices]
include = ["{dev}"]
exclude = ["lo"]
{extra}
[classes.interactive]
exclusive = "shared"

[tuning]
irq_affinity = false
rps = true
rps_flow_cnt = 0
xps = false
coalesce = false
threaded_napi = false
agent_links = "home"
"""


def _rps(ns: str, dev: str) -> CpuSet:
    p = subprocess.run(["ip", "netns", "exec", ns, "cat",
                        f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"],
                       capture_output=True, text=True, timeout=30, check=True)
    return CpuSet.parse_mask(p.stdout)


def _ticks(dm: Daemon, n: int) -> None:
    """Wait for `n` more tuner ticks (each one plans and applies)."""
    t0 = dm.status()["tick"]
    wait_until(lambda: dm.status()["tick"] >= t0 + n, 10.0, 0.05, f"{n} ticks")


def _register_as_nobody(dm: Daemon, pid: int, dev: str) -> dict[str, Any]:
    ans: list[dict[str, Any]] = _as(NOBODY, NOBODY, str(dm.socket), [
        {"op": "register", "agent_id": "nic-namer", "pid": pid, "devices": [dev]}])
    return ans[0]


def test_a_non_admin_peer_naming_a_nic_cannot_move_its_rps_to_its_home_cpu(
        veth: tuple[str, str]) -> None:
    ns, dev = veth
    victim = spawn_as(NOBODY, ["sleep", "60"])
    try:
        with workdir() as d, daemon(d, _policy(dev), prefix=("ip", "netns", "exec", ns),
                                    scope_pid=os.getpid()) as dm:
            wait_until(lambda: _rps(ns, dev) == COMPLETION, 10.0, 0.1, "RPS on completion CPU")
            ans = _register_as_nobody(dm, victim.pid, dev)
            assert is_error(ans, "not_permitted"), ans
            msg = ans["error"]["message"]
            assert dev in msg and "devices.agent_nameable" in msg, msg
            assert dm.agents() == []
            _ticks(dm, 3)
            assert _rps(ns, dev) == COMPLETION
            assert dm.status()["agent_links"] == []

            # the policy may let agents name it: then the same request is served
            dm.config.write_text(_policy(dev, nameable=dev))
            dm.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "policy reloaded" in dm.log, 10.0, 0.05, "policy reloaded")
            ans = _register_as_nobody(dm, victim.pid, dev)
            assert ans["ok"], ans
            home = ans["result"]["home_cpu"]
            wait_until(lambda: _rps(ns, dev) == CpuSet({home}), 10.0, 0.1,
                       f"{dev} RPS on home CPU {home}")
    finally:
        victim.kill()
        victim.wait()


def test_root_may_name_any_nic_in_scope(veth: tuple[str, str]) -> None:
    ns, dev = veth
    victim = subprocess.Popen(["sleep", "60"])
    try:
        with workdir() as d, daemon(d, _policy(dev), prefix=("ip", "netns", "exec", ns),
                                    scope_pid=os.getpid()) as dm:
            reg = dm.result("register", agent_id="admin-named", pid=victim.pid, devices=[dev])
            wait_until(lambda: _rps(ns, dev) == CpuSet({reg["home_cpu"]}), 10.0, 0.1,
                       f"{dev} RPS on home CPU {reg['home_cpu']}")
    finally:
        victim.kill()
        victim.wait()
