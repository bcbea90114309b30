"""The CPU partition: completion CPUs and agent home CPUs.

Kernel inputs (through the Machine): sys/devices/system/cpu/{online,isolated,
nohz_full}, cpuN/topology/thread_siblings_list, sys/devices/system/node/nodeN
(Documentation/admin-guide/cputopology.rst), and each device's numa_node.
Design note section 8: completion CPUs absorb IRQs, softirqs, blk-mq
completions and background work; home CPUs run agent control loops and are
kept IRQ-quiet.

Policy ([cpus] in etc/agentlatd.toml):
  completion = "auto" | cpulist     home = "auto" | cpulist
  completion_per_node, completion_share, smt_isolation

"auto" completion, per NUMA node that holds a device in scope (the lowest
node with usable CPUs when no device reports one):
  - usable = online and not isolated by the kernel (isolcpus / nohz_full):
    a CPU the admin isolated is never a completion CPU nor a home CPU;
  - want = max(completion_per_node, ceil(completion_share * node's online CPUs));
  - take whole cores until `want` CPUs are taken, first the cores that IRQs
    agentlatd leaves in place keep busy (plan/irq_affinity.py fixed_irqs: a
    disk out of scope, a device without a driver agentlatd knows; "busy" =
    at least FIXED_SHARE of the busiest core's count since boot, and at least
    FIXED_MIN interrupts), then the lowest-numbered: those interrupts would
    hit a home CPU otherwise. With
    smt_isolation both threads of a core then absorb completions instead of
    one thread doing so while its sibling is given up (idle of agents);
  - never take the node's last home-eligible CPU: when even one core would
    leave none, take one thread and keep its sibling as a home CPU.
"auto" home = usable CPUs that are neither completion CPUs nor (smt_isolation)
their SMT siblings; a node with >= 2 usable CPUs always keeps one.
A host with a single usable CPU gets no completion CPU: that CPU runs agents
and completions alike and the plan steers nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agentlatd.cpuset import CpuSet
from agentlatd.model.machine import Device, Topology
from agentlatd.model.roles import Role
from agentlatd.plan.changes import CpuRole
from agentlatd.policy import CpusPolicy

FIXED_MIN = 10000  # interrupts since boot before a core counts as busy with fixed IRQs
FIXED_SHARE = 0.5  # of the busiest core's fixed IRQ count: a coarse bar, so the
# choice does not flip as counts grow

R_OFFLINE = "offline: takes no IRQs and runs no tasks"
R_ISOLATED = ("isolated by the kernel command line (isolcpus/nohz_full): "
              "agentlatd leaves it alone")
R_SIBLING = ("SMT sibling of a completion CPU (cpus.smt_isolation): it shares "
             "a core with IRQ handlers, so no agent is placed here")
R_NOT_HOME = "not named by cpus.home: no agent is placed here"
R_SINGLE = ("the only usable CPU: it runs agents and completions alike, so "
            "agentlatd steers nothing")


@dataclass(frozen=True, slots=True)
class Partition:
    completion: CpuSet
    home: CpuSet
    roles: tuple[CpuRole, ...]  # one per possible CPU, sorted
    by_node: Mapping[int, CpuSet] = field(default_factory=dict)  # node -> its completion CPUs
    notes: tuple[str, ...] = ()
    # completion CPU -> its position among its core's online threads (0 = first)
    thread_index: Mapping[int, int] = field(default_factory=dict)

    @property
    def steering(self) -> bool:
        """False when there is nowhere to steer completions to."""
        return bool(self.completion)

    def spread_order(self, cpus: CpuSet) -> tuple[int, ...]:
        """`cpus` in the order queues are dealt out: one thread of each core first.

        With adjacent SMT numbering (0,1 = one core) queue 1 then goes to
        another core, not to queue 0's sibling.
        """
        return tuple(sorted(cpus, key=lambda c: (self.thread_index.get(c, 0), c)))

    def completion_for(self, node: int | None) -> CpuSet:
        """Completion CPUs for a device on `node`: the node's own, else all of them."""
        if node is not None:
            own = self.by_node.get(node)
            if own:
                return own
        return self.completion


def _names(names: Sequence[str]) -> str:
    s = sorted(set(names))
    if len(s) <= 3:
        return ", ".join(s)
    return ", ".join(s[:3]) + f" and {len(s) - 3} more"


def device_nodes(devices: Sequence[Device]) -> dict[int, tuple[str, ...]]:
    """node -> names of the devices with IRQs of their own on it (NICs, NVMe)."""
    out: dict[int, list[str]] = {}
    for d in devices:
        if d.kind not in ("net", "nvme") or d.virtual or d.numa_node is None:
            continue
        out.setdefault(d.numa_node, []).append(d.name)
    return {n: tuple(sorted(v)) for n, v in sorted(out.items())}


class _Topo:
    """Lookups over a Topology, computed once."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.possible = CpuSet(c.cpu for c in topo.cpus) | topo.possible
        self.online = topo.online & self.possible
        self.kiso = (topo.isolated | topo.nohz_full) & self.possible
        self.usable = self.online - self.kiso
        self.node_of: dict[int, int] = {c.cpu: c.node for c in topo.cpus}
        self.sibs: dict[int, CpuSet] = {c.cpu: c.smt_siblings | {c.cpu} for c in topo.cpus}
        nodes: dict[int, set[int]] = {}
        for c in topo.cpus:
            nodes.setdefault(c.node, set()).add(c.cpu)
        self.nodes: dict[int, CpuSet] = {n: CpuSet(v) for n, v in sorted(nodes.items())}

    def node_cpus(self, node: int) -> CpuSet:
        return self.nodes.get(node, CpuSet())

    def siblings_of(self, cpus: CpuSet) -> CpuSet:
        out: set[int] = set()
        for c in cpus:
            out |= self.sibs.get(c, CpuSet({c}))
        return CpuSet(out) - cpus


def _explicit(text: str, key: str, t: _Topo, notes: list[str]) -> CpuSet:
    want = CpuSet.parse_list(text)
    bad = want - t.possible
    if bad:
        notes.append(f"cpus.{key} names CPUs {bad} that this host does not have: dropped.")
    off = (want & t.possible) - t.online
    if off:
        notes.append(f"cpus.{key} names offline CPUs {off}: dropped.")
    iso = want & t.online & t.kiso
    if iso:
        notes.append(f"cpus.{key} names CPUs {iso} that the kernel isolated "
                     "(isolcpus/nohz_full): kept because the policy names them.")
    return want & t.online


def _busy(groups: Sequence[CpuSet], load: Mapping[int, float]) -> set[CpuSet]:
    """The groups (cores or CPUs) fixed IRQs keep busy (module docstring)."""
    per = {g: sum(load.get(c, 0.0) for c in g) for g in groups}
    top = max(per.values(), default=0.0)
    if top < FIXED_MIN:
        return set()
    return {g for g, v in per.items() if v >= FIXED_SHARE * top}


def _take_node(node: int, want: int, cand: CpuSet, home_pool: CpuSet, smt: bool,
               guard: bool, t: _Topo, notes: list[str],
               load: Mapping[int, float]) -> tuple[CpuSet, CpuSet, CpuSet]:
    """Completion CPUs on `node`, siblings kept as home, and the chosen CPUs that
    were taken for their fixed IRQ load (only when that load set some groups
    apart, for the plan's note). See module docstring."""
    chosen: set[int] = set()
    keep_home: set[int] = set()
    busy_cpus: set[int] = set()
    n_groups = 0
    if smt:
        cores: dict[CpuSet, None] = {}
        for c in sorted(cand):
            cores.setdefault(CpuSet(t.sibs.get(c, CpuSet({c})) & t.online), None)
        busy = _busy(list(cores), load)
        busy_cpus = {c for g in busy for c in g}
        n_groups = len(cores)
        # cores whose threads are all usable first, then busy with fixed IRQs,
        # then lowest-numbered
        order = sorted(cores, key=lambda core: (bool(core & t.kiso), core not in busy, min(core)))
        for core in order:
            if len(chosen) >= want:
                break
            threads = core & cand
            after = CpuSet(chosen | threads)
            left = home_pool - after - t.siblings_of(after)
            if guard and not left:
                if not chosen:
                    first = min(threads)
                    chosen.add(first)
                    keep_home |= (home_pool - {first}) & t.siblings_of(CpuSet({first}))
                    notes.append(
                        f"Node {node} has no CPU for agents besides the SMT siblings of its "
                        f"completion CPU {first}: sibling(s) {CpuSet(keep_home)} stay home CPUs.")
                elif len(chosen) < want:
                    notes.append(f"Node {node}: {len(chosen)} completion CPU(s) instead of "
                                 f"{want}, so that agents keep a home CPU on the node.")
                break
            chosen |= threads
    else:
        busy = _busy([CpuSet({c}) for c in cand], load)
        busy_cpus = {c for g in busy for c in g}
        n_groups = len(cand)
        for c in sorted(cand, key=lambda c: (CpuSet({c}) not in busy, c)):
            if len(chosen) >= want:
                break
            if guard and not (home_pool - chosen - {c}):
                notes.append(f"Node {node}: {len(chosen)} completion CPU(s) instead of "
                             f"{want}, so that agents keep a home CPU on the node.")
                break
            chosen.add(c)
    apart = bool(busy) and len(busy) < n_groups
    return CpuSet(chosen), CpuSet(keep_home), CpuSet(busy_cpus & chosen) if apart else CpuSet()


def partition(topo: Topology, devices: Sequence[Device], pol: CpusPolicy,
              fixed_load: Mapping[int, float] | None = None) -> Partition:
    """Split the CPUs. `devices` are the devices in scope (plan.select);
    `fixed_load`: cpu -> interrupts of the IRQs the plan leaves in place
    (plan/irq_affinity.py fixed_irq_load)."""
    load = fixed_load or {}
    t = _Topo(topo)
    notes: list[str] = []
    reasons: dict[int, tuple[Role, str]] = {}
    dev_nodes = device_nodes(devices)

    if len(t.usable) <= 1:
        # nothing to separate: one CPU does everything (or the admin isolated all)
        home = t.usable
        if home:
            notes.append(f"Only CPU {home} is usable: agents and completions share it, "
                         "so no IRQ, RPS or XPS steering is planned.")
        else:
            notes.append("No usable CPU (every online CPU is isolated by the kernel): "
                         "no steering is planned and no agent is pinned.")
        for c in home:
            reasons[c] = (Role.HOME, R_SINGLE)
        return _finish(t, CpuSet(), home, {}, reasons, notes)

    home_explicit: CpuSet | None = None
    if pol.home != "auto":
        home_explicit = _explicit(pol.home, "home", t, notes)
        if not home_explicit:
            notes.append("cpus.home names no online CPU: home CPUs are chosen "
                         "automatically instead.")
            home_explicit = None

    completion = CpuSet()
    by_node: dict[int, CpuSet] = {}
    keep_home = CpuSet()
    if pol.completion != "auto":
        completion = _explicit(pol.completion, "completion", t, notes)
        if not completion:
            notes.append("cpus.completion names no online CPU: completion CPUs are chosen "
                         "automatically instead.")
        for c in completion:
            reasons[c] = (Role.COMPLETION, "completion CPU named by cpus.completion")
        for n in t.nodes:
            on_node = completion & t.node_cpus(n)
            if on_node:
                by_node[n] = on_node
    if not completion:
        usable_nodes = [n for n in t.nodes if t.usable & t.node_cpus(n)]
        targets: list[tuple[int, str]] = []
        for n, names in dev_nodes.items():
            if n in usable_nodes:
                targets.append((n, f"where {_names(names)} live"))
            else:
                notes.append(f"Devices {_names(names)} sit on node {n}, which has no usable "
                             "CPU: their completions go to the other nodes' completion CPUs.")
        if not targets:
            n = usable_nodes[0]
            why = ("no device in scope reports a NUMA node" if devices
                   else "no device is in scope")
            targets.append((n, f"the first node with usable CPUs ({why})"))
        forbid = home_explicit or CpuSet()
        for n, where in targets:
            node_usable = t.usable & t.node_cpus(n)
            share = pol.completion_share * len(t.online & t.node_cpus(n))
            want = max(pol.completion_per_node, math.ceil(share - 1e-9))
            pool = node_usable if home_explicit is None else (home_explicit & t.node_cpus(n))
            guard = home_explicit is None and len(node_usable) >= 2
            chosen, kept, hit = _take_node(n, want, node_usable - forbid, pool,
                                           pol.smt_isolation, guard, t, notes, load)
            if not chosen:
                notes.append(f"Node {n} has no CPU left for completions "
                             "(cpus.home names them all).")
                continue
            by_node[n] = chosen
            keep_home |= kept
            completion |= chosen
            r = (f"completion CPU on node {n}, {where}: takes device IRQs, softirqs, "
                 "blk-mq completions and background work")
            for c in chosen:
                reasons[c] = (Role.COMPLETION, r)
            if hit:
                notes.append(f"Completion CPU(s) {hit} chosen where IRQs that agentlatd leaves "
                             "in place land (out of scope, or not steered): home CPUs stay "
                             "clear of them.")
            for c in kept:
                reasons[c] = (Role.HOME, f"home CPU on node {n}, kept although an SMT sibling "
                                         "of a completion CPU: the node has no other CPU "
                                         "for agents")

    sib = t.siblings_of(completion) if pol.smt_isolation else CpuSet()
    if home_explicit is not None:
        home = home_explicit - completion
        clash = home & sib
        if clash:
            notes.append(f"cpus.home names CPUs {clash} that are SMT siblings of completion "
                         "CPUs: kept because the policy names them.")
        for c in home:
            reasons.setdefault(c, (Role.HOME, "home CPU named by cpus.home"))
    else:
        home = (t.usable - completion - sib) | keep_home
        # a node with >= 2 usable CPUs keeps a home CPU (explicit completion lists
        # can take a node's whole non-sibling set)
        for n, cpus in t.nodes.items():
            node_usable = t.usable & cpus
            if len(node_usable) < 2 or home & cpus:
                continue
            spare = node_usable - completion
            if spare:
                c = min(spare)
                home |= {c}
                reasons[c] = (Role.HOME, f"home CPU on node {n}, kept although an SMT "
                                         "sibling of a completion CPU: the node has no other "
                                         "CPU for agents")
                notes.append(f"Node {n} keeps CPU {c} as a home CPU although it is an SMT "
                             "sibling of a completion CPU: no other CPU of the node is free.")
            else:
                notes.append(f"Node {n} has no home CPU: cpus.completion names all its "
                             "usable CPUs.")
        for c in home:
            reasons.setdefault(c, (Role.HOME, f"home CPU on node {t.node_of.get(c, 0)}: "
                                              "kept IRQ-quiet for agent control loops"))
    for c in sib - home - completion:
        if c in t.usable:
            reasons.setdefault(c, (Role.OTHER, R_SIBLING))
    if home_explicit is not None:
        for c in t.usable - home - completion:
            reasons.setdefault(c, (Role.OTHER, R_NOT_HOME))
    return _finish(t, completion, home, by_node, reasons, notes)


def _finish(t: _Topo, completion: CpuSet, home: CpuSet, by_node: Mapping[int, CpuSet],
            reasons: dict[int, tuple[Role, str]], notes: list[str]) -> Partition:
    roles: list[CpuRole] = []
    for c in sorted(t.possible):
        if c not in t.online:
            role, why = Role.OFFLINE, R_OFFLINE
        elif c in reasons:
            role, why = reasons[c]
        elif c in t.kiso:
            role, why = Role.OTHER, R_ISOLATED
        else:  # pragma: no cover - every usable CPU gets a reason above
            role, why = Role.OTHER, "not assigned"
        roles.append(CpuRole(c, role, why))
    thread_index = {c: sorted(t.sibs.get(c, CpuSet({c})) & t.online).index(c)
                    for c in sorted(completion)}
    return Partition(completion=completion, home=home, roles=tuple(roles),
                     by_node=dict(sorted(by_node.items())), notes=tuple(notes),
                     thread_index=thread_index)
