"""Registered agents and the placement that keeps them on their CPUs.

Who may register what (docs/protocol.md, "Identity"): the peer's identity is
SO_PEERCRED. A non-admin peer (not uid 0, not in policy daemon.admin_group)
may register only processes whose real AND effective uid are its own uid.
A process is (pid, starttime): the registration is keyed by it, the daemon
holds a pidfd of it (its exit drops the registration at once; without pidfds
the tick polls), and every thread write checks it again right before the
syscall (sample/tasks.py), so a recycled pid is never pinned.

What a class does is the policy's [classes.X] (etc/agentlatd.toml):
  pin            every thread on one home CPU (placement.choose_home)
  to_completion  every thread on the completion CPUs
  nice, ioprio   set on every thread
  exclusive      "exclusive": while the agent lives there, other tasks are
                 moved off its home CPU (see "Exclusive home CPUs")
  pm_qos_resume_latency_us   per home CPU while an agent lives there
The originals are journaled by the engine before the first write and
restored on unregister, on `agentlatd rollback`, on SIGTERM and after a crash,
on the threads and forked processes that inherited them too (agents/knobs.py
TaskKnob.restore). An agent's own exit forgets its entries (its threads are
gone), but the processes it forked live on, re-parented: agents/forks.py
remembers them (Agent.forked) and the exit gives them the originals.

Writes made for a non-admin peer (Agent.owner) reach only threads whose real
and effective uid are the peer's, checked per thread right before each
syscall (sample/tasks.py check_thread): a process whose threads run under
several uids (one dropped privileges with the raw setresuid syscall) gets
the class on the peer's threads only, and the agent is "partial".

Per-thread sched_setaffinity, not a cpuset cgroup:
  - a cpuset means moving the process into a cgroup of ours (systemd and
    container runtimes own the cgroup tree and would move it back, and
    accounting/limits of the unit would be lost) or writing the cpuset of
    the unit/pod it is in (fights the runtime's own cpuset writes; kubelet's
    CPU manager reconciles them every 10 s);
  - per-thread affinity is exact, journaled per thread, restorable to each
    thread's own original, and needs no cgroup v2 delegation;
  - threads started later inherit the creating thread's affinity (clone()
    copies cpus_mask), so a thread started by a pinned thread is pinned from
    its first instruction. Only a thread started by a not-yet-pinned thread
    during registration needs the tick: every tick lists proc/PID/task of
    each agent and pins new threads.
Exclusive home CPUs use per-task affinity for the same reasons (a systemd
AllowedCPUs= of every slice would need D-Bus and would not reach processes
outside systemd's slices). Kernel threads with PF_NO_SETAFFINITY (per-CPU
kthreads, every kworker) or a single-CPU affinity stay where they are.

Exclusive home CPUs and pm_qos: agents/exclusive.py; home CPUs and heat moves:
agents/placement.py; the agent tick: agents/upkeep.py; JSON views: agents/views.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from agentlatd.agents import containers
from agentlatd.agents.agent import Agent, AgentState
from agentlatd.agents.applier import TASK_KNOBS, Applier
from agentlatd.agents.autoreg import AutoRegistrar
from agentlatd.agents.exclusive import CpuKeeper
from agentlatd.agents.forks import MAX_JOURNALED, ForkWatch
from agentlatd.agents.pidfdgate import AgentPidfds, PidfdGate
from agentlatd.agents.placement import HomePlacer, holds_cpu
from agentlatd.agents.refusal import AgentRefused, Refusal, Registration
from agentlatd.agents.threads import (
    ThreadUpkeep,
    account,
    agent_changes,
    belongs,
    fill_originals,
    wanted,
    why,
)
from agentlatd.agents.upkeep import AgentUpkeep
from agentlatd.errors import AgentlatdError
from agentlatd.model.agent_links import AgentHome
from agentlatd.model.layout import CpuLayout
from agentlatd.plan.changes import Change
from agentlatd.policy import Policy
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.agents")

MAX_AGENTS = 16384  # in all
MAX_AGENTS_PER_UID = 4096  # for a non-admin uid
# exits dropped per loop turn (reap): each exit reads /proc for the processes the
# agent forked and forgets its own entries (the journal's per-process index), and
# the batch is one journal save; 1000 agents exiting at once in one turn held the
# main loop for tens of ms
REAP_PIECE = 32


@dataclass(frozen=True, slots=True)
class ChainInput:
    """The chain keeper's decisions, given to the registry after each chain tick."""

    # pids of chain members (processes agents wait on): never exclusivity victims
    protected: frozenset[int] = frozenset()
    # agents whose home CPU may turn exclusive now (the do-no-harm guard has its
    # baseline and did not undo it); None: no keeper, every agent may
    exclusive_ok: frozenset[ProcId] | None = None


def _identify(root: Root, pid: int, req: Registration, peer_start: int | None,
              pidfd: int | None = None) -> tuple[int, int, int]:
    """The process a register request names, checked to be that process and a
    process at all: (its start time, ruid, euid), or AgentRefused.

    `pidfd`: opened for `pid` before this reads proc/PID/stat (agents/pidfdgate.py);
    its process's tgid and credentials come from it (tasks.pidfd_ids) where the
    kernel answers, from proc/PID/status otherwise."""
    st = tasks.pid_stat(root, pid)
    if st is None or st.state in ("Z", "X"):
        raise AgentRefused(Refusal.NO_SUCH_PROCESS, f"process {pid} does not exist")
    if req.pid is None and peer_start is not None and st.starttime != peer_start:
        raise AgentRefused(Refusal.NO_SUCH_PROCESS,
                            f"the process that connected (pid {pid}) has exited")
    if req.starttime is not None and st.starttime != req.starttime:
        raise AgentRefused(Refusal.NO_SUCH_PROCESS,
                            f"process {pid} started at {st.starttime}, not at "
                            f"{req.starttime}: the process you named has exited and "
                            "its pid was reused")
    if st.kthread:
        raise AgentRefused(Refusal.BAD_REQUEST, f"pid {pid} is a kernel thread; only "
                                                  "user processes can register")
    # a thread id is not a process: its registration would journal our own
    # pin of its threads as their "original"
    ids = tasks.pidfd_ids(pidfd) if pidfd is not None and root.is_host else None
    if ids is None:
        ids = tasks.status_ids(root, pid)
    if ids is None:
        raise AgentRefused(Refusal.NO_SUCH_PROCESS, f"process {pid} does not exist")
    tgid, ruid, euid = ids
    if tgid != pid:
        raise AgentRefused(Refusal.BAD_REQUEST,
                            f"pid {pid} is thread {pid} of process {tgid}, not a process; "
                            f"register the process (its thread-group leader, pid {tgid})")
    return st.starttime, ruid, euid


def log_registered(a: Agent) -> None:
    log.info("agent %r pid %d registered: class %s, uid %d, by %s", a.agent_id, a.proc.pid,
             a.latency_class, a.uid, a.source)


def log_dropped(a: Agent, why: str) -> None:
    log.info("agent %r pid %d dropped: %s", a.agent_id, a.proc.pid, why)


class AgentManager:
    """The registrations (identity, class, stats) and the writes that register and
    unregister them (place_pending, unregister: applier.lock held). Collaborators own
    the rest: placer (agents/placement.py), upkeep (agents/upkeep.py: the tick,
    release_all), cpus (agents/exclusive.py), threads (agents/threads.py), cgroups."""

    def __init__(self, applier: Applier, policy: Policy, *,
                 exclusive_scope_pid: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 witness: AgentPidfds | None = None) -> None:
        self.applier = applier
        self.root = applier.root
        self.policy = policy
        self.clock = clock
        self.agents: dict[ProcId, Agent] = {}
        self.by_pid: dict[int, Agent] = {}
        self.dirty: set[ProcId] = set()
        self.dead: set[ProcId] = set()
        # exclusive home CPUs (their victims) and pm_qos: agents/exclusive.py
        self.cpus = CpuKeeper(applier, exclusive_scope_pid)
        self.autoreg = AutoRegistrar()
        self.cpu_dirty = True
        # closes an agent's pidfd; the daemon replaces it to unregister the fd
        # from its selector first (a closed fd number is reused at once)
        self.close_pidfd: Callable[[int], None] = _close
        # agents whose pidfd the daemon has not put in its selector yet: it takes
        # them from here rather than walking every agent on every loop turn
        self.new_pidfds: list[Agent] = []
        # a new agent's pidfd, from check_register() to register() (agents/pidfdgate.py)
        self.pidfd_gate = PidfdGate(self.root)
        # the agents' pidfds as proof of identity for the engine's task knobs
        # (the engine built with knobset.witnessed(witness): agents/pidfdgate.py)
        if witness is not None:
            witness.bind(self.pidfd_of)
        # completion chains (agents/chain.py): what the chain keeper decided at
        # its last tick (set_chain)
        self.chain = ChainInput()
        self.threads = ThreadUpkeep(applier)  # new threads, and writes for forked processes
        # which processes each agent forked (process events, else the tick's listing)
        self.forks = ForkWatch(self.root)
        # cgroups: each agent's cpuset, and CPUs other workloads hold exclusively
        self.cgroups = containers.Scanner(self.root)
        self.placer = HomePlacer(policy, self.cgroups, clock)
        self.upkeep = AgentUpkeep(self)

    # -- inputs ----------------------------------------------------------
    @property
    def layout(self) -> CpuLayout:
        return self.placer.layout

    def set_layout(self, layout: CpuLayout) -> None:
        if layout == self.placer.layout:
            return
        self.placer.layout = layout
        for a in self.agents.values():
            self._wants(a)
        self.cpu_dirty = True

    def homes(self) -> tuple[AgentHome, ...]:
        """The pinned agents with a home CPU, for the tuner's agent links."""
        return self.placer.homes(self.agents.values())

    def set_heat(self, heat: Mapping[int, float]) -> None:
        """A new heat sample (one per tuner tick)."""
        self.placer.set_heat(heat)

    def set_chain(self, chain: ChainInput) -> None:
        """The chain keeper's decisions after its tick (the registry reads no keeper state)."""
        if chain != self.chain:
            self.chain = chain
            self.cpu_dirty = True

    def set_policy(self, policy: Policy) -> None:
        self.policy = self.placer.policy = policy
        for a in self.agents.values():
            self._wants(a)
        self.cpu_dirty = True

    # -- registration ----------------------------------------------------
    def check_register(self, peer_pid: int, peer_uid: int, peer_start: int | None,
                       req: Registration, admin: bool) -> tuple[ProcId, int]:
        """Validate and authorise a register request; (process, its uid) or AgentRefused."""
        pid = req.pid if req.pid is not None else peer_pid
        # a new agent's pidfd, opened before the read that identifies the process
        fd = self.pidfd_gate.opened(pid) if pid not in self.by_pid else None
        try:
            starttime, ruid, euid = self._checked(pid, req, peer_start, peer_uid, admin, fd)
        except BaseException:
            if fd is not None:
                os.close(fd)  # in no selector yet
            raise
        p = ProcId(pid, starttime)
        if fd is not None:
            self.pidfd_gate.keep(p, fd, (ruid, euid))
        return p, ruid

    def pidfd_of(self, pid: int, starttime: int) -> int | None:
        """The pidfd held for agent (pid, starttime), None without one (AgentPidfds)."""
        a = self.by_pid.get(pid)
        return a.pidfd if a is not None and a.proc.starttime == starttime else None

    def _checked(self, pid: int, req: Registration, peer_start: int | None, peer_uid: int,
                 admin: bool, pidfd: int | None = None) -> tuple[int, int, int]:
        """check_register()'s checks: (start time, ruid, euid) or AgentRefused."""
        starttime, ruid, euid = _identify(self.root, pid, req, peer_start, pidfd)
        if not admin and not (ruid == peer_uid and euid == peer_uid):
            raise AgentRefused(Refusal.NOT_PERMITTED,
                f"uid {peer_uid} may register only its own processes, and process {pid} "
                f"runs as uid {ruid if ruid != peer_uid else euid}; root and members of group "
                f"{self.policy.daemon.admin_group!r} may register any process")
        if not admin:
            # a named NIC becomes an agent link: its RPS moves to this agent's home
            # CPU, a host-wide change that the policy must allow
            dp = self.policy.devices
            denied = [d for d in req.devices if not dp.agent_may_name(d)]
            if denied:
                raise AgentRefused(Refusal.NOT_PERMITTED,
                    f"uid {peer_uid} may not name device(s) {', '.join(denied)}: naming a "
                    "NIC steers its receive processing to the agent's home CPU; only root, "
                    f"group {self.policy.daemon.admin_group!r} and NICs the policy lists in "
                    "devices.agent_nameable may be named")
        p = ProcId(pid, starttime)
        if p not in self.agents:
            if len(self.agents) >= MAX_AGENTS:
                raise AgentRefused(Refusal.LIMIT, f"{MAX_AGENTS} agents are registered "
                                                    "already")
            # fewer agents in all than the per-uid limit: no uid can be at it (the
            # count is O(agents), skipped on nearly every registration)
            if not admin and len(self.agents) >= MAX_AGENTS_PER_UID:
                mine = sum(1 for a in self.agents.values() if a.uid == peer_uid)
                if mine >= MAX_AGENTS_PER_UID:
                    raise AgentRefused(Refusal.LIMIT, f"uid {peer_uid} has {mine} agents "
                                        f"registered already (limit {MAX_AGENTS_PER_UID})")
        return starttime, ruid, euid

    def register(self, p: ProcId, uid: int, req: Registration, source: str = "socket", *,
                 owner: int | None = None, logged_by_caller: bool = False) -> Agent:
        """Record (or update) a registration; the writes happen in place_pending().

        `owner`: the registering peer's uid when it is not an admin (Agent.owner).
        `logged_by_caller`: a new agent's log line (log_registered) is the
        caller's, made after it answered (handlers.py: a line at the default
        level cost the answer ~25 us)."""
        a = self.agents.get(p)
        if a is None:
            a = Agent(agent_id=req.agent_id, proc=p, uid=uid, latency_class=req.latency_class,
                      source=source, registered_at=time.time())
            fd, exited, creds = self.pidfd_gate.take(p)
            if exited:
                assert fd is not None
                os.close(fd)
                raise AgentRefused(Refusal.NO_SUCH_PROCESS, f"process {p.pid} has exited")
            a.pidfd = fd
            # what its forks inherit, for their restore at its exit (agents/forks.py)
            a.creds = creds
            if fd is not None:
                self.new_pidfds.append(a)
            self.agents[p] = a
            self.by_pid[p.pid] = a
            if not logged_by_caller:
                log_registered(a)
            self.cgroups.rescan(self.clock())
            self._read_cgroup(a)
        else:
            a.agent_id = req.agent_id
            a.latency_class = req.latency_class
            a.source = source
        a.owner = owner
        a.deadline_ns, a.budget_ns = req.deadline_ns, req.budget_ns
        a.numa_node = req.numa_node
        a.devices = req.devices
        a.state = AgentState.PENDING
        self._wants(a)
        self.dirty.add(p)
        return a

    def _read_cgroup(self, a: Agent) -> bool:
        """Refresh the agent's container identity and cpuset; True when either changed."""
        ac = self.cgroups.agent(a.proc.pid)
        if ac is None:
            return False
        changed = (ac.ident, ac.allowed) != (a.container, a.allowed)
        a.container, a.allowed = ac.ident, ac.allowed
        return changed

    def _wants(self, a: Agent) -> None:
        """What the class policy wants for `a` (agents/placement.py; no writes)."""
        dirty, cpu_dirty = self.placer.wants(a)
        if dirty:
            self.dirty.add(a.proc)
        if cpu_dirty:
            self.cpu_dirty = True

    # -- writes ----------------------------------------------------------
    def place_pending(self) -> dict[ProcId, AgentRefused | None]:
        """Apply the placement of every dirty agent in one engine batch (lock held)."""
        todo = [self.agents[p] for p in self.dirty if p in self.agents]
        self.dirty.clear()
        if not todo:
            return {}
        changes: list[Change] = []
        unwanted: dict[ProcId, set[str]] = {}  # process -> knobs its class no longer sets
        outcome: dict[ProcId, AgentRefused | None] = {}
        tids_of: dict[ProcId, list[int]] = {}
        fresh = {a.proc for a in todo if a.state is AgentState.PENDING and not a.applied
                 and a.pinned == 0}
        for a in todo:
            tids = tasks.list_tids(self.root, a.proc.pid)
            if not tids or not tasks.running(self.root, a.proc, a.pidfd):
                outcome[a.proc] = AgentRefused(Refusal.NO_SUCH_PROCESS,
                                                f"process {a.proc.pid} has exited")
                continue
            tids_of[a.proc] = tids
            a.threads = set(tids)
            changes += agent_changes(a, tids, why(a))
            knobs = wanted(a)
            if a.applied - knobs:
                unwanted[a.proc] = a.applied - knobs
            a.applied = knobs
        try:
            if unwanted:
                self.applier.restore(
                    (k, t) for k, t, _ in self.applier.entries(TASK_KNOBS)
                    if any(k in ks and belongs(t, p) for p, ks in unwanted.items()))
            results = self.applier.apply(changes)
        except AgentlatdError as e:
            # the journal could not be saved (ENOSPC, EROFS on the state
            # directory): the engine wrote nothing. New agents are not kept.
            log.error("cannot place %d agent(s): %s", len(todo), e)
            for a in todo:
                outcome.setdefault(a.proc, AgentRefused(
                    Refusal.UNAVAILABLE, f"agentlatd cannot journal the original values "
                    f"({e}), so it changed nothing"))
                if a.proc in fresh:
                    self._drop(a, "placement failed", forget=False)
                else:
                    a.state, a.problem = AgentState.FAILED, str(e)
            return outcome
        account(results, [a for a in todo if a.proc in tids_of])
        for a in todo:
            if a.proc in outcome:
                self._drop(a, "process exited during registration", forget=True)
                continue
            fill_originals(self.applier, a)
            outcome[a.proc] = None
        # exclusivity and pm_qos follow the agents' states: only an agent that has
        # either can change them (a home that changed set cpu_dirty already)
        if any(holds_cpu(a) for a in todo):
            self.cpu_dirty = True
        return outcome

    def unregister(self, p: ProcId, *, logged_by_caller: bool = False) -> Agent | None:
        """Restore a live agent's originals and drop it (lock held).
        `logged_by_caller`: as register()'s (log_dropped after the answer)."""
        a = self.agents.get(p)
        if a is None:
            return None
        # the processes it forked that the restore's walk of its descendants cannot
        # reach (a grandchild whose parent exited is init's): from its entries,
        # which the restore below drops, so first
        self.forks.follow(self.agents, self.by_pid)
        self.threads.restore_forked(a, self.agents, self.forks.take_journaled(a), "unregistered")
        keys = self._keys_of(p)
        self.applier.restore(keys)
        self.threads.restore_unjournaled(a, {t for _, t in keys})
        self._drop(a, "unregistered", forget=False, logged=logged_by_caller)
        return a

    def _drop(self, a: Agent, why: str, *, forget: bool, logged: bool = False) -> None:
        if forget:
            self.applier.forget(self._keys_of(a.proc))
        if a.pidfd is not None:
            self.close_pidfd(a.pidfd)
            a.pidfd = None
        self.placer.set_home(a, None)
        self.forks.forget(a)
        self.agents.pop(a.proc, None)
        if self.by_pid.get(a.proc.pid) is a:
            del self.by_pid[a.proc.pid]
        self.dirty.discard(a.proc)
        if holds_cpu(a):
            self.cpu_dirty = True
        if not logged:
            log_dropped(a, why)

    def _keys_of(self, p: ProcId) -> list[tuple[str, str]]:
        """The (knob, target) of p's task entries: O(p's entries), whatever the
        other agents hold (the journal's per-process index)."""
        return [(k, t) for k, t, _ in self.applier.entries_of(p, TASK_KNOBS) if belongs(t, p)]

    def mark_dead(self, p: ProcId) -> None:
        """A pidfd turned readable: the process exited (handled by reap(), lock held)."""
        self.dead.add(p)

    def reap(self) -> int:
        """Drop up to REAP_PIECE of the agents whose process exited (lock held); the
        rest stay in `dead` for the next loop turn, which does not sleep meanwhile."""
        batch = [self.dead.pop() for _ in range(min(REAP_PIECE, len(self.dead)))]
        self.exited_all(batch)
        return len(batch)

    def exited(self, p: ProcId) -> None:
        """The process is gone (pidfd readable or polling): forget its entries (lock held)."""
        self.exited_all((p,))

    def exited_all(self, procs: Iterable[ProcId]) -> None:
        """exited() for several processes, with ONE journal save for all."""
        gone = [a for p in procs if (a := self.agents.get(p)) is not None]
        if not gone:
            return
        # the forks queued before these exits, a moment ago included
        self.forks.follow(self.agents, self.by_pid)
        for a in gone:  # reads its entries: first
            self.threads.restore_forked(a, self.agents, self.forks.take_journaled(a))
        self.applier.forget(key for a in gone for key in self._keys_of(a.proc))
        for a in gone:
            self._drop(a, "process exited", forget=False)

    def journal_forks(self) -> None:
        """Bring the journal's copy of the remembered forks up to date (lock held;
        agents/forks.py "Journaled"): entries of forgotten processes dropped, new
        ones journaled with their agent's original and written values."""
        gone, new = self.forks.take_unsynced(time.monotonic())
        if gone:
            self.applier.forget((k, c.main.target) for c in gone for k in TASK_KNOBS)
        items: list[tuple[str, str, str, str]] = []
        kept: dict[ProcId, ProcId] = {}
        written: dict[ProcId, list[tuple[str, str, str]]] = {}  # per agent, read once
        room = MAX_JOURNALED - len(self.forks.journaled)
        for child, ap in new.items():
            a = self.agents.get(ap)
            if a is None or child in self.agents or a.creds is None or len(kept) >= room \
                    or tasks.thread_uids(self.root, child.pid, child.pid) != a.creds:
                continue  # not the agent's (any more), or no room: the live restore decides
            if ap not in written:
                written[ap] = self.applier.written(ap.main)
            target = child.main.target
            items += [(k, target, original, value) for k, original, value in written[ap]]
            kept[child] = ap
        if not items:
            return
        try:
            self.applier.inherit(items)
        except AgentlatdError as e:
            # the memory still holds them: the agent's exit or unregister restores
            # them; only a rollback without the daemon would not find them
            log.warning("could not journal %d process(es) agents forked: %s", len(kept), e)
            return
        self.forks.journaled.update(kept)

    def decline(self, p: ProcId) -> None:
        # only auto-registration reads this set (AutoRegistrar.scan, which also
        # drops exited processes from it each tick); with no auto_register rules
        # scan never runs and the set grew by one entry per unregister for ever
        # (bench/soak.py; tests/hostile/test_socket_abuse.py)
        if self.policy.auto_register:
            self.autoreg.declined.add(p)

    def find(self, pid: int) -> Agent | None:
        return self.by_pid.get(pid)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
