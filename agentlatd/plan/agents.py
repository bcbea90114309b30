"""The agent planner: which home CPU an agent gets, and when it moves (pure).

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
from agentlatd.model.layout import NO_HOME_CPU, CpuLayout
from agentlatd.policy import ClassPolicy, HeatPolicy


def band(heat: float | None, pol: HeatPolicy) -> int:
    """0 = cool (< heat.cool), 1 = warm, 2 = hot (>= heat.hot); unknown heat counts as cool."""
    if heat is None or heat < pol.cool:
        return 0
    return 1 if heat < pol.hot else 2


def choose_home(layout: CpuLayout, heat: Mapping[int, float], load: Mapping[int, int],
                pol: HeatPolicy, *, node: int | None = None,
                hot: frozenset[int] = frozenset(), exclude: Iterable[int] = (),
                within: CpuSet | None = None) -> int | None:
    """The home CPU for a new interactive agent (module docstring); None without home
    CPUs. `within`: among these home CPUs only (CpuLayout.candidates)."""
    cand = layout.candidates(node, within)
    if exclude:
        cand = cand - CpuSet(exclude)
    if not cand:
        return None
    # a subset of a CpuSet: no per-element check (CpuSet._of), once per registration
    not_hot = CpuSet._of(frozenset(c for c in cand if c not in hot and band(heat.get(c), pol) < 2))
    if not_hot:
        cand = not_hot
    order = layout.quiet_rank
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
        # candidates() prefers home CPUs that are not SMT siblings of completion
        # CPUs; `within` keeps that preference inside the cpuset
        cpu = choose_home(layout, heat, load, pol, node=node, hot=hot, within=usable_home)
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
               hot: frozenset[int], pol: HeatPolicy, now: float,
               load: Mapping[int, int] | None = None) -> tuple[list[Move], list[str]]:
    """Agents to move off hot (or no longer home) CPUs; plus notes for agents that stay.

    `load`: placed agents per home CPU, when `agents` holds only those that may
    move (home CPU hot or no longer a home CPU: the others are never moved); by
    default counted from `agents`."""
    agents = list(agents)
    if load is None:
        counted: dict[int, int] = {}
        for a in agents:
            counted[a.home_cpu] = counted.get(a.home_cpu, 0) + 1
        load = counted
    load = dict(load)
    moves: list[Move] = []
    notes: list[str] = []
    # the CPUs an agent may move to depend on its home, node and usable CPUs only
    # (not on the moves made so far): computed once per kind of agent, not per agent
    cools: dict[tuple[int, int | None, CpuSet | None], CpuSet] = {}
    for a in sorted(agents, key=lambda a: (a.home_cpu, a.key)):
        gone = a.home_cpu not in layout.home
        if not gone and a.home_cpu not in hot:
            continue
        if not gone and now - a.last_move < pol.min_move_interval:
            continue
        kind = (a.home_cpu, a.node, a.usable)
        cool = cools.get(kind)
        if cool is None:
            cand = layout.candidates(a.node)
            if a.usable is not None:
                cand = cand & a.usable
            cool = cools[kind] = CpuSet(
                c for c in cand
                if c != a.home_cpu and c not in hot and (gone or band(heat.get(c), pol) == 0))
        if not cool:
            h = heat.get(a.home_cpu)
            notes.append(f"home CPU {a.home_cpu} is " + ("no longer a home CPU" if gone else
                         f"hot (heat {h:.2f} >= {pol.hot})" if h is not None else "hot")
                         + (" but no other home CPU is free" if gone else
                            f" but no other home CPU is below heat.cool {pol.cool}"))
            continue
        to = choose_home(layout, heat, load, pol, node=None, hot=hot, within=cool)
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


@dataclass(frozen=True, slots=True)
class AgentPlace:
    """Where one agent is now, as the planner sees it."""

    home: int | None
    fallback: bool  # placed outside the home CPUs: its cpuset holds none
    note: str  # why its class policy could not be met, from the last choice
    allowed: CpuSet | None  # its cgroup's effective cpuset (None: unknown)
    reserved: CpuSet  # CPUs other workloads hold exclusively
    numa_node: int | None


@dataclass(frozen=True, slots=True)
class Wants:
    """What an agent's class policy wants for it (no writes yet)."""

    home: int | None
    cpus: CpuSet | None  # its threads' affinity; None: left alone
    nice: int | None
    ioprio: str | None
    exclusive: bool
    pm_qos: int | None
    fallback: bool
    note: str
    rehomed: bool  # a home was chosen now (placement time restarts)
    moved_why: str  # an earlier home was left for this one: why


def class_wants(cp: ClassPolicy, at: AgentPlace, layout: CpuLayout,
                heat: Mapping[int, float], load: Mapping[int, int], pol: HeatPolicy,
                hot: frozenset[int]) -> Wants:
    """The class policy applied to one agent (`load`: agents per home CPU, this one
    included). A home CPU is kept unless it left the home set, lies outside the
    agent's cpuset or is held by another workload; a fallback placement is
    revisited as soon as a home CPU is usable."""
    home, fallback, note, rehomed, why = at.home, at.fallback, at.note, False, ""
    if cp.pin:
        may = (at.allowed - at.reserved) if at.allowed is not None else None
        outside = home is not None and (home in at.reserved
                                        or (may is not None and home not in may))
        if fallback:
            usable_home = layout.home - at.reserved
            if may is not None:
                usable_home &= may
            stale = bool(usable_home)
        else:
            stale = home is not None and home not in layout.home
        if home is None or stale or outside:
            others = dict(load)
            if home is not None:
                n = others.get(home, 0) - 1
                if n > 0:
                    others[home] = n
                else:
                    others.pop(home, None)
            choice = choose_home_within(layout, heat, others, pol, allowed=at.allowed,
                                        reserved=at.reserved, node=at.numa_node, hot=hot)
            old, home = home, choice.cpu
            fallback, note, rehomed = choice.fallback, choice.note, True
            if old is not None and home != old:
                why = (f"CPU {old} is outside its cpuset or held by another workload"
                       if outside else f"CPU {old} is no longer a home CPU")
        # a CPU of the layout or of the agent's cpuset: no per-element check
        cpus = CpuSet._of(frozenset((home,))) if home is not None else None
    else:
        home, fallback = None, False
        cpus = layout.completion if cp.to_completion and layout.completion else None
        note = ("no completion CPU to run on (cpus.completion): left where it is"
                if cp.to_completion and not layout.completion else "")
    return Wants(
        home=home, cpus=cpus, nice=cp.nice, ioprio=None if cp.ioprio == "none" else cp.ioprio,
        exclusive=bool(cp.pin and cp.exclusive == "exclusive" and home is not None
                       and not fallback),
        pm_qos=cp.pm_qos_resume_latency_us if cp.pin and home is not None else None,
        fallback=fallback, note=note, rehomed=rehomed, moved_why=why)


def pm_qos_wanted(homes: Iterable[tuple[int, int]]) -> dict[int, str]:
    """cpu -> resume latency to write, from (home CPU, class pm_qos) of each agent:
    the strictest (lowest) bound of the agents living on a CPU."""
    want: dict[int, int] = {}
    for cpu, us in homes:
        cur = want.get(cpu)
        if cur is None or us < cur:
            want[cpu] = us
    return {c: str(v) for c, v in want.items()}
