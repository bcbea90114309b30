"""/proc/softirqs (Documentation/filesystems/proc.rst "softirqs", fs/proc/softirqs.c).

    "                    CPU0       CPU1       "
    "          HI:          0          0"
    "       TIMER:      18474      24030"
    ...
    "         RCU:      22792      34356"

show_softirqs() prints one "CPU%-8d" header column per CPU and one row per
vector, "%12s:" then " %10u" per CPU. fs/proc/softirqs.c walks the *possible*
CPUs (an offline CPU keeps a frozen column); other kernels and recorded trees
may show fewer columns than the machine has CPUs, so the header alone says
which CPU each column is. The vector names are kernel/softirq.c
softirq_to_name[]: HI TIMER NET_TX NET_RX BLOCK IRQ_POLL TASKLET SCHED HRTIMER
RCU (IRQ_POLL was BLOCK_IOPOLL before 4.5). Names are kept as printed; an
unknown vector is kept too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentlatd.sample.interrupts import find_header, is_count, parse_counts
from agentlatd.sysfs.root import Root

# kernel/softirq.c softirq_to_name[NR_SOFTIRQS], in vector order (checked against 6.1 and 6.12)
SOFTIRQ_NAMES = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU")


@dataclass(frozen=True, slots=True)
class Softirqs:
    """Per-vector, per-CPU counts since boot."""

    cpus: tuple[int, ...]  # CPU number of each column, from the header
    counts: Mapping[str, tuple[int, ...]]  # "NET_RX" -> one count per column (file order)

    def per_cpu(self, vector: str) -> dict[int, int]:
        """cpu -> count for `vector` ({} when the kernel has no such vector)."""
        return dict(zip(self.cpus, self.counts.get(vector, ()), strict=False))

    def total(self, vector: str) -> int:
        return sum(self.counts.get(vector, ()))


def read_softirqs(root: Root) -> str:
    return root.read_text("proc/softirqs")


def parse_softirqs(text: str) -> Softirqs:
    """Parse /proc/softirqs. Malformed rows are skipped; never raises."""
    lines = text.splitlines()
    cpus, start = find_header(lines)
    ncol = len(cpus)
    counts: dict[str, tuple[int, ...]] = {}
    for line in lines[start:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or not name or " " in name:
            continue
        toks = rest.split()
        fast = parse_counts(toks) if len(toks) == ncol else None
        if fast is not None:
            counts[name] = fast
            continue
        cl: list[int] = []
        for tok in toks[:ncol]:
            if not is_count(tok):
                break
            cl.append(int(tok))
        counts[name] = tuple(cl)
    return Softirqs(cpus=cpus, counts=counts)
