"""sample/interrupts: every /proc/interrupts row format seen in the field (issue 2),
this host's live file, the fixture trees, and property tests on generated tables."""

from __future__ import annotations

import os
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlatd.sample.interrupts import Interrupts, IrqRow, parse_interrupts, parse_row
from agentlatd.sysfs.root import HOST

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"

HDR = "           CPU0       CPU1       CPU2       CPU3       \n"


def one(line: str, header: str = HDR) -> IrqRow:
    ints = parse_interrupts(header + line + "\n")
    assert len(ints.rows) == 1, ints
    return ints.rows[0]


# (row, irq, counts, chip, hwirq, trigger, actions)
FORMATS = [
    # x86 IO-APIC, handler name joined to hwirq
    ("  2:          0          0          0          0    IO-APIC   2-edge      timer",
     2, (0, 0, 0, 0), "IO-APIC", "2", "edge", ("timer",)),
    # NVMe queue behind interrupt remapping
    (" 45:         12          0        300          0  IR-PCI-MSI 524289-edge      nvme0q1",
     45, (12, 0, 300, 0), "IR-PCI-MSI", "524289", "edge", ("nvme0q1",)),
    # per-device MSI domain (6.x), action with @pci suffix
    (" 60:          1          2          3          4  PCI-MSI-0000:3b:00.0 5-edge      "
     "mlx5_comp3@pci:0000:3b:00.0",
     60, (1, 2, 3, 4), "PCI-MSI-0000:3b:00.0", "5", "edge", ("mlx5_comp3@pci:0000:3b:00.0",)),
    # virtio MSI-X as printed by 6.18 (one space before a wide chip)
    (" 38:          0        176          0          0 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0",
     38, (0, 176, 0, 0), "PCI-MSIX-0000:00:03.0", "1", "edge", ("virtio2-input.0",)),
    # aarch64 GICv3 with CONFIG_GENERIC_IRQ_SHOW_LEVEL
    (" 11:        123        456        789         10     GICv3  27 Level     arch_timer",
     11, (123, 456, 789, 10), "GICv3", "27", "Level", ("arch_timer",)),
    (" 14:          0          0          0          0     GICv3  30 Level     kvm guest ptimer",
     14, (0, 0, 0, 0), "GICv3", "30", "Level", ("kvm guest ptimer",)),
    (" 50:          5          0          0          0   ITS-MSI 524288 Edge      nvme0q0",
     50, (5, 0, 0, 0), "ITS-MSI", "524288", "Edge", ("nvme0q0",)),
    # SHOW_LEVEL and a handler name
    (" 12:          1          0          0          0     GICv3  33 Level   -fasteoi   uart-pl011",
     12, (1, 0, 0, 0), "GICv3", "33", "Level", ("uart-pl011",)),
    # several actions, one name with a space
    ("  1:          9          0          0          0    IO-APIC   1-edge      i8042, serio",
     1, (9, 0, 0, 0), "IO-APIC", "1", "edge", ("i8042", "serio")),
    (" 16:          0          0          0          0  IR-PCI-MSI 16384-edge      PCIe PME, aerdrv",
     16, (0, 0, 0, 0), "IR-PCI-MSI", "16384", "edge", ("PCIe PME", "aerdrv")),
    # vector allocated, nothing requested: no action
    (" 40:          0          0          0          0  PCI-MSI 65536-edge",
     40, (0, 0, 0, 0), "PCI-MSI", "65536", "edge", ()),
    # no irq domain: blank hwirq, then the handler name
    ("  7:          0          0          0          0      None      -edge      foo",
     7, (0, 0, 0, 0), "None", "", "edge", ("foo",)),
    # kernels before 3.x: chip and handler one token
    ("  4:          3          0          0          0   IO-APIC-edge      serial",
     4, (3, 0, 0, 0), "IO-APIC", "", "edge", ("serial",)),
    ("  9:          0          0          0          0   IO-APIC-fasteoi   acpi",
     9, (0, 0, 0, 0), "IO-APIC", "", "fasteoi", ("acpi",)),
    # gve / iavf / intel names
    (" 70:          0          0          0         99  PCI-MSIX-0000:00:04.0 3-edge      "
     "gve-ntfy-blk3@pci:0000:00:04.0",
     70, (0, 0, 0, 99), "PCI-MSIX-0000:00:04.0", "3", "edge", ("gve-ntfy-blk3@pci:0000:00:04.0",)),
    (" 71:          0          0          0          0  IR-PCI-MSI 1572866-edge      iavf-eth0-TxRx-0",
     71, (0, 0, 0, 0), "IR-PCI-MSI", "1572866", "edge", ("iavf-eth0-TxRx-0",)),
]


@pytest.mark.parametrize(("line", "irq", "counts", "chip", "hwirq", "trigger", "actions"), FORMATS)
def test_numbered_row_formats(
    line: str, irq: int, counts: tuple[int, ...], chip: str, hwirq: str, trigger: str,
    actions: tuple[str, ...],
) -> None:
    r = one(line)
    assert (r.key, r.irq, r.counts, r.chip, r.hwirq, r.trigger, r.actions) == (
        str(irq), irq, counts, chip, hwirq, trigger, actions)
    assert r.desc == ", ".join(actions)
    assert r.total == sum(counts)


def test_arch_rows_and_one_column_rows() -> None:
    text = (
        HDR
        + "NMI:          0          0          0          0   Non-maskable interrupts\n"
        + "LOC:     106594     119993          5          6   Local timer interrupts\n"
        + "IPI0:        41         36         12         13       Rescheduling interrupts\n"
        + "IPI5:         0          0          0          0       IRQ work interrupts\n"
        + "ERR:          0\n"
        + "MIS:          7\n"
        + "Err:          0\n"
    )
    ints = parse_interrupts(text)
    rows = {r.key: r for r in ints.rows}
    assert set(rows) == {"NMI", "LOC", "IPI0", "IPI5", "ERR", "MIS", "Err"}
    assert all(r.irq is None for r in ints.rows)
    assert rows["LOC"].counts == (106594, 119993, 5, 6)
    assert rows["LOC"].desc == "Local timer interrupts"
    assert rows["IPI0"].desc == "Rescheduling interrupts"
    assert rows["ERR"].counts == (0,) and rows["MIS"].counts == (7,)
    assert ints.numbered() == {}


def test_blank_lines_and_junk_are_skipped() -> None:
    text = "\n\n" + HDR + "\n  2:  0 0 0 0  IO-APIC 2-edge timer\n\nno colon here\n   \n  : 5\n"
    ints = parse_interrupts(text)
    assert ints.cpus == (0, 1, 2, 3)
    assert [r.key for r in ints.rows] == ["2"]


def test_offline_cpus_have_no_column() -> None:
    # CPU1 offline: show_interrupts() walks online CPUs only; the header says which
    text = ("           CPU0       CPU2       CPU3       \n"
            " 24:          1          2          3  IO-APIC   5-edge      ACPI:Ged\n"
            "LOC:         10         20         30   Local timer interrupts\n")
    ints = parse_interrupts(text)
    assert ints.cpus == (0, 2, 3)
    row = ints.numbered()[24]
    assert ints.per_cpu(row) == {0: 1, 2: 2, 3: 3}
    assert row.actions == ("ACPI:Ged",)


def test_unicode_digits_do_not_crash() -> None:
    # regression: "²".isdigit() is True but int("²") raises
    ints = parse_interrupts("   CPU0 CPU²\n ²: ² 5 IO-APIC 2-edge x\n 3: 1 ³ y\n")
    assert ints.cpus == ()  # not a header
    assert all(r.irq is None or r.irq == 3 for r in ints.rows)


def test_huge_digit_runs_do_not_crash() -> None:
    # int() refuses more than 4300 digits since 3.11
    ints = parse_interrupts(HDR + " 5: " + "9" * 5000 + " 1 2 3 IO-APIC 1-edge x\n")
    assert ints.rows[0].counts == ()


def test_parse_row_direct() -> None:
    r = parse_row("24", "  1  2  IO-APIC   5-edge      ACPI:Ged", 2)
    assert (r.irq, r.counts, r.chip, r.actions) == (24, (1, 2), "IO-APIC", ("ACPI:Ged",))


# -- live host and fixtures --------------------------------------------------
def _online_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


@pytest.mark.skipif(not os.path.exists("/proc/interrupts"), reason="no /proc/interrupts")
def test_live_host_interrupts() -> None:
    ints = parse_interrupts(HOST.read_text("proc/interrupts"))
    assert ints.cpus, "no CPU columns"
    assert len(set(ints.cpus)) == len(ints.cpus)
    numbered = ints.numbered()
    assert numbered, "this host has numbered IRQs"
    for row in numbered.values():
        assert len(row.counts) == len(ints.cpus), row
        assert row.chip, row
    for row in ints.rows:
        assert row.irq is not None or row.key.isalnum()
    # the per-IRQ files only grow between two reads: sysfs read after /proc agrees or is ahead
    for irq, row in numbered.items():
        raw = HOST.read_optional(f"sys/kernel/irq/{irq}/per_cpu_count")
        if not raw:
            continue
        per = [int(x) for x in raw.split(",")]
        assert sum(per) >= row.total


def fixture_trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc" / "interrupts").is_file())


@pytest.mark.parametrize("tree", fixture_trees(), ids=lambda p: p.name)
def test_fixture_interrupts(tree: pathlib.Path) -> None:
    ints = parse_interrupts((tree / "proc" / "interrupts").read_text())
    assert ints.cpus
    numbered = ints.numbered()
    assert numbered
    for row in numbered.values():
        assert len(row.counts) == len(ints.cpus), (tree.name, row)
    for row in ints.rows:
        if row.key in ("ERR", "MIS", "Err"):
            assert len(row.counts) == 1


# -- properties --------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_arbitrary_text(text: str) -> None:
    ints = parse_interrupts(text)
    assert isinstance(ints, Interrupts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["CPU0", "CPU1", " ", "\n", "12:", "NMI:", "0", "99", "IO-APIC",
                                 "2-edge", "Level", "GICv3", ",", "a, b", "ERR:", "-edge", "²", "\t"]),
                max_size=60))
def test_never_raises_on_near_miss_text(parts: list[str]) -> None:
    parse_interrupts(" ".join(parts))


_name = st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="_-.@:",
                                       max_codepoint=127), min_size=1, max_size=20)


@st.composite
def tables(draw: st.DrawFn) -> tuple[str, list[int], list[tuple[int, list[int], str, int, str, list[str]]]]:
    ncpu = draw(st.integers(1, 12))
    cpus = sorted(draw(st.sets(st.integers(0, 63), min_size=ncpu, max_size=ncpu)))
    irqs = draw(st.lists(st.integers(0, 9999), unique=True, max_size=15))
    rows = []
    for irq in irqs:
        counts = draw(st.lists(st.integers(0, 2**32 - 1), min_size=ncpu, max_size=ncpu))
        chip = draw(st.sampled_from(["IO-APIC", "IR-PCI-MSI", "PCI-MSI-0000:3b:00.0",
                                     "PCI-MSIX-0000:00:03.0", "IR-PCI-MSIX-0000:5e:00.0"]))
        hw = draw(st.integers(0, 2**20))
        handler = draw(st.sampled_from(["edge", "fasteoi"]))
        actions = draw(st.lists(_name.filter(lambda s: not s.isdigit() and not s.startswith("-")),
                                max_size=3))
        rows.append((irq, counts, chip, hw, handler, actions))
    prec = max(3, len(str(max(irqs, default=0))))
    lines = [" " * (prec + 1) + "".join(f"CPU{c:<8d}" for c in cpus)]
    for irq, counts, chip, hw, handler, actions in rows:
        # kernel/irq/proc.c show_interrupts(): "%*d:", " %10u"..., " %8s", " %*lu", "-%-8s", "  %s"
        line = f"{irq:{prec}d}:" + "".join(f" {c:10d}" for c in counts)
        line += f" {chip:>8s} {hw:{prec}d}-{handler:<8s}"
        if actions:
            line += "  " + ", ".join(actions)
        lines.append(line)
    lines.append(f"{'NMI':>{prec}s}:" + "".join(f" {0:10d}" for _ in cpus) + "   Non-maskable interrupts")
    lines.append(f"{'ERR':>{prec}s}: {0:10d}")
    return "\n".join(lines) + "\n", cpus, rows


@settings(max_examples=150, deadline=None)
@given(tables())
def test_round_trips_generated_tables(
    table: tuple[str, list[int], list[tuple[int, list[int], str, int, str, list[str]]]],
) -> None:
    text, cpus, rows = table
    ints = parse_interrupts(text)
    assert ints.cpus == tuple(cpus)
    numbered = ints.numbered()
    assert sorted(numbered) == sorted(r[0] for r in rows)
    for irq, counts, chip, hw, handler, actions in rows:
        got = numbered[irq]
        assert got.counts == tuple(counts)
        assert got.chip == chip
        assert got.hwirq == str(hw)
        assert got.trigger == handler
        assert got.actions == tuple(actions)
    rest = {r.key: r for r in ints.rows if r.irq is None}
    assert rest["ERR"].counts == (0,)
    assert rest["NMI"].desc == "Non-maskable interrupts"
