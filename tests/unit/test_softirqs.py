"""sample/softirqs: /proc/softirqs text, old vector names, odd column counts, live host, fixtures."""

from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlatd.cpuset import CpuSet
from agentlatd.sample.softirqs import SOFTIRQ_NAMES, Softirqs, parse_softirqs, read_softirqs
from agentlatd.sysfs.root import HOST, Root

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"

# this host's file (6.18, 2 CPUs), verbatim
HOST_618 = "                    CPU0       CPU1       \n" + """\
          HI:          0          0
       TIMER:      18474      24030
      NET_TX:         14         24
      NET_RX:       8334      11930
       BLOCK:          0      65243
    IRQ_POLL:          0          0
     TASKLET:          3          1
       SCHED:      45710      47551
     HRTIMER:          0          0
         RCU:      22792      34356
"""


def test_parse_host_text() -> None:
    s = parse_softirqs(HOST_618)
    assert s.cpus == (0, 1)
    assert tuple(s.counts) == SOFTIRQ_NAMES
    assert s.counts["NET_RX"] == (8334, 11930)
    assert s.per_cpu("BLOCK") == {0: 0, 1: 65243}
    assert s.total("TIMER") == 18474 + 24030
    assert s.per_cpu("NOPE") == {} and s.total("NOPE") == 0


def test_old_kernel_vector_name_is_kept() -> None:
    # before 4.5 the IRQ_POLL vector was BLOCK_IOPOLL
    text = HOST_618.replace("    IRQ_POLL:", "BLOCK_IOPOLL:")
    s = parse_softirqs(text)
    assert "BLOCK_IOPOLL" in s.counts and "IRQ_POLL" not in s.counts


def test_header_says_which_cpu_each_column_is() -> None:
    # a tree with fewer columns than the machine has CPUs: the header numbers them
    text = "                    CPU0       CPU2       CPU5\n      NET_RX:  1  2  3\n       TIMER:  4  5  6\n"
    s = parse_softirqs(text)
    assert s.cpus == (0, 2, 5)
    assert s.per_cpu("NET_RX") == {0: 1, 2: 2, 5: 3}


def test_malformed_rows() -> None:
    text = ("                    CPU0       CPU1\n"
            "      NET_RX:          1          x\n"  # junk count: keep what parses
            "no colon line\n"
            "       TIMER:          4\n"  # short row
            "\n")
    s = parse_softirqs(text)
    assert s.counts["NET_RX"] == (1,)
    assert s.counts["TIMER"] == (4,)
    assert set(s.counts) == {"NET_RX", "TIMER"}


def test_empty() -> None:
    assert parse_softirqs("") == Softirqs(cpus=(), counts={})


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_never_raises(text: str) -> None:
    parse_softirqs(text)


@pytest.mark.skipif(not os.path.exists("/proc/softirqs"), reason="no /proc/softirqs")
def test_live_host() -> None:
    s = parse_softirqs(read_softirqs(HOST))
    # fs/proc/softirqs.c: one column per possible CPU
    possible = HOST.read_optional("sys/devices/system/cpu/possible")
    if possible:
        assert s.cpus == tuple(sorted(CpuSet.parse_list(possible)))
    for name in ("TIMER", "NET_RX", "SCHED", "RCU"):
        assert name in s.counts
        assert len(s.counts[name]) == len(s.cpus)
    assert s.total("TIMER") > 0


def fixture_trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc" / "softirqs").is_file())


@pytest.mark.parametrize("tree", fixture_trees(), ids=lambda p: p.name)
def test_fixture_softirqs(tree: pathlib.Path) -> None:
    s = parse_softirqs(read_softirqs(Root(str(tree))))
    assert s.cpus
    assert set(SOFTIRQ_NAMES) <= set(s.counts)
    for row in s.counts.values():
        assert len(row) == len(s.cpus)
