"""A registered agent: its identity, class, what its class wants, its step stats."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agentlatd import stepstats as stats
from agentlatd.cpuset import CpuSet
from agentlatd.model.container import ContainerId
from agentlatd.sample.tasks import ProcId


class AgentState(StrEnum):
    """Where an agent's placement stands (the "state" of `agentlatd agents`, the metrics'
    agent_info label)."""

    PENDING = "pending"  # registered, not placed yet
    PLACED = "placed"  # every write of its class made
    PARTIAL = "partial"  # some writes refused (its "problem" says which): the rest stand
    FAILED = "failed"  # nothing of its class could be written


@dataclass(slots=True)
class MoveRecord:
    at: float  # wall clock (time.time())
    from_cpu: int | None
    to_cpu: int | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "from_cpu": self.from_cpu, "to_cpu": self.to_cpu,
                "reason": self.reason}


@dataclass(slots=True)
class Agent:
    agent_id: str
    proc: ProcId
    uid: int
    latency_class: str
    source: str  # "socket" | "auto:<rule index>"
    registered_at: float  # time.time()
    deadline_ns: int | None = None
    budget_ns: int | None = None
    numa_node: int | None = None
    devices: tuple[str, ...] = ()
    home_cpu: int | None = None
    placed_mono: float = 0.0  # time.monotonic() of the last placement or move
    want_cpus: CpuSet | None = None
    want_nice: int | None = None
    want_ioprio: str | None = None
    exclusive: bool = False
    pm_qos: int | None = None
    threads: set[int] = field(default_factory=set)
    pinned: int = 0
    orig: dict[str, str] = field(default_factory=dict)  # knob -> main thread's original
    applied: set[str] = field(default_factory=set)  # knobs written for it so far
    hist: stats.Histogram = field(default_factory=stats.Histogram.empty)
    recent: stats.Recent = field(default_factory=stats.Recent)  # last minute, last ten minutes
    dropped: int = 0
    last_move: MoveRecord | None = None
    pidfd: int | None = None
    # the non-admin uid that registered it: its threads are written only where
    # that uid is their real and effective uid (checked per thread, right before
    # each syscall); None = registered by an admin or by the policy itself
    owner: int | None = None
    # the processes it forked (agents/forks.py) and (ruid, euid) of its main
    # thread as its registration read them (what its forks inherit; it may be
    # gone before they are seen): at its exit they have been re-parented, and
    # still show what agentlatd set on the agent
    creds: tuple[int, int] | None = None
    forked: set[ProcId] = field(default_factory=set)
    state: AgentState = AgentState.PENDING
    problem: str = ""  # the last write that failed
    note: str = ""  # why the class policy could not be met (no home CPU, ...)
    container: ContainerId = field(default_factory=ContainerId)
    allowed: CpuSet | None = None  # its cgroup's effective cpuset (None: unknown)
    fallback: bool = False  # placed outside the home CPUs: its cpuset holds none

    @property
    def key(self) -> ProcId:
        return self.proc

    def placement_json(self) -> dict[str, Any]:
        """Where it was placed: the answer to a registration (to_json()'s fields
        without the step statistics, which cost O(histogram) to summarise)."""
        return {
            "agent_id": self.agent_id, "pid": self.proc.pid, "starttime": self.proc.starttime,
            "latency_class": self.latency_class, "home_cpu": self.home_cpu,
            "cpus": self.want_cpus.to_list() if self.want_cpus is not None else None,
            "exclusive": self.exclusive, "threads": len(self.threads),
            "threads_pinned": self.pinned, "state": self.state,
            "problem": self.problem or self.note,
            "placement": ("none" if self.home_cpu is None else
                          "fallback" if self.fallback else "home"),
            "cpuset": self.allowed.to_list() if self.allowed is not None else None,
            "container": self.container.to_json(),
        }

    def to_json(self) -> dict[str, Any]:
        s = self.hist.summary()
        return {
            "agent_id": self.agent_id, "pid": self.proc.pid, "starttime": self.proc.starttime,
            "uid": self.uid, "latency_class": self.latency_class, "source": self.source,
            "home_cpu": self.home_cpu,
            "cpus": self.want_cpus.to_list() if self.want_cpus is not None else None,
            "exclusive": self.exclusive, "threads": len(self.threads),
            "threads_pinned": self.pinned, "nice": self.want_nice, "ioprio": self.want_ioprio,
            "steps": s["steps"], "p50_ns": s["p50_ns"], "p99_ns": s["p99_ns"],
            "p999_ns": s["p999_ns"], "max_ns": s["max_ns"], "mean_ns": s["mean_ns"],
            "recent": self.recent.summary(time.monotonic()),
            "dropped": self.dropped, "deadline_ns": self.deadline_ns, "budget_ns": self.budget_ns,
            "registered_at": round(self.registered_at, 3),
            "last_move": self.last_move.to_json() if self.last_move else None,
            "state": self.state, "problem": self.problem or self.note,
            "container": self.container.to_json(),
            "cpuset": self.allowed.to_list() if self.allowed is not None else None,
            "placement": ("none" if self.home_cpu is None else
                          "fallback" if self.fallback else "home"),
        }
