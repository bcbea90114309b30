"""sample/irq: /proc/irq/N/* and /sys/kernel/irq/N/*; absent files are unknown (None), never errors."""

from __future__ import annotations

import os
import pathlib

import pytest

from agentlatd.cpuset import CpuSet
from agentlatd.sample.irq import (
    ProcIrq,
    SysIrq,
    list_proc_irqs,
    list_sys_irqs,
    parse_actions,
    parse_affinity_hint,
    parse_cpulist,
    parse_cpumask,
    parse_hwirq,
    parse_node,
    parse_per_cpu_count,
    parse_wakeup,
    read_proc_irq,
    read_sys_irq,
)
from agentlatd.sysfs.root import HOST, Root

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"


def write(base: pathlib.Path, rel: str, text: str) -> None:
    p = base / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_parsers() -> None:
    assert parse_cpulist("0-3,8\n") == CpuSet({0, 1, 2, 3, 8})
    assert parse_cpulist("zz") is None
    assert parse_cpumask("00000000,00000101\n") == CpuSet({0, 8})
    assert parse_cpumask("nothex") is None
    # affinity_hint: the kernel prints an all-zero mask when the driver gave none
    assert parse_affinity_hint("00000000,00000000\n") is None
    assert parse_affinity_hint("0\n") is None
    assert parse_affinity_hint("3\n") == CpuSet({0, 1})
    assert parse_node("1\n") == 1
    assert parse_node("-1\n") is None
    assert parse_node("") is None
    assert parse_per_cpu_count("0,12008\n") == (0, 12008)
    assert parse_per_cpu_count("") is None
    assert parse_per_cpu_count("1,x") is None
    assert parse_actions("i8042,serio\n") == ("i8042", "serio")
    assert parse_actions("\n") == ()
    assert parse_hwirq("524289\n") == 524289
    assert parse_hwirq("\n") is None
    assert parse_wakeup("disabled\n") is False and parse_wakeup("enabled") is True
    assert parse_wakeup("maybe") is None


def test_read_full_tree(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "proc/irq/45/smp_affinity_list", "0-3\n")
    write(tmp_path, "proc/irq/45/smp_affinity", "f\n")
    write(tmp_path, "proc/irq/45/effective_affinity_list", "2\n")
    write(tmp_path, "proc/irq/45/effective_affinity", "4\n")
    write(tmp_path, "proc/irq/45/affinity_hint", "00000000\n")
    write(tmp_path, "proc/irq/45/node", "0\n")
    write(tmp_path, "sys/kernel/irq/45/per_cpu_count", "0,0,17,0\n")
    write(tmp_path, "sys/kernel/irq/45/chip_name", "IR-PCI-MSI\n")
    write(tmp_path, "sys/kernel/irq/45/hwirq", "524289\n")
    write(tmp_path, "sys/kernel/irq/45/name", "edge\n")
    write(tmp_path, "sys/kernel/irq/45/type", "edge\n")
    write(tmp_path, "sys/kernel/irq/45/actions", "nvme0q1\n")
    write(tmp_path, "sys/kernel/irq/45/wakeup", "disabled\n")
    root = Root(str(tmp_path))
    assert read_proc_irq(root, 45) == ProcIrq(45, CpuSet({0, 1, 2, 3}), CpuSet({2}), None, 0)
    assert read_sys_irq(root, 45) == SysIrq(
        45, ("nvme0q1",), "IR-PCI-MSI", 524289, "edge", (0, 0, 17, 0), "edge", False)
    assert list_proc_irqs(root) == (45,)
    assert list_sys_irqs(root) == (45,)


def test_absent_files_are_unknown(tmp_path: pathlib.Path) -> None:
    root = Root(str(tmp_path))
    assert read_proc_irq(root, 7) == ProcIrq(7, None, None, None, None)
    assert read_sys_irq(root, 7) == SysIrq(7, None, None, None, None, None, None, None)
    assert list_proc_irqs(root) == () and list_sys_irqs(root) == ()


def test_masks_are_the_fallback_for_old_kernels(tmp_path: pathlib.Path) -> None:
    # before 3.0 there is no smp_affinity_list; before 4.15 no effective_affinity*
    write(tmp_path, "proc/irq/9/smp_affinity", "00000000,00000003\n")
    write(tmp_path, "proc/irq/9/effective_affinity", "00000000,00000002\n")
    write(tmp_path, "proc/irq/10/smp_affinity", "ff\n")
    write(tmp_path, "proc/irq/10/node", "-1\n")
    write(tmp_path, "proc/irq/10/affinity_hint", "00000000,00000010\n")
    root = Root(str(tmp_path))
    assert read_proc_irq(root, 9) == ProcIrq(9, CpuSet({0, 1}), CpuSet({1}), None, None)
    assert read_proc_irq(root, 10) == ProcIrq(10, CpuSet(range(8)), None, CpuSet({4}), None)
    assert list_proc_irqs(root) == (9, 10)


def test_unparseable_values_are_unknown(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "proc/irq/3/smp_affinity_list", "garbage\n")
    write(tmp_path, "proc/irq/3/smp_affinity", "3\n")  # the list is junk: the mask still answers
    write(tmp_path, "proc/irq/3/node", "abc\n")
    write(tmp_path, "sys/kernel/irq/3/per_cpu_count", "1,2,three\n")
    write(tmp_path, "sys/kernel/irq/3/actions", "\n")
    write(tmp_path, "sys/kernel/irq/3/chip_name", "\n")
    root = Root(str(tmp_path))
    p = read_proc_irq(root, 3)
    assert p.smp_affinity == CpuSet({0, 1}) and p.node is None
    s = read_sys_irq(root, 3)
    assert s.per_cpu_count is None
    assert s.actions == ()  # present and empty: nothing requested
    assert s.chip_name == ""  # present and empty: no chip


def test_listing_ignores_non_numbers(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "proc/irq/default_smp_affinity", "3\n")
    (tmp_path / "proc/irq/12").mkdir(parents=True)
    (tmp_path / "proc/irq/2").mkdir(parents=True)
    assert list_proc_irqs(Root(str(tmp_path))) == (2, 12)


@pytest.mark.skipif(not os.path.isdir("/proc/irq"), reason="no /proc/irq")
def test_live_host_read_only() -> None:
    irqs = list_proc_irqs(HOST)
    assert irqs
    possible = CpuSet.parse_list(HOST.read_value("sys/devices/system/cpu/possible"))
    for irq in irqs:
        p = read_proc_irq(HOST, irq)
        assert p.smp_affinity is not None, irq
        assert p.smp_affinity <= possible
        if p.effective_affinity is not None and p.effective_affinity:
            assert p.effective_affinity <= possible
        assert p.node is None or p.node >= 0
    sys_irqs = list_sys_irqs(HOST)
    if not sys_irqs:
        pytest.skip("no /sys/kernel/irq")
    assert set(irqs) <= set(sys_irqs) | {0, 2}
    for irq in sys_irqs:
        s = read_sys_irq(HOST, irq)
        assert s.per_cpu_count is not None and len(s.per_cpu_count) == len(possible), irq
        assert s.type in ("edge", "level")


def fixture_trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc" / "irq").is_dir())


@pytest.mark.parametrize("tree", fixture_trees(), ids=lambda p: p.name)
def test_fixture_irq_files(tree: pathlib.Path) -> None:
    root = Root(str(tree))
    irqs = list_proc_irqs(root)
    assert irqs
    for irq in irqs:
        p = read_proc_irq(root, irq)
        assert p.smp_affinity is not None, (tree.name, irq)
    for irq in list_sys_irqs(root):
        s = read_sys_irq(root, irq)
        assert s.per_cpu_count is not None, (tree.name, irq)
