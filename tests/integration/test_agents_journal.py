"""What a registration costs the journal, and what a crash in the middle of one leaves.

The engine brackets a batch of writes with the journal's "complete" flag: a run
that dies inside a batch leaves "incomplete", and the next start restores the
device plan instead of adopting it (apply/engine.py). Agent-side entries are
restored at every start whatever the flag says (lifecycle.recover_agents), so
the agent side's batches do not flip it: one append per registration instead
of two (bench/agents.py register round trip), and a daemon killed in the middle
of a registration no longer makes the next start undo the device plan.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from agentshelpers import agent_side, needs_2cpus, needs_root, register_as_root
from support.sleepers import Sleepers

from agentlatd.apply import journal, journal_read
from agentlatd.apply.engine import Engine
from agentlatd.apply.reports import Recovery
from agentlatd.lifecycle import recover_agents

pytestmark = [needs_root, needs_2cpus]


class Killed(Exception):
    """Stands for the SIGKILL of tests/support/launch.py at a write point."""


def _log_lines(eng: Engine) -> list[str]:
    try:
        return pathlib.Path(eng.journal_path + journal.LOG_SUFFIX).read_text().splitlines()
    except FileNotFoundError:
        return []


def test_a_registration_appends_to_the_journal_once(tmp_path: pathlib.Path) -> None:
    """One line, the agent's entry, appended to the journal's log per registration.
    Before: the batch marked the journal incomplete, saved, wrote, then saved
    again to say "complete" (two appends, each an fdatasync, three lines)."""
    eng, mgr = agent_side(tmp_path / "state")
    procs = Sleepers(4)
    try:
        for pid in procs.pids[:2]:  # the first save is a snapshot, the next starts the log
            register_as_root(mgr, pid)
            assert all(r is None for r in mgr.place_pending().values())
        for pid in procs.pids[2:]:
            before = _log_lines(eng)
            register_as_root(mgr, pid)
            assert all(r is None for r in mgr.place_pending().values())
            added = _log_lines(eng)[len(before):]
            assert len(added) == 1 and f'"{pid}:' in added[0], added
            assert os.sched_getaffinity(pid) == {1}
        on_disk = journal_read.load(eng.journal_path)
        assert on_disk is not None and on_disk.complete
        assert len(on_disk.entries) == 4
    finally:
        procs.kill()
        eng.close()


@pytest.mark.parametrize("point", [0, 1])
def test_a_crash_inside_a_registration_keeps_the_device_plan_and_restores_the_agent(
        tmp_path: pathlib.Path, point: int) -> None:
    """Killed after the journal save (point 0) or after the write (point 1) of a
    registration: the journal on disk still says complete, so the next start
    adopts it (before: "incomplete", and the next start restored every original,
    the device plan's too), and the agent's own entry is restored at that start
    all the same."""
    state = tmp_path / "state"

    def hook(n: int) -> None:
        if n == point:
            raise Killed(n)

    procs = Sleepers(1)
    pid = procs.pids[0]
    before = os.sched_getaffinity(pid)
    eng, mgr = agent_side(state, write_hook=hook)
    try:
        register_as_root(mgr, pid)
        with pytest.raises(Killed):
            mgr.place_pending()
        eng.close()
        on_disk = journal_read.load(journal.journal_path(str(state)))
        assert on_disk is not None
        assert on_disk.complete
        assert [e.knob for e in on_disk.entries] == ["task.affinity"]
        assert os.sched_getaffinity(pid) == (before if point == 0 else {1})

        eng, mgr = agent_side(state)
        assert eng.recover().action is Recovery.ADOPTED
        recover_agents(eng, mgr.applier)
        assert os.sched_getaffinity(pid) == before
        assert not eng.entries()
    finally:
        procs.kill()
        eng.close()


THREADS = "import threading,time\n" \
    "[threading.Thread(target=time.sleep,args=(600,),daemon=True).start() for _ in range(4)]\n" \
    "print('ready',flush=True)\ntime.sleep(600)\n"


def test_unregister_racing_the_process_exit_leaves_no_journal_entry(
        tmp_path: pathlib.Path) -> None:
    """The process exits while its unregister restores it (bench/soak.py: a
    background agent reached the end of its life as the soak unregistered it).
    A thread written back and gone before its read-back was a failed restore:
    the entry stayed journaled after its agent was dropped, and nothing but the
    stop's rollback ever looked at it again (the soak's check found one
    task.nice entry, written 10, original 0, after every agent had left).
    A thread that is gone has nothing left to restore, whenever it went."""
    armed: list[subprocess.Popen[bytes]] = []

    def hook(n: int) -> None:
        if armed:  # the first write of the unregister: the process ends right after it
            proc = armed.pop()
            proc.kill()
            proc.wait()

    eng, mgr = agent_side(tmp_path / "state", write_hook=hook)
    proc = subprocess.Popen([sys.executable, "-c", THREADS], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        p = register_as_root(mgr, proc.pid, "background")
        assert all(r is None for r in mgr.place_pending().values())
        assert {k for k, _t, _o in mgr.applier.entries_of(p)} >= {"task.nice", "task.ioprio"}
        armed.append(proc)
        mgr.unregister(p)
        assert not armed, "the unregister wrote nothing"
        assert mgr.applier.entries_of(p) == []
        assert [e.key for e in eng.entries()] == []
        assert mgr.applier.failures == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        eng.close()
