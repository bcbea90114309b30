"""Journals written before the typed vocabulary (StrEnum knob names, statuses and error
classes, typed target keys) still load, replay and serialise byte for byte.

tests/fixtures/journals/*-7c6d683.json were written by agentlatd at commit 7c6d683
(before the enums): all-kinds-*.json by its Journal (every knob agentlatd ships, every
kind of target, device identities and flags), replay-*.json(.log) by its Engine
applying a plan to the tree built below (its root replaced by @ROOT@). "saved" is
the one field that changes at every save, so it reads @SAVED@.
"""

from __future__ import annotations

import json
import pathlib
import shutil

from agentlatd.apply import journal_read
from agentlatd.apply.engine import DONE, Engine, Recovery, Status
from agentlatd.apply.identity import DeviceId
from agentlatd.apply.journal import Entry
from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import format_target, parse_target
from agentlatd.sysfs.root import Root

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "journals"


def _entry_lines(text: str) -> list[str]:
    return [ln.rstrip(",") for ln in text.splitlines()[1:-1]]


def test_old_journal_entries_reserialise_byte_identical() -> None:
    text = (FIXTURES / "all-kinds-7c6d683.json").read_text()
    j = journal_read.parse("all-kinds", text)
    assert len(j.entries) == 18
    assert j.dumps(gen=123456789).splitlines()[1:] == text.splitlines()[1:]
    assert [e.line() for e in j.entries] == _entry_lines(text)


def test_old_journal_targets_parse_to_typed_keys_and_format_back() -> None:
    j = journal_read.parse("all-kinds", (FIXTURES / "all-kinds-7c6d683.json").read_text())
    # every knob that existed at 7c6d683 (the irqbalance IRQ ban and environment-file
    # knobs came after it and have no old entries to read)
    newer = {KnobName.IRQBALANCE_BANNED_IRQS, KnobName.IRQBALANCE_ENV_BANNED_CPUS}
    assert {e.knob for e in j.entries} == {str(k) for k in KnobName if k not in newer}
    for e in j.entries:
        key = parse_target(e.knob, e.target)
        assert format_target(key) == e.target, (e.knob, e.target, key)


def test_entries_made_of_enums_and_keys_write_the_old_bytes() -> None:
    """A StrEnum knob name and a formatted key serialise as the plain strings did
    (and the CRC, computed over json.dumps of the fields, is the same)."""
    text = (FIXTURES / "all-kinds-7c6d683.json").read_text()
    old = journal_read.parse("all-kinds", text)
    for e in old.entries:
        typed = Entry(KnobName(e.knob), format_target(parse_target(e.knob, e.target)),
                      e.original, e.written, list(e.flags),
                      DeviceId.from_json(e.device.to_json()) if e.device else None)
        assert typed.line() == e.line()
        assert typed.key == e.key and hash(typed.key) == hash(e.key)


def _tree(base: pathlib.Path) -> pathlib.Path:
    """The tree replay-7c6d683.json was written on (tests/apply/applyhelpers.py
    small_tree at that commit), with agentlatd's values in place."""
    def put(rel: str, text: str) -> None:
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    put("sys/devices/system/cpu/online", "0-3\n")
    put("sys/devices/system/cpu/possible", "0-3\n")
    for irq in range(40, 47):
        put(f"proc/irq/{irq}/smp_affinity_list", "0-3\n")
        put(f"proc/irq/{irq}/smp_affinity", "f\n")
        put(f"proc/irq/{irq}/effective_affinity_list", "0\n")
        put(f"proc/irq/{irq}/node", "0\n")
    put("sys/block/nvme0n1/queue/rq_affinity", "1\n")
    put("proc/sys/net/core/rps_sock_flow_entries", "0\n")
    put("proc/sys/net/core/netdev_budget_usecs", "2000\n")
    put("proc/sys/kernel/random/boot_id", "11111111-2222-3333-4444-555555555555\n")
    return base


def test_old_journal_replays_and_reports_in_the_same_words(tmp_path: pathlib.Path) -> None:
    tree = _tree(tmp_path / "tree")
    originals = {p: p.read_text() for p in tree.rglob("*") if p.is_file()}
    # what the old run left: its values written
    (tree / "proc/irq/41/smp_affinity_list").write_text("2-3\n")
    (tree / "proc/irq/45/smp_affinity_list").write_text("1\n")
    (tree / "sys/block/nvme0n1/queue/rq_affinity").write_text("2\n")
    (tree / "proc/sys/net/core/netdev_budget_usecs").write_text("500\n")
    (tree / "proc/sys/net/core/rps_sock_flow_entries").write_text("32768\n")
    state = tmp_path / "state"
    state.mkdir()
    text = (FIXTURES / "replay-7c6d683.json").read_text().replace("@ROOT@", str(tree))
    (state / "journal.json").write_text(text)
    shutil.copy(FIXTURES / "replay-7c6d683.json.log", state / "journal.json.log")
    with Engine(Root(str(tree)), str(state)) as eng:
        rec = eng.recover()
        assert rec.action is Recovery.ADOPTED  # the log says the batch completed
        assert [(e.knob, e.target) for e in eng.entries()] == [
            ("irq.affinity", "41"), ("irq.affinity", "45"), ("block.rq_affinity", "nvme0n1"),
            ("sysctl", "net.core.netdev_budget_usecs"), ("sysctl", "net.core.rps_sock_flow_entries")]
        rb = eng.rollback()
    assert rb.ok and rb.journal_removed
    assert all(r.status is Status.RESTORED and r.status in DONE for r in rb.results), rb.results
    # the report's JSON carries the same plain strings it always did
    out = json.loads(json.dumps(rb.to_json()))
    assert out["summary"] == {"restored": 5}
    assert {r["status"] for r in out["results"]} == {"restored"}
    assert all(type(r["status"]) is str and r["errclass"] is None for r in rb.to_json()["results"])
    assert {p: p.read_text() for p in tree.rglob("*") if p.is_file()} == originals
