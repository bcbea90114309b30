"""sample/stat: /proc/stat text, older kernels' shorter cpu lines, live host, fixtures."""

from __future__ import annotations

import os
import pathlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlatd.sample.stat import USER_HZ, CpuTimes, parse_stat, read_stat
from agentlatd.sysfs.root import HOST, Root

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"

HOST_618 = """\
cpu  25723 0 6090 529711 607 0 121 11 0 0
cpu0 11460 0 2457 266967 53 0 46 4 0 0
cpu1 14263 0 3633 262743 553 0 75 6 0 0
intr 1158184 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 12 0 0 0 0 563 162 0 58 1 65243 0 12008 8935
ctxt 2917219
btime 1795512502
processes 12646
procs_running 2
procs_blocked 0
softirq 278462 0 42504 38 20264 65243 0 4 93261 0 57148
"""


def test_parse_host_text() -> None:
    s = parse_stat(HOST_618)
    assert s.all_cpus == CpuTimes(25723, 0, 6090, 529711, 607, 0, 121, 11, 0, 0)
    assert set(s.cpus) == {0, 1}
    c1 = s.cpus[1]
    assert (c1.user, c1.system, c1.idle, c1.iowait, c1.softirq, c1.steal) == (14263, 3633, 262743, 553, 75, 6)
    assert c1.total == 14263 + 0 + 3633 + 262743 + 553 + 0 + 75 + 6
    assert s.intr_total == 1158184
    assert s.intr[38] == 12008 and s.intr[39] == 8935
    assert s.irq_total(38) == 12008 and s.irq_total(5000) is None and s.irq_total(-1) is None
    assert s.softirq_total == 278462 and len(s.softirq) == 10 and s.softirq[3] == 20264
    assert (s.ctxt, s.btime, s.processes, s.procs_running, s.procs_blocked) == (
        2917219, 1795512502, 12646, 2, 0)


def test_guest_time_is_not_counted_twice() -> None:
    # account_guest_time() charges guest time to user as well
    c = parse_stat("cpu0 100 10 20 300 5 1 2 3 40 4\n").cpus[0]
    assert c.guest == 40 and c.guest_nice == 4
    assert c.total == 100 + 10 + 20 + 300 + 5 + 1 + 2 + 3


@pytest.mark.parametrize(("fields", "present"), [
    ("1 2 3 4", 4),                     # 2.4
    ("1 2 3 4 5 6 7", 7),               # 2.6.0: iowait irq softirq
    ("1 2 3 4 5 6 7 8", 8),             # 2.6.11: steal
    ("1 2 3 4 5 6 7 8 9", 9),           # 2.6.24: guest
    ("1 2 3 4 5 6 7 8 9 10", 10),       # 2.6.33: guest_nice
])
def test_older_kernels_have_fewer_fields(fields: str, present: int) -> None:
    text = f"cpu  {fields}\ncpu0 {fields}\ncpu1 {fields}\n"
    s = parse_stat(text)
    c = s.cpus[1]
    got = tuple(c)
    assert got[:present] == tuple(range(1, present + 1))
    assert all(v is None for v in got[present:])
    assert s.all_cpus == c


def test_irregular_cpu_block_falls_back_per_line() -> None:
    s = parse_stat("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 2 3 4\ncpu1 1 2 x 4\ncpu2 5 6 7 8 9\n")
    assert s.cpus[0] == CpuTimes(1, 2, 3, 4)
    assert 1 not in s.cpus  # junk line skipped
    assert s.cpus[2].iowait == 9


def test_offline_cpus_have_no_line() -> None:
    s = parse_stat("cpu  4 0 4 8\ncpu0 1 0 1 2\ncpu2 1 0 1 2\ncpu3 2 0 2 4\n")
    assert sorted(s.cpus) == [0, 2, 3]


def test_missing_lines_are_none() -> None:
    s = parse_stat("cpu0 1 2 3 4\n")
    assert s.all_cpus is None and s.intr == () and s.intr_total is None
    assert s.softirq == () and s.ctxt is None and s.btime is None


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_never_raises(text: str) -> None:
    parse_stat(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["cpu", "cpu0", "cpu12", "intr", "softirq", "ctxt", " ", "\n", "0", "7",
                                 "18446744073709551615", "-1", "x", "9" * 30]), max_size=50))
def test_never_raises_on_near_miss(parts: list[str]) -> None:
    parse_stat(" ".join(parts))


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc/stat")
def test_live_host() -> None:
    s = parse_stat(read_stat(HOST))
    assert s.all_cpus is not None
    online = HOST.read_optional("sys/devices/system/cpu/online")
    if online:
        from agentlatd.cpuset import CpuSet
        assert set(s.cpus) == set(CpuSet.parse_list(online))
    for c in s.cpus.values():
        assert c.steal is not None and c.total > 0
    assert s.intr_total is not None and s.intr_total >= sum(s.intr)
    assert s.btime is not None and 0 < s.btime < time.time()
    assert len(s.softirq) == 10
    assert os.sysconf("SC_CLK_TCK") == USER_HZ


def fixture_trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc" / "stat").is_file())


@pytest.mark.parametrize("tree", fixture_trees(), ids=lambda p: p.name)
def test_fixture_stat(tree: pathlib.Path) -> None:
    root = Root(str(tree))
    s = parse_stat(read_stat(root))
    assert s.cpus and s.intr
    # fixtures written by make_machines.py: intr[N] is the sum of per_cpu_count
    if (tree / "sys" / "kernel" / "irq").is_dir() and (tree / "README.md").read_text().find(
            "hand-written") >= 0:
        for d in (tree / "sys" / "kernel" / "irq").iterdir():
            raw = (d / "per_cpu_count").read_text().strip()
            assert s.intr[int(d.name)] == sum(int(x) for x in raw.split(",")), (tree.name, d.name)
