"""sys/devices/system/cpu and sys/devices/system/node: which CPUs exist and where they sit.

Kernel docs: Documentation/ABI/testing/sysfs-devices-system-cpu,
Documentation/admin-guide/cputopology.rst (possible/present/online/isolated/
nohz_full and cpuN/topology/*), Documentation/ABI/stable/sysfs-devices-node
(nodeN/cpulist).

  cpu/{possible,present,online}   cpulists; always there on SMP kernels
  cpu/{isolated,nohz_full}        cpulists; ABSENT on kernels without the
                                  feature, and nohz_full reads "(null)" when
                                  CONFIG_NO_HZ_FULL=y but no mask was allocated:
                                  both mean "none"
  cpu/cpuN/online                 "0"/"1"; x86 cpu0 usually has no such file
                                  (not hotpluggable): it is online
  cpu/cpuN/topology/              core_id, physical_package_id,
                                  thread_siblings_list; gone while the CPU is
                                  offline on x86 (cpuN/topology removed)
  cpu/cpuN/cache/indexM/          level, type (Data/Instruction/Unified),
                                  shared_cpu_list, id (optional)
  node/nodeN/cpulist              the node's CPUs (x86 drops offline CPUs)

read_cpus(root) reads; the parse_* functions take text. Nothing here guesses
what is missing: an absent value is None, model/topology.py decides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root

CPU_DIR = "sys/devices/system/cpu"
NODE_DIR = "sys/devices/system/node"
_CPU_NAME = re.compile(r"^cpu(\d+)$")
_NODE_NAME = re.compile(r"^node(\d+)$")
_INDEX_NAME = re.compile(r"^index(\d+)$")


@dataclass(frozen=True, slots=True)
class Cache:
    """One cpuN/cache/indexM directory."""

    index: int
    level: int
    type: str  # "Data" | "Instruction" | "Unified"
    shared_cpus: CpuSet
    id: int | None  # cache/indexM/id (absent on many arm64 hosts)


@dataclass(frozen=True, slots=True)
class CpuEntry:
    """One cpuN directory; None = the file is absent or unreadable."""

    cpu: int
    online: bool | None  # cpuN/online; None when the file is absent
    core_id: int | None
    package_id: int | None
    thread_siblings: CpuSet | None
    caches: tuple[Cache, ...]


@dataclass(frozen=True, slots=True)
class CpuSample:
    possible: CpuSet | None
    present: CpuSet | None
    online: CpuSet | None
    isolated: CpuSet  # absent file = empty
    nohz_full: CpuSet  # absent file or "(null)" = empty
    cpus: tuple[CpuEntry, ...]  # one per cpuN directory, by number
    nodes: Mapping[int, CpuSet]  # nodeN -> cpulist ({} without NUMA info)


# -- parsers (text in) -----------------------------------------------------
def parse_cpulist(text: str) -> CpuSet | None:
    """A cpulist; "" -> empty; "(null)" (an unallocated cpumask) -> empty; junk -> None."""
    t = text.strip()
    if t in ("", "(null)"):
        return CpuSet()
    try:
        return CpuSet.parse_list(t)
    except CpuSetError:
        return None


def parse_int(text: str) -> int | None:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        return None


def parse_online(text: str) -> bool | None:
    """cpuN/online: "1" -> True, "0" -> False."""
    return {"1": True, "0": False}.get(text.strip())


# -- readers (Root in) -----------------------------------------------------
def _opt(root: Root, rel: str) -> str | None:
    try:
        return root.read_value(rel)
    except KernelError:
        return None


def _cpulist(root: Root, rel: str) -> CpuSet | None:
    text = _opt(root, rel)
    return None if text is None else parse_cpulist(text)


def _int(root: Root, rel: str) -> int | None:
    text = _opt(root, rel)
    return None if text is None else parse_int(text)


def read_caches(root: Root, cpu: int) -> tuple[Cache, ...]:
    base = f"{CPU_DIR}/cpu{cpu}/cache"
    out: list[Cache] = []
    for name in root.listdir(base):
        m = _INDEX_NAME.match(name)
        if m is None:
            continue
        d = f"{base}/{name}"
        level = _int(root, f"{d}/level")
        shared = _cpulist(root, f"{d}/shared_cpu_list")
        if level is None or shared is None:
            continue
        out.append(Cache(index=int(m.group(1)), level=level, type=_opt(root, f"{d}/type") or "",
                         shared_cpus=shared, id=_int(root, f"{d}/id")))
    return tuple(sorted(out, key=lambda c: c.index))


def read_cpu_entry(root: Root, cpu: int) -> CpuEntry:
    d = f"{CPU_DIR}/cpu{cpu}"
    online = _opt(root, f"{d}/online")
    return CpuEntry(
        cpu=cpu,
        online=None if online is None else parse_online(online),
        core_id=_int(root, f"{d}/topology/core_id"),
        package_id=_int(root, f"{d}/topology/physical_package_id"),
        thread_siblings=_cpulist(root, f"{d}/topology/thread_siblings_list"),
        caches=read_caches(root, cpu),
    )


def read_nodes(root: Root) -> dict[int, CpuSet]:
    out: dict[int, CpuSet] = {}
    for name in root.listdir(NODE_DIR):
        m = _NODE_NAME.match(name)
        if m is None:
            continue
        cpus = _cpulist(root, f"{NODE_DIR}/{name}/cpulist")
        if cpus is not None:
            out[int(m.group(1))] = cpus
    return dict(sorted(out.items()))


def read_cpus(root: Root) -> CpuSample:
    """Everything model/topology.py needs from the CPU and node directories."""
    numbers: set[int] = set()
    for name in root.listdir(CPU_DIR):
        m = _CPU_NAME.match(name)
        if m is not None:
            numbers.add(int(m.group(1)))
    possible = _cpulist(root, f"{CPU_DIR}/possible")
    if possible:
        numbers |= possible
    return CpuSample(
        possible=possible,
        present=_cpulist(root, f"{CPU_DIR}/present"),
        online=_cpulist(root, f"{CPU_DIR}/online"),
        isolated=_cpulist(root, f"{CPU_DIR}/isolated") or CpuSet(),
        nohz_full=_cpulist(root, f"{CPU_DIR}/nohz_full") or CpuSet(),
        cpus=tuple(read_cpu_entry(root, n) for n in sorted(numbers)),
        nodes=read_nodes(root),
    )
