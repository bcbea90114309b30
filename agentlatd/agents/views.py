"""The registry as JSON, for `agentlatd agents` and `agentlatd status` (no state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agentlatd.agents.agent import Agent

if TYPE_CHECKING:
    from agentlatd.agents.registry import AgentManager


def rows(reg: AgentManager, extras: Callable[[Agent], dict[str, Any]] | None = None
         ) -> list[dict[str, Any]]:
    """Each agent's JSON row, with `extras(agent)` merged in (the chain keeper's)."""
    return [a.to_json() | (extras(a) if extras is not None else {})
            for a in sorted(reg.agents.values(), key=lambda a: (a.agent_id, a.proc.pid))]


def status(reg: AgentManager) -> dict[str, Any]:
    classes: dict[str, int] = {}
    for a in reg.agents.values():
        classes[a.latency_class] = classes.get(a.latency_class, 0) + 1
    pl = reg.placer
    return {
        "agents": len(reg.agents), "classes": classes,
        "home_cpus": pl.layout.home.to_list(),
        "completion_cpus": pl.layout.completion.to_list(),
        "exclusive_cpus": reg.cpus.excl.to_list(), "tasks_moved": len(reg.cpus.victims),
        "held_cpus": [{"cpus": h.cpus.to_list(), "holder": h.describe()}
                      for h in reg.cgroups.holders],
        "pm_qos": {str(c): v for c, v in sorted(reg.cpus.pmqos.items())},
        "hot_cpus": sorted(pl.tracker.hot(reg.policy.heat)),
        "heat": {str(c): round(h, 4) for c, h in sorted(pl.heat.items())},
        "moves": pl.moves, "notes": list(pl.notes),
        "agent_tick_ms": round(reg.upkeep.last_tick_s * 1000, 3),
    }
