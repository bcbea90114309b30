"""An agent's unregister and exit read only its own journal entries, whatever the
other agents hold, and restore or forget exactly what they did before.

Real processes (tests/support/sleepers.py) registered in-process with an
AgentManager on the live root, class "background" (to completion CPU 0, nice
10, ioprio be7: three entries per thread); nothing but those processes and one
more of the test's own is written. What a call reads is counted
(tests/support/journalspy.py), never timed.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from agentshelpers import agent_side, needs_2cpus, needs_root, register_as_root
from support.journalspy import JournalSpy
from support.sleepers import Sleepers

from agentlatd.agents.registry import AgentManager
from agentlatd.apply.engine import Engine
from agentlatd.apply.journal import Entry, Journal
from agentlatd.kernel.knobnames import KnobName
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

pytestmark = [needs_root, needs_2cpus]

N = 150  # agents: 450 task entries


@dataclass
class Lab:
    eng: Engine
    mgr: AgentManager
    journal: Journal
    procs: list[ProcId]


@pytest.fixture
def lab(tmp_path: pathlib.Path) -> Iterator[Lab]:
    eng, mgr = agent_side(tmp_path / "state")
    sleepers = Sleepers(N)
    try:
        for pid in sleepers.pids:
            register_as_root(mgr, pid, "background")
        assert all(r is None for r in mgr.place_pending().values())
        procs = list(mgr.agents)
        assert len(eng.entries()) == 3 * N
        # the engine's journal itself: its entry list is what the spy counts
        yield Lab(eng, mgr, eng._keeper.current(), procs)
    finally:
        try:
            eng.rollback()
            eng.close()
        finally:
            _end(sleepers)


def _end(s: Sleepers) -> None:
    """Every child and the helper (kill() alone would leave the children paused)."""
    try:
        s.close(10)
    finally:
        s.kill()


def _mine(j: Journal, p: ProcId) -> list[Entry]:
    """p's entries, by a walk of the whole journal (what the test may afford)."""
    return [e for e in j.entries if e.target.startswith(f"{p.pid}:{p.starttime}:")]


def _values(pid: int) -> tuple[str, int, str]:
    return tasks.get_affinity(pid).to_list(), tasks.get_nice(pid), tasks.get_ioprio(pid)


def _originals(mine: list[Entry]) -> tuple[str, int, str]:
    o = {e.knob: e.original for e in mine}
    return (o[KnobName.TASK_AFFINITY], int(o[KnobName.TASK_NICE]), o[KnobName.TASK_IOPRIO])


def _check_cost(spy: JournalSpy, mine: list[Entry]) -> None:
    total = len(spy.j.entries) + len(mine)
    assert spy.foreign_fields == 0, spy.foreign_fields  # no other agent's entry read
    assert spy.key_walks == 0  # the journal's keys asked `in`, never walked
    bound = len(mine) * (total.bit_length() + 2)  # a bisect per entry at most
    assert spy.slots.reads <= bound and spy.foreign_seq <= bound, \
        (spy.slots.reads, spy.foreign_seq, bound)


def test_unregister_among_many_agents_reads_only_its_own_entries(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: unregister walked the whole journal several times (belongs() on
    every entry, a copy of every key, every entry's position, the setcomp of
    restore_spread per entry, a rebuilt list): 1.4 ms p50 with 1000 agents
    (bench/agents.py unregister_rtt_1000_agents), 0.5 ms with none. Now it reads
    its own 3 entries and a bisect's probes; the restore is unchanged: its
    originals back, every other agent's entries kept, in order, still pinned."""
    spy = JournalSpy(lab.journal, monkeypatch)
    p = lab.procs[N // 2]
    mine = _mine(lab.journal, p)
    assert len(mine) == 3 and _values(p.pid)[1:] == (10, "be7")
    others = [e.key for e in lab.journal.entries if e not in mine]
    with spy.measure(mine):
        assert lab.mgr.unregister(p) is not None
    _check_cost(spy, mine)
    assert _values(p.pid) == _originals(mine)
    assert [e.key for e in lab.journal.entries] == others
    assert p not in lab.mgr.agents and len(lab.mgr.agents) == N - 1
    q = lab.procs[N // 2 + 1]
    assert _values(q.pid) == ("0", 10, "be7")


def test_an_exit_among_many_agents_reads_only_its_own_entries(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: an exit batch walked the journal (forget by prefix, the written
    values of the main thread, a copy of every key for each forked process). Now it
    reads the exited agent's entries: they are forgotten (nothing to restore on a
    dead process), the process it forked that still shows its values gets its
    originals, the other agents keep theirs."""
    spy = JournalSpy(lab.journal, monkeypatch)
    p = lab.procs[7]
    mine = _mine(lab.journal, p)
    others = [e.key for e in lab.journal.entries if e not in mine]
    child = Sleepers(1)  # stands for a process the agent forked (agents/forks.py)
    try:
        c = tasks.proc_id(Root("/"), child.pids[0])
        assert c is not None
        # what fork() would have copied from the agent: its class's values
        os.sched_setaffinity(c.pid, {0})
        os.setpriority(os.PRIO_PROCESS, c.pid, 10)
        tasks.set_ioprio(c.pid, "be7")
        a = lab.mgr.agents[p]
        a.forked = {c}
        a.creds = tasks.thread_uids(Root("/"), p.pid, p.pid)
        os.kill(p.pid, 9)
        lab.mgr.mark_dead(p)
        with spy.measure(mine):
            assert lab.mgr.reap() == 1
        _check_cost(spy, mine)
        assert _values(c.pid) == _originals(mine)
    finally:
        _end(child)
    assert [e.key for e in lab.journal.entries] == others
    assert p not in lab.mgr.agents and len(lab.mgr.agents) == N - 1
