"""sample/counters: the per-tick snapshot reads only what moved, and what it reads is exact.

Trees come from bench/synth.py (small: 8 CPUs x 24 IRQs) so every count is known; the live
host and the fixture trees are read read-only.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import time
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlatd.cpuset import CpuSet
from agentlatd.model.rates import compute_rates
from agentlatd.policy import HeatPolicy
from agentlatd.sample.counters import (
    SOURCE_NONE,
    SOURCE_PROC,
    SOURCE_SYS,
    CounterSnapshot,
    IrqCounts,
    diff_counts,
    read_counters,
)
from agentlatd.sample.stat import parse_stat
from agentlatd.sysfs.root import HOST, Root

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"


def _load_synth() -> ModuleType:
    name = "agentlatd_bench_synth"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "synth.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


synth = _load_synth()


def make_host(base: pathlib.Path, **kw: Any) -> Any:
    args: dict[str, Any] = {"ncpu": 8, "nirq": 24, "nr_irqs": 128, "seed": 7}
    args.update(kw)
    h = synth.SynthHost(str(base / "host"), **args)
    h.write_all()
    return h


def proc_only(base: pathlib.Path) -> Root:
    """The same host seen by a kernel without /sys/kernel/irq."""
    d = base / "proc-only"
    (d / "sys").mkdir(parents=True)
    (d / "proc").symlink_to(base / "host" / "proc")
    (d / "sys" / "devices").symlink_to(base / "host" / "sys" / "devices")
    return Root(str(d))


def exact(host: Any, snap: CounterSnapshot) -> dict[int, dict[int, int]]:
    """What the synthetic kernel holds, in the snapshot's columns."""
    return {q.irq: {c: q.counts[c] for c in snap.irq_cpus} for q in host.irqs}


def got(snap: CounterSnapshot) -> dict[int, dict[int, int]]:
    return {irq: snap.irq_per_cpu(irq) for irq in snap.irqs}


# -- the sysfs path ----------------------------------------------------------
def test_first_tick_reads_every_watched_irq(tmp_path: pathlib.Path) -> None:
    h = make_host(tmp_path)
    root = Root(str(tmp_path / "host"))
    watched = frozenset(q.irq for q in h.irqs)
    s = read_counters(root, watched)
    assert s.source == SOURCE_SYS and s.fallback == ""
    assert s.irq_cpus == tuple(range(8))
    assert s.fresh is None
    assert got(s) == exact(h, s)
    assert s.stat.cpus.keys() == set(range(8))
    assert s.softirqs.cpus == tuple(range(8))


def test_next_tick_reads_only_the_irqs_that_fired(tmp_path: pathlib.Path) -> None:
    h = make_host(tmp_path)
    root = Root(str(tmp_path / "host"))
    watched = frozenset(q.irq for q in h.irqs)
    prev = read_counters(root, watched)
    for _ in range(5):
        fired = set(h.tick(0.25))
        cur = read_counters(root, watched, prev)
        assert cur.fresh == fired
        assert cur.base_t == prev.t
        for irq, c in cur.irqs.items():
            if irq not in fired:
                assert c is prev.irqs[irq]  # reused, not re-read
        assert got(cur) == exact(h, cur)
        prev = cur


def test_watched_none_means_every_irq(tmp_path: pathlib.Path) -> None:
    h = make_host(tmp_path)
    root = Root(str(tmp_path / "host"))
    s = read_counters(root, None)
    assert set(s.irqs) == {q.irq for q in h.irqs}
    h.tick(0.5)
    s2 = read_counters(root, None, s)
    assert got(s2) == exact(h, s2)


def test_watched_set_changes_between_ticks(tmp_path: pathlib.Path) -> None:
    h = make_host(tmp_path)
    root = Root(str(tmp_path / "host"))
    irqs = [q.irq for q in h.irqs]
    a = frozenset(irqs[:10])
    b = frozenset(irqs[5:15])
    prev = read_counters(root, a)
    h.tick(0.0)
    cur = read_counters(root, b, prev)
    assert set(cur.irqs) == b
    assert cur.fresh == b - a  # only the newly watched ones were read
    assert got(cur) == {k: v for k, v in exact(h, cur).items() if k in b}


def test_freed_irq_is_dropped(tmp_path: pathlib.Path) -> None:
    h = make_host(tmp_path)
    root = Root(str(tmp_path / "host"))
    watched = frozenset(q.irq for q in h.irqs)
    prev = read_counters(root, watched)
    victim = h.irqs[3].irq
    h.free_irq(victim)  # its intr entry drops to 0: the reader looks and finds nothing
    h.tick(0.0)  # CPU times move on
    cur = read_counters(root, watched, prev)
    assert victim not in cur.irqs
    r = compute_rates(prev, cur, HeatPolicy())
    assert [d.kind for d in r.discontinuities] == ["irq_set_changed"]
    assert victim not in r.irq_rate


def test_truncated_per_cpu_count_falls_back_for_good(tmp_path: pathlib.Path) -> None:
    # per_cpu_count_show() stops at PAGE_SIZE: fewer counts than possible CPUs
    h = make_host(tmp_path)
    root = Root(str(tmp_path / "host"))
    watched = frozenset(q.irq for q in h.irqs)
    p = tmp_path / "host" / "sys" / "kernel" / "irq" / str(h.irqs[0].irq) / "per_cpu_count"
    good = p.read_text()
    p.write_text(",".join(good.strip().split(",")[:5]) + "\n")
    s = read_counters(root, watched)
    assert s.source == SOURCE_PROC and "per_cpu_count" in s.fallback
    assert got(s) == exact(h, s)
    p.write_text(good)
    h.tick(0.3)
    s2 = read_counters(root, watched, s)
    assert s2.source == SOURCE_PROC and s2.fallback == s.fallback
    assert got(s2) == exact(h, s2)


# -- the /proc/interrupts fallback ---------------------------------------------
def test_proc_fallback_agrees_with_sysfs(tmp_path: pathlib.Path) -> None:
    h = make_host(tmp_path)
    sys_root = Root(str(tmp_path / "host"))
    proc_root = proc_only(tmp_path)
    watched = frozenset(q.irq for q in h.irqs)
    a = read_counters(sys_root, watched)
    b = read_counters(proc_root, watched)
    assert b.source == SOURCE_PROC and b.line_cache is not None
    assert got(a) == got(b) == exact(h, a)


def test_line_skip_cache_equals_a_full_parse(tmp_path: pathlib.Path) -> None:
    h = make_host(tmp_path)
    root = proc_only(tmp_path)
    watched = frozenset(q.irq for q in h.irqs[::2])
    prev = read_counters(root, watched)
    for share in (0.1, 0.0, 0.5, 1.0, 0.2):
        fired = set(h.tick(share))
        cur = read_counters(root, watched, prev)
        full = read_counters(root, watched)
        assert got(cur) == got(full) == {k: v for k, v in exact(h, cur).items() if k in watched}
        assert cur.fresh == fired & watched
        for irq in watched - fired:
            assert cur.irqs[irq] is prev.irqs[irq]
        prev = cur


def test_proc_fallback_header_change_is_a_full_parse(tmp_path: pathlib.Path) -> None:
    h = make_host(tmp_path)
    root = proc_only(tmp_path)
    watched = frozenset(q.irq for q in h.irqs)
    prev = read_counters(root, watched)
    h.offline = frozenset({3})  # CPU3 goes offline: its column disappears
    h.lines = [h._row(q) for q in h.irqs]
    h.tick(0.2)
    cur = read_counters(root, watched, prev)
    assert cur.irq_cpus == (0, 1, 2, 4, 5, 6, 7)
    assert cur.fresh is None
    assert got(cur) == exact(h, cur)
    r = compute_rates(prev, cur, HeatPolicy())
    kinds = {d.kind for d in r.discontinuities}
    assert "cpu_hotplug" in kinds
    assert 3 not in r.irq_per_cpu and 3 not in r.heat
    assert all(v >= 0 for v in r.irq_per_cpu.values())


def test_no_irq_source_at_all(tmp_path: pathlib.Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text("cpu  1 2 3 4\ncpu0 1 2 3 4\nintr 5 0 5\n")
    s = read_counters(Root(str(tmp_path)), None)
    assert s.source == SOURCE_NONE and s.irqs == {} and s.softirqs.cpus == ()
    assert s.stat.intr == (0, 5)


# -- diff_counts / IrqCounts ------------------------------------------------------
def ic(*vals: int | str) -> IrqCounts:
    return IrqCounts(",".join(str(v) for v in vals).encode())


@pytest.mark.parametrize(("cur", "prev", "want"), [
    (ic(1, 2, 3), ic(1, 2, 3), ([], [])),
    (ic(1, 25, 3), ic(1, 24, 3), ([1], [1])),           # same length: the XOR path
    (ic(1, 100, 3), ic(1, 99, 3), ([1], [1])),          # a count grew a digit
    (ic(5, 2, 9), ic(1, 2, 3), ([0, 2], [4, 6])),       # two CPUs
    (ic(0, 2, 3), ic(1, 2, 3), ([0], [-1])),            # a reset: the caller decides
    (ic(12, 3), ic(1, 23), ([0, 1], [11, -20])),        # same length, the comma moved
    (ic(1, 2, 3, 4), ic(1, 2, 3), None),                # different CPU count
    (ic(1, "x", 3), ic(1, 2, 3), None),                 # junk
    (ic(1, "9" * 30, 3), ic(1, "8" * 30, 3), None),     # not a u64
    (ic(7), ic(3), ([0], [4])),
])
def test_diff_counts(cur: IrqCounts, prev: IrqCounts, want: tuple[list[int], list[int]] | None) -> None:
    assert diff_counts(cur, prev) == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**12), st.integers(0, 10**12)), min_size=1, max_size=40),
       st.lists(st.integers(0, 39), max_size=5))
def test_diff_counts_matches_a_naive_diff(pairs: list[tuple[int, int]], same: list[int]) -> None:
    prev = [p for p, _ in pairs]
    cur = [c for _, c in pairs]
    for i in same:  # make some positions equal
        if i < len(cur):
            cur[i] = prev[i]
    want = [(i, c - p) for i, (c, p) in enumerate(zip(cur, prev, strict=True)) if c != p]
    r = diff_counts(ic(*cur), ic(*prev))
    assert r is not None
    assert list(zip(*r, strict=True)) == want


def test_irq_counts_values() -> None:
    c = ic(0, 12008, 7)
    assert c.tokens() == [b"0", b"12008", b"7"]
    assert c.ints() == (0, 12008, 7) and c.total() == 12015
    assert ic("007", 1).ints() == (7, 1)  # not JSON: int() takes it
    assert IrqCounts(b"").ints() == ()
    with pytest.raises(ValueError):
        ic(1, "x").ints()


# -- live host and fixtures -------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc")
def test_live_host_two_ticks() -> None:
    a = read_counters(HOST, None)
    time.sleep(0.05)
    b = read_counters(HOST, None, a)
    assert b.t > a.t
    assert b.source in (SOURCE_SYS, SOURCE_PROC)
    assert b.irqs, "this host has IRQs"
    if b.source == SOURCE_SYS:
        possible = CpuSet.parse_list(HOST.read_value("sys/devices/system/cpu/possible"))
        assert b.irq_cpus == tuple(sorted(possible))
    r = compute_rates(a, b, HeatPolicy())
    assert all(v >= 0 for v in r.irq_per_cpu.values())
    assert all(v >= 0 for m in r.irq_rate.values() for v in m.values())
    assert all(v >= 0 for m in r.softirq_rate.values() for v in m.values())
    assert all(0 <= v <= 1 for v in r.irq_time_share.values())
    assert set(r.heat) <= set(b.stat.cpus)
    assert not [d for d in r.discontinuities if d.kind in ("cpu_hotplug", "counter_reset")]


def fixture_trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc" / "stat").is_file())


@pytest.mark.parametrize("tree", fixture_trees(), ids=lambda p: p.name)
def test_fixture_trees(tree: pathlib.Path) -> None:
    root = Root(str(tree))
    s = read_counters(root, None)
    assert s.source != SOURCE_NONE and s.irqs
    stat = parse_stat(root.read_text("proc/stat"))
    if s.source == SOURCE_SYS and "hand-written" in (tree / "README.md").read_text():
        for irq, c in s.irqs.items():
            assert c.total() == stat.intr[irq], (tree.name, irq)


def test_root_read_many(tmp_path: pathlib.Path) -> None:
    """Root.read_many (added for this reader): absent -> None, long files whole, no escape."""
    d = tmp_path / "sys" / "kernel" / "irq"
    (d / "1").mkdir(parents=True)
    (d / "2").mkdir()
    (d / "1" / "per_cpu_count").write_text("1,2\n")
    (d / "2" / "per_cpu_count").write_text("9," * 10000 + "9\n")  # longer than one read
    root = Root(str(tmp_path))
    got_ = root.read_many("sys/kernel/irq", ["1/per_cpu_count", "3/per_cpu_count", "2/per_cpu_count"])
    assert got_[0] == b"1,2\n" and got_[1] is None
    assert got_[2] == ("9," * 10000 + "9\n").encode()
    assert root.read_many("sys/kernel/nope", ["1/x"]) == [None]
    with pytest.raises(ValueError):
        root.read_many("sys/kernel/irq", ["../../../etc/passwd"])
