"""Entries flagged "inherited": processes an agent forked, journaled by the daemon
(agents/forks.py) so that a rollback without it finds them.

agentlatd never wrote such a process: it inherited the agent's values at fork().
Its restore gives the original only to threads that still show agentlatd's value,
drift never calls the process's own later choice another writer's, `rollback
--print` says the line is conditional, and an entry agentlatd later writes itself
(the process registered) is an ordinary one from then on.

Real processes of this test only (tests/support/sleepers.py), as root.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import pytest
from applyhelpers import cli
from support.sleepers import Sleepers

from agentlatd import knobset
from agentlatd.apply import journal_read
from agentlatd.apply.engine import RESTORED, UNCHANGED, Engine
from agentlatd.apply.journal import FLAG_INHERITED
from agentlatd.plan.changes import Change
from agentlatd.sample import tasks
from agentlatd.sysfs.root import HOST

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_SYS_NICE)")


@pytest.fixture
def procs() -> Iterator[list[tasks.ThreadId]]:
    """Two sleeping processes at nice 10, as if forked by an agent agentlatd re-niced."""
    s = Sleepers(2)
    try:
        out = []
        for pid in s.pids:
            os.setpriority(os.PRIO_PROCESS, pid, 10)
            st = tasks.starttime_of(HOST, pid)
            assert st is not None
            out.append(tasks.ThreadId(pid, st, pid))
        yield out
    finally:
        s.kill()


def _inherit(eng: Engine, ts: list[tasks.ThreadId]) -> None:
    assert eng.inherit([("task.nice", t.target, "0", "10") for t in ts]) == len(ts)


def test_an_inherited_entry_restores_only_what_still_shows_agentlatds_value(
        tmp_path: pathlib.Path, procs: list[tasks.ThreadId]) -> None:
    kept, back = procs
    os.setpriority(os.PRIO_PROCESS, kept.pid, 12)  # its own choice, after the fork
    with Engine(HOST, str(tmp_path / "state"), knobs=knobset.REGISTRY) as eng:
        _inherit(eng, procs)
        rep = eng.rollback()
    by = {r.target: r for r in rep.results}
    assert by[back.target].status == RESTORED, by
    assert by[kept.target].status == UNCHANGED, by
    assert os.getpriority(os.PRIO_PROCESS, back.pid) == 0
    assert os.getpriority(os.PRIO_PROCESS, kept.pid) == 12
    assert rep.journal_removed


def test_an_inherited_entry_survives_a_reload_and_is_never_drift(
        tmp_path: pathlib.Path, procs: list[tasks.ThreadId]) -> None:
    state = tmp_path / "state"
    with Engine(HOST, str(state), knobs=knobset.REGISTRY) as eng:
        _inherit(eng, procs)
        os.setpriority(os.PRIO_PROCESS, procs[0].pid, 12)
        # "reassert" would write nice 10 over the process's own choice
        assert eng.check_drift("reassert") == []
        assert eng.check_drift("yield") == []
        assert os.getpriority(os.PRIO_PROCESS, procs[0].pid) == 12
    j = journal_read.load(str(state / "journal.json"))
    assert j is not None
    assert [(e.target, e.written, e.flags) for e in j.entries] == [
        (t.target, "10", [FLAG_INHERITED]) for t in procs]
    p = cli(["rollback", "--state-dir", str(state), "--print"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("a process an agent forked, which inherited '10'") == 2, p.stdout
    p = cli(["rollback", "--state-dir", str(state), "--json"])
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert os.getpriority(os.PRIO_PROCESS, procs[0].pid) == 12
    assert os.getpriority(os.PRIO_PROCESS, procs[1].pid) == 0


def test_an_inherited_entry_agentlatd_then_writes_is_its_own(
        tmp_path: pathlib.Path, procs: list[tasks.ThreadId]) -> None:
    """The forked process registered itself: the entry keeps the agent's original and
    is restored as any other (unconditionally), not only where nice 10 still is."""
    t = procs[0]
    with Engine(HOST, str(tmp_path / "state"), knobs=knobset.REGISTRY) as eng:
        _inherit(eng, [t])
        eng.apply([Change.parse("task.nice", t.target, "", "5", "registered")], bracket=False)
        (e,) = eng.entries()
        assert (e.original, e.written, e.flags) == ("0", "5", [])
        os.setpriority(os.PRIO_PROCESS, t.pid, 7)
        rep = eng.rollback()
    assert [r.status for r in rep.results] == [RESTORED]
    assert os.getpriority(os.PRIO_PROCESS, t.pid) == 0


def test_inherit_keeps_an_entry_journaled_already(
        tmp_path: pathlib.Path, procs: list[tasks.ThreadId]) -> None:
    t = procs[0]
    with Engine(HOST, str(tmp_path / "state"), knobs=knobset.REGISTRY) as eng:
        eng.apply([Change.parse("task.nice", t.target, "", "5", "registered")], bracket=False)
        assert eng.inherit([("task.nice", t.target, "3", "10")]) == 0
        (e,) = eng.entries()
        assert (e.original, e.written, e.flags) == ("10", "5", [])
        eng.rollback()
