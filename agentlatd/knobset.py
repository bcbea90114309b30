"""Every knob of agentlatd, registered.

apply/knobs.py's REGISTRY holds the device knobs; the task knobs (agents/knobs.py) and
irqbalance's bans (apply/irqbalance_ban.py, apply/irqbalance_env.py) register themselves
when imported. Whatever builds an Engine that may meet any journal entry (the daemon, `agentlatd apply`,
`agentlatd rollback`, in a fresh process after a crash) imports this module first, so
that an entry of, say, "task.affinity" finds its knob. The registry lives below the
agents' layer and names none of them: the entry points, above both, do.
"""

from __future__ import annotations

from agentlatd.agents import knobs as task_knobs
from agentlatd.apply import irqbalance_ban, irqbalance_env
from agentlatd.apply.knobs import REGISTRY, Knob
from agentlatd.sample.tasks import Witness

MODULES = (task_knobs, irqbalance_ban, irqbalance_env)  # what registered, for a reader and a test

__all__ = ["MODULES", "REGISTRY", "witnessed"]


def witnessed(witness: Witness) -> dict[str, Knob]:
    """REGISTRY with its task knobs taking `witness`'s proof of a process's
    identity in place of a proc/PID/stat read (the daemon's engine: its agents'
    pidfds, agents/pidfdgate.py AgentPidfds). Every other knob is the registry's."""
    return {name: k.witnessed(witness) if isinstance(k, task_knobs.TaskKnob) else k
            for name, k in REGISTRY.items()}
