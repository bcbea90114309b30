"""sample/interrupts: every /proc/interrupts row format seen in the field,
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
    # 2.4 XT-PIC: a typename with no flow part
    ("  2:          0          0          0          0          XT-PIC  cascade",
     2, (0, 0, 0, 0), "XT-PIC", "", "", ("cascade",)),
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


# -- every sample found in the field (tests/fixtures/interrupts/*.txt) --------
SAMPLE_DIR = REPO / "tests" / "fixtures" / "interrupts"
MARK = "--- /proc/interrupts ---\n"

# per sample, every numbered row: (irq, chip, hwirq, trigger, handler, oob, actions)
SAMPLES: dict[str, list[tuple[int, str, str, str, str, bool, tuple[str, ...]]]] = {
    "aws-ena-r6in": [
        (1, "IO-APIC", "1", "edge", "edge", False, ("i8042",)),
        (4, "IO-APIC", "4", "edge", "edge", False, ("ttyS0",)),
        (8, "IO-APIC", "8", "edge", "edge", False, ("rtc0",)),
        (9, "IO-APIC", "9", "fasteoi", "fasteoi", False, ("acpi",)),
        (12, "IO-APIC", "12", "edge", "edge", False, ("i8042",)),
        (24, "PCI-MSI", "65536", "edge", "edge", False, ("nvme0q0",)),
        (25, "PCI-MSI", "65537", "edge", "edge", False, ("nvme0q1",)),
        (26, "PCI-MSI", "65538", "edge", "edge", False, ("nvme0q2",)),
        (27, "PCI-MSI", "81920", "edge", "edge", False, ("ena-mgmnt@pci:0000:00:05.0",)),
        (28, "PCI-MSI", "81921", "edge", "edge", False, ("eth0-Tx-Rx-0",)),
        (29, "PCI-MSI", "81922", "edge", "edge", False, ("eth0-Tx-Rx-1",)),
        (30, "PCI-MSI", "81923", "edge", "edge", False, ("eth0-Tx-Rx-2",)),
        (31, "PCI-MSI", "81924", "edge", "edge", False, ("eth0-Tx-Rx-3",)),
        (32, "PCI-MSI", "98304", "edge", "edge", False, ("ena-mgmnt@pci:0000:00:06.0",)),
        (33, "PCI-MSI", "98305", "edge", "edge", False, ("eth1-Tx-Rx-0",)),
        (34, "PCI-MSI", "98306", "edge", "edge", False, ("eth1-Tx-Rx-1",)),
        (35, "PCI-MSI", "98307", "edge", "edge", False, ("eth1-Tx-Rx-2",)),
        (36, "PCI-MSI", "98308", "edge", "edge", False, ("eth1-Tx-Rx-3",)),
        (37, "PCI-MSI", "507904", "edge", "edge", False, ("nvme1q0",)),
        (38, "PCI-MSI", "507905", "edge", "edge", False, ("nvme1q1",)),
        (39, "PCI-MSI", "507906", "edge", "edge", False, ("nvme1q2",)),
        (40, "PCI-MSI", "491520", "edge", "edge", False, ("nvme2q0",)),
        (41, "PCI-MSI", "491521", "edge", "edge", False, ("nvme2q1",)),
        (42, "PCI-MSI", "491522", "edge", "edge", False, ("nvme2q2",)),
        (43, "PCI-MSI", "458752", "edge", "edge", False, ("nvme3q0",)),
        (44, "PCI-MSI", "458753", "edge", "edge", False, ("nvme3q1",)),
        (45, "PCI-MSI", "458754", "edge", "edge", False, ("nvme3q2",)),
        (46, "PCI-MSI", "475136", "edge", "edge", False, ("nvme4q0",)),
        (47, "PCI-MSI", "475137", "edge", "edge", False, ("nvme4q1",)),
        (48, "PCI-MSI", "475138", "edge", "edge", False, ("nvme4q2",)),
        (49, "PCI-MSI", "442368", "edge", "edge", False, ("nvme5q0",)),
        (50, "PCI-MSI", "442369", "edge", "edge", False, ("nvme5q1",)),
        (51, "PCI-MSI", "442370", "edge", "edge", False, ("nvme5q2",)),
        (52, "PCI-MSI", "114688", "edge", "edge", False, ("ena-mgmnt@pci:0000:00:07.0",)),
        (53, "PCI-MSI", "114689", "edge", "edge", False, ("eth2-Tx-Rx-0",)),
        (54, "PCI-MSI", "114690", "edge", "edge", False, ("eth2-Tx-Rx-1",)),
        (55, "PCI-MSI", "114691", "edge", "edge", False, ("eth2-Tx-Rx-2",)),
        (56, "PCI-MSI", "114692", "edge", "edge", False, ("eth2-Tx-Rx-3",)),
        (57, "PCI-MSI", "425984", "edge", "edge", False, ("nvme6q0",)),
        (58, "PCI-MSI", "425985", "edge", "edge", False, ("nvme6q1",)),
        (59, "PCI-MSI", "425986", "edge", "edge", False, ("nvme6q2",)),
        (60, "PCI-MSI", "409600", "edge", "edge", False, ("nvme7q0",)),
        (61, "PCI-MSI", "409601", "edge", "edge", False, ("nvme7q1",)),
        (62, "PCI-MSI", "409602", "edge", "edge", False, ("nvme7q2",)),
        (63, "PCI-MSI", "393216", "edge", "edge", False, ("nvme8q0",)),
        (64, "PCI-MSI", "393217", "edge", "edge", False, ("nvme8q1",)),
        (65, "PCI-MSI", "393218", "edge", "edge", False, ("nvme8q2",)),
    ],
    "azure-mana-hyperv": [
        (25, "Hyper-V PCIe MSI", "4138200989697", "edge", "edge", False, ("mana_q0@pci:7870:00:00.0",)),
        (26, "Hyper-V PCIe MSI", "4138200989698", "edge", "edge", False, ("mana_q1@pci:7870:00:00.0",)),
        (27, "Hyper-V PCIe MSI", "4138200989699", "edge", "edge", False, ("mana_q2@pci:7870:00:00.0",)),
        (28, "Hyper-V PCIe MSI", "4138200989700", "edge", "edge", False, ("mana_q3@pci:7870:00:00.0",)),
    ],
    "dovetail-arm64-rendered": [
        (11, "GICv3", "27", "Level", "", True, ("arch_timer",)),
        (13, "GICv3", "23", "Level", "", False, ("arm-pmu",)),
        (14, "GICv3", "33", "Level", "fasteoi", False, ("uart-pl011",)),
        (28, "ITS-MSI", "1048576", "Edge", "", True, ("eth0-TxRx-0",)),
        (29, "ITS-MSI", "1048577", "Edge", "", False, ("eth0-TxRx-1",)),
    ],
    "dovetail-x86-rendered": [
        (0, "IR-IO-APIC", "2", "edge", "edge", False, ("timer",)),
        (9, "IR-IO-APIC", "9", "fasteoi", "fasteoi", False, ("acpi",)),
        (24, "IR-PCI-MSI", "1572865", "edge", "edge", True, ("eth0-TxRx-0",)),
        (25, "IR-PCI-MSI", "1572866", "edge", "edge", False, ("eth0-TxRx-1",)),
        (26, "None", "", "edge", "edge", True, ("evl-sirq",)),
    ],
    "linux-2.0-rendered": [
        (0, "", "", "", "", False, ("timer",)),
        (1, "", "", "", "", False, ("keyboard",)),
        (2, "", "", "", "", False, ("cascade",)),
        (3, "", "", "", "", False, ("serial",)),
        (8, "", "", "", "", False, ("rtc",)),
        (13, "", "", "", "", False, ("math error",)),
        (14, "", "", "", "", False, ("ide0",)),
        (15, "", "", "", "", False, ("ide1", "ide2")),
    ],
    "linux-2.4-proc-rst": [
        (0, "IO-APIC", "", "edge", "edge", False, ("timer",)),
        (1, "IO-APIC", "", "edge", "edge", False, ("keyboard",)),
        (2, "XT-PIC", "", "", "", False, ("cascade",)),
        (5, "IO-APIC", "", "edge", "edge", False, ("soundblaster",)),
        (8, "IO-APIC", "", "edge", "edge", False, ("rtc",)),
        (9, "IO-APIC", "", "edge", "edge", False, ("3c503",)),
        (12, "IO-APIC", "", "edge", "edge", False, ("PS/2 Mouse",)),
        (13, "XT-PIC", "", "", "", False, ("fpu",)),
        (14, "IO-APIC", "", "edge", "edge", False, ("ide0",)),
        (15, "IO-APIC", "", "edge", "edge", False, ("ide1",)),
        (17, "IO-APIC", "", "level", "level", False, ("eth0",)),
        (18, "IO-APIC", "", "level", "level", False, ("bttv",)),
    ],
    "linux-2.6.15-lkml": [
        (0, "IO-APIC", "", "edge", "edge", False, ("timer",)),
        (1, "IO-APIC", "", "edge", "edge", False, ("i8042",)),
        (2, "XT-PIC", "", "", "", False, ("cascade",)),
        (5, "IO-APIC", "", "edge", "edge", False, ("SoundBlaster",)),
        (7, "IO-APIC", "", "edge", "edge", False, ("parport0",)),
        (8, "IO-APIC", "", "edge", "edge", False, ("rtc",)),
        (12, "IO-APIC", "", "edge", "edge", False, ("i8042",)),
        (145, "IO-APIC", "", "level", "level", False, ("eth0",)),
        (161, "IO-APIC", "", "level", "level", False, ("aic7xxx", "uhci_hcd:usb1")),
    ],
    "loongarch-ls7a": [
        (1, "PCH LPC", "1", "", "", False, ("i8042",)),
        (12, "PCH LPC", "12", "", "", False, ("i8042",)),
        (20, "CPUINTC", "12", "", "", False, ("IPI",)),
        (21, "CPUINTC", "11", "", "", False, ("timer",)),
        (22, "PCH PIC", "1", "", "", False, ("acpi",)),
        (28, "PCH PIC", "7", "", "", False, ("loongson-alarm",)),
        (29, "PCH PIC", "8", "", "", False, ("ls2x-i2c",) * 6),
        (37, "PCH-PCI-MSI-0000:00:09.0", "0", "", "", False, ("PCIe bwctrl",)),
        (39, "PCH-PCI-MSI-0000:00:0a.0", "0", "", "", False, ("PCIe bwctrl",)),
        (41, "PCH-PCI-MSI-0000:00:0b.0", "0", "", "", False, ("PCIe bwctrl",)),
        (43, "PCH-PCI-MSI-0000:00:0c.0", "0", "", "", False, ("PCIe bwctrl",)),
        (45, "PCH-PCI-MSI-0000:00:0d.0", "0", "", "", False, ("PCIe bwctrl",)),
        (47, "PCH-PCI-MSI-0000:00:11.0", "0", "", "", False, ("PCIe bwctrl",)),
        (49, "PCH-PCI-MSI-0000:00:13.0", "0", "", "", False, ("PCIe bwctrl",)),
        (50, "PCH PIC", "21", "", "", False, ("ahci[0000:00:08.0]",)),
        (51, "PCH-PCI-MSIX-0000:06:00.0", "0", "", "", False, ("nvme0q0",)),
        (52, "PCH PIC", "22", "", "", False, ("ahci[0000:00:08.1]",)),
        (53, "PCH PIC", "23", "", "", False, ("ahci[0000:00:08.2]",)),
        (54, "PCH-PCI-MSI-0000:04:00.0", "0", "", "", False, ("ahci[0000:04:00.0]",)),
        (55, "PCH-PCI-MSIX-0000:06:00.0", "1", "", "", False, ("nvme0q1",)),
        (56, "PCH-PCI-MSIX-0000:06:00.0", "2", "", "", False, ("nvme0q2",)),
        (57, "PCH-PCI-MSIX-0000:06:00.0", "3", "", "", False, ("nvme0q3",)),
        (58, "PCH-PCI-MSIX-0000:06:00.0", "4", "", "", False, ("nvme0q4",)),
        (61, "PCH-PCI-MSI-0000:07:00.0", "0", "", "", False, ("amdgpu",)),
        (62, "PCH-PCI-MSI-0000:01:00.0", "0", "", "", False, ("iwlwifi",)),
    ],
    "loongson-pch-msi": [
        (30, "PCH PIC", "47", "", "", False, ("acpi",)),
        (42, "LIOINTC", "10", "", "", False, ("ttyS0",)),
        (44, "PCH PIC", "49", "", "", False, ("ohci_hcd:usb3",)),
        (45, "PCH PIC", "48", "", "", False, ("ehci_hcd:usb1",)),
        (46, "PCH PIC", "51", "", "", False, ("ohci_hcd:usb4",)),
        (47, "PCH PIC", "50", "", "", False, ("ehci_hcd:usb2",)),
        (54, "PCH PIC", "16", "", "", False, ("ahci[0000:00:08.0]",)),
        (55, "PCH PIC", "17", "", "", False, ("ahci[0000:00:08.1]",)),
        (56, "PCH PIC", "18", "", "", False, ("ahci[0000:00:08.2]",)),
        (57, "PCH PCI MSI", "1048576", "", "", False, ("ahci[0000:02:00.0]",)),
        (58, "PCH PCI MSI", "524288", "", "", False, ("xhci_hcd",)),
        (59, "PCH PCI MSI", "524289", "", "", False, ("xhci_hcd",)),
        (60, "PCH PCI MSI", "524290", "", "", False, ("xhci_hcd",)),
        (61, "PCH PCI MSI", "524291", "", "", False, ("xhci_hcd",)),
    ],
    "redpanda-azure-mana": [
        (32, "Hyper-V PCIe MSI", "2147483648", "edge", "edge", False, ("mana_hwc@pci:7870:00:00.0",)),
        (33, "Hyper-V PCIe MSI", "2147483649", "edge", "edge", False, ("mana_q0@pci:7870:00:00.0",)),
        (34, "Hyper-V PCIe MSI", "2147483650", "edge", "edge", False, ("mana_q1@pci:7870:00:00.0",)),
    ],
    "redpanda-azure-mlx5": [
        (33, "Hyper-V PCIe MSI", "2701534461952", "edge", "edge", False, ("mlx5_async0@pci:4ea0:00:02.0",)),
        (34, "Hyper-V PCIe MSI", "2701534461953", "edge", "edge", False, ("mlx5_comp0@pci:4ea0:00:02.0",)),
        (35, "Hyper-V PCIe MSI", "2701534461954", "edge", "edge", False, ("mlx5_comp1@pci:4ea0:00:02.0",)),
    ],
    "redpanda-gve-legacy": [
        (26, "ITS-MSI", "0", "Edge", "", False, ("eth%d-ntfy-block.0",)),
        (27, "ITS-MSI", "1", "Edge", "", False, ("eth%d-ntfy-block.1",)),
        (58, "ITS-MSI", "32", "Edge", "", False, ("eth%d-mgmnt",)),
    ],
    "redpanda-gve": [
        (168, "PCI-MSIX-0000:00:08.0", "30", "edge", "edge", False, ("gve-ntfy-blk0@pci:0000:00:08.0",)),
        (169, "PCI-MSIX-0000:00:08.0", "31", "edge", "edge", False, ("gve-ntfy-blk1@pci:0000:00:08.0",)),
        (170, "PCI-MSIX-0000:00:08.0", "32", "edge", "edge", False, ("gve-mgmnt@pci:0000:00:08.0",)),
    ],
    "redpanda-intel": [
        (54, "IR-PCI-MSI", "333825", "edge", "edge", False, ("iwlwifi: queue 1",)),
        (56, "IR-PCI-MSI", "333826", "edge", "edge", False, ("iwlwifi: queue 2",)),
        (91, "PCI-MSI", "1572868", "edge", "edge", False, ("eth0",)),
        (92, "PCI-MSI", "1572865", "edge", "edge", False, ("eth0-TxRx-3",)),
        (95, "PCI-MSI", "1572868", "edge", "edge", False, ("eth0-TxRx-0",)),
        (96, "PCI-MSI", "1572868", "edge", "edge", False, ("eth0-fdir-TxRx-0",)),
    ],
    "redpanda-virtio": [
        (24, "PCI-MSI", "65536", "edge", "edge", False, ("virtio1-config",)),
        (25, "PCI-MSI", "65537", "edge", "edge", False, ("virtio1-input.2",)),
        (26, "PCI-MSI", "65538", "edge", "edge", False, ("virtio1-output.2",)),
    ],
    "riscv-5.7-no-trigger": [
        (2, "SiFive PLIC", "10", "", "", False, ("ttyS0",)),
        (3, "SiFive PLIC", "8", "", "", False, ("virtio0",)),
        (5, "RISC-V INTC", "5", "", "", False, ("riscv-timer",)),
    ],
    "riscv-aia-16hart": [
        (10, "RISC-V INTC", "5", "Edge", "", False, ("riscv-timer",)),
        (11, "APLIC-MSI-d000000.aplic", "8", "Level", "fasteoi", False, ("virtio0",)),
        (12, "APLIC-MSI-d000000.aplic", "10", "Level", "fasteoi", False, ("ttyS0",)),
    ],
    "riscv-kvm-guest": [
        (1, "SiFive PLIC", "5", "Edge", "", False, ("virtio0",)),
        (2, "SiFive PLIC", "6", "Edge", "", False, ("virtio1",)),
        (3, "SiFive PLIC", "7", "Edge", "", False, ("virtio2",)),
        (4, "SiFive PLIC", "1", "Edge", "", False, ("ttyS0",)),
        (5, "RISC-V INTC", "5", "Edge", "", False, ("riscv-timer",)),
    ],
    "riscv-rzfive": [
        (1, "SiFive PLIC", "412", "Level", "", False, ("1004b800.serial:rx err",)),
        (2, "SiFive PLIC", "414", "Level", "", False, ("1004b800.serial:rx full",)),
        (3, "SiFive PLIC", "415", "Level", "", False, ("1004b800.serial:tx empty",)),
        (4, "SiFive PLIC", "413", "Level", "", False, ("1004b800.serial:break",)),
        (5, "RISC-V INTC", "5", "Edge", "", False, ("riscv-timer",)),
        (6, "SiFive PLIC", "416", "Level", "", False, ("1004b800.serial:rx ready",)),
    ],
    "xen-hvm-pirq": [
        (0, "IO-APIC", "2", "edge", "edge", False, ("timer",)),
        (1, "xen-pirq", "1", "ioapic-edge", "ioapic-edge", False, ("i8042",)),
        (4, "xen-pirq", "4", "ioapic-edge", "ioapic-edge", False, ("ttyS0",)),
        (8, "xen-pirq", "8", "ioapic-edge", "ioapic-edge", False, ("rtc0",)),
        (9, "xen-pirq", "9", "ioapic-level", "ioapic-level", False, ("acpi",)),
        (12, "xen-pirq", "12", "ioapic-edge", "ioapic-edge", False, ("i8042",)),
        (24, "xen-percpu", "", "virq", "virq", False, ("timer0",)),
        (25, "xen-percpu", "", "ipi", "ipi", False, ("resched0",)),
        (26, "xen-percpu", "", "ipi", "ipi", False, ("callfunc0",)),
        (27, "xen-percpu", "", "virq", "virq", False, ("debug0",)),
        (28, "xen-percpu", "", "ipi", "ipi", False, ("callfuncsingle0",)),
        (29, "xen-percpu", "", "ipi", "ipi", False, ("spinlock0",)),
        (30, "xen-percpu", "", "virq", "virq", False, ("timer1",)),
        (31, "xen-percpu", "", "ipi", "ipi", False, ("resched1",)),
        (32, "xen-percpu", "", "ipi", "ipi", False, ("callfunc1",)),
        (33, "xen-percpu", "", "virq", "virq", False, ("debug1",)),
        (34, "xen-percpu", "", "ipi", "ipi", False, ("callfuncsingle1",)),
        (35, "xen-percpu", "", "ipi", "ipi", False, ("spinlock1",)),
        (36, "xen-dyn", "", "event", "event", False, ("xenbus",)),
        (37, "xen-pirq", "", "msi", "msi", False, ("ahci[0000:00:03.0]",)),
        (38, "xen-pirq", "", "msi-x", "msi-x", False, ("ens4",)),
        (39, "xen-pirq", "", "msi-x", "msi-x", False, ("ens4-rx-0",)),
        (40, "xen-pirq", "", "msi-x", "msi-x", False, ("ens4-rx-1",)),
        (41, "xen-pirq", "", "msi-x", "msi-x", False, ("ens4-tx-0",)),
        (42, "xen-pirq", "", "msi-x", "msi-x", False, ("ens4-tx-1",)),
    ],
}


def load_sample(name: str) -> tuple[list[str], str]:
    """The SOURCE lines and the /proc/interrupts text of one sample file."""
    head, sep, text = (SAMPLE_DIR / f"{name}.txt").read_text().partition(MARK)
    assert sep, f"{name}: no {MARK.strip()!r} line"
    return [ln for ln in head.splitlines() if ln.startswith("SOURCE: ")], text


def test_every_sample_file_has_expectations() -> None:
    assert sorted(p.stem for p in SAMPLE_DIR.glob("*.txt")) == sorted(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_field_sample_parses_to_kernel_fields(name: str) -> None:
    sources, text = load_sample(name)
    assert sources, f"{name}: every sample names its SOURCE"
    ints = parse_interrupts(text)
    numbered = ints.numbered()
    got = [(r.irq, r.chip, r.hwirq, r.trigger, r.handler, r.oob, r.actions) for r in numbered.values()]
    assert got == SAMPLES[name]
    # the count columns: as many as the header names, else the same on every row
    widths = {len(r.counts) for r in numbered.values()}
    if ints.cpus:
        assert widths == {len(ints.cpus)}
    for line in text.splitlines():
        key = line.partition(":")[0].strip()
        if key.isdigit():
            row = numbered[int(key)]
            # every counter printed is a count, and nothing after the counts is one
            assert line.split(":", 1)[1].split()[:len(row.counts)] == [str(c) for c in row.counts]


@pytest.mark.parametrize(("line", "want"), [
    # regression: a chip name with spaces ran into the hwirq and the actions
    (" 25:  1  2989138  Hyper-V PCIe MSI 4138200989697-edge      mana_q0@pci:7870:00:00.0",
     ("Hyper-V PCIe MSI", "4138200989697", "edge", ("mana_q0@pci:7870:00:00.0",))),
    ("  5:   1150    942  RISC-V INTC   5 Edge      riscv-timer",
     ("RISC-V INTC", "5", "Edge", ("riscv-timer",))),
    (" 57:      0      0     PCH PCI MSI 1048576  ahci[0000:02:00.0]",
     ("PCH PCI MSI", "1048576", "", ("ahci[0000:02:00.0]",))),
    # regression: a handler name with a hyphen ("-msi-x", "1-ioapic-edge") was not a trigger
    (" 39:      0     73  xen-pirq    -msi-x     ens4-rx-0", ("xen-pirq", "", "msi-x", ("ens4-rx-0",))),
    ("  1:      0     14  xen-pirq   1-ioapic-edge  i8042", ("xen-pirq", "1", "ioapic-edge", ("i8042",))),
    # regression: the Dovetail oob column became an action
    (" 24:      0  81233  IR-PCI-MSI 1572865 oob-edge      eth0-TxRx-0",
     ("IR-PCI-MSI", "1572865", "edge", ("eth0-TxRx-0",))),
    (" 11:    912    877     GICv3  27 Level    oob  arch_timer", ("GICv3", "27", "Level", ("arch_timer",))),
])
def test_field_formats_regressions(line: str, want: tuple[str, str, str, tuple[str, ...]]) -> None:
    r = parse_interrupts("           CPU0       CPU1\n" + line + "\n").rows[0]
    assert len(r.counts) == 2
    assert (r.chip, r.hwirq, r.trigger, r.actions) == want


def test_no_chip_column_kernels_rows_are_all_actions() -> None:
    # regression: Linux 2.0 (and sparc up to 2.6) printed no chip column; the
    # '+' of an SA_INTERRUPT action was read as a chip, the name as its suffix
    ints = parse_interrupts(" 0:    8728810   timer\n 2:          0 + cascade\n"
                            "13:          1   math error\n15:          7 + ide1, + ide2\n")
    got = {r.irq: (r.counts, r.chip, r.actions) for r in ints.rows}
    assert got == {0: ((8728810,), "", ("timer",)), 2: ((0,), "", ("cascade",)),
                   13: ((1,), "", ("math error",)), 15: ((7,), "", ("ide1", "ide2"))}


def test_headerless_rows_take_the_leading_counters_as_counts() -> None:
    # a pasted table without its header line (bug reports, other tools' test data)
    ints = parse_interrupts("33:       5282  Hyper-V PCIe MSI 2147483649-edge      mana_q0@pci:7870:00:00.0\n"
                            " 4:  1 2 3  IO-APIC   4-edge      ttyS0\n")
    assert ints.cpus == ()
    rows = ints.numbered()
    assert rows[33].counts == (5282,) and rows[33].chip == "Hyper-V PCIe MSI"
    assert rows[4].counts == (1, 2, 3) and rows[4].hwirq == "4"
