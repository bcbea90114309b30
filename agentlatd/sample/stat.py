"""/proc/stat (Documentation/filesystems/proc.rst "1.8 Miscellaneous kernel statistics", fs/proc/stat.c).

    cpu  25723 0 6090 529711 607 0 121 11 0 0      sum over possible CPUs
    cpu0 11460 0 2457 266967 53 0 46 4 0 0         one line per ONLINE CPU
    intr 1158184 0 0 0 ... 65243 0 12008 ...       total, then one count per IRQ number 0..nr_irqs-1
    ctxt 2917219
    btime 1795512502
    processes 12646
    procs_running 2
    procs_blocked 0
    softirq 278462 0 42504 38 ...                  total, then one count per vector (SOFTIRQ_NAMES order)

CPU times are in USER_HZ ticks (100/s on every architecture the kernel builds
for user space; sysconf(_SC_CLK_TCK)). The fields, and the kernel that added
them: user nice system idle, iowait (2.5.41), irq softirq (2.6.0), steal
(2.6.11), guest (2.6.24), guest_nice (2.6.33); a field an older kernel does not
print is None here, never 0. guest and guest_nice are already counted in user
and nice (kernel/sched/cputime.c account_guest_time()), so CpuTimes.total
leaves them out.

The "intr" total also counts arch interrupts (LOC, RES, ... via
arch_irq_stat_cpu()), so it is larger than the sum of the per-IRQ entries; an
entry is the IRQ's count summed over CPUs (kstat_irqs_usr()), 0 for an IRQ
number with no descriptor.

Lines this parser does not know are ignored; a malformed line is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from agentlatd.sample.interrupts import parse_counts
from agentlatd.sysfs.root import Root

USER_HZ = 100  # include/asm-generic/param.h USER_HZ; the unit of every CPU time here

CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")


class CpuTimes(NamedTuple):
    """One "cpu" line, in USER_HZ ticks. None: the kernel does not print the field.

    A NamedTuple, not a dataclass: a 256-CPU host builds 257 of these every
    tick, and a frozen dataclass costs ~4x as much to build (0.93 vs 0.24 us).
    It is just as immutable.
    """

    user: int
    nice: int
    system: int
    idle: int
    iowait: int | None = None
    irq: int | None = None
    softirq: int | None = None
    steal: int | None = None
    guest: int | None = None
    guest_nice: int | None = None

    @property
    def total(self) -> int:
        """All time the CPU accounted (guest time is inside user/nice already)."""
        return (
            self.user + self.nice + self.system + self.idle
            + (self.iowait or 0) + (self.irq or 0) + (self.softirq or 0) + (self.steal or 0)
        )


@dataclass(frozen=True, slots=True)
class Stat:
    all_cpus: CpuTimes | None  # the aggregate "cpu" line
    cpus: Mapping[int, CpuTimes]  # per online CPU ("cpuN" lines)
    intr_total: int | None  # all interrupts since boot, arch ones included
    intr: tuple[int, ...]  # per IRQ number: intr[n] = IRQ n summed over CPUs; () when absent
    softirq_total: int | None
    softirq: tuple[int, ...]  # per vector, kernel/softirq.c order
    ctxt: int | None = None
    btime: int | None = None  # boot time, seconds since the epoch
    processes: int | None = None
    procs_running: int | None = None
    procs_blocked: int | None = None

    def irq_total(self, irq: int) -> int | None:
        """IRQ `irq` summed over CPUs, None when the intr line does not reach it."""
        return self.intr[irq] if 0 <= irq < len(self.intr) else None


def read_stat(root: Root) -> str:
    return root.read_text("proc/stat")


_SINGLE = frozenset({"ctxt", "btime", "processes", "procs_running", "procs_blocked"})


def parse_cpu_times(toks: list[str]) -> CpuTimes | None:
    """The numbers of one "cpu" line (after the name); None when malformed."""
    vals = parse_counts(toks[:10])
    if vals is None or len(vals) < 4:
        return None
    return CpuTimes(*vals)


def _parse_cpu_lines(names: list[str], rests: list[str]) -> list[CpuTimes | None]:
    """All "cpu" lines at once: one split and one int pass for the whole block
    (257 lines on a 256-CPU host), per line only when the block is irregular."""
    k = len(rests[0].split()) if rests else 0
    if 4 <= k <= 10:
        toks = " ".join(rests).split()
        vals = parse_counts(toks) if len(toks) == k * len(rests) else None
        if vals is not None:
            return [CpuTimes(*vals[j: j + k]) for j in range(0, len(vals), k)]
    return [parse_cpu_times(r.split()) for r in rests]


def parse_stat(text: str) -> Stat:
    """Parse /proc/stat. Never raises on malformed text."""
    all_cpus: CpuTimes | None = None
    cpus: dict[int, CpuTimes] = {}
    intr_total: int | None = None
    intr: tuple[int, ...] = ()
    sirq_total: int | None = None
    sirq: tuple[int, ...] = ()
    single: dict[str, int] = {}
    cpu_names: list[str] = []
    cpu_rests: list[str] = []
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu"):
            cpu_names.append(name[3:])
            cpu_rests.append(rest)
        elif name == "intr" or name == "softirq":
            vals = parse_counts(rest.split())
            if not vals:
                continue
            if name == "intr":
                intr_total, intr = vals[0], vals[1:]
            else:
                sirq_total, sirq = vals[0], vals[1:]
        elif name in _SINGLE:
            v = parse_counts(rest.split()[:1])
            if v:
                single[name] = v[0]
    for n, times in zip(cpu_names, _parse_cpu_lines(cpu_names, cpu_rests), strict=True):
        if times is None:
            continue
        if not n:
            all_cpus = times
        elif n.isascii() and n.isdigit() and len(n) < 8:
            cpus[int(n)] = times
    return Stat(
        all_cpus=all_cpus,
        cpus=cpus,
        intr_total=intr_total,
        intr=intr,
        softirq_total=sirq_total,
        softirq=sirq,
        ctxt=single.get("ctxt"),
        btime=single.get("btime"),
        processes=single.get("processes"),
        procs_running=single.get("procs_running"),
        procs_blocked=single.get("procs_blocked"),
    )
