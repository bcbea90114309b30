"""Every knob type, every restore path, against the original: a real daemon, real
processes, real veths.

Knob types (each seen changed before it is checked back):
  device       rps_cpus / xps_cpus of a veth pair in a network namespace the
               test creates (the daemon runs inside it: it sees no other NIC)
  affinity     an interactive agent pinned to home CPU 1; a background agent on
               completion CPU 0
  nice, ioprio the background agent: nice 10, ioprio be7
  pm_qos       cpu1/power/pm_qos_resume_latency_us = 20 while the interactive
               agent lives there (this host's file: read before, checked after
               every path, and written back in teardown whatever happened)
  exclusivity  the interactive home CPU is "exclusive": the tasks moved off it
               are only those of a process tree this test starts
               (scope_pid=), never the host's

Restore paths: unregister, process exit, clean stop (SIGTERM) share one daemon;
crash + rollback (kill -9, `agentlatd rollback`) and crash + restart (kill -9,
a new daemon on the same state directory) one each.

Born after registration: each agent, and the exclusivity victim, starts a
thread (from its re-niced / pinned / narrowed main thread) and forks a child
(which starts a thread of its own) AFTER the values were set; every one of
them inherits the values and must get the original back too.

On the process exit path the agents' own threads are gone with them: what is
checked there is the processes they forked (which outlive them) and what they
leave on the CPUs. Not checked: device knobs on the unregister and process exit
paths (they are the tuner's, not an agent's: they stay tuned until the stop,
where they are checked).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from applyhelpers import cli, netns_with_veths, snapshot, snapshot_diff

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "integration"))
from agentshelpers import Daemon, start_daemon, wait_until, workdir
from taskfamily import Family

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, other processes)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip"),
    pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1"),
    pytest.mark.skipif(not os.path.exists("/sys/devices/system/cpu/cpu1/power/"
                                          "pm_qos_resume_latency_us"),
                       reason="no pm_qos_resume_latency_us on cpu1"),
]

PM_QOS = 20
QOS_FILE = "/sys/devices/system/cpu/cpu{}/power/pm_qos_resume_latency_us"
Values = dict[tuple[int, int], tuple[str, int, str]]


def _policy(devs: tuple[str, ...]) -> str:
    return f"""
[daemon]
interval = 0.2
log_level = "debug"
socket_group = "nogroup"
irqbalance = "ignore"

[cpus]
completion = "0"
home = "1"

[devices]
include = {json.dumps(list(devs))}
exclude = ["lo"]

[classes.interactive]
exclusive = "exclusive"
pm_qos_resume_latency_us = {PM_QOS}

[tuning]
irq_affinity = false
rps = true
rps_flow_cnt = 0
xps = true
coalesce = false
threaded_napi = false
"""


def _qos() -> dict[int, str]:
    out = {}
    for cpu in (0, 1):
        with open(QOS_FILE.format(cpu)) as f:
            out[cpu] = f.read().strip()
    return out


_DEVICE_KEY = re.compile(r"queues/[rt]x-\d+/(rps_cpus|xps_cpus|rps_flow_cnt)")


def _device(world: World) -> dict[str, dict[str, str]]:
    """The device knobs' values as the namespace shows them."""
    snap = snapshot(world.netns, world.devs)
    return {dev: {k: v for k, v in vals.items() if _DEVICE_KEY.fullmatch(k)}
            for dev, vals in snap.items()}


@dataclass
class World:
    netns: str
    devs: tuple[str, ...]
    dir: pathlib.Path
    victim: Family  # the exclusivity scope: only its tree may be moved
    device0: dict[str, dict[str, str]]
    qos0: dict[int, str]
    families: list[Family] = field(default_factory=list)
    cells: dict[str, str] = field(default_factory=dict)

    def family(self) -> Family:
        f = Family()
        self.families.append(f)
        return f

    def start(self, state: str = "state") -> Daemon:
        d = self.dir / state
        d.mkdir(exist_ok=True)
        dm = start_daemon(d, _policy(self.devs), prefix=("ip", "netns", "exec", self.netns),
                          scope_pid=self.victim.pid)
        wait_until(lambda: dm.status().get("ready"), 20.0, 0.1, "first tick applied")
        return dm

    def cell(self, knob: str, path: str, ok: bool, detail: str = "") -> None:
        self.cells[f"{knob:11} x {path}"] = "ok" if ok else f"FAILED {detail}"


@contextlib.contextmanager
def _world() -> Iterator[World]:
    qos0 = _qos()
    with workdir() as d, netns_with_veths(1) as v:
        victim = Family()
        w = World(v.netns, v.devs, d, victim, {}, qos0)
        try:
            w.device0 = _device(w)
            yield w
        finally:
            for f in [victim, *w.families]:
                f.kill()
            # whatever happened above, this host's pm_qos ends as it was
            for cpu, val in qos0.items():
                if _qos()[cpu] != val:
                    with open(QOS_FILE.format(cpu), "w") as fh:
                        fh.write(val)
        bad = {k: v for k, v in w.cells.items() if v != "ok"}
        print("\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(w.cells.items())))
        assert not bad, bad


@dataclass
class Agents:
    """An interactive and a background agent, registered, with their family's originals."""

    inter: Family
    back: Family
    orig: dict[str, tuple[str, int, str]]  # family -> what its main thread had before


def _register(w: World, dm: Daemon) -> Agents:
    inter, back = w.family(), w.family()
    orig = {"inter": inter.tasks()[(inter.pid, inter.pid)],
            "back": back.tasks()[(back.pid, back.pid)],
            "victim": w.victim.tasks()[(w.victim.pid, w.victim.pid)]}
    assert dm.request("register", agent_id="inter", pid=inter.pid)["ok"]
    assert dm.request("register", agent_id="back", pid=back.pid,
                      latency_class="background")["ok"]
    # every knob type changed (so that "back to the original" means something)
    assert set(inter.tasks().values()) == {("1", *orig["inter"][1:])}
    assert set(back.tasks().values()) == {("0", 10, "be7")}
    wait_until(lambda: set(w.victim.tasks().values()) == {("0", *orig["victim"][1:])}, 30.0,
               what="victim moved off the exclusive home CPU")
    wait_until(lambda: _qos()[1] == str(PM_QOS), 30.0, what="pm_qos set on the home CPU")
    assert _device(w) != w.device0, "the daemon tuned the veths"
    return Agents(inter, back, orig)


def _born_after(w: World, ag: Agents) -> None:
    """Each family starts a thread and forks a child (with a thread); they inherit."""
    for fam in (ag.inter, ag.back, w.victim):
        fam.thread()
        fam.fork()
    # (a tick may re-journal a new thread meanwhile: original, then ours again)
    wait_until(lambda: set(ag.inter.tasks().values()) == {("1", *ag.orig["inter"][1:])}, 30.0,
               what="the interactive family's new tasks pinned")
    wait_until(lambda: set(ag.back.tasks().values()) == {("0", 10, "be7")}, 30.0,
               what="the background family's new tasks in the background class")


def _check(w: World, ag: Agents, path: str, *, tasks: bool = True, victim: bool = True,
           qos: bool = True, device: bool = False) -> None:
    """Record one cell per knob type for `path`: is it back to its original?"""
    def back_to(fam: Family, orig: tuple[str, int, str], i: int) -> tuple[bool, str]:
        got = fam.tasks()
        bad = {k: v for k, v in got.items() if v[i] != orig[i]}
        return (bool(got) and not bad), f"{len(bad)}/{len(got)} tasks differ: {bad}"

    if tasks:
        fams = {"inter": ag.inter, "back": ag.back}
        for knob, i, who in (("affinity", 0, ("inter", "back")), ("nice", 1, ("back",)),
                             ("ioprio", 2, ("back",))):
            for name in who:
                ok, detail = back_to(fams[name], ag.orig[name], i)
                w.cell(knob, f"{path} ({name})", ok, detail)
    if victim:
        ok, detail = back_to(w.victim, ag.orig["victim"], 0)
        w.cell("exclusivity", path, ok, detail)
    if qos:
        w.cell("pm_qos", path, _qos() == w.qos0, f"{_qos()} != {w.qos0}")
    if device:
        diff = snapshot_diff(w.device0, _device(w))
        w.cell("device", path, not diff, "; ".join(diff[:4]))


def _victims_seen(w: World, dm: Daemon) -> None:
    """Wait for a tick that saw every task of the victim's tree (new ones included)."""
    wait_until(lambda: dm.status()["tasks_moved"] == len(w.victim.tasks()), 30.0,
               what="the tick saw the victim's new tasks")


def _kill9(dm: Daemon) -> None:
    dm.proc.send_signal(signal.SIGKILL)
    dm.proc.wait(10)


def _stop(dm: Daemon) -> None:
    with contextlib.suppress(Exception):
        if dm.proc.poll() is None:
            dm.stop()


# ---------------------------------------------------------------------------


def test_unregister_process_exit_and_clean_stop_restore_every_knob() -> None:
    with _world() as w:
        dm = w.start()
        try:
            # unregister
            ag = _register(w, dm)
            _born_after(w, ag)
            _victims_seen(w, dm)
            for a in ("inter", "back"):
                assert dm.request("unregister", agent_id=a,
                                  pid=getattr(ag, a).pid)["ok"]
            wait_until(lambda: _qos() == w.qos0, 30.0, what="pm_qos back")
            wait_until(lambda: set(w.victim.tasks().values()) == {ag.orig["victim"]}, 30.0,
                       what="victims widened")
            _check(w, ag, "unregister")

            # process exit: the agents' own threads go with them; the processes
            # they forked (seen by a tick) and what they leave on the CPUs
            # (exclusivity, pm_qos) must come back
            ag = _register(w, dm)
            _born_after(w, ag)
            _victims_seen(w, dm)
            # one more tick, begun after every fork above: it listed them all
            w.victim.thread()
            _victims_seen(w, dm)
            for fam in (ag.inter, ag.back):
                os.kill(fam.pid, signal.SIGKILL)
                fam.p.wait(10)
            wait_until(lambda: dm.status()["agents"] == 0, 30.0, what="agents gone")
            wait_until(lambda: _qos() == w.qos0, 30.0, what="pm_qos back")
            wait_until(lambda: set(w.victim.tasks().values()) == {ag.orig["victim"]}, 30.0,
                       what="victims widened")
            _check(w, ag, "process exit (forked)")

            # clean stop, with the tick having seen the new tasks
            ag = _register(w, dm)
            _born_after(w, ag)
            _victims_seen(w, dm)
            assert dm.stop() == 0, dm.log[-3000:]
            _check(w, ag, "clean stop", device=True)
        finally:
            _stop(dm)


def test_crash_then_rollback_restores_every_knob() -> None:
    with _world() as w:
        dm = w.start()
        try:
            ag = _register(w, dm)
            _born_after(w, ag)  # and no tick in between: journaled nowhere
            _kill9(dm)
            p = cli(["rollback", "--state-dir", str(dm.state_dir), "--json"], netns=w.netns)
            assert p.returncode == 0, (p.stdout, p.stderr)
            assert json.loads(p.stdout)["ok"], p.stdout
            _check(w, ag, "crash + rollback", device=True)
        finally:
            _stop(dm)


def test_crash_then_restart_restores_every_knob() -> None:
    with _world() as w:
        dm = w.start()
        try:
            ag = _register(w, dm)
            _born_after(w, ag)
            _kill9(dm)
            # a new daemon on the same state directory: it restores the agents'
            # entries before anything else (their processes register again, or not)
            dm2 = start_daemon(dm.dir, dm.config.read_text(), prefix=(
                "ip", "netns", "exec", w.netns), log_name="daemon2.log",
                scope_pid=w.victim.pid)
            try:
                wait_until(lambda: dm2.status().get("ready"), 20.0, 0.1, "first tick applied")
                _check(w, ag, "crash + restart")
                assert dm2.stop() == 0, dm2.log[-3000:]
                _check(w, ag, "crash + restart, then stop", device=True)
            finally:
                _stop(dm2)
        finally:
            _stop(dm)
