"""The processes each agent forked: what its exit must give the originals back to.

A process forked by an agent inherits what agentlatd wrote on the forking thread
(fork() copies affinity, nice and ioprio). While the agent lives, every restore
finds such processes under it (agents/knobs.py restore_spread walks its
descendants). At its exit the kernel re-parents them, and only what was
remembered here links them to it (ThreadUpkeep.restore_forked).

Two sources, one record (Agent.forked, at most MAX_FORKED per agent, and
`owner`, each remembered process's agent):
  events  the process connector (netlink/procevents.py): every fork and exit as
          it happens, read by the main loop in batches (every DRAIN_S) and
          again right before an exit is handled, so a process forked the moment
          before its agent died is known (the kernel queues the fork event inside
          fork(), before the parent can run on to exit). A fork of a remembered
          process is remembered too (grandchildren, even after their parent
          exited), and an exit forgets.
  listing the tick lists each agent's live descendants (proc/PID/task/*/children),
          FORK_SCAN_AGENTS agents per tick, round robin: where there are no events
          (outside the host's pid or network namespace, no CONFIG_PROC_EVENTS),
          and for every agent once after the event queue overflowed (events lost).

Journaled: every remembered process gets entries of its own, flagged "inherited"
(apply/journal.py FLAG_INHERITED): the agent's original and written values, on
its main thread. The memory here dies with the daemon, and a process whose parent
exited is out of every walk of the agent's descendants; with the entries a
rollback after kill -9, and a restart's recovery, give it the originals too, and
only where it still shows agentlatd's values (a value it set itself is kept). The
main loop's locked phase journals what this module remembered once it has lived
JOURNAL_AGE_S, and drops what it forgot (AgentManager.journal_forks): a daemon
killed before leaves those processes to the walk alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from agentlatd.agents.agent import Agent
from agentlatd.errors import KernelError
from agentlatd.netlink.procevents import Drained, Exit
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.agents")

# Without events the tick lists the forks of this many agents per tick, round robin
# (~15-30 us per agent here): a fork made since the agent's last listing is missed
# at its exit, at 1000 agents and 1 s ticks for up to 16 s
FORK_SCAN_AGENTS = 64
MAX_FORKED = 256  # remembered per agent
# The main loop reads the queue this often (and right before it handles an exit),
# not each time it turns readable: a loop turn per event cost ~70 us of the main
# thread per fork on a host forking 2000 processes a second, read in batches
# ~3 us (bench/forks.py). The queue (procevents.RCVBUF, which the kernel doubles
# to 8 MiB) held 10082 events here: a fork and an exit each, so 20000 forks a
# second between two reads; past that, events are lost (Drained.lost) and the
# next tick lists every agent's descendants
DRAIN_S = 0.25
# datagrams read per loop turn on that schedule (~2.5 us each): a storm's backlog
# is read a piece at a time, with requests served between, so a registration
# waits for one piece (~0.3 ms), not the whole backlog. An exit reads all of it.
DRAIN_PIECE = 128
# A remembered process is journaled once it has lived this long since it was found:
# journaling one and dropping it at its exit cost the main thread 60-95 us (its three
# entries written and removed: bench/forks.py, an agent forking 200 children a
# second that live 2 s, against 0.5 s), and most of what agents fork (a tool's
# command) ends sooner; the live paths restore those, only a kill -9 within this
# window leaves them to the walk of the agent's descendants
JOURNAL_AGE_S = 1.0
# processes journaled at once, all agents together: MAX_FORKED per agent alone
# allows 256,000 at 1000 agents (three entries each, ~110 MB of journal in /run's
# memory, rewritten whole at each compaction); past this, the memory alone keeps
# them, as for a daemon that cannot save its journal
MAX_JOURNALED = 4096


class ForkSource(Protocol):
    """netlink.procevents.ProcEvents: the events queued since the last drain."""

    def drain(self, limit: int = ...) -> Drained: ...

    def close(self) -> None: ...


class ForkWatch:
    def __init__(self, root: Root) -> None:
        self.root = root
        self.source: ForkSource | None = None
        self.next_drain = 0.0  # monotonic: when the main loop reads the queue next
        self.unavailable = ""  # why there are no events (status)
        # each remembered process (by pid) -> (its agent, itself)
        self.owner: dict[int, tuple[ProcId, ProcId]] = {}
        self.rescan = False  # events were lost: list every agent's descendants once
        self.lost = 0  # overflows seen (status)
        self._cursor = 0
        # the journal's copy (module docstring, "Journaled"), synced by the locked
        # phase (AgentManager.journal_forks): remembered processes with entries,
        # remembered ones still without, and forgotten ones whose entries must go,
        # each -> its agent
        self.journaled: dict[ProcId, ProcId] = {}
        self.unjournaled: dict[ProcId, tuple[ProcId, float]] = {}  # and when it was found
        self.unremembered: set[ProcId] = set()
        self._due = float("inf")  # monotonic: when the oldest unjournaled one is due

    def attach(self, source: ForkSource | None, why: str = "") -> None:
        self.source = source
        self.unavailable = "" if source is not None else why

    def close(self) -> None:
        src, self.source = self.source, None
        if src is not None:
            src.close()

    def wait_s(self, now: float) -> float | None:
        """How long the main loop may sleep before the queue is due (None: no events)."""
        return None if self.source is None else max(0.0, self.next_drain - now)

    def follow_due(self, now: float, agents: Mapping[ProcId, Agent],
                   by_pid: Mapping[int, Agent]) -> None:
        if self.source is None or now < self.next_drain:
            return
        if self.follow(agents, by_pid, DRAIN_PIECE):
            self.next_drain = now  # more is queued: the next turn reads on

    def status(self) -> dict[str, Any]:
        return {"source": "events" if self.source is not None else "listing",
                "unavailable": self.unavailable, "overflows": self.lost,
                "remembered": len(self.owner), "journaled": len(self.journaled)}

    # -- the journal's copy ----------------------------------------------
    @property
    def unsynced(self) -> bool:
        """The journal's copy is behind: the loop's locked phase should run."""
        return bool(self.unremembered) or time.monotonic() >= self._due

    def take_unsynced(self, now: float) -> tuple[set[ProcId], dict[ProcId, ProcId]]:
        """(processes whose entries go, processes due to be journaled -> their
        agents), handed to the caller, who journals them (lock held) or gives up
        on them; the younger ones wait (JOURNAL_AGE_S)."""
        gone, self.unremembered = self.unremembered, set()
        new: dict[ProcId, ProcId] = {}
        if now >= self._due:
            young: dict[ProcId, tuple[ProcId, float]] = {}
            for c, (ap, t) in self.unjournaled.items():
                if t <= now - JOURNAL_AGE_S:
                    new[c] = ap
                else:
                    young[c] = (ap, t)
            self.unjournaled = young
            self._due = min((t for _, t in young.values()), default=float("inf")) \
                + JOURNAL_AGE_S
        return gone, new

    def take_journaled(self, a: Agent) -> list[ProcId]:
        """The agent's remembered processes with entries, handed over for their
        restore (which drops the entries): forgetting them later drops nothing."""
        out = [c for c in a.forked if self.journaled.get(c) == a.proc]
        for c in out:
            del self.journaled[c]
        return out

    def _remember(self, a: Agent, child: ProcId) -> None:
        a.forked.add(child)
        self.owner[child.pid] = (a.proc, child)
        now = time.monotonic()
        self.unjournaled[child] = (a.proc, now)
        self._due = min(self._due, now + JOURNAL_AGE_S)
        self.unremembered.discard(child)

    def _unremember(self, child: ProcId) -> None:
        self.unjournaled.pop(child, None)
        if self.journaled.pop(child, None) is not None:
            self.unremembered.add(child)

    # -- events ------------------------------------------------------------
    def follow(self, agents: Mapping[ProcId, Agent], by_pid: Mapping[int, Agent],
               limit: int | None = None) -> bool:
        """Read the queued events (at most `limit` datagrams; None: all of them) and
        remember or forget processes (main loop). True when more may be queued."""
        if self.source is None:
            return False
        self.next_drain = time.monotonic() + DRAIN_S
        try:
            got = self.source.drain() if limit is None else self.source.drain(limit)
        except KernelError as e:
            log.error("process events failed (%s): forked processes are listed by the "
                      "tick from now on", e)
            self.close()
            self.unavailable = str(e)
            return False
        if got.lost:
            self.lost += 1
            self.rescan = True
            log.warning("process events were lost (the queue overflowed): the next tick "
                        "lists every agent's forked processes")
        if got.events:
            self.apply(got, agents, by_pid)
        return got.more

    def apply(self, got: Drained, agents: Mapping[ProcId, Agent],
              by_pid: Mapping[int, Agent]) -> None:
        """The events in order; then the survivors' identities, read once each: a
        process forked and ended within one drain (a shell's commands) costs no read."""
        born: dict[int, ProcId] = {}  # pid -> the agent it belongs to
        for ev in got.events:
            if isinstance(ev, Exit):
                born.pop(ev.pid, None)
                self._forget_pid(ev.pid, agents)
                continue
            a = by_pid.get(ev.parent)
            if a is not None and agents.get(a.proc) is a:
                born[ev.child] = a.proc
            elif (o := born.get(ev.parent)) is not None:
                born[ev.child] = o
            elif (rec := self.owner.get(ev.parent)) is not None:
                born[ev.child] = rec[0]
        for pid, ap in born.items():
            a = agents.get(ap)
            if a is None or len(a.forked) >= MAX_FORKED:
                continue
            st = tasks.starttime_of(self.root, pid)
            if st is None or st < ap.starttime:
                continue  # gone already, or the pid is another process's by now
            self._forget_pid(pid, agents)
            self._remember(a, ProcId(pid, st))
            if a.creds is None:  # the registration had no pidfd to read them with
                a.creds = tasks.thread_uids(self.root, ap.pid, ap.pid)

    def _forget_pid(self, pid: int, agents: Mapping[ProcId, Agent]) -> None:
        rec = self.owner.pop(pid, None)
        if rec is not None:
            self._unremember(rec[1])
            if (a := agents.get(rec[0])) is not None:
                a.forked.discard(rec[1])

    def forget(self, a: Agent) -> None:
        """The agent is dropped: its processes are no longer anyone's."""
        for child in a.forked:
            self._drop_child(a, child)
        a.forked.clear()

    def _drop_child(self, a: Agent, child: ProcId) -> None:
        """`child` is no longer remembered as `a`'s (the caller updates a.forked)."""
        if (rec := self.owner.get(child.pid)) is not None and rec[0] == a.proc:
            del self.owner[child.pid]
        self._unremember(child)

    # -- listing -----------------------------------------------------------
    def scan_steps(self, agents: Mapping[ProcId, Agent]) -> Iterator[None]:
        """The tick's listing (see the module's docstring), yielding after each agent."""
        if self.source is not None and not self.rescan:
            return
        todo = [a for a in agents.values() if a.applied]
        if self.rescan:
            self.rescan = False
            chosen = todo
        elif not todo:
            return
        else:
            start = self._cursor % len(todo)
            chosen = (todo[start:] + todo[:start])[:FORK_SCAN_AGENTS]
            self._cursor = start + len(chosen)
        for a in chosen:
            if agents.get(a.proc) is not a:
                continue
            # the live descendants only (replaced, not added to: an agent that
            # forks short-lived commands all day must not grow the set)
            kids: set[ProcId] = set()
            for pid in tasks.descendants(self.root, a.proc.pid, limit=MAX_FORKED):
                st = tasks.starttime_of(self.root, pid)
                if st is not None and st >= a.proc.starttime:
                    kids.add(ProcId(pid, st))
            if self.source is not None:
                # events go on: keep what they found that the listing cannot see
                # (a grandchild whose parent exited), within the bound
                kids |= set(list(a.forked)[:max(0, MAX_FORKED - len(kids))])
            # listed again: kept as it is (its entries, or when it was found)
            for k in a.forked - kids:
                self._drop_child(a, k)
            a.forked &= kids
            for k in kids - a.forked:
                self._remember(a, k)
            if kids and a.creds is None:
                a.creds = tasks.thread_uids(self.root, a.proc.pid, a.proc.pid)
            yield
