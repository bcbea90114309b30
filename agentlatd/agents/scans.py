"""The tick's two scans of every process: the irqbalance watch and the chain scan.

    ProcScans     what the tuner thread asks of them once a tick (tuner.py,
                  tick.Sampler), and what the chain keeper reads (found, cost)
    LocalScans    both scans in the calling thread, sharing one listing of proc/
                  a tick (apply/irqbalance.Watch, agents/chain.ChainScanner)

agents/scanworker.py runs LocalScans in a child process for the daemon; LocalScans is
also what the child runs, and what the daemon falls back to while it has no child.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from agentlatd.agents.chain import ChainAgent, ChainScanner, Link, ScanCost, ScanResults
from agentlatd.apply.irqbalance import Watch
from agentlatd.policy import ChainRule
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root


class ProcScans(ScanResults, Protocol):
    """The chain keeper's ScanResults (found, cost), and the tick's calls."""

    def irqbalance(self) -> tuple[int, ...]:
        """Pids of the running irqbalance processes (sorted)."""
        ...

    def chain(self, agents: Sequence[ChainAgent], rules: Sequence[ChainRule]) -> None:
        """Scan the agents due (ChainScanner.update); `found` and `cost` follow."""
        ...

    def start(self) -> None:
        """The daemon is set up (its capabilities dropped): scans may use a helper."""
        ...

    def close(self) -> None: ...


class LocalScans:
    def __init__(self, root: Root, daemon_pid: int | None = None) -> None:
        self.root = root
        self.watch = Watch(root)
        self.scanner = ChainScanner(daemon_pid)

    @property
    def found(self) -> Mapping[ProcId, tuple[Link, ...]]:
        return self.scanner.found

    @property
    def cost(self) -> ScanCost:
        return self.scanner.cost

    def irqbalance(self) -> tuple[int, ...]:
        return self.watch.running()

    def chain(self, agents: Sequence[ChainAgent], rules: Sequence[ChainRule],
              now: float | None = None) -> None:
        # the irqbalance stage's listing of proc/: one listing a tick, not two
        self.scanner.update(self.root, agents, now, rules=rules, procs=self.watch.take_procs())

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass
