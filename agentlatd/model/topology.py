"""CPU topology: SMT siblings, LLC domains and NUMA nodes (pure).

Input: sample.cpu.CpuSample (sys/devices/system/cpu, sys/devices/system/node;
Documentation/admin-guide/cputopology.rst). Output: model.machine.Topology.

Rules, each for a case seen in the field:
- online: the global cpu/online list when there is one (it is what the
  scheduler uses); else each cpuN/online file, and a CPU without one (x86
  cpu0) is online.
- NUMA: a CPU's node is the nodeN whose cpulist holds it. No node directory at
  all (CONFIG_NUMA=n, many VMs) = everything on node 0. x86 drops an OFFLINE
  CPU from its node's cpulist: it then goes to the node of a CPU of its own
  package, else to the lowest node, so every possible CPU has exactly one node.
- SMT: thread_siblings_list, always including the CPU itself; an offline CPU
  whose topology/ directory is gone is its own only sibling, and its core and
  package are -1 (unknown).
- LLC: the highest-level Unified (or Data) cache; its id is the lowest CPU of
  its shared_cpu_list. No cache information (some VMs, arm64 without PPTT) =
  one LLC per package.
"""

from __future__ import annotations

from agentlatd.cpuset import CpuSet
from agentlatd.model.machine import Cpu, Topology
from agentlatd.sample.cpu import Cache, CpuEntry, CpuSample

UNKNOWN = -1
_LLC_TYPES = ("Unified", "Data")


def last_level_cache(caches: tuple[Cache, ...]) -> Cache | None:
    """The highest-level Unified/Data cache (instruction caches never are the LLC)."""
    best: Cache | None = None
    for c in caches:
        if c.type not in _LLC_TYPES:
            continue
        if best is None or (c.level, c.type == "Unified") > (best.level, best.type == "Unified"):
            best = c
    return best


def build_topology(s: CpuSample) -> Topology:
    entries = {e.cpu: e for e in s.cpus}
    possible = s.possible if s.possible else CpuSet(entries)
    present = s.present if s.present is not None else possible
    if s.online is not None:
        online = s.online
    else:
        online = CpuSet(c for c in possible
                        if entries.get(c) is None or entries[c].online is not False)

    package: dict[int, int] = {}
    for c in sorted(possible):
        e = entries.get(c)
        package[c] = e.package_id if e is not None and e.package_id is not None else UNKNOWN
    by_package: dict[int, set[int]] = {}
    for c, p in package.items():
        if p != UNKNOWN:
            by_package.setdefault(p, set()).add(c)

    node_of = _nodes(s, possible, package, by_package)

    cpus: list[Cpu] = []
    for c in sorted(possible):
        e = entries.get(c) or CpuEntry(c, None, None, None, None, ())
        sibs = (e.thread_siblings or CpuSet()) | {c}
        llc_cpus = _llc_cpus(e, package[c], by_package)
        cpus.append(Cpu(
            cpu=c,
            online=c in online,
            core=e.core_id if e.core_id is not None else UNKNOWN,
            package=package[c],
            node=node_of[c],
            llc=min(llc_cpus),
            smt_siblings=sibs,
            llc_cpus=llc_cpus,
        ))
    nodes: dict[int, set[int]] = {}
    for cpu in cpus:
        nodes.setdefault(cpu.node, set()).add(cpu.cpu)
    for n in s.nodes:
        nodes.setdefault(n, set())  # a memory-only node keeps its (empty) entry
    return Topology(
        possible=possible,
        present=present,
        online=online,
        isolated=s.isolated,
        nohz_full=s.nohz_full,
        cpus=tuple(cpus),
        nodes={n: CpuSet(v) for n, v in sorted(nodes.items())},
    )


def _llc_cpus(e: CpuEntry, package: int, by_package: dict[int, set[int]]) -> CpuSet:
    llc = last_level_cache(e.caches)
    if llc is not None and llc.shared_cpus:
        return llc.shared_cpus | {e.cpu}
    if package != UNKNOWN:
        return CpuSet(by_package[package])
    return CpuSet({e.cpu})


def _nodes(s: CpuSample, possible: CpuSet, package: dict[int, int],
           by_package: dict[int, set[int]]) -> dict[int, int]:
    if not s.nodes:
        return dict.fromkeys(possible, 0)
    node_of: dict[int, int] = {}
    for n, cpus in sorted(s.nodes.items()):
        for c in cpus:
            node_of.setdefault(c, n)
    lowest = min(s.nodes)
    for c in sorted(possible):
        if c in node_of:
            continue
        peers = sorted(by_package.get(package[c], ()))
        known = [node_of[p] for p in peers if p in node_of]
        node_of[c] = known[0] if known else lowest
    return node_of
