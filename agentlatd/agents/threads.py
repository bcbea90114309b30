"""The threads and forked processes of registered agents, and the writes for them.

Threads started later inherit the creating thread's affinity, nice and ioprio
(clone() copies cpus_mask, static_prio and the io_context's priority), so a
thread started by a pinned thread is pinned from its first instruction; only a
thread started by a not-yet-pinned thread needs the tick: each tick lists
proc/PID/task of every agent and applies the class to new threads. A thread
born with our values has the process's original journaled for it
(Change.inherited_original), not the value it was born with, and is never
off its CPUs meanwhile. The processes an agent forked are remembered
(agents/forks.py) so that its exit can restore them (restore_forked).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from agentlatd.agents.agent import Agent, AgentState
from agentlatd.agents.applier import TASK_KNOBS, Applier
from agentlatd.apply.engine import RESTORED, Status
from agentlatd.errors import KernelError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.kernel.knobnames import KnobName
from agentlatd.plan.changes import Change
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId, ThreadId

log = logging.getLogger("agentlatd.agents")

# agents looked at between two yields of the tick (10-45 us of /proc reads each,
# the more the busier the host): a piece stays well under the daemon's 0.3 ms
# slice, so a registration arriving mid-piece waits little
TICK_PIECE = 6


def prefix(p: ProcId) -> str:
    return f"{p.pid}:{p.starttime}:"


def thread_of(target: str) -> ThreadId | None:
    """The thread of a task target (kernel/targets.py); None for one that names none."""
    try:
        return ThreadId.parse(target)
    except ValueError:
        return None


def proc_of(target: str) -> ProcId | None:
    """The process of a task target; None for a journal line that names none."""
    th = thread_of(target)
    return th.proc if th is not None else None


def belongs(target: str, p: ProcId) -> bool:
    """Whether a task target names a thread of `p`. The journal holds every agent's
    threads: the prefix test skips the others' (0.1 us each) before the typed parse
    (several us each, ~30 000 entries with 1000 agents)."""
    return target.startswith(prefix(p)) and proc_of(target) == p


def fill_originals(applier: Applier, a: Agent) -> None:
    """The process's originals of the knobs its class writes that the placement
    did not give (account() takes them from the main thread's results): the
    main thread's write was refused or skipped, so it still shows the process's
    own value, read through the knob itself. Read after the placement, not
    before it: a registration's answer waited for three reads of values its own
    batch reads again."""
    main = a.proc.main.target
    for knob, want in class_values(a).items():
        if want is None or knob in a.orig:
            continue
        value = applier.read(knob, main)
        if value is not None:  # None: gone, its threads get no inherited original
            a.orig[knob] = value


def class_values(a: Agent) -> dict[KnobName, str | None]:
    """What the agent's class writes on each of its threads (None: not set)."""
    return {KnobName.TASK_AFFINITY: a.want_cpus.to_list() if a.want_cpus is not None else None,
            KnobName.TASK_NICE: str(a.want_nice) if a.want_nice is not None else None,
            KnobName.TASK_IOPRIO: a.want_ioprio}


def agent_changes(a: Agent, tids: Iterable[int], why: str, *, born: bool = False
                  ) -> list[Change]:
    """The class's writes on threads `tids`. `born`: threads started since the
    agent was placed. One that shows the class's value inherited it from the
    thread that started it, and the engine journals the process's original
    for it (Change.inherited_original), not the value it was born with: a
    crash then restores it as the others."""
    wants = [(knob, want, a.orig.get(knob) if born else None)
             for knob, want in class_values(a).items() if want is not None]
    out: list[Change] = []
    for tid in tids:
        t = ThreadId(a.proc.pid, a.proc.starttime, tid).key
        out += [Change(knob, t, "", want, why, a.owner, orig) for knob, want, orig in wants]
    return out

def why(a: Agent) -> str:
    if a.home_cpu is not None:
        return (f"agent {a.agent_id!r} ({a.latency_class}) on home CPU {a.home_cpu}")
    return f"agent {a.agent_id!r} ({a.latency_class})"

def wanted(a: Agent) -> set[str]:
    out: set[str] = set()
    if a.want_cpus is not None:
        out.add(KnobName.TASK_AFFINITY)
    if a.want_nice is not None:
        out.add(KnobName.TASK_NICE)
    if a.want_ioprio is not None:
        out.add(KnobName.TASK_IOPRIO)
    return out


_READ_BEFORE = (Status.CHANGED, Status.CLAMPED, Status.UNCHANGED)


def account(results: Iterable[Any], agents: list[Agent], *, add: bool = False) -> None:
    """Fold engine results into each agent's state/problem/pinned count, and
    the main thread's first values read (KnobResult.before, read right before
    the write) into Agent.orig: the originals its later threads inherited
    agentlatd's value over (agent_changes(born=True), restore_unjournaled).

    add=False: the results cover every thread; True: only new threads."""
    by_proc = {a.proc: a for a in agents}
    bad: dict[ProcId, list[str]] = {}
    ok_aff: dict[ProcId, int] = {}
    for r in results:
        th = thread_of(r.target)
        a = by_proc.get(th.proc) if th is not None else None
        if a is None or th is None:
            continue
        if th.tid == th.pid and r.before and r.status in _READ_BEFORE:
            a.orig.setdefault(r.knob, r.before)
        if r.status in (Status.CHANGED, Status.UNCHANGED):
            if r.knob == KnobName.TASK_AFFINITY:
                ok_aff[a.proc] = ok_aff.get(a.proc, 0) + 1
        elif r.errclass is ErrClass.GONE:
            a.threads.discard(th.tid)
        else:
            bad.setdefault(a.proc, []).append(f"{r.knob} {r.target}: {r.status}: {r.message}")
    for pre, a in by_proc.items():
        n = ok_aff.get(pre, 0)
        a.pinned = 0 if a.want_cpus is None else min(len(a.threads),
                                                     a.pinned + n if add else n)
        probs = bad.get(pre, [])
        if probs:
            if not add:
                a.state = (AgentState.PARTIAL if a.pinned or a.want_cpus is None
                           else AgentState.FAILED)
            a.problem = probs[0] + (f" (+{len(probs) - 1} more)" if len(probs) > 1 else "")
            log.warning("agent %r pid %d: %s", a.agent_id, a.proc.pid, a.problem)
        elif not add:
            a.state = AgentState.PLACED
            a.problem = ""


class ThreadUpkeep:
    """New threads pinned as they appear; forked processes remembered and restored."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self.root = applier.root

    def new_threads(self, agents: Mapping[ProcId, Agent], skip: AbstractSet[ProcId]
                    ) -> Iterator[None]:
        """Pin threads started since the last look; forget threads that ended.

        Yields every TICK_PIECE agents, after writing what it found for them."""
        listed = list(agents.values())
        for start in range(0, len(listed), TICK_PIECE):
            changes: list[Change] = []
            touched: list[Agent] = []
            gone_keys: list[tuple[str, str]] = []
            for a in listed[start:start + TICK_PIECE]:
                if a.proc in skip or agents.get(a.proc) is not a:
                    continue
                tids = set(tasks.list_tids(self.root, a.proc.pid))
                if not tids:
                    continue
                new = tids - a.threads
                old = a.threads - tids
                if old:
                    for tid in old:
                        t = ThreadId(a.proc.pid, a.proc.starttime, tid).target
                        gone_keys += [(k, t) for k in TASK_KNOBS]
                if not new and not old:
                    continue
                a.threads = tids
                if new and wanted(a):
                    changes += agent_changes(a, sorted(new), why(a) + " (new thread)",
                                             born=True)
                    touched.append(a)
            if gone_keys:
                self.applier.forget(gone_keys)
            if changes:
                account(self.applier.apply(changes), touched, add=True)
            yield

    def restore_forked(self, a: Agent, agents: Mapping[ProcId, Agent],
                       journaled: Collection[ProcId], why: str = "exited") -> None:
        """The agent exited or is unregistered: the processes it forked
        (agents/forks.py) that still show agentlatd's values (inherited from it)
        get its originals back, as its entries would have. `journaled`: those
        with entries of their own ("inherited"), restored (and dropped) by them."""
        n = 0
        if journaled:
            keys = [(k, c.main.target)
                    for c in journaled if c not in agents for k in TASK_KNOBS]
            n += sum(1 for r in self.applier.restore(keys) if r.status == RESTORED)
        if a.creds is None:
            return
        vals = self.applier.written(a.proc.main)
        for child in sorted(a.forked, key=lambda c: c.pid):
            if child in agents or child in journaled or not tasks.alive(self.root, child):
                continue  # registered itself (its own entries decide), journaled or gone
            for knob, original, written in vals:
                try:
                    n += self.applier.restore_forked(knob, child, written, original, a.creds)
                except (KernelError, ValueError):
                    continue
        if n:
            log.info("agent %r pid %d %s: %d value(s) restored on processes it forked",
                     a.agent_id, a.proc.pid, why, n)

    def restore_unjournaled(self, a: Agent, journaled: AbstractSet[str]) -> None:
        """Unregister: threads born pinned (inherited from a pinned thread) were never
        journaled: give them the process's original when they still have ours."""
        p = a.proc
        if not tasks.running(self.root, p, a.pidfd):
            return
        wants = class_values(a)
        for tid in tasks.list_tids(self.root, p.pid):
            t = ThreadId(p.pid, p.starttime, tid).target
            if t in journaled:
                continue
            for knob, want in wants.items():
                orig = a.orig.get(knob)
                if want is None or orig is None:
                    continue
                if self.applier.read(knob, t) == want and want != orig:
                    err = self.applier.write_direct(knob, t, orig, a.owner)
                    if err:
                        log.warning("restoring %s of %s: %s", knob, t, err)
