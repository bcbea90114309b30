"""/proc/irq/N/* and /sys/kernel/irq/N/*: one IRQ's affinity and descriptor.

/proc/irq/N (kernel/irq/proc.c; Documentation/core-api/irq/irq-affinity.rst,
Documentation/filesystems/proc.rst "1.2 ... /proc/irq"):
  smp_affinity_list         cpulist the IRQ may be delivered to ("0-3,8")
  smp_affinity              the same as a hex mask ("ff,00000000"); the fallback
                            when the _list file is missing (kernels before 3.0)
  effective_affinity_list   where the irq chip really delivers it (4.15+,
  effective_affinity        CONFIG_GENERIC_IRQ_EFFECTIVE_AFF_MASK); x86 and
                            arm64 GICv3 deliver to one CPU of smp_affinity
  affinity_hint             hex mask a driver suggests (irq_set_affinity_hint());
                            all zeros when the driver gave none
  node                      NUMA node of the device, -1 when none
/sys/kernel/irq/N (kernel/irq/irqdesc.c, Documentation/ABI/testing/sysfs-kernel-irq;
4.11+ with CONFIG_SPARSE_IRQ):
  per_cpu_count   "c0,c1,..." one count per POSSIBLE CPU (for_each_possible_cpu)
  chip_name       irq_chip name ("IR-PCI-MSIX-0000:3b:00.0"); empty without a chip
  hwirq           hardware IRQ number in its domain; empty without a domain
  type            "edge" or "level"
  name            the flow handler name ("edge", "fasteoi"); often empty
  actions         the requested handlers, comma separated without spaces ("i8042,serio")
  wakeup          "enabled" / "disabled"

An absent file means "unknown" (None), never an error: old kernels lack the
_list and effective_* files, fixtures and captures lack what they did not
record, and an IRQ freed between listing and reading has no directory left.
An unreadable or unparseable value is unknown too: one odd IRQ must not stop
a tick. Parsers take text; read_proc_irq / read_sys_irq take a Root and an IRQ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.sample.interrupts import is_count, parse_counts
from agentlatd.sysfs.root import Root

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProcIrq:
    """/proc/irq/N: None = unknown (file absent or unreadable)."""

    irq: int
    smp_affinity: CpuSet | None
    effective_affinity: CpuSet | None
    affinity_hint: CpuSet | None  # None also when the driver gave no hint (all-zero mask)
    node: int | None  # None also for -1 (no node)


@dataclass(frozen=True, slots=True)
class SysIrq:
    """/sys/kernel/irq/N: None = unknown (file absent or unreadable)."""

    irq: int
    actions: tuple[str, ...] | None  # () when the file is there and empty: nothing requested
    chip_name: str | None
    hwirq: int | None
    name: str | None  # flow handler name
    per_cpu_count: tuple[int, ...] | None  # one per possible CPU
    type: str | None  # "edge" | "level"
    wakeup: bool | None


# -- parsers (text in) -----------------------------------------------------
def parse_cpulist(text: str) -> CpuSet | None:
    try:
        return CpuSet.parse_list(text)
    except CpuSetError:
        return None


def parse_cpumask(text: str) -> CpuSet | None:
    try:
        return CpuSet.parse_mask(text)
    except CpuSetError:
        return None


def parse_affinity_hint(text: str) -> CpuSet | None:
    """affinity_hint: a mask; all zeros (the kernel's "no hint") -> None."""
    cpus = parse_cpumask(text)
    return cpus if cpus else None


def parse_node(text: str) -> int | None:
    """node: "0", "1"; "-1" (no NUMA node) -> None."""
    t = text.strip()
    return int(t) if is_count(t) else None


def parse_per_cpu_count(text: str) -> tuple[int, ...] | None:
    """per_cpu_count: "0,12008" -> (0, 12008); None when malformed."""
    t = text.strip()
    if not t:
        return None
    return parse_counts(t.split(","))


def parse_actions(text: str) -> tuple[str, ...]:
    """actions: "i8042,serio" -> ("i8042", "serio"); "" -> ()."""
    return tuple(a.strip() for a in text.split(",") if a.strip())


def parse_hwirq(text: str) -> int | None:
    t = text.strip()
    return int(t) if is_count(t) else None


def parse_wakeup(text: str) -> bool | None:
    t = text.strip()
    return {"enabled": True, "disabled": False}.get(t)


# -- readers (Root in) -----------------------------------------------------
def _opt(root: Root, rel: str) -> str | None:
    """The file's stripped text, None when absent or unreadable."""
    try:
        return root.read_value(rel, "irq")
    except KernelError:
        return None


def _first(root: Root, *tries: tuple[str, Callable[[str], T | None]]) -> T | None:
    """The first file of `tries` that exists and parses."""
    for rel, parse in tries:
        text = _opt(root, rel)
        if text is not None:
            v = parse(text)
            if v is not None:
                return v
    return None


def _text(text: str) -> str | None:
    return text


def read_proc_irq(root: Root, irq: int) -> ProcIrq:
    d = f"proc/irq/{int(irq)}"
    return ProcIrq(
        irq=irq,
        smp_affinity=_first(root, (f"{d}/smp_affinity_list", parse_cpulist),
                            (f"{d}/smp_affinity", parse_cpumask)),
        effective_affinity=_first(root, (f"{d}/effective_affinity_list", parse_cpulist),
                                  (f"{d}/effective_affinity", parse_cpumask)),
        affinity_hint=_first(root, (f"{d}/affinity_hint", parse_affinity_hint)),
        node=_first(root, (f"{d}/node", parse_node)),
    )


def read_sys_irq(root: Root, irq: int) -> SysIrq:
    d = f"sys/kernel/irq/{int(irq)}"
    actions = _opt(root, f"{d}/actions")
    return SysIrq(
        irq=irq,
        actions=None if actions is None else parse_actions(actions),
        chip_name=_first(root, (f"{d}/chip_name", _text)),
        hwirq=_first(root, (f"{d}/hwirq", parse_hwirq)),
        name=_first(root, (f"{d}/name", _text)),
        per_cpu_count=_first(root, (f"{d}/per_cpu_count", parse_per_cpu_count)),
        type=_first(root, (f"{d}/type", _text)),
        wakeup=_first(root, (f"{d}/wakeup", parse_wakeup)),
    )


def _numbers(names: list[str]) -> tuple[int, ...]:
    return tuple(sorted(int(n) for n in names if is_count(n)))


def list_proc_irqs(root: Root) -> tuple[int, ...]:
    """IRQ numbers with a /proc/irq/N directory (requested or not), sorted."""
    return _numbers(root.listdir("proc/irq"))


def list_sys_irqs(root: Root) -> tuple[int, ...]:
    """IRQ numbers with a /sys/kernel/irq/N directory (every descriptor), sorted."""
    return _numbers(root.listdir("sys/kernel/irq"))
