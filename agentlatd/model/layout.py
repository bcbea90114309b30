"""The CPU roles agents are placed with: home and completion CPUs, SMT siblings,
NUMA nodes (from the plan's partition, or a fallback when there is none).

A value, no IO: the plan builds it (daemon.layout_of), the agent planner
(plan/agents.py) and the chain model (model/chain.py) read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agentlatd.cpuset import CpuSet

# A policy that leaves this host no home CPU (cpus.completion naming every usable CPU,
# or cpus.home naming only completion CPUs) runs degraded rather than refused: agents
# still register and are measured, but are not pinned. Said in the log at every change
# of the layout, in `agents` and in each registration's answer ("problem").
NO_HOME_CPU = ("degraded: the policy leaves no home CPU on this host (cpus.completion "
               "takes every usable CPU, or cpus.home names none outside it): agents are "
               "registered but not pinned until the policy leaves a home CPU")


@dataclass(frozen=True, slots=True)
class CpuLayout:
    """The CPU roles placement works with (from the plan, or a fallback)."""

    home: CpuSet
    completion: CpuSet
    quiet_order: tuple[int, ...] = ()  # home CPUs, quietest first
    siblings: Mapping[int, CpuSet] = field(default_factory=dict)  # cpu -> its core's CPUs
    node_of: Mapping[int, int] = field(default_factory=dict)
    online: CpuSet = field(default_factory=CpuSet)
    # CPUs that share a core with a completion CPU but are not one: made once per
    # layout, not per registration (candidates() walked every completion CPU's
    # siblings each time it was asked)
    beside_completion: CpuSet = field(init=False, compare=False, repr=False,
                                      default_factory=CpuSet)
    # CPU -> its place in quiet_order, made once per layout for the same reason
    quiet_rank: Mapping[int, int] = field(init=False, compare=False, repr=False,
                                          default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "beside_completion",
                           self.siblings_of(self.completion) - self.completion)
        object.__setattr__(self, "quiet_rank", {c: i for i, c in enumerate(self.quiet_order)})

    def siblings_of(self, cpus: Iterable[int]) -> CpuSet:
        out: set[int] = set()
        for c in cpus:
            out |= self.siblings.get(c, CpuSet({c}))
        return CpuSet(out)

    def candidates(self, node: int | None = None, within: CpuSet | None = None) -> CpuSet:
        """Home CPUs an agent may get (module docstring); `within`: of those CPUs only
        (an agent's cpuset), the same preferences applied inside it."""
        home = self.home if within is None else self.home & within
        cand = home - self.beside_completion
        if not cand:
            cand = home
        if node is not None:
            on_node = CpuSet(c for c in cand if self.node_of.get(c, 0) == node)
            if on_node:
                return on_node
        return cand
