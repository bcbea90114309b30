"""CPU sets as the kernel writes them: cpulists ("0-3,8") and hex masks ("ff,00000000").

Kernel formats: Documentation/admin-guide/cputopology.rst (cpulist), and
lib/bitmap.c bitmap_print_to_pagebuf() (comma-separated 32-bit hex words,
most significant first) as used by /proc/irq/N/smp_affinity and
/sys/class/net/X/queues/rx-N/rps_cpus.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable


class CpuSetError(ValueError):
    """A cpulist or mask string that does not parse."""


class CpuSet(frozenset[int]):
    """An immutable set of CPU numbers that prints as a kernel cpulist."""

    __slots__ = ()

    def __new__(cls, cpus: Iterable[int] = ()) -> CpuSet:
        items = frozenset(int(c) for c in cpus)
        for c in items:
            if c < 0:
                raise CpuSetError(f"negative CPU number {c}")
        return super().__new__(cls, items)

    @classmethod
    def _of(cls, items: frozenset[int]) -> CpuSet:
        """A CpuSet of CPU numbers already checked (the set algebra of two CpuSets):
        no per-element int() and sign check."""
        return frozenset.__new__(cls, items)

    # -- parsing ---------------------------------------------------------
    @classmethod
    def parse_list(cls, text: str) -> CpuSet:
        """Parse a cpulist: "", "0", "0-3,8", "0-15:2" (stride, see bitmap_parselist)."""
        if cls is CpuSet:
            return _parse_list(text)
        return cls._parse_list(text)

    @classmethod
    def _parse_list(cls, text: str) -> CpuSet:
        text = text.strip()
        cpus: set[int] = set()
        if not text:
            return cls()
        for part in text.split(","):
            part = part.strip()
            if not part:
                raise CpuSetError(f"empty element in cpulist {text!r}")
            stride = 1
            if ":" in part:
                part, _, s = part.partition(":")
                # bitmap_parselist also allows "0-15:2/4" (used/group); keep used only
                s = s.split("/")[0]
                if not _decimal(s) or int(s) == 0:
                    raise CpuSetError(f"bad stride in cpulist {text!r}")
                stride = int(s)
            lo_s, dash, hi_s = part.partition("-")
            if not _decimal(lo_s) or (dash and not _decimal(hi_s)):
                raise CpuSetError(f"bad cpulist {text!r}")
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
            if hi < lo:
                raise CpuSetError(f"descending range {part!r} in cpulist {text!r}")
            if hi - lo > 1 << 16:
                raise CpuSetError(f"range {part!r} too large in cpulist {text!r}")
            cpus.update(range(lo, hi + 1, stride))
        return cls(cpus)

    @classmethod
    def parse_mask(cls, text: str) -> CpuSet:
        """Parse a hex mask: "f", "ff,00000000", "00000000,00000001"."""
        text = text.strip()
        if not text:
            return cls()
        words = text.split(",")
        value = 0
        for w in words:
            if not w or len(w) > 8:
                raise CpuSetError(f"bad mask word {w!r} in {text!r}")
            if not (w.isascii() and all(c in _HEX for c in w)):
                raise CpuSetError(f"bad hex mask {text!r}")
            value = (value << 32) | int(w, 16)
        return cls(i for i in range(value.bit_length()) if value >> i & 1)

    # -- printing --------------------------------------------------------
    def to_list(self) -> str:
        """The cpulist form, ranges collapsed: CpuSet({0,1,2,3,8}) -> "0-3,8"."""
        if len(self) == 1:  # an agent's home CPU: the common case
            for c in self:
                return str(c)
        out: list[str] = []
        run: list[int] = []
        for c in sorted(self):
            if run and c == run[-1] + 1:
                run.append(c)
                continue
            if run:
                out.append(_fmt_run(run))
            run = [c]
        if run:
            out.append(_fmt_run(run))
        return ",".join(out)

    def to_mask(self, nr_cpus: int | None = None) -> str:
        """The kernel's mask form, as bitmap_print_to_pagebuf() ("%*pb") prints it.

        nr_cpus is nr_cpu_ids (possible CPUs): 32-bit words, most significant
        first, and the first word only as wide as the remaining bits need
        (2 CPUs -> "3", 8 -> "ff", 40 -> "ff,ffffffff", 64 -> "00000000,00000001").
        """
        width = max(nr_cpus or 0, (max(self) + 1) if self else 1)
        nwords = max(1, (width + 31) // 32)
        top_bits = width - 32 * (nwords - 1)
        value = 0
        for c in self:
            value |= 1 << c
        words = [f"{(value >> (32 * i)) & 0xFFFFFFFF:08x}" for i in reversed(range(nwords))]
        top_digits = (top_bits + 3) // 4
        words[0] = words[0][-top_digits:]
        return ",".join(words)

    def __str__(self) -> str:
        return self.to_list()

    def __repr__(self) -> str:
        return f"CpuSet({self.to_list()!r})"

    # -- set algebra keeps the type --------------------------------------
    # two CpuSets give CPU numbers already checked; anything else is checked
    # as the constructor checks it
    def __or__(self, other: Iterable[int]) -> CpuSet:  # type: ignore[override]
        if isinstance(other, CpuSet):
            return CpuSet._of(frozenset.__or__(self, other))
        return CpuSet(frozenset(self) | frozenset(other))

    def __and__(self, other: Iterable[int]) -> CpuSet:  # type: ignore[override]
        if isinstance(other, CpuSet):
            return CpuSet._of(frozenset.__and__(self, other))
        return CpuSet(frozenset(self) & frozenset(other))

    def __sub__(self, other: Iterable[int]) -> CpuSet:  # type: ignore[override]
        if isinstance(other, CpuSet):
            return CpuSet._of(frozenset.__sub__(self, other))
        return CpuSet(frozenset(self) - frozenset(other))

    def __xor__(self, other: Iterable[int]) -> CpuSet:  # type: ignore[override]
        if isinstance(other, CpuSet):
            return CpuSet._of(frozenset.__xor__(self, other))
        return CpuSet(frozenset(self) ^ frozenset(other))


@functools.lru_cache(maxsize=4096)
def _parse_list(text: str) -> CpuSet:
    """CpuSet.parse_list, remembered: the same few cpulists ("1", "0-1") are
    read back from every thread an agent pins and compared with what was
    written (apply/knobs.py cpulist_equal); a CpuSet is immutable."""
    return CpuSet._parse_list(text)


_HEX = frozenset("0123456789abcdefABCDEF")


def _decimal(s: str) -> bool:
    """ASCII decimal digits only, as the kernel's bitmap_parselist() reads them.

    str.isdigit() alone is true for "²" (which int() refuses) and int() takes
    every Unicode Nd digit ("١", "１"): neither is a CPU number.
    """
    return s.isascii() and s.isdigit()


def _fmt_run(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"
