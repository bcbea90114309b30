"""The rollback journal: crash-safe saves, damage named and salvaged, never discarded."""

from __future__ import annotations

import errno
import gc
import json
import os
import pathlib
import shutil
import zlib

import pytest
from applyhelpers import FaultRoot, diff_keys, small_tree, tree_bytes

from agentlatd.apply import journal, journal_read, journal_salvage
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
    back = journal_read.load(str(path))
    assert back is not None
    assert [e.to_json() for e in back.entries] == [e.to_json() for e in j.entries]
    assert (back.root, back.boot_id, back.complete) == ("/some/root", "b1", True)
    assert os.listdir(tmp_path) == ["journal.json"]


def test_empty_journal_is_valid_json(tmp_path: pathlib.Path) -> None:
    j = Journal(path=str(tmp_path / "journal.json"), root="/")
    j.save()
    back = journal_read.load(j.path)
    assert back is not None and back.entries == []


def test_missing_journal_is_none(tmp_path: pathlib.Path) -> None:
    assert journal_read.load(str(tmp_path / "journal.json")) is None


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
            journal_read.load(str(path))
        msg = str(ei.value)
        assert str(path) in msg
        assert "truncated" in msg or "empty" in msg or "valid JSON" in msg, msg
        sal = journal_salvage.salvage(str(path), default_root="/x", move=False)
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
        journal_read.load(str(path))
    assert "journal.json" in str(ei.value) and "damaged" in str(ei.value)
    sal = journal_salvage.salvage(str(path), default_root="/x")
    assert sal.root_known and sal.journal.root == "/some/root"
    assert [e.target for e in sal.journal.entries] == ["eth9/rx-0", "eth9/rx-2", "eth9/rx-3"]
    assert sal.lines_lost == 1
    assert sal.kept_as == str(path) + ".corrupt"
    assert not path.exists() and pathlib.Path(sal.kept_as).exists()
    # a second damaged journal does not overwrite the first one kept aside
    path.write_text("{")
    sal2 = journal_salvage.salvage(str(path), default_root="/x")
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
        journal_read.load(str(path))
    assert problem in str(ei.value) and str(path) in str(ei.value)


def test_newer_version_is_refused_not_called_damage(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal.json"
    path.write_text('{"version": 99, "root": "/", "entries": []}')
    with pytest.raises(JournalError) as ei:
        journal_read.load(str(path))
    assert not isinstance(ei.value, JournalDamaged)
    assert "version 99" in str(ei.value)


def test_entry_flags() -> None:
    e = Entry("irq.affinity", "45", "0-3")
    e.set_flag(journal.FLAG_MANAGED)
    e.set_flag(journal.FLAG_MANAGED)
    assert e.flags == ["managed"] and e.has("managed") and not e.has("yielded")


# -- the engine's use of the journal ---------------------------------------


def _changes() -> list[Change]:
    return [Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t"),
            Change.parse("net.rps_flow_cnt", "eth9/rx-0", "", "4096", "t"),
            Change.parse("irq.affinity", "41", "", "1", "t")]


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


# -- format 2: snapshot + append log, device identities, format 1 migration ---------


def _files(state: pathlib.Path) -> tuple[object, ...]:
    """What a write to either journal file changes (inode, size, mtime of each)."""
    out: list[object] = []
    for name in ("journal.json", "journal.json.log"):
        try:
            st = (state / name).stat()
        except FileNotFoundError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def test_failing_knob_does_not_rewrite_the_journal_every_tick(tmp_path: pathlib.Path) -> None:
    """A knob whose write the kernel refuses every time (EINVAL) or does not
    support (EOPNOTSUPP) cost two full journal saves per tick (journal the
    original, write, fail, drop it again), and an unchanged state must cost none:
    after the first refusal the journal is not written at all until the next rescan."""
    tree = small_tree(tmp_path / "tree")
    state = tmp_path / "state"
    root = FaultRoot(tree, {"sys/class/net/eth9/threaded": errno.EINVAL,
                            "sys/class/net/eth9/gro_flush_timeout": errno.EOPNOTSUPP})
    ticks = [Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t"),
             Change.parse("net.threaded", "eth9", "", "1", "t"),
             Change.parse("net.gro_flush_timeout", "eth9", "", "20000", "t")]
    with Engine(root, str(state)) as eng:
        for _ in range(2):
            eng.apply(ticks)
            eng.check_drift()
        seen = _files(state)
        for _ in range(4):
            rep = eng.apply(ticks)
            eng.check_drift()
            assert _files(state) == seen  # neither file written
            assert [r.status for r in rep.results] == ["unchanged", "failed", "unsupported"]
        assert "not tried again until the next machine rescan" in rep.results[1].message
        assert root.writes("sys/class/net/eth9/threaded") == 1
        # the plan changes: tried again at once
        rep = eng.apply([Change.parse("net.threaded", "eth9", "", "2", "t")])
        assert root.writes("sys/class/net/eth9/threaded") == 2
        eng.rollback()


def test_a_torn_append_is_ignored_and_the_next_save_compacts(tmp_path: pathlib.Path) -> None:
    """kill -9 or a power cut in the middle of an append leaves a last line without
    its newline: the write it guarded never ran, so it is not an entry; the next
    save starts a new snapshot rather than append after half a line."""
    path = tmp_path / "journal.json"
    j = _journal(path)
    j.save()
    j.add("net.rps_cpus", "eth9/rx-7", "0").written = "3"
    j.save()
    log = tmp_path / "journal.json.log"
    whole = log.read_bytes()
    with open(log, "ab") as f:
        f.write(b'{"knob": "net.rps_cpus", "target": "eth9/rx-8", "orig')
    back = journal_read.load(str(path))
    assert back is not None
    assert [e.target for e in back.entries][-1] == "eth9/rx-7"
    assert back.find("net.rps_cpus", "eth9/rx-8") is None
    back.add("net.rps_cpus", "eth9/rx-9", "0")
    back.save()
    assert not log.exists() or log.read_bytes() != whole + b"x"
    again = journal_read.load(str(path))
    assert again is not None and again.find("net.rps_cpus", "eth9/rx-9") is not None
    assert again.find("net.rps_cpus", "eth9/rx-7") is not None


def test_appends_keep_the_log_open_and_a_dropped_journal_closes_it(tmp_path: pathlib.Path) -> None:
    """The append log's fd is held between appends (no open/close per save), and a
    journal object dropped without compact()/delete() does not leave its fd behind
    (once collected: its entries point back at it, so the cycle collector frees it)."""
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()  # journals of earlier tests
    before = fds()
    for n in range(40):
        path = tmp_path / f"j{n}" / "journal.json"
        path.parent.mkdir()
        j = _journal(path)
        j.save()
        for i in range(3):
            j.add("net.rps_cpus", f"eth9/rx-{10 + i}", "0").written = "3"
            j.save()
        log_fd = j._log.fd if j._log is not None else -1
        assert log_fd >= 0 and os.readlink(f"/proc/self/fd/{log_fd}") == str(path) + ".log"
        back = journal_read.load(str(path))
        assert back is not None and len(back.entries) == 7
        del j
    gc.collect()
    assert fds() == before


def test_an_append_after_the_log_was_removed_is_refused_not_lost(tmp_path: pathlib.Path) -> None:
    """The held fd of a log removed behind the journal's back names an unlinked
    file: an append there would report success and reach no file. It is opened by
    its path again, which fails as an append always did (ENOENT): the engine
    writes nothing (the original is journaled nowhere)."""
    path = tmp_path / "journal.json"
    j = _journal(path)
    j.save()
    j.add("net.rps_cpus", "eth9/rx-7", "0").written = "3"
    j.save()
    (tmp_path / "journal.json.log").unlink()
    j.add("net.rps_cpus", "eth9/rx-8", "0").written = "3"
    with pytest.raises(JournalError, match=r"journal\.json\.log"):
        j.save()


def test_a_log_of_an_older_snapshot_is_ignored(tmp_path: pathlib.Path) -> None:
    """A crash between a compaction's rename and its unlink of the old log."""
    path = tmp_path / "journal.json"
    j = _journal(path)
    j.save()
    j.remove_entry(j.entries[1])
    j.save()
    old_log = (tmp_path / "journal.json.log").read_bytes()
    j.compact()
    (tmp_path / "journal.json.log").write_bytes(old_log)  # its gen is the old one
    j.add("net.rps_cpus", "eth9/rx-1", "00000001")  # re-added after the compaction
    back = journal_read.load(str(path))
    assert back is not None
    assert [e.target for e in back.entries] == ["eth9/rx-0", "eth9/rx-2", "eth9/rx-3"]


def test_every_record_is_checksummed(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "journal.json"
    j = _journal(path)
    j.save()
    j.entries[2].original = "00000005"
    j.save()
    log = tmp_path / "journal.json.log"
    text = log.read_text()
    log.write_text(text.replace('"00000005"', '"00000004"'))
    with pytest.raises(JournalDamaged) as ei:
        journal_read.load(str(path))
    assert "checksum" in str(ei.value) and "journal.json.log" in str(ei.value)
    sal = journal_salvage.salvage(str(path), default_root="/x")
    # the damaged record is lost, the snapshot's version of the entry stays
    assert [e.original for e in sal.journal.entries][2] == "00000002"
    assert pathlib.Path(str(log) + ".corrupt").exists()


def test_format_1_journal_is_migrated_and_restored_by_name(tmp_path: pathlib.Path) -> None:
    """A journal the previous agentlatd wrote (format 1: one document, no device
    identities) is read, restored by device name as that agentlatd would have,
    the report says so, and the next save writes format 2."""
    tree = small_tree(tmp_path / "tree")
    before = tree_bytes(tree)
    (tree / "sys/class/net/eth9/queues/rx-0/rps_cpus").write_text("3\n")
    state = tmp_path / "state"
    state.mkdir()
    boot = (tree / "proc/sys/kernel/random/boot_id").read_text().strip()
    fields = ["net.rps_cpus", "eth9/rx-0", "0", "3", []]
    entry = {"knob": "net.rps_cpus", "target": "eth9/rx-0", "original": "0", "written": "3",
             "flags": [], "crc": zlib.crc32(json.dumps(fields).encode())}
    head = json.dumps({"version": 1, "complete": True, "root": str(tree), "netns": "",
                       "boot_id": boot, "pid": 1, "saved": "x"})[:-1]
    (state / "journal.json").write_text(f'{head}, "entries": [\n{json.dumps(entry)}\n]}}\n')
    with Engine(Root(str(tree)), str(state)) as eng:
        assert eng.recover().action == "adopted"
        eng.apply([Change.parse("net.rps_cpus", "eth9/rx-1", "", "3", "t")])
        on_disk = json.loads((state / "journal.json").read_text())
        assert on_disk["version"] == journal.VERSION == 2
        assert [e["target"] for e in journal_read.read_json(  # type: ignore[index]
            str(state / "journal.json"))["entries"]] == ["eth9/rx-0", "eth9/rx-1"]
        rb = eng.rollback()
    assert rb.ok and rb.journal_removed
    assert any("format 1" in n for n in rb.notes), rb.notes
    assert diff_keys(before, tree_bytes(tree)) == []


def test_device_entries_carry_the_device_identity(tmp_path: pathlib.Path) -> None:
    """Journaled with the device (name, ifindex, sysfs inode); a device that took
    the name is reported "replaced" and its value left alone."""
    tree = small_tree(tmp_path / "tree")
    state = tmp_path / "state"
    with Engine(Root(str(tree)), str(state)) as eng:
        eng.apply([Change.parse("net.rps_cpus", "eth9/rx-0", "", "3", "t"),
                   Change.parse("irq.affinity", "41", "", "1", "t")])
        dev = {(e.knob, e.target): e.device for e in eng.entries()}
        assert dev[("irq.affinity", "41")] is None
        d = dev[("net.rps_cpus", "eth9/rx-0")]
        assert d is not None and (d.name, d.ifindex) == ("eth9", 7) and d.node > 0
    # eth9 is replaced: a new device (ifindex 8, new sysfs directory), admin's value 5
    shutil.rmtree(tree / "sys/class/net/eth9")
    shutil.copytree(small_tree(tmp_path / "fresh") / "sys/class/net/eth9",
                    tree / "sys/class/net/eth9")
    (tree / "sys/class/net/eth9/ifindex").write_text("8\n")
    (tree / "sys/class/net/eth9/queues/rx-0/rps_cpus").write_text("5\n")
    with Engine(Root(str(tree)), str(state)) as eng:
        rb = eng.rollback()
    by = {(r.knob, r.target): r for r in rb.results}
    assert by[("net.rps_cpus", "eth9/rx-0")].status == "replaced"
    assert "device replaced, original not restored" in by[("net.rps_cpus", "eth9/rx-0")].message
    assert by[("irq.affinity", "41")].status == "restored"
    assert rb.ok and rb.journal_removed
    assert (tree / "sys/class/net/eth9/queues/rx-0/rps_cpus").read_text() == "5\n"
