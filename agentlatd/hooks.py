"""What the service layer (sd_notify, metrics: agentlatd/service.py) sees of the daemon.

The daemon calls each hook from its main thread with a DaemonView: the few
read-only facts a hook needs, typed, never the Daemon itself. So daemon.py and
service.py import neither the other; both import this module.

  on_acquire(view)               at start, before the first write: take what can
                                 fail (the metrics listener); raising fails the start
  on_release(view)               the start failed after on_acquire
  on_ready(view)                 after the first tuner tick and the socket
  on_tick(view, TunerState)      after each tuner tick the main loop picks up
  on_loop(view)                  every loop turn (at most 1 s apart): watchdog
  on_reload(view, ok: bool)      after SIGHUP
  on_stop(view)                  before the rollback
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentlatd.agents.chainrow import ChainRow
from agentlatd.policy import Policy
from agentlatd.steps.slowview import AgentSlow
from agentlatd.tuner import TunerState


class DaemonView(Protocol):
    """The running daemon as a hook may read it (main thread only)."""

    @property
    def policy(self) -> Policy: ...

    @property
    def last_state(self) -> TunerState | None: ...

    def wake(self) -> None:
        """Make the main loop turn now (safe from any thread)."""

    def agents(self) -> Collection[Any]:
        """The registered agents (metrics.AgentLike)."""

    def chain_row(self) -> Callable[[Any], ChainRow] | None:
        """The completion-chain columns of an agent's metrics row."""

    def slow_steps(self) -> tuple[AgentSlow, ...]:
        """The always-on slowest-steps view (steps/slowsteps.py), per agent."""

    def hot_cpus(self) -> list[int]: ...

    def journal_entries(self) -> int:
        """How many originals the journal holds (changes in force)."""

    def guard_undone(self) -> Mapping[str, int]:
        """Chain decisions the do-no-harm guard undid, by kind."""

    def scan_worker(self) -> tuple[bool, int]:
        """The scan worker: (a child answers now, children found broken so far)."""

    def fork_events(self) -> tuple[bool, int]:
        """(process events are followed now, their queue's overflows so far)."""

    def forked_processes(self) -> tuple[int, int]:
        """Processes agents forked, remembered now and, of those, journaled."""


@dataclass(slots=True)
class Hooks:
    on_ready: list[Callable[[DaemonView], None]] = field(default_factory=list)
    on_tick: list[Callable[[DaemonView, TunerState], None]] = field(default_factory=list)
    on_loop: list[Callable[[DaemonView], None]] = field(default_factory=list)
    on_reload: list[Callable[[DaemonView, bool], None]] = field(default_factory=list)
    on_stop: list[Callable[[DaemonView], None]] = field(default_factory=list)
    # at start, before the first write; an exception fails the start
    on_acquire: list[Callable[[DaemonView], None]] = field(default_factory=list)
    on_release: list[Callable[[DaemonView], None]] = field(default_factory=list)  # start failed
