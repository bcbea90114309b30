"""Where registered agents live: their home CPUs, the load per CPU and the heat moves.

The decisions are pure (plan/agents.py class_wants, plan_moves); this keeps
what they need between ticks (the CPU layout, the heat and its hot tracker, how
many agents each CPU is home to) and records each decision on the Agent. It
writes nothing: the registry applies what changed (AgentManager.place_pending).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Mapping

from agentlatd.agents import containers
from agentlatd.agents.agent import Agent, AgentState, MoveRecord
from agentlatd.agents.threads import TICK_PIECE
from agentlatd.cpuset import CpuSet
from agentlatd.model.agent_links import AgentHome
from agentlatd.model.chain import member_cpus
from agentlatd.model.layout import CpuLayout
from agentlatd.plan.agents import AgentPlace, HotTracker, Placed, class_wants, plan_moves
from agentlatd.policy import Policy
from agentlatd.sample.tasks import ProcId

log = logging.getLogger("agentlatd.agents")


def holds_cpu(a: Agent) -> bool:
    """Whether the agent's home CPU is exclusive or bounded by pm_qos because of it."""
    return a.exclusive or a.pm_qos is not None


def pinned_home(a: Agent, policy: Policy) -> bool:
    """A pinned agent placed (or partly placed) on its home CPU."""
    return (a.home_cpu is not None and a.state in (AgentState.PLACED, AgentState.PARTIAL)
            and policy.classes[a.latency_class].pin)


class HomePlacer:
    """Home CPUs, load and heat moves of the registered agents (no writes)."""

    def __init__(self, policy: Policy, cgroups: containers.Scanner,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.cgroups = cgroups  # read only: cpusets and CPUs other workloads hold
        self.clock = clock
        self.layout = CpuLayout(CpuSet(), CpuSet())
        self.heat: dict[int, float] = {}
        self.tracker = HotTracker()
        self.load: dict[int, int] = {}  # CPU -> agents at home there
        self.moves = 0
        self.notes: list[str] = []

    def set_heat(self, heat: Mapping[int, float]) -> None:
        self.heat = dict(heat)
        self.tracker.update(self.heat, self.policy.heat)

    def hot(self) -> frozenset[int]:
        return frozenset(self.tracker.hot(self.policy.heat))

    def member_cpus(self, homes: Iterable[int | None]) -> CpuSet:
        """The CPUs a chain member of agents living on `homes` runs on (model/chain.py)."""
        return member_cpus(homes, self.layout, self.tracker.hot(self.policy.heat), self.load)

    def homes(self, agents: Iterable[Agent]) -> tuple[AgentHome, ...]:
        """The pinned agents with a home CPU, for the tuner's agent links."""
        return tuple(AgentHome(a.proc.pid, a.agent_id, a.home_cpu, a.devices)
                     for a in agents if a.home_cpu is not None and pinned_home(a, self.policy))

    def homes_steps(self, agents: Mapping[ProcId, Agent]
                    ) -> Generator[None, None, tuple[AgentHome, ...]]:
        """homes() a piece at a time (yields every 8 x TICK_PIECE agents: the whole
        pass cost ~1 ms of the main loop at 1000 agents); an agent gone meanwhile
        is left out."""
        out: list[AgentHome] = []
        for i, a in enumerate(list(agents.values())):
            if i % (8 * TICK_PIECE) == 8 * TICK_PIECE - 1:
                yield
            if agents.get(a.proc) is a and a.home_cpu is not None \
                    and pinned_home(a, self.policy):
                out.append(AgentHome(a.proc.pid, a.agent_id, a.home_cpu, a.devices))
        return tuple(out)

    def usable(self, a: Agent) -> tuple[CpuSet | None, CpuSet]:
        """(its cpuset, CPUs held exclusively by other workloads)."""
        return a.allowed, containers.reserved_for(self.cgroups.holders, a.container)

    def set_home(self, a: Agent, cpu: int | None) -> None:
        if a.home_cpu is not None:
            n = self.load.get(a.home_cpu, 0) - 1
            if n > 0:
                self.load[a.home_cpu] = n
            else:
                self.load.pop(a.home_cpu, None)
        a.home_cpu = cpu
        if cpu is not None:
            self.load[cpu] = self.load.get(cpu, 0) + 1

    def wants(self, a: Agent) -> tuple[bool, bool]:
        """Record what the class policy wants for `a` (plan/agents.py class_wants);
        (its threads need placing, exclusivity or pm_qos need a reconcile)."""
        allowed, reserved = self.usable(a)
        w = class_wants(self.policy.classes[a.latency_class],
                        AgentPlace(a.home_cpu, a.fallback, a.note, allowed, reserved,
                                   a.numa_node),
                        self.layout, self.heat, self.load, self.policy.heat,
                        self.tracker.hot(self.policy.heat))
        old_cpus, old_home, old_cpu_use = a.want_cpus, a.home_cpu, (a.exclusive, a.pm_qos)
        if w.home != a.home_cpu or w.rehomed:
            self.set_home(a, w.home)
        if w.rehomed:
            a.placed_mono = self.clock()
        if w.moved_why:
            a.last_move = MoveRecord(time.time(), old_home, w.home, w.moved_why)
        a.want_cpus, a.want_nice, a.want_ioprio = w.cpus, w.nice, w.ioprio
        a.exclusive, a.pm_qos, a.fallback, a.note = w.exclusive, w.pm_qos, w.fallback, w.note
        dirty = cpu_dirty = False
        if a.want_cpus != old_cpus or a.home_cpu != old_home:
            dirty = True
            # exclusivity and pm_qos follow only the agents that have (or had) either
            if holds_cpu(a) or old_cpu_use != (False, None):
                cpu_dirty = True
        if (a.exclusive, a.pm_qos) != old_cpu_use:
            cpu_dirty = True
        return dirty, cpu_dirty

    def moves_steps(self, now: float, agents: Mapping[ProcId, Agent]
                    ) -> Generator[None, None, list[Agent]]:
        """Heat moves: the agents' places are read a piece at a time (yields
        between), then planned and recorded at once; returns the moved agents. A
        move planned for an agent that left, or whose home changed meanwhile, is
        dropped."""
        pol = self.policy.heat
        hot = self.tracker.hot(pol)
        home = self.layout.home
        # only an agent whose home CPU is hot or no longer a home CPU can move
        # (plan_moves): the others are counted, not listed (the plan over 1000
        # listed agents cost 1-2 ms of the main loop at once)
        placed = []
        load: dict[int, int] = {}
        for i, a in enumerate(list(agents.values())):
            if i % (8 * TICK_PIECE) == 8 * TICK_PIECE - 1:
                yield
            if a.home_cpu is None or a.fallback or not self.policy.classes[a.latency_class].pin:
                continue
            load[a.home_cpu] = load.get(a.home_cpu, 0) + 1
            if a.home_cpu in home and a.home_cpu not in hot:
                continue
            allowed, reserved = self.usable(a)
            usable = (allowed - reserved) if allowed is not None else None
            if usable is None and reserved:
                usable = self.layout.home - reserved
            placed.append(Placed(str(a.proc), a.home_cpu, a.placed_mono, a.numa_node, usable))
        if not placed:
            self.notes = []
            return []
        moves, notes = plan_moves(placed, self.layout, self.heat, hot, pol, now, load)
        by_key = {str(a.proc): a for a in agents.values()} if moves else {}
        moved: list[Agent] = []
        for m in moves:
            mover = by_key.get(m.key)
            if mover is None or mover.home_cpu != m.from_cpu or mover.fallback:
                continue
            a = mover
            self.set_home(a, m.to_cpu)
            a.want_cpus = CpuSet({m.to_cpu})
            a.placed_mono = now
            a.last_move = MoveRecord(time.time(), m.from_cpu, m.to_cpu, m.reason)
            moved.append(a)
            self.moves += 1
            log.info("agent %r pid %d moved from CPU %d to CPU %d: %s", a.agent_id, a.proc.pid,
                     m.from_cpu, m.to_cpu, m.reason)
        for n in notes:
            if n not in self.notes:
                log.warning("%s", n)
        self.notes = notes
        return moved
