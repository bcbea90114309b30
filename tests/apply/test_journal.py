"""The rollback journal: crash-safe saves, damage named and salvaged, never discarded."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from applyhelpers import small_tree, tree_bytes

from agentlatd.apply import journal
from agentlatd.apply.engine import Engine
from agentlatd.apply.journal import Entry, Journal, JournalDamaged
from agentlatd.errors import JournalError
from agentlatd.plan.changes import Change
from agentlatd.sysfs.root import Root


def _journal(path: pathlib.Path, n: int = 4) -> Journal:
    j = Journal(path=str(path), root="/some/root", netns="", boot_id="b1", complete=True)
    for i in range(n):
        e = j.add("net.rps_cpus", f"eth9/rx-{i}", f"{i:08x}")
        e.written = "3"
    j.entries[0].set_flag(journal.FLAG_MANAGED)
    return j


def test_roundtrip_one_entry_per_line_and_no_tmp_left(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal.json"
    j = _journal(path)
    j.save()
    text = path.read_text()
    assert json.loads(text)["version"] == journal.VERSION
    # one entry per line: what lets salvage() recover a damaged file
    assert sum('"knob"' in ln for ln in text.splitlines()) == 4
    back = journal.load(str(path))
    assert back is not None
    assert [e.to_json() for e in back.entries] == [e.to_json() for e in j.entries]
    assert (back.root, back.boot_id, back.complete) == ("/some/root", "b1", True)
    assert os.listdir(tmp_path) == ["journal.json"]


def test_empty_journal_is_valid_json(tmp_path: pathlib.Path) -> None:
    j = Journal(path=str(tmp_path / "journal.json"), root="/")
    j.save()
    back = journal.load(j.path)
    assert back is not None and back.entries == []


def test_missing_journal_is_none(tmp_path: pathlib.Path) -> None:
    assert journal.load(str(tmp_path / "journal.json")) is None


def test_every_truncation_is_named_and_salvage_keeps_whole_lines(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal.json"
    j = _journal(path)
    j.save()
    full = path.read_bytes()
    # byte offset just past each entry object ("...}" of lines 2..n)
    ends = []
    pos = 0
    for ln in full.decode().splitlines(keepends=True):
        if '"knob"' in ln:
            ends.append(pos + ln.rindex("}") + 1)
        pos += len(ln.encode())
    for cut in range(1, len(full) - 1):
        path.write_bytes(full[:cut])
        with pytest.raises(JournalDamaged) as ei:
            journal.load(str(path))
        msg = str(ei.value)
        assert str(path) in msg
        assert "truncated" in msg or "empty" in msg or "valid JSON" in msg, msg
        sal = journal.salvage(str(path), default_root="/x", move=False)
        # entries whose whole object survived the cut come back, in order, and
        # nothing else (a half line never parses into a wrong entry)
        got = [e.to_json() for e in sal.journal.entries]
        assert got == [e.to_json() for e in j.entries[:len(got)]]
        assert len(got) == sum(1 for end in ends if end <= cut)
        assert not sal.journal.complete


def test_garbage_line_is_kept_aside_and_others_salvaged(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal.json"
    j = _journal(path)
    j.save()
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:10] + "\x00\x07garbage" + lines[2][25:]
    path.write_text("".join(lines))
    with pytest.raises(JournalDamaged) as ei:
        journal.load(str(path))
    assert "journal.json" in str(ei.value) and "damaged" in str(ei.value)
    sal = journal.salvage(str(path), default_root="/x")
    assert sal.root_known and sal.journal.root == "/some/root"
    assert [e.target for e in sal.journal.entries] == ["eth9/rx-0", "eth9/rx-2", "eth9/rx-3"]
    assert sal.lines_lost == 1
    assert sal.kept_as == str(path) + ".corrupt"
    assert not path.exists() and pathlib.Path(sal.kept_as).exists()
    # a second damaged journal does not overwrite the first one kept aside
    path.write_text("{")
    sal2 = journal.salvage(str(path), default_root="/x")
    assert sal2.kept_as == str(path) + ".corrupt.1"
    assert not sal2.root_known and sal2.journal.root == "/x"


@pytest.mark.parametrize("text,problem", [
    ("", "empty"),
    ("[]", "JSON object"),
    ('{"version": 0, "root": "/", "entries": []}', "version"),
    ('{"version": 1, "entries": []}', "root"),
    ('{"version": 1, "root": "/", "entries": {}}', "entries"),
    ('{"version": 1, "root": "/", "entries": [{"knob": "x", "target": "y"}]}', "original"),
    ('{"version": 1, "root": "/", "entries": [{"knob": "x", "target": "y", "original": "1",'
     ' "flags": ["bogus"]}]}', "flags"),
    ('{"version": 1, "root": "/", "entries": [{"knob": "x", "target": "y", "original": "1"},'
     ' {"knob": "x", "target": "y", "original": "2"}]}', "twice"),
])
def test_damage_is_named(tmp_path: pathlib.Path, text: str, problem: str) -> None:
    path = tmp_path / "journal.json"
    path.write_text(text)
    with pytest.raises(JournalDamaged) as ei:
        journal.load(str(path))
    assert problem in str(ei.value) and str(path) in str(ei.value)


def test_newer_version_is_refused_not_called_damage(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text('{"version": 99, "root": "/", "entries": []}')
    with pytest.raises(JournalError) as ei:
        journal.load(str(path))
    assert not isinstance(ei.value, JournalDamaged)
    assert "version 99" in str(ei.value)


def test_entry_flags() -> None:
    e = Entry("irq.affinity", "45", "0-3")
    e.set_flag(journal.FLAG_MANAGED)
    e.set_flag(journal.FLAG_MANAGED)
    assert e.flags == ["managed"] and e.has("managed") and not e.has("yielded")


# -- the engine's use of the journal ---------------------------------------


def _changes() -> list[Change]:
    return [Change("net.rps_cpus", "eth9/rx-0", "", "3", "t"),
            Change("net.rps_flow_cnt", "eth9/rx-0", "", "4096", "t"),
            Change("irq.affinity", "41", "", "1", "t")]


def test_damaged_journal_is_restored_from_what_parses(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    state = tmp_path / "state"
    with Engine(Root(str(tree)), str(state)) as eng:
        eng.apply(_changes())
    path = state / "journal.json"
    lines = path.read_text().splitlines(keepends=True)
    # damage the header line: the entries still parse, the root does not
    path.write_text("{garbage\n" + "".join(lines[1:]))
    with Engine(Root(str(tree)), str(state)) as eng:
        rep = eng.recover()
    assert rep.action == "restored"
    assert rep.rollback is not None and rep.rollback.damaged
    assert "not valid JSON" in rep.rollback.damaged
    assert (state / "journal.json.corrupt").exists()
    assert not path.exists()
    assert tree_bytes(tree) == before


def test_journal_of_another_root_is_refused(tmp_path: pathlib.Path) -> None:
    t1, t2 = small_tree(tmp_path / "t1"), small_tree(tmp_path / "t2")
    state = tmp_path / "state"
    with Engine(Root(str(t1)), str(state)) as eng:
        eng.apply(_changes())
    with pytest.raises(JournalError) as ei, Engine(Root(str(t2)), str(state)) as eng:
        eng.apply(_changes())
    assert str(t1) in str(ei.value) and str(t2) in str(ei.value)


def test_journal_from_another_boot_is_set_aside_not_replayed(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    state = tmp_path / "state"
    with Engine(Root(str(tree)), str(state)) as eng:
        eng.apply(_changes())
    (tree / "proc/sys/kernel/random/boot_id").write_text("99999999-0000-0000-0000-000000000000\n")
    changed = tree_bytes(tree)
    with Engine(Root(str(tree)), str(state)) as eng:
        rep = eng.recover()
    assert rep.action == "set-aside" and "earlier boot" in rep.message
    assert (state / "journal.json.stale-boot").exists()
    assert tree_bytes(tree) == changed  # nothing written from a stale journal


def test_second_engine_on_one_state_dir_is_refused(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    state = tmp_path / "state"
    with Engine(Root(str(tree)), str(state)) as a:
        a.recover()
        with pytest.raises(JournalError) as ei, Engine(Root(str(tree)), str(state)) as b:
            b.recover()
        assert "in use" in str(ei.value) and str(os.getpid()) in str(ei.value)
    with Engine(Root(str(tree)), str(state)) as c:  # released on close
        c.recover()


def test_stale_tmp_file_from_a_crashed_save_is_removed(tmp_path: pathlib.Path) -> None:
    tree = small_tree(tmp_path / "tree")
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal.json.tmp12345").write_text("{half")
    with Engine(Root(str(tree)), str(state)) as eng:
        assert eng.recover().action == "none"
    assert not (state / "journal.json.tmp12345").exists()
