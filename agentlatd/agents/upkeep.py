"""The agent tick: the registry's per-tick upkeep, in bounded pieces (lock held).

Exits (pidfds polled, or /proc for an agent without one), new threads and
forked processes (agents/threads.py, agents/forks.py), cgroup rescans, heat moves
(agents/placement.py), auto-registration, the placement of what changed, and
exclusivity and pm_qos brought in line (agents/exclusive.py). Each piece leaves
the registry consistent: the daemon serves requests between pieces.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from agentlatd.agents import containers
from agentlatd.agents.agent import Agent, AgentState
from agentlatd.agents.autoreg import agent_id_for
from agentlatd.agents.placement import holds_cpu
from agentlatd.agents.refusal import AgentRefused, Registration
from agentlatd.agents.threads import TICK_PIECE
from agentlatd.cpuset import CpuSet
from agentlatd.plan.agents import pm_qos_wanted
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId

if TYPE_CHECKING:
    from agentlatd.agents.registry import AgentManager

log = logging.getLogger("agentlatd.agents")


class AgentUpkeep:
    """Runs the registry's tick; owns only the tick's duration."""

    def __init__(self, registry: AgentManager) -> None:
        self.reg = registry
        self.last_tick_s = 0.0

    def steps(self) -> Iterator[None]:
        """Per-tick upkeep (lock held while it runs): exits, new threads, forks, heat
        moves, auto-registration, exclusivity and pm_qos.

        A generator that yields between bounded pieces of work (a few agents
        each): the daemon runs it a slice per loop turn and serves requests in
        between, so a registration never waits for a whole tick of 1000 agents.
        Registrations, unregistrations and exits may happen at every yield: each
        piece re-checks that its agent is still the registered one, and nothing
        computed before a yield is written after it without that check.
        """
        reg = self.reg
        t0 = time.perf_counter()
        spent = 0.0
        now = reg.clock()
        reg.reap()
        # a pidfd turns readable when its process exits (zombies included): one
        # poll() over all of them; the daemon's selector usually saw it first
        poller = select.poll()
        by_fd: dict[int, ProcId] = {}
        polled: list[Agent] = []
        for a in list(reg.agents.values()):
            if a.pidfd is not None:
                poller.register(a.pidfd, select.POLLIN)
                by_fd[a.pidfd] = a.proc
            else:
                polled.append(a)
        if by_fd:
            for fd, _ev in poller.poll(0):
                if fd in by_fd:
                    reg.mark_dead(by_fd[fd])
            # a batch now; the rest a batch per loop turn (AgentWork.run)
            reg.reap()
        for i, a in enumerate(polled):
            if reg.agents.get(a.proc) is a and not tasks.alive(reg.root, a.proc):
                reg.exited(a.proc)
            if i % TICK_PIECE == TICK_PIECE - 1:
                spent += time.perf_counter() - t0
                yield
                t0 = time.perf_counter()
        for _ in reg.threads.new_threads(reg.agents, reg.dirty):
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        for _ in reg.forks.scan_steps(reg.agents):
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        for _ in self._cgroups(now):
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        gen = reg.placer.moves_steps(now, reg.agents)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                for a in stop.value:
                    reg.dirty.add(a.proc)
                    if holds_cpu(a):
                        reg.cpu_dirty = True
                break
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        # each O(agents) step below leaves the registry consistent: a yield between
        for step in (self._auto_register, reg.place_pending, self.reconcile_cpus):
            step()
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        self.last_tick_s = spent + time.perf_counter() - t0

    def _cgroups(self, now: float) -> Iterator[None]:
        """Every RESCAN_S: re-read exclusive holders and each agent's cgroup; re-place
        the agents whose cpuset or reserved CPUs changed. Yields every TICK_PIECE
        agents (two /proc and cgroup reads each: 15 ms at 1000 agents at once)."""
        reg = self.reg
        if reg.cgroups.scanned_at is not None and \
                now - reg.cgroups.scanned_at < containers.RESCAN_S:
            return
        held_changed = reg.cgroups.rescan(now, force=True)
        yield
        for i, a in enumerate(list(reg.agents.values())):
            if reg.agents.get(a.proc) is a and (reg._read_cgroup(a) or held_changed):
                reg._wants(a)
            if i % TICK_PIECE == TICK_PIECE - 1:
                yield

    def _auto_register(self) -> None:
        reg = self.reg
        rules = reg.policy.auto_register
        if not rules:
            return
        for m in reg.autoreg.scan(reg.root, rules, reg.agents.keys()):
            uids = tasks.uids_of(reg.root, m.proc.pid)
            if uids is None:
                continue
            req = Registration(agent_id=agent_id_for(m.rule, m.comm, m.proc.pid), pid=m.proc.pid,
                               latency_class=m.rule.latency_class)
            try:
                reg.register(m.proc, uids[0], req, source=f"auto:{m.rule_index}")
            except AgentRefused:
                continue
            log.info("auto-registered pid %d (%s) as %r, class %s (auto_register[%d])",
                     m.proc.pid, m.comm, req.agent_id, req.latency_class, m.rule_index)

    def _excl_wanted(self) -> CpuSet:
        ok = self.reg.chain.exclusive_ok
        return CpuSet(a.home_cpu for a in self.reg.agents.values()
                      if a.exclusive and a.home_cpu is not None and a.state is not AgentState.FAILED
                      and (ok is None or a.proc in ok))

    def reconcile_cpus(self, full: bool = True) -> None:
        """Bring victims and pm_qos in line with where agents live now (lock held).

        full=False (between ticks, after registrations): scan the host's tasks
        only when the set of exclusive CPUs changed; new tasks wait for the tick.
        """
        reg = self.reg
        if not full and not reg.cpu_dirty:
            # nothing an agent holds changed since the last reconcile (the chain
            # keeper's decisions come at the tick): O(agents) work saved per request
            return
        homes = [a for a in reg.agents.values() if a.exclusive]
        held = CpuSet()
        for h in reg.cgroups.holders:
            if not any(h.owns(a.container) for a in homes):
                held |= h.cpus
        pm = (pm_qos_wanted((a.home_cpu, a.pm_qos) for a in reg.agents.values()
                            if a.pm_qos is not None and a.home_cpu is not None)
              if reg.cpu_dirty else None)
        reg.cpus.reconcile(self._excl_wanted(), held,
                           lambda: set(reg.by_pid) | reg.chain.protected, pm, full=full)
        reg.cpu_dirty = False

    def tick(self) -> None:
        """The whole per-tick upkeep at once (lock held): see steps()."""
        for _ in self.steps():
            pass

    def release_all(self) -> None:
        """Before a full rollback (lock held): unregister every agent (restores the
        threads the journal does not hold yet) and widen inherited victims."""
        reg = self.reg
        for p in list(reg.agents):
            try:
                reg.unregister(p)
            except Exception:
                log.exception("restoring agent pid %d", p.pid)
        reg.cpus.release()
        for a in reg.agents.values():
            if a.pidfd is not None:
                reg.close_pidfd(a.pidfd)
                a.pidfd = None
