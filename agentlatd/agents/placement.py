"""Placement: which home CPU an agent gets, and when it moves (pure).

Design note sections 6.2 and 8: an interactive agent's control loop resumes on
a warm, IRQ-quiet "home" CPU; completion CPUs absorb IRQs, softirqs and
background work. The kernel patch in the note biases wakeups away from hot
CPUs; without it, agentlatd does the same from user space, one tick late.

Inputs are plain values (no IO): the CPU layout from the plan (home and
completion CPUs, home CPUs quietest first, SMT siblings, NUMA nodes), the
per-CPU heat of the last tick (model/rates.py) and where agents sit now.

Choosing a home CPU (choose_home):
  candidates = home CPUs that are not SMT siblings of a completion CPU (a
               sibling shares the core with IRQ handlers; used only when no
               other home CPU exists), on the NUMA node of the agent's devices
               when known and that node has one;
  not hot      a CPU hot now (heat >= heat.hot, or counted hot by the
               tracker) is taken only when every candidate is;
  order        heat band first (below heat.cool, between, above), then the
               fewest interactive agents already there (spread them), then
               heat, then the plan's quiet order (fewest kernel-managed IRQs),
               then the CPU number. Bands rather than raw heat: 0.01 and 0.02
               are both quiet, and raw order would stack every agent on one CPU.

Moving (plan_moves): a home CPU is hot after heat >= heat.hot for
heat.hot_ticks consecutive ticks (HotTracker). Its agents move to the best
candidate whose heat is below heat.cool (hysteresis: a CPU must cool below
`cool`, not just below `hot`, to be chosen again), one at a time with the
load updated as they go, and an agent that moved less than
heat.min_move_interval seconds ago stays put whatever the heat. A home CPU
that left the home set (policy reload, hotplug) is left at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agentlatd.cpuset import CpuSet
from agentlatd.policy import HeatPolicy

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

    def siblings_of(self, cpus: Iterable[int]) -> CpuSet:
        out: set[int] = set()
        for c in cpus:
            out |= self.siblings.get(c, CpuSet({c}))
        return CpuSet(out)

    def candidates(self, node: int | None = None) -> CpuSet:
        """Home CPUs an agent may get (module docstring)."""
        cand = self.home - (self.siblings_of(self.completion) - self.completion)
        if not cand:
            cand = self.home
        if node is not None:
            on_node = CpuSet(c for c in cand if self.node_of.get(c, 0) == node)
            if on_node:
                return on_node
        return cand


def band(heat: float | None, pol: HeatPolicy) -> int:
    """0 = cool (< heat.cool), 1 = warm, 2 = hot (>= heat.hot); unknown heat counts as cool."""
    if heat is None or heat < pol.cool:
        return 0
    return 1 if heat < pol.hot else 2


def choose_home(layout: CpuLayout, heat: Mapping[int, float], load: Mapping[int, int],
                pol: HeatPolicy, *, node: int | None = None,
                hot: frozenset[int] = frozenset(), exclude: Iterable[int] = ()) -> int | None:
    """The home CPU for a new interactive agent (module docstring); None without home CPUs."""
    cand = layout.candidates(node) - CpuSet(exclude)
    if not cand:
        return None
    not_hot = CpuSet(c for c in cand if c not in hot and band(heat.get(c), pol) < 2)
    if not_hot:
        cand = not_hot
    order = {c: i for i, c in enumerate(layout.quiet_order)}
    return min(cand, key=lambda c: (band(heat.get(c), pol), load.get(c, 0), heat.get(c, 0.0),
                                    order.get(c, len(order)), c))


_NONE = CpuSet()


@dataclass(frozen=True, slots=True)
class HomeChoice:
    """Where an agent goes: a home CPU, or (fallback) the quietest CPU it may use."""

    cpu: int | None
    fallback: bool = False  # True: not a home CPU (its cpuset holds none)
    note: str = ""  # why, for `agents` and the registration answer


def choose_home_within(layout: CpuLayout, heat: Mapping[int, float], load: Mapping[int, int],
                       pol: HeatPolicy, *, allowed: CpuSet | None, reserved: CpuSet = _NONE,
                       node: int | None = None, hot: frozenset[int] = frozenset()) -> HomeChoice:
    """choose_home restricted to the CPUs the agent may use.

    allowed:  the agent's effective cpuset (None: unknown, every CPU)
    reserved: CPUs other workloads hold exclusively (never a home for this agent)
    A home CPU inside `allowed` and outside `reserved` wins. When there is none,
    the agent goes to the quietest CPU it may use (heat band, agents there,
    heat, number), and the note says so; with none at all, cpu is None.
    """
    if not layout.home:
        # degraded mode (the policy leaves no home CPU): agents are measured, not
        # pinned; a "quietest CPU" here would be a completion CPU
        return HomeChoice(None, note=NO_HOME_CPU)
    usable_home = layout.home - reserved
    if allowed is not None:
        usable_home = usable_home & allowed
    if usable_home:
        sub = CpuLayout(usable_home, layout.completion, layout.quiet_order, layout.siblings,
                        layout.node_of, layout.online)
        # candidates() prefers home CPUs that are not SMT siblings of completion
        # CPUs; restricting `home` keeps that preference inside the cpuset
        cpu = choose_home(sub, heat, load, pol, node=node, hot=hot)
        if cpu is not None:
            return HomeChoice(cpu)
    if allowed is None:
        return HomeChoice(None, note=f"every home CPU ({layout.home}) is held exclusively "
                                     f"by another workload ({reserved})")
    may = allowed - reserved
    if layout.online:
        may = may & layout.online
    if not may:
        return HomeChoice(None, note=f"every CPU of this agent's cpuset ({allowed}) is held "
                                     f"exclusively by another workload: left where it is")
    cpu = min(may, key=lambda c: (band(heat.get(c), pol), c in hot, load.get(c, 0),
                                  heat.get(c, 0.0), c))
    why = f"no home CPU ({layout.home}) in this agent's cpuset ({allowed})"
    if reserved & allowed & layout.home:
        why += f"; {reserved & allowed & layout.home} held exclusively by another workload"
    return HomeChoice(cpu, fallback=True,
                      note=f"{why}: placed on CPU {cpu}, the quietest CPU it may use")


@dataclass(slots=True)
class HotTracker:
    """Consecutive ticks each CPU has been at heat >= heat.hot."""

    ticks: dict[int, int] = field(default_factory=dict)

    def update(self, heat: Mapping[int, float], pol: HeatPolicy) -> None:
        for c, h in heat.items():
            self.ticks[c] = self.ticks.get(c, 0) + 1 if h >= pol.hot else 0
        for c in list(self.ticks):
            if c not in heat:
                del self.ticks[c]  # no heat known: not counted hot

    def hot(self, pol: HeatPolicy) -> frozenset[int]:
        return frozenset(c for c, n in self.ticks.items() if n >= pol.hot_ticks)


@dataclass(frozen=True, slots=True)
class Placed:
    """An interactive agent as placement sees it."""

    key: str  # the registry's key for it
    home_cpu: int
    last_move: float  # time.monotonic() of its last placement/move
    node: int | None = None
    usable: CpuSet | None = None  # CPUs it may live on (cpuset minus held CPUs); None: any


@dataclass(frozen=True, slots=True)
class Move:
    key: str
    from_cpu: int
    to_cpu: int
    reason: str


def plan_moves(agents: Iterable[Placed], layout: CpuLayout, heat: Mapping[int, float],
               hot: frozenset[int], pol: HeatPolicy, now: float) -> tuple[list[Move], list[str]]:
    """Agents to move off hot (or no longer home) CPUs; plus notes for agents that stay."""
    agents = list(agents)
    load: dict[int, int] = {}
    for a in agents:
        load[a.home_cpu] = load.get(a.home_cpu, 0) + 1
    moves: list[Move] = []
    notes: list[str] = []
    for a in sorted(agents, key=lambda a: (a.home_cpu, a.key)):
        gone = a.home_cpu not in layout.home
        if not gone and a.home_cpu not in hot:
            continue
        if not gone and now - a.last_move < pol.min_move_interval:
            continue
        cand = layout.candidates(a.node)
        if a.usable is not None:
            cand = cand & a.usable
        cool = CpuSet(c for c in cand
                      if c != a.home_cpu and c not in hot and (gone or band(heat.get(c), pol) == 0))
        if not cool:
            h = heat.get(a.home_cpu)
            notes.append(f"home CPU {a.home_cpu} is " + ("no longer a home CPU" if gone else
                         f"hot (heat {h:.2f} >= {pol.hot})" if h is not None else "hot")
                         + (" but no other home CPU is free" if gone else
                            f" but no other home CPU is below heat.cool {pol.cool}"))
            continue
        to = choose_home(CpuLayout(cool, layout.completion, layout.quiet_order, layout.siblings,
                                   layout.node_of), heat, load, pol, node=None, hot=hot)
        if to is None:  # pragma: no cover - cool is not empty
            continue
        if gone:
            why = f"CPU {a.home_cpu} is no longer a home CPU (policy or CPU hotplug)"
        else:
            h = heat.get(a.home_cpu, 0.0)
            why = (f"home CPU {a.home_cpu} hot: heat {h:.2f} >= heat.hot {pol.hot} for "
                   f"{pol.hot_ticks}+ ticks; CPU {to} heat {heat.get(to, 0.0):.2f} "
                   f"< heat.cool {pol.cool}")
        moves.append(Move(a.key, a.home_cpu, to, why))
        load[a.home_cpu] -= 1
        load[to] = load.get(to, 0) + 1
    return moves, notes


def victim_affinity(current: CpuSet, exclusive: CpuSet,
                    held: CpuSet = _NONE) -> CpuSet | None:
    """The affinity a task moved off exclusive home CPUs gets; None = leave it.

    A task allowed only on exclusive CPUs (someone pinned it there on purpose,
    e.g. `taskset -c 3`) is left alone: moving it would override that choice.
    So is a task that runs only on CPUs another workload holds exclusively
    (`held`: a cgroup partition, a kubelet static CPU assignment): those CPUs
    are that workload's, not a source of victims.
    """
    if not current & exclusive:
        return None
    if held and current <= held:
        return None
    rest = current - exclusive
    return rest if rest else None
