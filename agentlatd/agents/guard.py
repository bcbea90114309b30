"""The do-no-harm guard: each pinned agent's latency windows, and the verdict on
every decision made for it (its exclusive home CPU, each chain member placed).

A window is one WINDOW_S of the agent's step latencies (its step histogram) or,
for an agent that reports no steps, of its threads' run delay (schedstat); the
rules and the why are model/harm.py's. A decision judged harmful is undone and
never retried for that agent (`refused`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentlatd.agents.agent import Agent
from agentlatd.cpuset import CpuSet
from agentlatd.model import harm
from agentlatd.sample import schedstat
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.agents")

MAX_GUARD_THREADS = 16  # threads of an agent sampled for run delay (lowest tids: the main thread first)
WINDOW_S = 1.0  # one latency window of the do-no-harm guard
MAX_WINDOWS = 32
# agents whose guard window is looked at between two yields of the tick: each reads
# the schedstat of up to MAX_GUARD_THREADS threads (~0.1 ms an agent on a busy host)
CHAIN_PIECE = 4

EXCLUSIVE = "exclusive"


def member_key(p: ProcId) -> str:
    """The decision name of a chain member's placement."""
    return f"member:{p}"


@dataclass(slots=True)
class Guard:
    """One agent's latency windows and the decisions being judged."""

    start: float
    hist_prev: dict[int, int] = field(default_factory=dict)
    sched_prev: dict[int, tuple[int, int]] = field(default_factory=dict)
    windows: list[harm.Window] = field(default_factory=list)
    closed: int = 0  # windows closed in all (windows keeps the last MAX_WINDOWS)
    decisions: dict[str, int] = field(default_factory=dict)  # name -> `closed` when it took effect
    verdicts: dict[str, harm.Verdict] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        last = self.windows[-1] if self.windows else None
        return {"source": last.source if last else None,
                "last_window_ns": last.value_ns if last else None,
                "windows": self.closed,
                "decisions": {k: {"action": v.action, "reason": v.reason}
                              for k, v in sorted(self.verdicts.items())},
                "judging": sorted(k for k in self.decisions if k not in self.verdicts)}


class HarmGuard:
    """The guard's state per agent: windows, decisions, verdicts, refusals."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.guards: dict[ProcId, Guard] = {}
        self.refused: dict[ProcId, set[str]] = {}  # agent -> decisions never retried
        self.undone: dict[str, int] = {}  # decision kind -> times undone (metric)

    def prune(self, live: Iterable[ProcId]) -> None:
        keep = set(live)
        for d in (self.refused, self.guards):
            for p in [p for p in d if p not in keep]:
                del d[p]

    def refuses(self, agent: ProcId, name: str) -> bool:
        return name in self.refused.get(agent, ())

    def member_placed(self, agents: Iterable[ProcId], member: ProcId) -> None:
        """A member's first placement: a decision to judge for each agent it serves."""
        for ap in agents:
            g = self.guards.get(ap)
            if g is not None:
                g.decisions.setdefault(member_key(member), g.closed)

    def has_baseline(self, agent: ProcId) -> bool:
        """At least one window closed: a "before" to judge exclusivity against."""
        g = self.guards.get(agent)
        return g is not None and g.closed >= 1

    def row(self, agent: ProcId) -> dict[str, Any]:
        g = self.guards.get(agent)
        return {"guard": g.to_json() if g is not None else None,
                "refused": sorted(self.refused.get(agent, ()))}

    def windows(self, now: float, agents_now: Mapping[ProcId, Agent],
                pinned: Callable[[Agent], bool], excl: Callable[[], CpuSet]) -> Iterator[None]:
        """Close the latency windows that are due, a few agents at a time (yields
        between), and judge the decisions that have their windows; `excl()`: the
        exclusive CPUs now (they may change between two yields)."""
        agents = list(agents_now.values())
        for i, a in enumerate(agents):
            if i % CHAIN_PIECE == CHAIN_PIECE - 1:
                yield
            if agents_now.get(a.proc) is not a or not pinned(a):
                continue
            g = self.guards.get(a.proc)
            if g is None:
                g = self.guards[a.proc] = Guard(now, dict(a.hist.counts), self._sched(a))
                continue
            if a.home_cpu in excl() and a.exclusive and EXCLUSIVE not in g.decisions \
                    and EXCLUSIVE not in self.refused.get(a.proc, ()):
                g.decisions[EXCLUSIVE] = g.closed
            if now - g.start < WINDOW_S:
                continue
            steps = a.hist.count > 0 or any(w.source == harm.STEPS for w in g.windows)
            if not steps and g.closed and not self._judging(a, g):
                # run delay costs a read per thread: only while a decision needs it
                g.start = now
                g.sched_prev = {}
                continue
            if steps:
                w = harm.steps_window(g.hist_prev, a.hist)
                g.hist_prev = dict(a.hist.counts)
            else:
                cur = self._sched(a)
                w = harm.run_delay_window(g.sched_prev, cur)
                g.sched_prev = cur
            g.windows.append(w)
            del g.windows[:-MAX_WINDOWS]
            g.closed += 1
            g.start = now
            self._judge(a, g)

    def _judging(self, a: Agent, g: Guard) -> bool:
        """A decision of this agent waits for its verdict, or exclusivity is still
        to come (its "before" must be recent)."""
        return (any(k not in g.verdicts for k in g.decisions)
                or (a.exclusive and EXCLUSIVE not in g.decisions
                    and EXCLUSIVE not in self.refused.get(a.proc, ())))

    def _sched(self, a: Agent) -> dict[int, tuple[int, int]]:
        out: dict[int, tuple[int, int]] = {}
        for tid, s in list(schedstat.sample_threads(self.root, a.proc.pid).items())[
                :MAX_GUARD_THREADS]:
            out[tid] = (s.wait_ns, s.slices)
        return out

    def _judge(self, a: Agent, g: Guard) -> None:
        first = g.closed - len(g.windows)  # the index of windows[0]
        for name, at in list(g.decisions.items()):
            if name in g.verdicts:
                continue
            # the window open when it took effect straddles it: neither before nor after
            before = g.windows[max(0, at - first - harm.RULES[harm.STEPS].before_windows):
                               max(0, at - first)]
            after = g.windows[max(0, at + 1 - first):]
            v = harm.judge(before, after)
            if v.action == harm.WAIT:
                continue
            g.verdicts[name] = v
            if v.action == harm.UNDO:
                self._undo(a, name, v)
            else:
                log.info("agent %r pid %d: %s kept: %s", a.agent_id, a.proc.pid, name, v.reason)

    def _undo(self, a: Agent, name: str, v: harm.Verdict) -> None:
        self.refused.setdefault(a.proc, set()).add(name)
        kind = EXCLUSIVE if name == EXCLUSIVE else "member"
        self.undone[kind] = self.undone.get(kind, 0) + 1
        log.warning("agent %r pid %d: undoing %s, it made the agent slower: %s; not retried "
                    "for this agent", a.agent_id, a.proc.pid,
                    "its exclusive home CPU" if name == EXCLUSIVE else
                    f"the placement of chain {name}", v.reason)
        # an undone exclusivity leaves decisions() (the daemon hands them to the
        # registry after this tick)
