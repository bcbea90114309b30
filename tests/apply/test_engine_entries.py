"""Engine.restore(keys) / Engine.forget(keys) (single journal entries, the agent
side's unregister / process exit / exclusivity end) and the journal's fast
paths with many entries (index, cached lines, the in-place commit).

On a hand-made tree (applyhelpers.small_tree) with a FaultRoot: real files,
real journal, injected errnos where a kernel would refuse.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import time

from applyhelpers import FaultRoot, diff_keys, small_tree, tree_bytes

from agentlatd.apply import journal_read
from agentlatd.apply.engine import CHANGED, FAILED, GONE, RESTORED, UNCHANGED, Engine
from agentlatd.apply.journal import Journal
from agentlatd.plan.changes import Change

IRQS = range(40, 45)


def _aff(irq: int, cpus: str = "1") -> Change:
    return Change.parse("irq.affinity", str(irq), "", cpus, "t")


def _on_disk(state: pathlib.Path) -> dict[str, object]:
    obj = journal_read.read_json(str(state / "journal.json"))
    assert obj is not None
    return obj


def _targets(state: pathlib.Path) -> list[str]:
    entries = _on_disk(state)["entries"]
    assert isinstance(entries, list)
    return [e["target"] for e in entries]


def test_restore_puts_back_only_the_named_entries(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    state = tmp_path / "state"
    with Engine(FaultRoot(tree), str(state)) as eng:
        eng.apply([_aff(n) for n in IRQS])
        res = eng.restore([("irq.affinity", "41"), ("irq.affinity", "43"),
                           ("irq.affinity", "99")])  # 99 never journaled: ignored
        # newest first, as rollback does
        assert [(r.target, r.status) for r in res] == [("43", RESTORED), ("41", RESTORED)]
        assert (tree / "proc/irq/41/smp_affinity_list").read_text().strip() == "0-3"
        assert (tree / "proc/irq/42/smp_affinity_list").read_text().strip() == "1"
        assert [e.target for e in eng.entries()] == ["40", "42", "44"]
        assert _targets(state) == ["40", "42", "44"]  # saved, durable
        assert eng.restore([]) == ()
        eng.rollback()
    assert diff_keys(before, tree_bytes(tree)) == []
    assert not (state / "journal.json").exists()


def test_restore_keeps_an_entry_whose_write_fails(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    root = FaultRoot(tree)
    state = tmp_path / "state"
    with Engine(root, str(state)) as eng:
        eng.apply([_aff(40), _aff(41)])
        root.faults["proc/irq/40/smp_affinity_list"] = errno.EBUSY
        res = eng.restore([("irq.affinity", "40"), ("irq.affinity", "41")])
        assert {r.target: r.status for r in res} == {"40": FAILED, "41": RESTORED}
        assert _targets(state) == ["40"]  # kept for a later restore or rollback
        del root.faults["proc/irq/40/smp_affinity_list"]
        assert [r.status for r in eng.restore([("irq.affinity", "40")])] == [RESTORED]
    assert not (state / "journal.json").exists()  # the last entry gone: no journal


def test_restore_of_an_unchanged_or_vanished_object_drops_it(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    state = tmp_path / "state"
    with Engine(FaultRoot(tree), str(state)) as eng:
        eng.apply([_aff(40), _aff(41)])
        (tree / "proc/irq/40/smp_affinity_list").write_text("0-3\n")  # someone put it back
        for f in (tree / "proc/irq/41").iterdir():  # IRQ 41 freed (device removed)
            f.unlink()
        (tree / "proc/irq/41").rmdir()
        res = eng.restore([("irq.affinity", "40"), ("irq.affinity", "41")])
        assert {r.target: r.status for r in res} == {"40": UNCHANGED, "41": GONE}
        assert eng.entries() == ()
    assert not (state / "journal.json").exists()


def test_forget_drops_entries_without_writing(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    root = FaultRoot(tree)
    state = tmp_path / "state"
    with Engine(root, str(state)) as eng:
        eng.apply([_aff(n) for n in IRQS])
        writes = dict(root.attempts)
        assert eng.forget([("irq.affinity", "40"), ("irq.affinity", "44"),
                           ("task.affinity", "1:2/3")]) == 2
        assert root.attempts == writes  # nothing written
        assert (tree / "proc/irq/40/smp_affinity_list").read_text().strip() == "1"
        assert _targets(state) == ["41", "42", "43"]
        assert eng.forget([]) == 0
        assert eng.forget([(e.knob, e.target) for e in eng.entries()]) == 3
    assert not (state / "journal.json").exists()


def test_a_batch_appends_only_its_own_entries_and_never_rewrites_the_snapshot(
        tmp_path: pathlib.Path) -> None:
    """A batch costs the lines of the entries it changes (appended to the log
    before the first write, then "complete"), not a rewrite of the journal: the
    snapshot keeps its inode and bytes; load() sees snapshot and log as one."""
    tree = small_tree(tmp_path / "tree")
    state = tmp_path / "state"
    path = state / "journal.json"
    log = state / "journal.json.log"
    with Engine(FaultRoot(tree), str(state)) as eng:
        eng.apply([_aff(40)])
        snap = (path.stat().st_ino, path.read_bytes())
        rep = eng.apply([_aff(41), _aff(42)])
        assert [r.status for r in rep.results] == [CHANGED, CHANGED]
        on_disk = _on_disk(state)
        assert on_disk["complete"] is True
        assert [(e["target"], e["written"]) for e in on_disk["entries"]] == [  # type: ignore[union-attr]
            ("40", "1"), ("41", "1"), ("42", "1")]
        assert (path.stat().st_ino, path.read_bytes()) == snap
        lines = log.read_text().splitlines()
        # the log header, the first batch's complete=true, the two entries with
        # complete=false in one append, then complete=true
        assert len(lines) == 6 and '"complete": true' in lines[1], lines
        assert '"41"' in lines[2] and '"42"' in lines[3], lines
        assert '"complete": false' in lines[4] and '"complete": true' in lines[5], lines
        # a rounded value (rps_flow_cnt 100 -> 128) is what the log ends with
        eng.apply([Change.parse("net.rps_flow_cnt", "eth9/rx-0", "", "100", "t")])
        assert _on_disk(state)["entries"][-1]["written"] == "128"  # type: ignore[index]
        back = journal_read.load(str(path))
        assert back is not None and back.complete
        assert (path.stat().st_ino, path.read_bytes()) == snap
        eng.rollback()
    assert not path.exists() and not log.exists()


def test_a_failed_write_leaves_written_as_it_was(tmp_path: pathlib.Path) -> None:
    """written is journaled before the write (for the in-place commit); a write that
    fails must not leave agentlatd's value there, or drift would see a change."""
    tree = small_tree(tmp_path / "tree")
    root = FaultRoot(tree)
    state = tmp_path / "state"
    with Engine(root, str(state)) as eng:
        eng.apply([_aff(40, "1")])
        root.faults["proc/irq/40/smp_affinity_list"] = errno.EBUSY
        rep = eng.apply([_aff(40, "2")])
        assert rep.results[0].status == FAILED
        assert eng.entries()[0].written == "1"
        assert _on_disk(state)["entries"][0]["written"] == "1"  # type: ignore[index]
        assert eng.check_drift() == []
        del root.faults["proc/irq/40/smp_affinity_list"]
        eng.rollback()


def test_index_and_cached_lines_follow_every_change() -> None:
    j = Journal(path="/nonexistent/journal.json", root="/")
    es = [j.add("k", str(n), "o") for n in range(5)]
    assert j.add("k", "3", "other") is es[3] and es[3].original == "o"
    assert j.find("k", "4") is es[4] and j.find("k", "9") is None
    j.remove_entries([es[1], es[3]])
    assert [e.target for e in j.entries] == ["0", "2", "4"]
    assert j.find("k", "1") is None and j.find("k", "4") is es[4]
    j.entries = [es[4]]  # replaced behind the journal's back (engine._restore does)
    assert j.find("k", "0") is None and j.find("k", "4") is es[4]
    e = es[4]
    line = e.line()
    assert e.saved
    e.written = None  # same value: still current
    assert e.saved and e.line() is line
    e.written = "x"
    assert not e.saved and json.loads(e.line())["written"] == "x"
    e.set_flag("yielded")
    assert json.loads(e.line())["flags"] == ["yielded"]


def test_a_save_with_many_entries_is_cheap(tmp_path: pathlib.Path) -> None:
    """Regression: with 1000 agents a registration cost ~4.5 ms, two full JSON
    dumps of the journal per batch and a linear find(). Cached lines and the
    index make find() O(1) and a save a join (a loose bound: CI is shared)."""
    j = Journal(path=str(tmp_path / "journal.json"), root="/")
    for n in range(2000):
        j.add("task.affinity", f"{n}:{n * 7}/{n}", "0-3").written = "1"
    j.save()
    t0 = time.perf_counter()
    for n in range(2000):
        assert j.find("task.affinity", f"{n}:{n * 7}/{n}") is not None
    t_find = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(20):
        j.save()
    t_save = (time.perf_counter() - t0) / 20
    assert t_find < 0.05, t_find
    assert t_save < 0.01, t_save
    assert len(journal_read.load(j.path).entries) == 2000  # type: ignore[union-attr]
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
