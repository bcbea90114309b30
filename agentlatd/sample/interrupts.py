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
                 "  7:   0   0  None      -edge      foo"              (no irq domain: no hwirq)
                 "  1:   9      IO-APIC-edge  i8042"                   (kernels before 3.x)
  arch rows      "NMI:   0   0   Non-maskable interrupts", "IPI0:  5  7  Rescheduling interrupts"
  one-column     "ERR:   0", "MIS:   0"
The chip column's format changed between 6.1, 6.12 and 6.18 (vm-testbed.md):
only the action names are stable, and they come last.

show_interrupts() prints, per numbered IRQ: "%*d: ", " %10u" per online CPU,
the chip (" %8s" or the chip's own irq_print_chip()), " %*lu" hwirq (blank
when the IRQ has no domain), " %-8s" Level/Edge with
CONFIG_GENERIC_IRQ_SHOW_LEVEL (arm64), "-%-8s" the flow handler name when set
("edge", "fasteoi"), then "  %s" and ", %s" per action.

Speed: the counts are parsed with one str.split(None, ncol) per row and one
C-level int() map when every count token is ASCII digits (the usual case); a
row that is not goes through the careful per-token path. Non-ASCII digits
("²".isdigit() is True, int("²") raises) never reach int().
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from json import loads as _json_loads

from agentlatd.sysfs.root import Root

# "5-edge", "524289-edge", "-edge" (no domain), "27-fasteoi"; the handler name
# is whatever irq_set_chip_and_handler_name() was given, so accept any word
_TRIGGER_JOINED = re.compile(r"^([0-9]*)-([A-Za-z_]+)$")
_TRIGGER_WORDS = frozenset({"Edge", "Level", "edge", "level"})
# pre-3.x kernels printed chip and handler as one "%8s-%-8s" token: "IO-APIC-edge"
_CHIP_JOINED = re.compile(r"^(.+)-(edge|level|fasteoi)$")


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


# A kernel counter is at most a u64: 20 decimal digits. Longer digit runs are
# not counts (and int() refuses more than 4300 digits since Python 3.11).
MAX_DIGITS = 20
_INT_SAFE = 4300


def read_interrupts(root: Root) -> str:
    """The text of /proc/interrupts under `root`."""
    return root.read_text("proc/interrupts")


def is_count(tok: str) -> bool:
    """True for a kernel decimal counter token: ASCII digits only, at most a u64's 20."""
    return tok.isascii() and tok.isdigit() and len(tok) <= MAX_DIGITS


def parse_counts(toks: list[str]) -> tuple[int, ...] | None:
    """The ints of count tokens, or None when any is not a count (C-level passes only)."""
    if not toks:
        return ()
    joined = "".join(toks)
    if not (joined.isascii() and joined.isdigit()):
        return None
    if len(toks) > 16:
        # the json scanner turns a long run of decimals into ints ~1.5x faster
        # than map(int): measured 13.5 vs 20.2 us for 256 counts (bench/tick.py host)
        try:
            return tuple(_json_loads("[" + ",".join(toks) + "]"))
        except ValueError:
            pass  # a leading zero ("007") is not JSON, a 5000-digit run not an int
    # int() refuses > 4300 digits (3.11 int_max_str_digits): only then look closer
    if len(joined) > _INT_SAFE and max(map(len, toks)) > MAX_DIGITS:
        return None
    return tuple(map(int, toks))


def parse_header(line: str) -> tuple[int, ...] | None:
    """The CPU numbers of a header line ("   CPU0   CPU1"), None when it is not one."""
    toks = line.split()
    if not toks:
        return None
    cpus: list[int] = []
    for tok in toks:
        n = tok[3:]
        if not (tok.startswith("CPU") and is_count(n)):
            return None
        cpus.append(int(n))
    return tuple(cpus)


def parse_interrupts(text: str) -> Interrupts:
    """Parse the text of /proc/interrupts. Never raises on malformed text: a
    line that is not a row ("KEY: ...") is skipped, never guessed."""
    lines = text.splitlines()
    cpus: tuple[int, ...] = ()
    rows: list[IrqRow] = []
    start = 0
    for i, line in enumerate(lines):
        if line.strip():
            hdr = parse_header(line)
            if hdr is not None:
                cpus = hdr
                start = i + 1
            else:
                start = i  # no header: parse from here, with no count columns known
            break
    ncol = len(cpus)
    for line in lines[start:]:
        key, sep, rest = line.partition(":")
        key = key.strip()
        if not sep or not key or " " in key or "\t" in key:
            continue  # blank or malformed line: skip, never guess
        rows.append(parse_row(key, rest, ncol))
    return Interrupts(cpus=cpus, rows=tuple(rows))


def parse_row(key: str, rest: str, ncol: int) -> IrqRow:
    """One row: `key` is the text before the first ':', `rest` the text after it."""
    irq = int(key) if is_count(key) else None
    toks = rest.split(None, ncol) if ncol else rest.split(None, 0)
    head = toks[:ncol]
    fast = parse_counts(head) if ncol and len(head) == ncol else None
    if fast is not None:
        # fast path: ncol count tokens, then the tail as one string
        counts = fast
        tail_text = toks[ncol] if len(toks) > ncol else ""
        tail = tail_text.split()
    else:
        all_toks = rest.split()
        cl: list[int] = []
        i = 0
        while i < len(all_toks) and i < ncol and is_count(all_toks[i]):
            cl.append(int(all_toks[i]))
            i += 1
        counts = tuple(cl)
        tail = all_toks[i:]
    if irq is None:
        return IrqRow(key, None, counts, "", "", "", (), " ".join(tail))
    chip, hwirq, trigger, actions = _parse_tail(tail)
    return IrqRow(key, irq, counts, chip, hwirq, trigger, actions, ", ".join(actions))


def _parse_tail(tail: list[str]) -> tuple[str, str, str, tuple[str, ...]]:
    """chip, hwirq, trigger and actions from the tokens after the counts."""
    chip = hwirq = trigger = ""
    j = 0
    n = len(tail)
    if j < n:
        chip = tail[j]
        j += 1
    if j < n:
        m = _TRIGGER_JOINED.match(tail[j])
        if m:
            # x86: " %*lu" hwirq then "-%-8s" handler name: "524289-edge"
            hwirq, trigger = m.group(1), m.group(2)
            j += 1
        elif is_count(tail[j]) and j + 1 < n and tail[j + 1] in _TRIGGER_WORDS:
            # SHOW_LEVEL (arm64): "27 Level", maybe followed by "-fasteoi"
            hwirq, trigger = tail[j], tail[j + 1]
            j += 2
            if j < n and _TRIGGER_JOINED.match(tail[j]) and tail[j].startswith("-"):
                j += 1
        elif tail[j] in _TRIGGER_WORDS:
            trigger = tail[j]  # no domain: blank hwirq, then Level/Edge
            j += 1
        elif is_count(tail[j]):
            hwirq = tail[j]  # hwirq with neither SHOW_LEVEL nor a handler name
            j += 1
    if not trigger and chip:
        m = _CHIP_JOINED.match(chip)
        if m:
            chip, trigger = m.group(1), m.group(2)
    action_text = " ".join(tail[j:])
    actions = tuple(a.strip() for a in action_text.split(",") if a.strip())
    return chip, hwirq, trigger, actions
