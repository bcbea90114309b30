"""/proc/stat, /proc/softirqs, /sys/kernel/irq/N/per_cpu_count (or /proc/interrupts): one tick's counters.

Kernel files (see each parser's docstring for the format and the doc):
  proc/stat                          sample/stat.py       per-CPU times, "intr" per-IRQ totals
  proc/softirqs                      sample/softirqs.py   per-vector per-CPU counts
  sys/kernel/irq/N/per_cpu_count     sample/irq.py        one IRQ, one count per possible CPU
  proc/interrupts                    sample/interrupts.py every IRQ x every online CPU (fallback)

Design: a 256-CPU host with 2000 IRQs has a ~6 MB
/proc/interrupts, and a plain split parse of it costs 60-70 ms of CPU: a dozen
times the 5 ms budget (0.5% of a core at 1 Hz). Almost all of those numbers did not
move since the last tick, so the tick reads only what moved:

1. /proc/stat is read every tick anyway (CPU times for the irq/softirq/steal
   shares). Its "intr" line holds every IRQ's count summed over CPUs
   (kstat_irqs_usr()), one int per IRQ number. An IRQ whose entry equals the
   previous tick's did not fire on any CPU (counts only grow), so its per-CPU
   counts are the previous snapshot's, reused as the very same object and
   left out of `fresh`; model/rates.py only looks at the fresh ones.
2. For a watched IRQ whose total changed (or went down: a reset; or that is
   new to the watched set), read /sys/kernel/irq/N/per_cpu_count: one small
   file, one count per possible CPU, all of them through one directory fd
   (Root.read_many: openat + one read each).
3. Per-IRQ counts stay the kernel's bytes (IrqCounts, b"c0,c1,..."): int()
   on 256 tokens costs ~20 us, splitting them ~4 us, while diff_counts()
   finds the one count that moved (the effective CPU) with an XOR of the
   two byte strings in ~5 us, and converts only that.
4. per_cpu_count_show() writes at most PAGE_SIZE bytes: on a host with many
   CPUs and big counts the list comes back short. The first short list
   switches the snapshot to /proc/interrupts, and `fallback` (carried from
   snapshot to snapshot) keeps it there.
5. Without /sys/kernel/irq (kernels before 4.11 or without CONFIG_SPARSE_IRQ,
   recorded trees that lack it) read /proc/interrupts as bytes, split it into
   lines, and compare each line with the previous tick's line at the same
   index (one C-level memcmp per line); only lines that differ are split
   (their IRQs are `fresh`). A changed header (CPU hotplug) or line count
   means a full parse.

Measured with bench/tick.py (256 CPUs x 2000 IRQs, 10% of the IRQs firing
per tick): ~4 ms of CPU for read_counters + compute_rates against ~90 ms for
a naive full split parse; ~12 ms on the /proc/interrupts fallback.

So a tick costs O(CPUs + IRQs whose count moved) instead of O(CPUs x IRQs).
State lives in the previous snapshot, passed back in (`prev=`): no hidden
globals, and a snapshot is still a frozen value. Every count is exactly what
the kernel printed; nothing is estimated.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import compress
from json import loads as _json_loads
from operator import ne, sub

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.sample.interrupts import parse_header
from agentlatd.sample.irq import list_sys_irqs
from agentlatd.sample.softirqs import Softirqs, parse_softirqs, read_softirqs
from agentlatd.sample.stat import Stat, parse_stat, read_stat
from agentlatd.sysfs.root import Root

SOURCE_SYS = "sys/kernel/irq"
SOURCE_PROC = "proc/interrupts"
SOURCE_NONE = "none"
_MAX_DIGITS = 20  # a u64 counter


class IrqCounts(bytes):
    """One IRQ's per-CPU counts as the kernel printed them: b"c0,c1,...,cN".

    Count i is CPU `CounterSnapshot.irq_cpus[i]`. Kept as the kernel's bytes
    because a tick compares far more counts than it converts (see the module
    docstring and diff_counts()). ints() raises ValueError on a token that is
    not a count (a damaged tree); model/rates.py reports that as a
    discontinuity instead.
    """

    __slots__ = ()

    def tokens(self) -> list[bytes]:
        return self.split(b",") if self else []

    def ints(self) -> tuple[int, ...]:
        toks = self.tokens()
        if not b"".join(toks).isdigit() and toks:
            raise ValueError(f"not a list of counts: {bytes(self[:60])!r}")
        try:
            return tuple(_json_loads(b"[" + self + b"]"))  # C-level, see parse_counts()
        except ValueError:
            return tuple(map(int, toks))

    def total(self) -> int:
        return sum(self.ints())


_from_bytes = int.from_bytes


def diff_counts(cur: bytes, prev: bytes) -> tuple[list[int], list[int]] | None:
    """(positions, deltas) of the counts that differ between two IrqCounts of
    the same CPUs; None when a differing token is not a count. Deltas may be
    negative (a reset): the caller decides. Pure.

    The usual case is one count that moved (the IRQ's effective CPU) and the
    same length: XOR the two byte strings as big ints and the highest and
    lowest set bits give the first and last differing byte (C-level, ~4.5 us
    for 256 CPUs, against ~9 us to split both and compare 256 tokens); only
    the tokens between them are split. Any other shape (a count grew a digit)
    falls back to comparing every token.
    """
    n = len(cur)
    if n == len(prev):
        x = _from_bytes(cur, "big") ^ _from_bytes(prev, "big")
        if not x:
            return [], []
        first = n - 1 - ((x.bit_length() - 1) >> 3)
        last = n - 1 - (((x & -x).bit_length() - 1) >> 3)
        s = cur.rfind(b",", 0, first) + 1  # same in prev: the bytes before `first` are equal
        e = cur.find(b",", last)
        if e == prev.find(b",", last):  # the token ends at the same comma in both
            if e < 0:
                e = n
            cs = cur[s:e].split(b",")
            ps = prev[s:e].split(b",")
            if len(cs) == len(ps):
                base = cur.count(b",", 0, s)
                return _deltas(cs, ps, base)
    cs = cur.split(b",")
    ps = prev.split(b",")
    if len(cs) != len(ps):
        return None
    return _deltas(cs, ps, 0)


def _deltas(cs: list[bytes], ps: list[bytes], base: int) -> tuple[list[int], list[int]] | None:
    if len(cs) == 1:  # the usual case, without the list machinery
        c0, p0 = cs[0], ps[0]
        if c0 == p0:
            return [], []
        if c0.isdigit() and p0.isdigit() and len(c0) <= _MAX_DIGITS and len(p0) <= _MAX_DIGITS:
            return [base], [int(c0) - int(p0)]
        return None
    idx = list(compress(range(len(cs)), map(ne, cs, ps)))
    ct = [cs[i] for i in idx]
    pt = [ps[i] for i in idx]
    if not (b"".join(ct).isdigit() and b"".join(pt).isdigit()):
        return None if idx else ([], [])
    if max(map(len, ct), default=0) > _MAX_DIGITS or max(map(len, pt), default=0) > _MAX_DIGITS:
        return None
    return [base + i for i in idx], list(map(sub, map(int, ct), map(int, pt)))


@dataclass(frozen=True, slots=True)
class _LineCache:
    """/proc/interrupts as last read: for the line-skip fallback."""

    header: bytes
    lines: tuple[bytes, ...]  # the lines after the header, as read
    line_irq: tuple[int, ...]  # IRQ number of each line, -1 for arch rows and junk


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    """Everything the rates model needs from one tick."""

    t: float  # time.monotonic() just before the reads
    stat: Stat
    softirqs: Softirqs
    irq_cpus: tuple[int, ...]  # CPU of each count of an IrqCounts
    irqs: Mapping[int, IrqCounts]  # watched IRQ -> per-CPU counts (IRQs that exist)
    source: str = SOURCE_NONE  # where the per-IRQ counts came from: SOURCE_SYS / SOURCE_PROC / SOURCE_NONE
    # IRQs whose counts were read this tick; every other entry of `irqs` is the
    # very object of the snapshot taken at `base_t` (None: no such promise)
    fresh: frozenset[int] | None = None
    base_t: float | None = None
    # why per_cpu_count was not used although sys/kernel/irq exists ("" = it was)
    fallback: str = ""
    line_cache: _LineCache | None = field(default=None, repr=False, compare=False)

    def irq_per_cpu(self, irq: int) -> dict[int, int]:
        """cpu -> count for one IRQ ({} when not watched or not present)."""
        c = self.irqs.get(irq)
        return {} if c is None else dict(zip(self.irq_cpus, c.ints(), strict=False))


def read_counters(
    root: Root,
    watched_irqs: Collection[int] | None = None,
    prev: CounterSnapshot | None = None,
) -> CounterSnapshot:
    """One tick's counters under `root`.

    watched_irqs: the IRQs whose per-CPU counts are wanted (the daemon passes
    its devices' IRQs); None = every IRQ the kernel has. `prev`: the previous
    tick's snapshot of the same root, which makes this tick cheap (module
    docstring); without it every watched IRQ is read.
    """
    t = time.monotonic()
    stat = parse_stat(read_stat(root))
    try:
        softirqs = parse_softirqs(read_softirqs(root))
    except KernelError:
        softirqs = Softirqs(cpus=(), counts={})  # 2.6.31+ has it; a recorded tree may not
    watched = None if watched_irqs is None else _as_set(watched_irqs)
    fallback = prev.fallback if prev is not None else ""
    if not fallback and root.isdir(SOURCE_SYS):
        cpus = _possible_cpus(root, softirqs)
        if cpus:
            got = _read_sys(root, stat, cpus, watched, prev)
            if got is not None:
                irqs, fresh = got
                base = prev.t if fresh is not None and prev is not None else None
                return CounterSnapshot(t, stat, softirqs, cpus, irqs, SOURCE_SYS, fresh, base)
            # kernel/irq/irqdesc.c per_cpu_count_show() stops at PAGE_SIZE: on
            # a host with enough CPUs and big counts the list comes back cut
            # short. Stay with /proc/interrupts from now on.
            fallback = "per_cpu_count does not hold one count per possible CPU (cut at PAGE_SIZE)"
        else:
            fallback = "no possible-CPU list to map per_cpu_count"
    if root.exists(SOURCE_PROC):
        try:
            data = root.read_bytes(SOURCE_PROC)
        except KernelError:
            data = None
        if data is not None:
            cpus, irqs, cache, fresh = _read_proc(data, watched, prev)
            base = prev.t if fresh is not None and prev is not None else None
            return CounterSnapshot(t, stat, softirqs, cpus, irqs, SOURCE_PROC, fresh, base, fallback, cache)
    return CounterSnapshot(t, stat, softirqs, (), {}, SOURCE_NONE, None, None, fallback)


def _as_set(watched: Collection[int]) -> frozenset[int] | set[int]:
    if isinstance(watched, (set, frozenset)):
        return watched
    return frozenset(watched)


def _possible_cpus(root: Root, softirqs: Softirqs) -> tuple[int, ...]:
    """per_cpu_count has one entry per possible CPU (kernel/irq/irqdesc.c for_each_possible_cpu)."""
    text = root.read_optional("sys/devices/system/cpu/possible")
    if text:
        try:
            return tuple(sorted(CpuSet.parse_list(text)))
        except CpuSetError:
            pass
    # fs/proc/softirqs.c prints one column per possible CPU too
    return softirqs.cpus


# -- the sysfs path ----------------------------------------------------------
class _Truncated(Exception):
    """A per_cpu_count with fewer counts than possible CPUs."""


def _read_irqs(root: Root, irqs: Iterable[int], ncpu: int) -> Iterator[tuple[int, IrqCounts | None]]:
    """(irq, counts) from sys/kernel/irq/N/per_cpu_count; None when the file is
    gone (the IRQ was freed since the intr line or the listing)."""
    irqs = list(irqs)
    raws = root.read_many(SOURCE_SYS, [f"{irq}/per_cpu_count" for irq in irqs])
    for irq, raw in zip(irqs, raws, strict=True):
        if raw is None:
            yield irq, None
            continue
        raw = raw.rstrip()
        if raw.count(b",") + 1 != ncpu:
            raise _Truncated(irq)
        yield irq, IrqCounts(raw)


def _read_sys(
    root: Root,
    stat: Stat,
    cpus: tuple[int, ...],
    watched: frozenset[int] | set[int] | None,
    prev: CounterSnapshot | None,
) -> tuple[dict[int, IrqCounts], frozenset[int] | None] | None:
    """(irqs, fresh), or None when per_cpu_count is unusable on this host."""
    ncpu = len(cpus)
    cur_intr = stat.intr
    try:
        if (
            prev is None
            or prev.source != SOURCE_SYS
            or prev.irq_cpus != cpus
            or not cur_intr
            or not prev.stat.intr
        ):
            targets = list_sys_irqs(root) if watched is None else sorted(watched)
            return {irq: c for irq, c in _read_irqs(root, targets, ncpu) if c is not None}, None

        prev_intr = prev.stat.intr
        n = min(len(cur_intr), len(prev_intr))
        # IRQ numbers whose total moved (up, or down after a free + reuse)
        changed = set(compress(range(n), map(ne, cur_intr, prev_intr)))
        out = dict(prev.irqs)  # C-level copy; the unchanged ones stay the same objects
        to_read: set[int] = set()
        if watched is None:
            # every IRQ: the previous set, plus any IRQ that fired and is new
            to_read.update(changed)
        else:
            for irq in out.keys() - watched:
                del out[irq]
            to_read.update(watched.difference(out.keys()))  # newly watched
            to_read.update(changed.intersection(watched))
        if len(prev_intr) != len(cur_intr) or (out and max(out) >= n):
            # IRQ numbers past the shorter intr line: no cheap test, read them
            to_read.update(i for i in out if i >= n)
        for irq, c in _read_irqs(root, to_read, ncpu):
            if c is None:
                out.pop(irq, None)
            else:
                out[irq] = c
        return out, frozenset(to_read)
    except _Truncated:
        return None


# -- the /proc/interrupts fallback ---------------------------------------------
def _parse_line(line: bytes, ncol: int) -> tuple[int, IrqCounts | None]:
    """(irq, counts) of one /proc/interrupts line; irq -1 for arch rows and junk."""
    key, sep, rest = line.partition(b":")
    key = key.strip()
    if not sep or not key.isdigit() or len(key) > 9:
        return -1, None
    toks = rest.split(None, ncol)[:ncol]
    if len(toks) != ncol or not b"".join(toks).isdigit():
        return int(key), None
    return int(key), IrqCounts(b",".join(toks))


def _read_proc(
    data: bytes,
    watched: frozenset[int] | set[int] | None,
    prev: CounterSnapshot | None,
) -> tuple[tuple[int, ...], dict[int, IrqCounts], _LineCache | None, frozenset[int] | None]:
    lines = data.split(b"\n")
    hdr_i = 0
    while hdr_i < len(lines) and not lines[hdr_i].strip():
        hdr_i += 1
    if hdr_i == len(lines):
        return (), {}, None, None
    header = lines[hdr_i]
    body = tuple(lines[hdr_i + 1:])
    cache = prev.line_cache if prev is not None and prev.source == SOURCE_PROC else None
    if prev is not None and cache is not None and cache.header == header:
        cpus = prev.irq_cpus  # same header bytes: same CPU columns
    else:
        cpus = parse_header(header.decode("ascii", "replace")) or ()
    ncol = len(cpus)
    out: dict[int, IrqCounts]
    if (
        prev is not None
        and cache is not None
        and cache.header == header
        and len(cache.lines) == len(body)
    ):
        changed = list(compress(range(len(body)), map(ne, body, cache.lines)))
        line_irq = list(cache.line_irq)
        out = dict(prev.irqs)
        missing: set[int] | frozenset[int] = frozenset()
        if watched is not None:
            for irq in out.keys() - watched:
                del out[irq]
            missing = watched.difference(out.keys())
        fresh: set[int] = set()
        for i in changed:  # first forget what the changed lines held
            out.pop(line_irq[i], None)
        for i in changed:
            irq, counts = _parse_line(body[i], ncol)
            line_irq[i] = irq
            if counts is not None and (watched is None or irq in watched):
                out[irq] = counts
                fresh.add(irq)
        if missing:
            # newly watched IRQs on unchanged lines
            for i, irq in enumerate(line_irq):
                if irq in missing and irq not in out:
                    _, counts = _parse_line(body[i], ncol)
                    if counts is not None:
                        out[irq] = counts
                        fresh.add(irq)
        return cpus, out, _LineCache(header, body, tuple(line_irq)), frozenset(fresh)
    out = {}
    line_irq = []
    for line in body:
        irq, counts = _parse_line(line, ncol)
        line_irq.append(irq)
        if counts is not None and (watched is None or irq in watched):
            out[irq] = counts
    return cpus, out, _LineCache(header, body, tuple(line_irq)), None
