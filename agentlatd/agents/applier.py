"""Task-level changes through the tuning engine: apply, restore some, forget some.

The engine (agentlatd.apply.engine) journals every original before its first
write (tmp, fsync, rename) and restores all of them on rollback, on SIGTERM and
after a crash. Agents come and go while the daemon runs, so the agent side
also needs to restore or drop the entries of ONE agent (unregister, process
exit, a home CPU that is no longer exclusive) without touching the rest:

  restore(keys)  write back the journaled originals of these (knob, target)
                 instances, newest first, and drop them from the journal
  forget(keys)   drop entries whose object is gone (a thread that exited has
                 nothing to restore, and its pid may be reused)

Both are the engine's own Engine.restore()/Engine.forget() (the same per-entry
restore rollback runs, one crash-safe journal save per call).

One Engine serves the daemon's device tuning (a helper thread) and the agent
side (the main loop): the engine's own lock serialises them (Engine.hold). The
main loop never blocks on it: it takes the lock only when free and otherwise
retries on its next turn.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence

from agentlatd.agents.knobs import TaskKnob
from agentlatd.apply import engine as engine_mod
from agentlatd.apply.engine import Engine, KnobResult, Status
from agentlatd.apply.knobs import get as get_knob
from agentlatd.errors import AgentlatdError, KernelError
from agentlatd.kernel.knobnames import KnobName
from agentlatd.plan.changes import Change
from agentlatd.sample.tasks import ProcId, ThreadId
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.agents")

TASK_KNOBS = (KnobName.TASK_AFFINITY, KnobName.TASK_NICE, KnobName.TASK_IOPRIO)
CPU_KNOBS = (KnobName.CPU_PM_QOS_RESUME_LATENCY_US,)
AGENT_KNOBS = TASK_KNOBS + CPU_KNOBS

_DONE = frozenset({Status.RESTORED, Status.UNCHANGED, Status.GONE, Status.MANAGED})


class Applier:
    """The agent side's handle on the shared engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.root: Root = engine.root
        self.failures = 0

    def hold(self, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        """The engine's lock (Engine.hold)."""
        return self.engine.hold(blocking)

    # -- engine calls (caller holds the lock) ----------------------------
    def apply(self, changes: Sequence[Change]) -> list[KnobResult]:
        if not changes:
            return []
        # every agent-side entry is restored at start whatever the journal says
        # (lifecycle.recover_agents): "complete", which decides between restoring
        # and adopting the device plan, need not bracket these writes, and the
        # append after them is empty when all land (one append per registration)
        rep = self.engine.apply(changes, bracket=False)
        bad = [r for r in rep.results if r.status == engine_mod.FAILED]
        self.failures += len(bad)
        return list(rep.results)

    def entries(self, knobs: Iterable[str] = AGENT_KNOBS) -> list[tuple[str, str, str]]:
        """(knob, target, original) of the journal's entries of `knobs`."""
        ks = set(knobs)
        return [(e.knob, e.target, e.original) for e in self.engine.entries() if e.knob in ks]

    def entries_of(self, p: ProcId, knobs: Iterable[str] = TASK_KNOBS
                   ) -> list[tuple[str, str, str]]:
        """entries() of the targets that start "<pid>:<starttime>:" only, from the
        journal's per-process index: O(p's entries), for an unregister or exit
        among 1000 agents (the caller checks each is a thread: threads.belongs)."""
        ks = set(knobs)
        return [(e.knob, e.target, e.original) for e in self.engine.entries_of(p.pid, p.starttime)
                if e.knob in ks]

    def written(self, thread: ThreadId, knobs: Iterable[str] = TASK_KNOBS
                ) -> list[tuple[str, str, str]]:
        """(knob, original, written) of the entries of `thread` agentlatd has written
        (from its process's index: O(the process's entries))."""
        ks = set(knobs)
        target = thread.target
        return [(e.knob, e.original, e.written)
                for e in self.engine.entries_of(thread.pid, thread.starttime)
                if e.target == target and e.knob in ks and e.written is not None]

    def restore_forked(self, knob: str, child: ProcId, written: str, original: str,
                       creds: tuple[int, int]) -> int:
        """TaskKnob.restore_forked() on a process an agent forked; 0 for other knobs."""
        k = get_knob(knob)
        if not isinstance(k, TaskKnob):
            return 0
        return k.restore_forked(self.root, child, written, original, creds,
                                self.engine.journaled())

    def inherit(self, items: Iterable[tuple[str, str, str, str]]) -> int:
        """Engine.inherit(): journal what processes an agent forked inherited."""
        return self.engine.inherit(items)

    def restore(self, keys: Iterable[tuple[str, str]]) -> list[KnobResult]:
        want = set(keys)
        if not want:
            return []
        out = list(self.engine.restore(want))
        self.failures += sum(1 for r in out if r.status not in _DONE)
        return out

    def forget(self, keys: Iterable[tuple[str, str]]) -> int:
        want = set(keys)
        if not want:
            return 0
        return self.engine.forget(want)

    # -- direct writes (never journaled) ---------------------------------
    def write_direct(self, knob: str, target: str, value: str,
                     owner: int | None = None) -> str | None:
        """Write without journaling (restoring a thread the journal never held);
        `owner` as Change.owner.

        Returns None on success, else a sentence why not.
        """
        try:
            get_knob(knob).write_for(self.root, target, value, owner)
        except (KernelError, ValueError, AgentlatdError) as e:
            return str(e)
        return None

    def read(self, knob: str, target: str) -> str | None:
        try:
            return get_knob(knob).read(self.root, target)
        except (KernelError, ValueError, AgentlatdError):
            return None
