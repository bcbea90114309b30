"""/proc/interrupts (Documentation/filesystems/proc.rst, kernel/irq/proc.c show_interrupts()).

Header: one "CPUn" column per online CPU at the time of reading (offline CPUs
have no column). Rows:
  numbered IRQ   " 24:   1   0  IO-APIC   5-edge      ACPI:Ged"
                 " 45:   0   0  IR-PCI-MSI 524289-edge  nvme0q1"
                 " 60:   0   0  PCI-MSI-0000:3b:00.0 5-edge  mlx5_comp3@pci:0000:3b:00.0"
                 " 38:   0 176  PCI-MSIX-0000:00:03.0   1-edge  virtio2-input.0"
                 " 11: 123 456  GICv3  27 Level     arch_timer"        (aarch64)
                 "  1:   9   0  IO-APIC   1-edge      i8042, serio"    (several actions)
                 " 40:   0   0  PCI-MSI 65536-edge"                    (no action: not requested)
  arch rows      "NMI:   0   0   Non-maskable interrupts", "IPI0:  5  7  Rescheduling interrupts"
  one-column     "ERR:   0", "MIS:   0"
The chip column's format changed between 6.1, 6.12 and 6.18 (vm-testbed.md):
only the action names are stable, and they come last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TRIGGER_JOINED = re.compile(r"^(\S+)-(edge|level|fasteoi|simple|percpu)$", re.IGNORECASE)
_TRIGGER_WORDS = frozenset({"Edge", "Level", "edge", "level"})


@dataclass(frozen=True, slots=True)
class IrqRow:
    key: str  # "24", "NMI", "IPI0", "ERR"
    irq: int | None  # numbered IRQ, None for arch rows
    counts: tuple[int, ...]  # one per header column (may be shorter for ERR/MIS)
    chip: str  # "" for arch rows
    hwirq: str
    trigger: str  # "edge", "Level", ... or ""
    actions: tuple[str, ...]  # action names ("i8042", "serio"); () when none requested
    desc: str  # arch rows: the description; numbered rows: ", ".join(actions)

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True, slots=True)
class Interrupts:
    cpus: tuple[int, ...]  # CPU number of each count column, from the header
    rows: tuple[IrqRow, ...]

    def numbered(self) -> dict[int, IrqRow]:
        return {r.irq: r for r in self.rows if r.irq is not None}

    def per_cpu(self, row: IrqRow) -> dict[int, int]:
        return dict(zip(self.cpus, row.counts, strict=False))


def parse_interrupts(text: str) -> Interrupts:
    """Parse the text of /proc/interrupts."""
    lines = text.splitlines()
    cpus: tuple[int, ...] = ()
    rows: list[IrqRow] = []
    start = 0
    for i, line in enumerate(lines):
        if line.strip():
            cpus = tuple(int(tok[3:]) for tok in line.split() if tok.startswith("CPU"))
            start = i + 1
            break
    ncol = len(cpus)
    for line in lines[start:]:
        key, sep, rest = line.partition(":")
        key = key.strip()
        if not sep or not key:
            continue  # blank or malformed line: skip, never guess
        rows.append(_parse_row(key, rest, ncol))
    return Interrupts(cpus=cpus, rows=tuple(rows))


def _parse_row(key: str, rest: str, ncol: int) -> IrqRow:
    toks = rest.split()
    counts: list[int] = []
    i = 0
    while i < len(toks) and i < ncol and toks[i].isdigit():
        counts.append(int(toks[i]))
        i += 1
    tail = toks[i:]
    irq = int(key) if key.isdigit() else None
    if irq is None:
        return IrqRow(key, None, tuple(counts), "", "", "", (), " ".join(tail))
    chip = hwirq = trigger = ""
    j = 0
    if j < len(tail):
        chip = tail[j]
        j += 1
    if j < len(tail):
        m = _TRIGGER_JOINED.match(tail[j])
        if m:
            hwirq, trigger = m.group(1), m.group(2)
            j += 1
        elif j + 1 < len(tail) and tail[j + 1] in _TRIGGER_WORDS:
            hwirq, trigger = tail[j], tail[j + 1]
            j += 2
        elif tail[j] in _TRIGGER_WORDS:
            trigger = tail[j]
            j += 1
    action_text = " ".join(tail[j:])
    actions = tuple(a.strip() for a in action_text.split(",") if a.strip())
    return IrqRow(key, irq, tuple(counts), chip, hwirq, trigger, actions, ", ".join(actions))
