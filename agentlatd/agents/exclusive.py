"""Exclusive home CPUs and pm_qos of home CPUs: the writes that follow where
agents live (agents/registry.py decides where that is; this keeps the host in
line with it, through the one Engine, with the engine lock held).

Exclusive home CPUs: while an agent of an "exclusive" class lives on home CPU
H, every other task whose affinity includes H gets its affinity minus H
(journaled). A task allowed ONLY on such CPUs (pinned there on purpose) is left
alone, and so are registered agents and chain members (`spared`). Tasks are
scanned each tick; a task seen once is not read again (keyed by (pid, tid): a
tid reused within one tick is the remaining gap). A child forked by a moved
task inherits the narrowed affinity: it is recorded as "inherited" and widened
again (not journaled: a crash loses only these) when H stops being exclusive.
`exclusive_scope_pid` limits the victims to that process and its descendants
(tests use it: they must never move the host's own tasks). Kernel threads
with PF_NO_SETAFFINITY (per-CPU kthreads, every kworker) or a single-CPU
affinity stay where they are.

pm_qos: per home CPU, the strictest resume latency of the agents living there
(plan/agents.py pm_qos_wanted); restored when the last of them leaves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from agentlatd.agents.applier import Applier
from agentlatd.apply.engine import WRITTEN, Status
from agentlatd.cpuset import CpuSet
from agentlatd.errors import KernelError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import CpuTarget, TaskTarget, format_target
from agentlatd.plan.agents import victim_affinity
from agentlatd.plan.changes import Change
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ThreadId

log = logging.getLogger("agentlatd.agents")


@dataclass(slots=True)
class Victim:
    """A task moved off exclusive home CPUs."""

    thread: ThreadId
    original: CpuSet
    moved_to: CpuSet
    journaled: bool  # False: inherited from a moved parent, widened directly


class CpuKeeper:
    """Victims of exclusive home CPUs and the pm_qos written on home CPUs."""

    def __init__(self, applier: Applier, exclusive_scope_pid: int | None = None) -> None:
        self.applier = applier
        self.root = applier.root
        self.excl = CpuSet()
        self.victims: dict[tuple[int, int], Victim] = {}
        self.victim_procs: dict[int, CpuSet] = {}  # pid -> original affinity of a moved process
        self.seen_tasks: set[tuple[int, int]] = set()
        self.pmqos: dict[int, str] = {}
        self.scope_pid = exclusive_scope_pid
        self.scope: set[int] = {exclusive_scope_pid} if exclusive_scope_pid else set()
        self.held = CpuSet()  # held CPUs no exclusive agent lives in: never victims

    def reconcile(self, want: CpuSet, held: CpuSet, spared: Callable[[], AbstractSet[int]],
                  pmqos: dict[int, str] | None, *, full: bool) -> None:
        """`want`: the exclusive home CPUs now; `held`: CPUs other workloads hold;
        `spared()`: pids never moved; `pmqos`: cpu -> bound (None: unchanged).
        full=False: scan the host's tasks only when `want` changed."""
        self.held = held
        changed = want != self.excl
        if changed:
            grown = not want <= self.excl
            self.excl = want
            self._reconcile_victims()
            if grown:
                self.seen_tasks.clear()
        if self.excl and (full or changed):
            self._scan_victims(spared)
        elif self.victims:
            self._reconcile_victims()
        if pmqos is not None:
            self._reconcile_pmqos(pmqos)

    # -- chain members (agents/chain.py): never victims ---------------------------
    def narrowed(self, pid: int) -> CpuSet | None:
        """The affinity process `pid` had before exclusivity moved it; None: not moved."""
        return self.victim_procs.get(pid)

    def take_victim(self, pid: int, tid: int) -> Victim | None:
        """Stop tracking thread `tid` of `pid` as a victim; its record, if it was one."""
        return self.victims.pop((pid, tid), None)

    def take_victims(self, pid: int) -> list[Victim]:
        """Stop tracking every victim thread of `pid`; their records."""
        return [self.victims.pop(k) for k in [k for k in self.victims if k[0] == pid]]

    def spare(self, pid: int) -> None:
        """`pid` is no victim any more (its threads were taken or restored)."""
        self.victim_procs.pop(pid, None)

    def rescan(self, pid: int) -> None:
        """Look at `pid`'s threads again at the next scan, as at any other task's."""
        self.seen_tasks = {k for k in self.seen_tasks if k[0] != pid}

    def release(self) -> None:
        """Before a full rollback: widen the inherited victims (not journaled)."""
        for v in self.victims.values():
            if not v.journaled:
                self.applier.write_direct(KnobName.TASK_AFFINITY, v.thread.target, v.original.to_list())
        self.victims.clear()

    def _reconcile_victims(self) -> None:
        restore: list[tuple[str, str]] = []
        changes: list[Change] = []
        for key, v in list(self.victims.items()):
            desired = victim_affinity(v.original, self.excl) or v.original
            if desired == v.moved_to:
                continue
            t = v.thread.target
            if desired == v.original:
                if v.journaled:
                    restore.append((KnobName.TASK_AFFINITY, t))
                else:
                    self.applier.write_direct(KnobName.TASK_AFFINITY, t, v.original.to_list())
                del self.victims[key]
            else:
                if v.journaled:
                    changes.append(Change(KnobName.TASK_AFFINITY, v.thread.key, v.moved_to.to_list(),
                                          desired.to_list(), self._victim_why()))
                else:
                    self.applier.write_direct(KnobName.TASK_AFFINITY, t, desired.to_list())
                v.moved_to = desired
        if restore:
            self.applier.restore(restore)
        if changes:
            self.applier.apply(changes)
        if not self.victims:
            self.victim_procs.clear()

    def _victim_why(self) -> str:
        return (f"home CPU(s) {self.excl} are exclusive to interactive agents "
                "(classes.*.exclusive = \"exclusive\")")

    def _in_scope(self, pid: int, ppid: int) -> bool:
        if self.scope_pid is None:
            return True
        if pid in self.scope:
            return True
        if ppid in self.scope:
            self.scope.add(pid)
            return True
        return False

    def _scan_victims(self, spared: Callable[[], AbstractSet[int]]) -> None:
        agent_pids = spared()
        live: set[tuple[int, int]] = set()
        live_pids: set[int] = set()
        changes: list[Change] = []
        new_victims: dict[tuple[int, int], Victim] = {}
        for pid in tasks.list_pids(self.root):
            live_pids.add(pid)
            if pid in agent_pids:
                continue
            tids = tasks.list_tids(self.root, pid)
            unseen = [t for t in tids if (pid, t) not in self.seen_tasks]
            live.update((pid, t) for t in tids)
            pst = None
            if self.scope_pid is not None and pid not in self.scope:
                pst = tasks.pid_stat(self.root, pid)
                if pst is None or not self._in_scope(pid, pst.ppid):
                    continue
            if not unseen:
                continue
            pst = pst or tasks.pid_stat(self.root, pid)
            if pst is None:
                continue
            for tid in unseen:
                self.seen_tasks.add((pid, tid))
                st = pst if tid == pid else tasks.pid_stat(self.root, pid, tid)
                if st is None or (st.kthread and st.no_setaffinity):
                    continue
                try:
                    aff = tasks.get_affinity(tid)
                except KernelError:
                    continue
                if st.kthread and len(aff) <= 1:
                    continue  # a per-CPU kthread
                th = ThreadId(pid, pst.starttime, tid)
                new = victim_affinity(aff, self.excl, self.held)
                if new is None:
                    # born narrowed from a moved parent (fork or thread): inherited
                    parent = self.victim_procs.get(pid) or self.victim_procs.get(pst.ppid)
                    if parent is not None and aff == victim_affinity(parent, self.excl):
                        self.victims[(pid, tid)] = Victim(th, parent, aff, journaled=False)
                        self.victim_procs.setdefault(pid, parent)
                    continue
                changes.append(Change(KnobName.TASK_AFFINITY, th.key, aff.to_list(), new.to_list(),
                                      self._victim_why()))
                new_victims[(pid, tid)] = Victim(th, aff, new, journaled=True)
        if changes:
            thread_of = {c.target_text: c.target for c in changes}
            for r in self.applier.apply(changes):
                tt = thread_of[r.target]
                assert isinstance(tt, TaskTarget)  # the knob's kind
                v = new_victims.get((tt.pid, tt.tid))
                if v is None:
                    continue
                if r.status in WRITTEN:
                    self.victims[(tt.pid, tt.tid)] = v
                    self.victim_procs.setdefault(tt.pid, v.original)
                elif r.status != Status.UNCHANGED and r.errclass is not ErrClass.GONE:
                    log.info("cannot move task %s off home CPUs: %s", r.target, r.message)
        # tasks gone: forget them
        gone = [k for k in self.victims if k not in live]
        if gone:
            self.applier.forget((KnobName.TASK_AFFINITY, self.victims[k].thread.target) for k in gone
                                if self.victims[k].journaled)
            for k in gone:
                del self.victims[k]
        self.seen_tasks &= live
        for pid in list(self.victim_procs):
            if pid not in live_pids:
                del self.victim_procs[pid]
        if self.scope_pid is not None:
            self.scope &= live_pids | {self.scope_pid}

    def _reconcile_pmqos(self, want: dict[int, str]) -> None:
        gone = [c for c in self.pmqos if c not in want]
        if gone:
            self.applier.restore((KnobName.CPU_PM_QOS_RESUME_LATENCY_US,
                                  format_target(CpuTarget(c))) for c in gone)
            for c in gone:
                del self.pmqos[c]
        changes = [Change(KnobName.CPU_PM_QOS_RESUME_LATENCY_US, CpuTarget(c), "", v,
                          f"an interactive agent lives on home CPU {c}: bound its idle exit "
                          f"latency (classes.*.pm_qos_resume_latency_us)")
                   for c, v in sorted(want.items()) if self.pmqos.get(c) != v]
        if changes:
            cpu_of = {ch.target_text: ch.target for ch in changes}
            for r in self.applier.apply(changes):
                t = cpu_of[r.target]
                assert isinstance(t, CpuTarget)  # the knob's kind
                c = t.cpu
                if r.status in WRITTEN or r.status == Status.UNCHANGED:
                    self.pmqos[c] = want[c]
                else:
                    log.warning("pm_qos of CPU %d: %s", c, r.message)
