"""Per-home-CPU pm_qos_resume_latency_us, only while an agent lives there.

Never on this host's CPUs: the sysfs side is a temporary tree whose proc/ is
a symlink to the real /proc (real processes register) and whose
sys/devices/system/cpu/cpuN/power/pm_qos_resume_latency_us are plain files.
Task knobs act on the live kernel only, so on this tree they are refused
("unsupported") and only the pm_qos writes happen, into the tree.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
from agentshelpers import agent_side, register_as_root

from agentlatd.agents import views
from agentlatd.agents.registry import AgentManager
from agentlatd.apply.engine import Engine
from agentlatd.sysfs.root import Root

POLICY = """
[classes.interactive]
exclusive = "shared"
pm_qos_resume_latency_us = 20

[classes.normal]
pin = true
pm_qos_resume_latency_us = 10
"""


def tree(base: pathlib.Path) -> Root:
    os.symlink("/proc", base / "proc")
    for c in (0, 1):
        p = base / f"sys/devices/system/cpu/cpu{c}/power"
        p.mkdir(parents=True)
        (p / "pm_qos_resume_latency_us").write_text("0\n")
    return Root(str(base))


def qos(base: pathlib.Path, cpu: int) -> str:
    return (base / f"sys/devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us") \
        .read_text().strip()


@pytest.fixture
def setup(tmp_path: pathlib.Path) -> tuple[pathlib.Path, AgentManager, Engine]:
    base = tmp_path  # pytest's, removed with its others (a mkdtemp here was never removed)
    root = tree(base)
    eng, mgr = agent_side(base / "state", policy=POLICY, root=root)
    return base, mgr, eng


def register(mgr: AgentManager, pid: int, cls: str) -> None:
    register_as_root(mgr, pid, cls)
    mgr.place_pending()
    mgr.upkeep.reconcile_cpus()


def test_pm_qos_only_while_an_agent_lives_there(
        setup: tuple[pathlib.Path, AgentManager, Engine]) -> None:
    base, mgr, eng = setup
    a = subprocess.Popen(["sleep", "30"])
    b = subprocess.Popen(["sleep", "30"])
    try:
        assert qos(base, 1) == "0"
        register(mgr, a.pid, "interactive")
        assert qos(base, 1) == "20" and qos(base, 0) == "0"
        assert [(e.knob, e.target, e.original) for e in eng.entries()] == \
            [("cpu.pm_qos_resume_latency_us", "1", "0")]
        register(mgr, b.pid, "normal")  # two agents on CPU 1: the tighter bound wins
        assert qos(base, 1) == "10"
        mgr.unregister(next(p for p in mgr.agents if p.pid == b.pid))
        mgr.upkeep.reconcile_cpus()
        assert qos(base, 1) == "20"
        mgr.unregister(next(p for p in mgr.agents if p.pid == a.pid))
        mgr.upkeep.reconcile_cpus()
        assert qos(base, 1) == "0"  # the CPU's own value, restored
        assert eng.entries() == ()
        assert views.status(mgr)["pm_qos"] == {}
    finally:
        for p in (a, b):
            p.kill()
            p.wait()
        eng.rollback()
        eng.close()


def test_pm_qos_restored_by_rollback_and_after_exit(
        setup: tuple[pathlib.Path, AgentManager, Engine]) -> None:
    base, mgr, eng = setup
    a = subprocess.Popen(["sleep", "30"])
    try:
        register(mgr, a.pid, "interactive")
        assert qos(base, 1) == "20"
        rep = eng.rollback()  # what SIGTERM does
        assert rep.ok and qos(base, 1) == "0"
    finally:
        a.kill()
        a.wait()
        eng.close()


def test_agent_exit_releases_pm_qos(setup: tuple[pathlib.Path, AgentManager, Engine]) -> None:
    base, mgr, eng = setup
    a = subprocess.Popen(["sleep", "30"])
    try:
        register(mgr, a.pid, "interactive")
        assert qos(base, 1) == "20"
        a.kill()
        a.wait()
        mgr.upkeep.tick()  # polling path (no pidfd selector here): exit noticed, CPU released
        assert not mgr.agents and qos(base, 1) == "0"
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
        eng.rollback()
        eng.close()
