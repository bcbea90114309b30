"""A thread born with an agent's values is journaled without leaving them.

A thread started by a pinned (re-niced) thread inherits its affinity, nice and
ioprio. The agent tick used to give such a thread the process's original
first and then apply the class again, so that the engine journaled the true
original: for that moment the thread ran off its CPUs. The service test in the
VM caught it (1 run in 9: "every thread of the boxed agent on CPU 0" failed,
and the detail, read a moment later, showed every thread on CPU 0). Now the
change names the original to journal (Change.inherited_original) and the
thread is never written anything but the class's values.

Real processes of this test only (tests/apply/taskfamily.py), as root; the
agent side in this process, its engine journaling under a temporary directory.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest
from taskfamily import Family, task_values

from agentlatd import policy as policy_mod
from agentlatd.agents import knobs as task_knobs
from agentlatd.agents.applier import TASK_KNOBS, Applier
from agentlatd.agents.refusal import Registration
from agentlatd.agents.registry import AgentManager
from agentlatd.apply.engine import Engine
from agentlatd.cpuset import CpuSet
from agentlatd.model.layout import CpuLayout
from agentlatd.sample.tasks import ThreadId
from agentlatd.sysfs.root import HOST

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not {0, 1} <= os.sched_getaffinity(0),
                                reason="root and CPUs 0 and 1 (writes another process's "
                                       "affinity, nice and ioprio)")

WANT = ("0", 10, "be7")  # the default policy's background class on completion CPU 0


@pytest.fixture
def manager(tmp_path: pathlib.Path) -> Iterator[AgentManager]:
    eng = Engine(HOST, str(tmp_path / "state"), policy=policy_mod.default())
    mgr = AgentManager(Applier(eng), eng.policy)
    mgr.set_layout(CpuLayout(home=CpuSet({1}), completion=CpuSet({0})))
    try:
        yield mgr
    finally:
        eng.rollback()
        eng.close()


def _writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """Every task knob write from here on: (knob, tid, value)."""
    seen: list[tuple[str, int, str]] = []
    for cls in (task_knobs.TaskAffinityKnob, task_knobs.TaskNiceKnob,
                task_knobs.TaskIoprioKnob):
        def spy(self: task_knobs.TaskKnob, tid: int, value: str,
                real: object = cls._set) -> None:
            seen.append((str(self.name), tid, value))
            real(self, tid, value)  # type: ignore[operator]
        monkeypatch.setattr(cls, "_set", spy)
    return seen


def test_a_thread_born_pinned_is_never_written_the_original_while_the_tick_journals_it(
        manager: AgentManager, monkeypatch: pytest.MonkeyPatch) -> None:
    fam = Family()
    try:
        base = task_values(fam.pid, fam.pid)
        assert base != WANT and base[0] == "0-1", base
        req = Registration(agent_id="bg", pid=fam.pid, latency_class="background")
        p, uid = manager.check_register(0, 0, None, req, True)
        manager.register(p, uid, req)
        assert manager.place_pending() == {p: None}
        assert task_values(fam.pid, fam.pid) == WANT

        tid = fam.thread()
        assert task_values(fam.pid, tid) == WANT  # inherited, journaled nowhere yet
        writes = _writes(monkeypatch)
        for _ in manager.threads.new_threads(manager.agents, set()):
            pass

        # before: task.affinity "0-1", task.nice "0", task.ioprio "none" written to
        # the new thread, then the class's values again
        assert sorted(v for k, t, v in writes if t == tid) == sorted(["0", "10", "be7"]), writes
        assert task_values(fam.pid, tid) == WANT
        target = ThreadId(fam.pid, p.starttime, tid).target
        originals = {k: orig for k, t, orig in manager.applier.entries(TASK_KNOBS)
                     if t == target}
        assert originals == {"task.affinity": base[0], "task.nice": str(base[1]),
                             "task.ioprio": base[2]}, originals

        # and the journaled original is what comes back
        manager.unregister(p)
        assert task_values(fam.pid, tid) == base
        assert task_values(fam.pid, fam.pid) == base
    finally:
        fam.kill()


def test_a_thread_that_set_its_own_value_keeps_it_as_its_original(
        manager: AgentManager) -> None:
    """Not inherited: the value the thread shows is its own, and the one journaled."""
    fam = Family()
    try:
        base = task_values(fam.pid, fam.pid)
        req = Registration(agent_id="bg", pid=fam.pid, latency_class="background")
        p, uid = manager.check_register(0, 0, None, req, True)
        manager.register(p, uid, req)
        assert manager.place_pending() == {p: None}
        tid = fam.own_nice(15)
        assert task_values(fam.pid, tid) == ("0", 15, "be7")
        for _ in manager.threads.new_threads(manager.agents, set()):
            pass
        assert task_values(fam.pid, tid) == WANT
        manager.unregister(p)
        # its own nice back; affinity and ioprio it inherited: the process's originals
        assert task_values(fam.pid, tid) == (base[0], 15, base[2])
    finally:
        fam.kill()
