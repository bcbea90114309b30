"""The journal's per-process index and its removal by position (apply/journal.py).

An agent's unregister or exit restores or forgets ITS entries: Journal.of_process
finds them and remove_entries drops them without walking the other agents'.
These tests pin what they return and leave (the same entries, in the same
order, the same files as a walk of the whole list) and what they read (counted,
not timed: a journal of thousands of entries, one process's few read).
"""

from __future__ import annotations

import pathlib
import random

from support.journalspy import CountingList

from agentlatd.apply import journal, journal_read
from agentlatd.apply.journal import Entry, Journal
from agentlatd.kernel.knobnames import KnobName

TASK = (KnobName.TASK_AFFINITY, KnobName.TASK_NICE, KnobName.TASK_IOPRIO)


def _target(pid: int, tid: int) -> str:
    return f"{pid}:{pid * 10}:{tid}"


def _fill(j: Journal, procs: int, threads: int) -> None:
    """`procs` processes of `threads` threads, three task knobs each, registered one
    after the other, a device entry between two processes (the daemon's tuner)."""
    for pid in range(100, 100 + procs):
        for tid in range(pid, pid + threads):
            for k in TASK:
                j.add(k, _target(pid, tid), "0-3").written = "1"
        j.add(KnobName.IRQ_AFFINITY, str(pid), "0-3").written = "1"


def _of(j: Journal, pid: int, starttime: int) -> list[Entry]:
    """of_process() as a walk of the whole journal computes it."""
    return [e for e in j.entries if e.knob in journal._PER_PROCESS
            and e.target.startswith(f"{pid}:{starttime}:")]


def test_unregistering_one_process_reads_only_its_entries(tmp_path: pathlib.Path) -> None:
    """Regression: each unregister walked the whole journal (its key set, every
    entry's position, a rebuild of the list): ~0.9 ms of a 1.4 ms round trip with
    1000 agents (bench/agents.py unregister_rtt_1000_agents). Finding and removing
    one process's 9 entries among 2000 process's now reads a few dozen list slots
    (a bisect per run of neighbours), and the save appends only their deletions."""
    j = Journal(path=str(tmp_path / "journal.json"), root="/")
    _fill(j, procs=2000, threads=3)
    total = len(j.entries)
    counted = CountingList(j.entries)
    j.entries = counted  # the journal re-indexes once, here, not per query
    j.save()  # the list is a new one: a compaction, before the count starts
    for pid in (100, 1234, 2099):  # first, middle, last
        counted.on, counted.reads = True, 0
        mine = j.of_process(pid, pid * 10)
        assert [e.target for e in mine] == [_target(pid, t) for t in range(pid, pid + 3)
                                            for _ in TASK]
        j.remove_entries(mine)
        j.save()
        counted.on = False
        assert counted.reads <= len(mine) * (total.bit_length() + 2), counted.reads
        assert j.of_process(pid, pid * 10) == [] and j.find(TASK[0], _target(pid, pid)) is None
        total -= len(mine)
    assert len(j.entries) == total
    back = journal_read.load(j.path)
    assert back is not None and back.to_json() == j.to_json()


def test_of_process_and_removal_match_a_walk_of_the_journal(tmp_path: pathlib.Path) -> None:
    """Random adds, removals (neighbours, scattered, repeated, foreign entries),
    saves and reloads: the entries, their order, of_process() and the files are
    what the whole-list filter gives."""
    rnd = random.Random(7)
    j = Journal(path=str(tmp_path / "journal.json"), root="/")
    ref: list[tuple[str, str]] = []
    procs = [(p, p * 10) for p in range(1, 9)] + [(1, 100)]  # same pid, another start
    stranger = Entry(TASK[0], "1:10:1", "0")  # not in the journal: ignored
    for step in range(400):
        op = rnd.random()
        if op < 0.45:
            pid, st = rnd.choice(procs)
            k = rnd.choice((*TASK, KnobName.IRQ_AFFINITY))
            tgt = f"{pid}:{st}:{rnd.randint(1, 4)}" if k in TASK else str(rnd.randint(1, 30))
            e = j.add(k, tgt, "0")
            if (k, tgt) not in ref:
                ref.append((k, tgt))
            e.written = str(step)
        elif op < 0.8 and j.entries:
            if rnd.random() < 0.5:
                pid, st = rnd.choice(procs)
                gone = rnd.sample(j.of_process(pid, st), k=len(j.of_process(pid, st)) // 2)
            else:
                gone = rnd.sample(j.entries, k=rnd.randint(1, min(5, len(j.entries))))
            j.remove_entries(gone + gone[:1] + [stranger])
            ref = [k for k in ref if k not in {e.key for e in gone}]
        elif op < 0.95:
            j.save()
        else:
            j.save()
            back = journal_read.load(j.path)
            assert back is not None
            j = back
        assert [e.key for e in j.entries] == ref
        for pid, st in procs:
            assert j.of_process(pid, st) == _of(j, pid, st)
        assert set(j.keys()) == set(ref) and all(j.find(*k) is not None for k in ref)
    j.save()
    back = journal_read.load(j.path)
    assert back is not None and back.to_json() == j.to_json()


def test_a_list_reordered_behind_the_journals_back_still_loses_exactly_those(
        tmp_path: pathlib.Path) -> None:
    """The positions come from each entry's _seq; a list someone reordered in place
    (same object, same length) says nothing by them: the removal notices, walks the
    list once and renumbers, so the next removal is by position again."""
    j = Journal(path=str(tmp_path / "journal.json"), root="/")
    _fill(j, procs=5, threads=2)
    j.entries.reverse()
    gone = j.of_process(102, 1020)
    keep = [e.key for e in j.entries if e.key not in {g.key for g in gone}]
    j.remove_entries(gone)
    assert [e.key for e in j.entries] == keep
    assert j.of_process(102, 1020) == []
    mine = j.of_process(103, 1030)
    assert mine == _of(j, 103, 1030) and len(mine) == 6  # in the reversed order
    j.remove_entries(mine[:2])
    assert [e.key for e in j.entries] == [k for k in keep if k not in {e.key for e in mine[:2]}]


def test_keys_is_a_live_view_of_the_journal() -> None:
    """restore_spread asks `in` of it per thread: never a copy of the journal."""
    j = Journal(path="/nonexistent/journal.json", root="/")
    keys = j.keys()
    e = j.add(TASK[0], "5:50:5", "0")
    assert (TASK[0], "5:50:5") in keys and ("task.affinity", "5:50:5") in keys
    j.remove_entry(e)
    assert (TASK[0], "5:50:5") not in keys and len(keys) == 0
