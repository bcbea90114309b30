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
Numbered rows seen in the field beyond these (tests/fixtures/interrupts/, each
with its source):
                 " 25:  1 103 0 2989138  Hyper-V PCIe MSI 4138200989697-edge      mana_q0@pci:7870:00:00.0"
                 "  5:  1150  942  RISC-V INTC   5 Edge      riscv-timer"
                 " 57:  0  0     PCH PCI MSI 1048576  ahci[0000:02:00.0]"   (Loongson: no trigger)
                 "  2:  379  0  SiFive PLIC  10  ttyS0"                      (riscv 5.7: no trigger)
                 " 39:  0  73  xen-pirq    -msi-x     ens4-rx-0"            (Xen: handler with hyphen)
                 "  1:  0  14  xen-pirq   1-ioapic-edge  i8042"
                 " 17:  30564  30414   IO-APIC-level  eth0"                  (2.4/2.6.1x typename)
                 "  2:  0  0          XT-PIC  cascade"
                 " 2:          0 + cascade"                              (2.0: no chip column,
                                                                        '+' = SA_INTERRUPT)
The chip column's format changed between 6.1, 6.12 and 6.18 (vm-testbed.md).

show_interrupts() prints, per numbered IRQ: "%*d: ", "%10u " per online CPU
(" %10u" before 4.x), the chip (" %8s" or the chip's own irq_print_chip()),
" %*lu" hwirq (blank " %*s" when the IRQ has no domain), " %-8s" Level/Edge
with CONFIG_GENERIC_IRQ_SHOW_LEVEL (arm64, riscv, loongarch), " %-3s" "oob"
or blank with CONFIG_IRQ_PIPELINE (Dovetail/EVL real-time kernels), "-%-8s"
the flow handler name when set ("edge", "fasteoi", Xen's "ioapic-edge" and
"msi-x"), then "  %s" and ", %s" per action. parse_tail() walks these fields
in order instead of guessing at tokens: chip names may contain single spaces,
handler names hyphens, action names anything but ", ".

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
    handler: str = ""  # flow handler name (desc->name: "edge", "fasteoi", "msi-x"), "" when none
    oob: bool = False  # Dovetail/EVL kernels: handled on the out-of-band stage

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


def find_header(lines: list[str]) -> tuple[tuple[int, ...], int]:
    """The CPU columns of /proc/interrupts or /proc/softirqs text, from its first
    non-blank line, and the index of the first row. A first line that is no
    header is a row: then no count columns are known and rows start there."""
    for i, line in enumerate(lines):
        if line.strip():
            hdr = parse_header(line)
            return (hdr, i + 1) if hdr is not None else ((), i)
    return (), 0


def parse_interrupts(text: str) -> Interrupts:
    """Parse the text of /proc/interrupts. Never raises on malformed text: a
    line that is not a row ("KEY: ...") is skipped, never guessed."""
    lines = text.splitlines()
    cpus, start = find_header(lines)
    rows: list[IrqRow] = []
    ncol = len(cpus)
    parts: list[tuple[str, str]] = []
    for line in lines[start:]:
        key, sep, rest = line.partition(":")
        key = key.strip()
        if not sep or not key or " " in key or "\t" in key:
            continue  # blank or malformed line: skip, never guess
        parts.append((key, rest))
        rows.append(parse_row(key, rest, ncol))
    if any(r.irq is not None and r.chip.split(" ", 1)[0] == FAST_MARK for r in rows):
        # a kernel that prints no chip column (module docstring): read every
        # numbered row that way, the '+' rows told which format this is
        rows = [parse_row(k, rest, ncol, chipless=True) for k, rest in parts]
    return Interrupts(cpus=cpus, rows=tuple(rows))


def parse_row(key: str, rest: str, ncol: int, chipless: bool = False) -> IrqRow:
    """One row: `key` is the text before the first ':', `rest` the text after it.

    `ncol` is the number of CPU columns of the header; 0 when the file had no
    header (then the leading run of counters is the count columns).
    `chipless`: the kernel printed no chip column, only the actions."""
    irq = int(key) if is_count(key) else None
    fast: tuple[int, ...] | None = None
    if ncol:
        toks = rest.split(None, ncol)
        if len(toks) >= ncol:
            fast = parse_counts(toks[:ncol])
    if fast is not None:
        # fast path: ncol count tokens, then the tail as one string (its inner
        # spacing kept: the column structure is what tells the fields apart)
        counts = fast
        tail_text = toks[ncol] if len(toks) > ncol else ""
    else:
        counts, tail_text = _careful_counts(rest, ncol)
    if irq is None:
        return IrqRow(key, None, counts, "", "", "", (), " ".join(tail_text.split()))
    f = parse_chipless(tail_text) if chipless else parse_tail(tail_text)
    return IrqRow(key, irq, counts, f.chip, f.hwirq, f.trigger, f.actions, ", ".join(f.actions),
                  f.handler, f.oob)


def _careful_counts(rest: str, ncol: int) -> tuple[tuple[int, ...], str]:
    """Counts token by token (at most `ncol`, any number when 0) and the text after them."""
    cl: list[int] = []
    pos = 0
    for m in _TOKEN.finditer(rest):
        if (ncol and len(cl) >= ncol) or not is_count(m.group()):
            return tuple(cl), rest[m.start():]
        cl.append(int(m.group()))
        pos = m.end()
    return tuple(cl), rest[pos:].strip()


@dataclass(frozen=True, slots=True)
class TailFields:
    """What show_interrupts() prints after the counts of a numbered IRQ."""

    chip: str
    hwirq: str
    trigger: str  # Level/Edge (SHOW_LEVEL), else the flow handler name, else ""
    handler: str  # desc->name ("edge", "fasteoi", "ioapic-edge", "msi-x"), "" when none
    oob: bool  # Dovetail/EVL: the IRQ is handled on the out-of-band stage
    actions: tuple[str, ...]


_TOKEN = re.compile(r"\S+")
# " %*lu" hwirq immediately followed by "-%-8s" desc->name: "524289-edge", "1-ioapic-edge"
_HWIRQ_NAME = re.compile(r"^([0-9]+)-(\S+)$")
# "-%-8s" alone (blank hwirq, or after " %-8s" Level/Edge): "-edge", "-msi-x", "-fasteoi"
_NAME_ONLY = re.compile(r"^-(\S+)$")
# Dovetail " %-3s" "oob" glued to the desc->name that follows: "oob-edge"
_OOB_NAME = re.compile(r"^oob-(\S+)$")
_LEVEL_WORDS = frozenset({"Level", "Edge"})
# " %8s" chip of one word, " %*lu" hwirq, "-%-8s" name, "  %s" actions: most x86 rows
_X86_ROW = re.compile(r"(\S+) +([0-9]+)-(\S+)(?: {2,}(.*))?$")
# kernels up to 2.6.2x printed chip and flow as one "%8s-%-8s" typename: "IO-APIC-edge"
_CHIP_JOINED = re.compile(r"^(.+)-(edge|level|fasteoi)$")


# SA_INTERRUPT ("fast") actions on kernels without a chip column:
# "%c %s" with '+' or ' ' before the first action, ",%s %s" with " +" or "" after
FAST_MARK = "+"


def parse_chipless(tail: str) -> TailFields:
    """The actions of a row from a kernel that prints no chip column: Linux 2.0
    arch/i386/kernel/irq.c get_irq_list() "%2d: %10u %c %s", and the sparc
    show_interrupts() of 2.x/2.6 ("%10u " per CPU, then " %c %s")."""
    actions = []
    for a in tail.strip().split(","):
        a = a.strip()
        if a.startswith(FAST_MARK):
            a = a[len(FAST_MARK):].strip()
        if a:
            actions.append(a)
    return TailFields("", "", "", "", False, tuple(actions))


def _anchor(tok: str) -> bool:
    """True for a token that can only be a field after the chip column."""
    return (tok.isascii() and tok.isdigit()) or tok in _LEVEL_WORDS or tok.startswith("-") \
        or _HWIRQ_NAME.match(tok) is not None


def parse_tail(tail: str) -> TailFields:
    """chip, hwirq, trigger, handler, oob marker and actions of one numbered row.

    Follows kernel/irq/proc.c show_interrupts() field by field:
      chip     " %8s" chip->name, or the chip's irq_print_chip(): one column
               whose name may hold single spaces ("SiFive PLIC", "Hyper-V PCIe
               MSI", "PCH PCI MSI"), never a run of two spaces
      hwirq    " %*lu" (blank " %*s" when the IRQ has no domain)
      level    " %-8s" Level/Edge with CONFIG_GENERIC_IRQ_SHOW_LEVEL
      oob      " %-3s" "oob" or blank with CONFIG_IRQ_PIPELINE (Dovetail/EVL)
      handler  "-%-8s" desc->name when set; may hold hyphens ("-ioapic-edge")
      actions  "  %s" then ", %s" per further action
    so the chip ends at the first token that only a later field can start
    with (digits, Level/Edge, "-name", "N-name") or at a gap of two spaces
    (the "  %s" before the actions on kernels that print no hwirq).
    """
    fast = _X86_ROW.match(tail)
    if fast is not None:
        # the common x86 row, one chip word then "N-name": same fields as the walk below
        acts = fast.group(4) or ""
        return TailFields(fast.group(1), fast.group(2), fast.group(3), fast.group(3), False,
                          tuple(a.strip() for a in acts.split(", ") if a.strip()))
    toks = [(m.start(), m.group()) for m in _TOKEN.finditer(tail)]
    n = len(toks)
    if not n:
        return TailFields("", "", "", "", False, ())
    j = 1
    while j < n:
        start, tok = toks[j]
        prev_end = toks[j - 1][0] + len(toks[j - 1][1])
        if _anchor(tok) or start - prev_end >= 2:
            break
        j += 1
    chip = " ".join(t for _, t in toks[:j])
    hwirq = level = handler = ""
    oob = False
    if j < n and toks[j][1].isascii() and toks[j][1].isdigit():
        hwirq = toks[j][1]
        j += 1
    elif j < n and (m := _HWIRQ_NAME.match(toks[j][1])):
        hwirq, handler = m.group(1), m.group(2)
        j += 1
    if j < n and not handler and toks[j][1] in _LEVEL_WORDS:
        level = toks[j][1]
        j += 1
    if j < n and not handler:
        tok = toks[j][1]
        if tok == "oob":
            oob = True
            j += 1
        elif m2 := _OOB_NAME.match(tok):
            oob, handler = True, m2.group(1)
            j += 1
    if j < n and not handler and (m3 := _NAME_ONLY.match(toks[j][1])):
        handler = m3.group(1)
        j += 1
    if not (hwirq or level or handler):
        m4 = _CHIP_JOINED.match(chip)
        if m4:
            chip, handler = m4.group(1), m4.group(2)
    action_text = tail[toks[j][0]:] if j < n else ""
    actions = tuple(a.strip() for a in action_text.split(", ") if a.strip())
    return TailFields(chip, hwirq, level or handler, handler, oob, actions)
