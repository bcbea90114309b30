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
gone), but the processes it forked live on, re-parented: the tick remembers
them (Agent.forked) and the exit gives them the originals.

Writes made for a non-admin peer (Agent.owner) reach only threads whose real
and effective uid are the peer's, checked per thread right before each
syscall (sample/tasks.py check_thread): a process whose threads run under
several uids (one dropped privileges with the raw setresuid syscall) gets
the class on the peer's threads only, and the agent is "partial".

Per-thread sched_setaffinity, not a cpuset cgroup (issue 4 asks to choose):
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

Exclusive home CPUs and pm_qos: agents/exclusive.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agentlatd.agents import containers
from agentlatd.agents.agent import Agent, MoveRecord
from agentlatd.agents.applier import TASK_KNOBS, Applier
from agentlatd.agents.autoreg import AutoRegistrar, agent_id_for
from agentlatd.agents.exclusive import CpuKeeper
from agentlatd.agents.refusal import AgentRefused, Refusal, Registration
from agentlatd.agents.threads import TICK_PIECE, ThreadUpkeep, account, agent_changes, prefix, wanted, why
from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import AgentlatdError, KernelError
from agentlatd.model.agent_links import AgentHome
from agentlatd.model.layout import CpuLayout
from agentlatd.plan.agents import (
    AgentPlace,
    HotTracker,
    Placed,
    class_wants,
    plan_moves,
    pm_qos_wanted,
)
from agentlatd.plan.changes import Change
from agentlatd.policy import Policy
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId, ThreadId

log = logging.getLogger("agentlatd.agents")

MAX_AGENTS = 16384  # in all
MAX_AGENTS_PER_UID = 4096  # for a non-admin uid


@dataclass(frozen=True, slots=True)
class ChainInput:
    """The chain keeper's decisions, given to the registry after each chain tick."""

    # pids of chain members (processes agents wait on): never exclusivity victims
    protected: frozenset[int] = frozenset()
    # agents whose home CPU may turn exclusive now (the do-no-harm guard has its
    # baseline and did not undo it); None: no keeper, every agent may
    exclusive_ok: frozenset[ProcId] | None = None


class AgentManager:
    """The agent side of the daemon: registry, placement, exclusivity, pm_qos.

    Methods that write (place_pending, unregister, tick, release_all) must be
    called with applier.lock held; the others are pure bookkeeping.
    """

    def __init__(self, applier: Applier, policy: Policy, *,
                 exclusive_scope_pid: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.applier = applier
        self.root = applier.root
        self.policy = policy
        self.clock = clock
        self.layout = CpuLayout(CpuSet(), CpuSet())
        self.heat: dict[int, float] = {}
        self.tracker = HotTracker()
        self.agents: dict[ProcId, Agent] = {}
        self.by_pid: dict[int, Agent] = {}
        self.load: dict[int, int] = {}
        self.dirty: set[ProcId] = set()
        self.dead: set[ProcId] = set()
        # exclusive home CPUs (their victims) and pm_qos: agents/exclusive.py
        self.cpus = CpuKeeper(applier, exclusive_scope_pid)
        self.autoreg = AutoRegistrar()
        self.notes: list[str] = []
        self.moves = 0
        self.cpu_dirty = True
        self.last_tick_s = 0.0
        # closes an agent's pidfd; the daemon replaces it to unregister the fd
        # from its selector first (a closed fd number is reused at once)
        self.close_pidfd: Callable[[int], None] = _close
        # agents whose pidfd the daemon has not put in its selector yet: it takes
        # them from here rather than walking every agent on every loop turn
        self.new_pidfds: list[Agent] = []
        # completion chains (agents/chain.py): what the chain keeper decided at
        # its last tick (set_chain)
        self.chain = ChainInput()
        self.threads = ThreadUpkeep(applier)  # new threads, forked processes
        # cgroups: each agent's cpuset, and CPUs other workloads hold exclusively
        self.cgroups = containers.Scanner(self.root)

    # -- inputs ----------------------------------------------------------
    def set_layout(self, layout: CpuLayout) -> None:
        if layout == self.layout:
            return
        self.layout = layout
        for a in self.agents.values():
            self._wants(a)
        self.cpu_dirty = True

    def homes(self) -> tuple[AgentHome, ...]:
        """The pinned agents with a home CPU, for the tuner's agent links."""
        return tuple(AgentHome(a.proc.pid, a.agent_id, a.home_cpu, a.devices)
                     for a in self.agents.values()
                     if a.home_cpu is not None and a.state in ("placed", "partial")
                     and self.policy.classes[a.latency_class].pin)

    def set_heat(self, heat: Mapping[int, float]) -> None:
        """A new heat sample (one per tuner tick)."""
        self.heat = dict(heat)
        self.tracker.update(self.heat, self.policy.heat)

    def set_chain(self, chain: ChainInput) -> None:
        """The chain keeper's decisions after its tick (the registry reads no keeper state)."""
        if chain != self.chain:
            self.chain = chain
            self.cpu_dirty = True

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy
        for a in self.agents.values():
            self._wants(a)
        self.cpu_dirty = True

    # -- registration ----------------------------------------------------
    def check_register(self, peer_pid: int, peer_uid: int, peer_start: int | None,
                       req: Registration, admin: bool) -> tuple[ProcId, int]:
        """Validate and authorise a register request; (process, its uid) or AgentRefused."""
        pid = req.pid if req.pid is not None else peer_pid
        st = tasks.pid_stat(self.root, pid)
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
        ids = tasks.status_ids(self.root, pid)
        if ids is None:
            raise AgentRefused(Refusal.NO_SUCH_PROCESS, f"process {pid} does not exist")
        tgid, ruid, euid = ids
        if tgid != pid:
            raise AgentRefused(Refusal.BAD_REQUEST,
                                f"pid {pid} is thread {pid} of process {tgid}, not a process; "
                                f"register the process (its thread-group leader, pid {tgid})")
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
        p = ProcId(pid, st.starttime)
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
        return p, ruid

    def register(self, p: ProcId, uid: int, req: Registration, source: str = "socket", *,
                 owner: int | None = None) -> Agent:
        """Record (or update) a registration; the writes happen in place_pending().

        `owner`: the registering peer's uid when it is not an admin (Agent.owner)."""
        a = self.agents.get(p)
        if a is None:
            a = Agent(agent_id=req.agent_id, proc=p, uid=uid, latency_class=req.latency_class,
                      source=source, registered_at=time.time())
            fd = None
            with contextlib.suppress(KernelError):
                fd = tasks.pidfd_open(p.pid)
            if fd is not None and not tasks.alive(self.root, p):
                # opened after the check: the pidfd may name a newer process
                os.close(fd)
                raise AgentRefused(Refusal.NO_SUCH_PROCESS, f"process {p.pid} has exited")
            a.pidfd = fd
            if fd is not None:
                self.new_pidfds.append(a)
            self.agents[p] = a
            self.by_pid[p.pid] = a
            self._read_originals(a)
            log.info("agent %r pid %d registered: class %s, uid %d, by %s", a.agent_id, p.pid,
                     a.latency_class, uid, source)
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
        a.state = "pending"
        self._wants(a)
        self.dirty.add(p)
        return a

    def _read_originals(self, a: Agent) -> None:
        """The main thread's affinity, nice and ioprio (the process was just checked)."""
        pid = a.proc.pid
        readers: dict[str, Callable[[], str]] = {
            "task.affinity": lambda: tasks.get_affinity(pid).to_list(),
            "task.nice": lambda: str(tasks.get_nice(pid)),
            "task.ioprio": lambda: tasks.get_ioprio(pid)}
        for knob, read in readers.items():
            with contextlib.suppress(KernelError):
                a.orig[knob] = read()

    def _read_cgroup(self, a: Agent) -> bool:
        """Refresh the agent's container identity and cpuset; True when either changed."""
        ac = self.cgroups.agent(a.proc.pid)
        if ac is None:
            return False
        changed = (ac.ident, ac.allowed) != (a.container, a.allowed)
        a.container, a.allowed = ac.ident, ac.allowed
        return changed

    def _usable(self, a: Agent) -> tuple[CpuSet | None, CpuSet]:
        """(its cpuset, CPUs held exclusively by other workloads)."""
        return a.allowed, containers.reserved_for(self.cgroups.holders, a.container)

    def _set_home(self, a: Agent, cpu: int | None) -> None:
        if a.home_cpu is not None:
            n = self.load.get(a.home_cpu, 0) - 1
            if n > 0:
                self.load[a.home_cpu] = n
            else:
                self.load.pop(a.home_cpu, None)
        a.home_cpu = cpu
        if cpu is not None:
            self.load[cpu] = self.load.get(cpu, 0) + 1

    def _wants(self, a: Agent) -> None:
        """What the class policy wants for `a` (plan/agents.py class_wants; no writes)."""
        allowed, reserved = self._usable(a)
        w = class_wants(self.policy.classes[a.latency_class],
                        AgentPlace(a.home_cpu, a.fallback, a.note, allowed, reserved,
                                   a.numa_node),
                        self.layout, self.heat, self.load, self.policy.heat,
                        self.tracker.hot(self.policy.heat))
        old_cpus, old_home, old_cpu_use = a.want_cpus, a.home_cpu, (a.exclusive, a.pm_qos)
        if w.home != a.home_cpu or w.rehomed:
            self._set_home(a, w.home)
        if w.rehomed:
            a.placed_mono = self.clock()
        if w.moved_why:
            a.last_move = MoveRecord(time.time(), old_home, w.home, w.moved_why)
        a.want_cpus, a.want_nice, a.want_ioprio = w.cpus, w.nice, w.ioprio
        a.exclusive, a.pm_qos, a.fallback, a.note = w.exclusive, w.pm_qos, w.fallback, w.note
        if a.want_cpus != old_cpus or a.home_cpu != old_home:
            self.dirty.add(a.proc)
            # exclusivity and pm_qos follow only the agents that have (or had) either
            if _holds_cpu(a) or old_cpu_use != (False, None):
                self.cpu_dirty = True
        if (a.exclusive, a.pm_qos) != old_cpu_use:
            self.cpu_dirty = True

    # -- writes ----------------------------------------------------------
    def place_pending(self) -> dict[ProcId, AgentRefused | None]:
        """Apply the placement of every dirty agent in one engine batch (lock held)."""
        todo = [self.agents[p] for p in self.dirty if p in self.agents]
        self.dirty.clear()
        if not todo:
            return {}
        changes: list[Change] = []
        unwanted: dict[str, set[str]] = {}  # prefix -> knobs its class no longer sets
        outcome: dict[ProcId, AgentRefused | None] = {}
        tids_of: dict[ProcId, list[int]] = {}
        fresh = {a.proc for a in todo if a.state == "pending" and not a.applied
                 and a.pinned == 0}
        for a in todo:
            tids = tasks.list_tids(self.root, a.proc.pid)
            # the pidfd names this very process: a poll, not a /proc read
            running = (tasks.pidfd_running(a.pidfd) if a.pidfd is not None
                       else tasks.alive(self.root, a.proc))
            if not tids or not running:
                outcome[a.proc] = AgentRefused(Refusal.NO_SUCH_PROCESS,
                                                f"process {a.proc.pid} has exited")
                continue
            tids_of[a.proc] = tids
            a.threads = set(tids)
            changes += agent_changes(a, tids, why(a))
            knobs = wanted(a)
            if a.applied - knobs:
                unwanted[prefix(a.proc)] = a.applied - knobs
            a.applied = knobs
        try:
            if unwanted:
                self.applier.restore(
                    (k, t) for k, t, _ in self.applier.entries(TASK_KNOBS)
                    if k in unwanted.get(t.rsplit(":", 1)[0] + ":", ()))
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
                    a.state, a.problem = "failed", str(e)
            return outcome
        account(results, [a for a in todo if a.proc in tids_of])
        for a in todo:
            if a.proc in outcome:
                self._drop(a, "process exited during registration", forget=True)
                continue
            outcome[a.proc] = None
        # exclusivity and pm_qos follow the agents' states: only an agent that has
        # either can change them (a home that changed set cpu_dirty already)
        if any(_holds_cpu(a) for a in todo):
            self.cpu_dirty = True
        return outcome

    def unregister(self, p: ProcId) -> Agent | None:
        """Restore a live agent's originals and drop it (lock held)."""
        a = self.agents.get(p)
        if a is None:
            return None
        pre = prefix(p)
        keys = [(k, t) for k, t, _ in self.applier.entries(TASK_KNOBS) if t.startswith(pre)]
        self.applier.restore(keys)
        journaled = {t for _, t in keys}
        # threads born pinned (inherited from a pinned thread) were never
        # journaled: give them the process's original when they still have ours
        wants = {"task.affinity": a.want_cpus.to_list() if a.want_cpus is not None else None,
                 "task.nice": str(a.want_nice) if a.want_nice is not None else None,
                 "task.ioprio": a.want_ioprio}
        if tasks.alive(self.root, p):
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
        self._drop(a, "unregistered", forget=False)
        return a

    def _drop(self, a: Agent, why: str, *, forget: bool) -> None:
        if forget:
            pre = prefix(a.proc)
            self.applier.forget((k, t) for k, t, _ in self.applier.entries(TASK_KNOBS)
                                if t.startswith(pre))
        if a.pidfd is not None:
            self.close_pidfd(a.pidfd)
            a.pidfd = None
        self._set_home(a, None)
        self.agents.pop(a.proc, None)
        if self.by_pid.get(a.proc.pid) is a:
            del self.by_pid[a.proc.pid]
        self.dirty.discard(a.proc)
        if _holds_cpu(a):
            self.cpu_dirty = True
        log.info("agent %r pid %d dropped: %s", a.agent_id, a.proc.pid, why)

    def mark_dead(self, p: ProcId) -> None:
        """A pidfd turned readable: the process exited (handled by reap(), lock held)."""
        self.dead.add(p)

    def reap(self) -> int:
        dead, self.dead = self.dead, set()
        for p in dead:
            self.exited(p)
        return len(dead)

    def exited(self, p: ProcId) -> None:
        """The process is gone (pidfd readable or polling): forget its entries (lock held)."""
        a = self.agents.get(p)
        if a is not None:
            self.threads.restore_forked(a, self.agents)
            self._drop(a, "process exited", forget=True)

    def decline(self, p: ProcId) -> None:
        # only auto-registration reads this set (AutoRegistrar.scan, which also
        # drops exited processes from it each tick); with no auto_register rules
        # scan never runs and the set grew by one entry per unregister for ever
        # (bench/soak.py; tests/hostile/test_socket_abuse.py)
        if self.policy.auto_register:
            self.autoreg.declined.add(p)

    # -- steps -----------------------------------------------------------
    def find(self, pid: int) -> Agent | None:
        return self.by_pid.get(pid)

    # -- the tick --------------------------------------------------------
    def tick(self) -> None:
        """The whole per-tick upkeep at once (lock held): see tick_steps()."""
        for _ in self.tick_steps():
            pass

    def tick_steps(self) -> Iterator[None]:
        """Per-tick upkeep (lock held while it runs): exits, new threads, forks, heat
        moves, auto-registration, exclusivity and pm_qos.

        A generator that yields between bounded pieces of work (a few agents
        each): the daemon runs it a slice per loop turn and serves requests in
        between, so a registration never waits for a whole tick of 1000 agents.
        Registrations, unregistrations and exits may happen at every yield: each
        piece re-checks that its agent is still the registered one, and nothing
        computed before a yield is written after it without that check.
        """
        t0 = time.perf_counter()
        spent = 0.0
        now = self.clock()
        self.reap()
        # a pidfd turns readable when its process exits (zombies included): one
        # poll() over all of them; the daemon's selector usually saw it first
        poller = select.poll()
        by_fd: dict[int, ProcId] = {}
        polled: list[Agent] = []
        for a in list(self.agents.values()):
            if a.pidfd is not None:
                poller.register(a.pidfd, select.POLLIN)
                by_fd[a.pidfd] = a.proc
            else:
                polled.append(a)
        if by_fd:
            for fd, _ev in poller.poll(0):
                if fd in by_fd:
                    self.exited(by_fd[fd])
        for i, a in enumerate(polled):
            if self.agents.get(a.proc) is a and not tasks.alive(self.root, a.proc):
                self.exited(a.proc)
            if i % TICK_PIECE == TICK_PIECE - 1:
                spent += time.perf_counter() - t0
                yield
                t0 = time.perf_counter()
        for _ in self.threads.new_threads(self.agents, self.dirty):
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        for _ in self.threads.scan_forks(self.agents):
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        for _ in self._cgroups(now):
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        for _ in self._moves(now):
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        # each O(agents) step below leaves the registry consistent: a yield between
        for step in (self._auto_register, self.place_pending, self.reconcile_cpus):
            step()
            spent += time.perf_counter() - t0
            yield
            t0 = time.perf_counter()
        self.last_tick_s = spent + time.perf_counter() - t0

    def _cgroups(self, now: float) -> Iterator[None]:
        """Every RESCAN_S: re-read exclusive holders and each agent's cgroup; re-place
        the agents whose cpuset or reserved CPUs changed. Yields every TICK_PIECE
        agents (two /proc and cgroup reads each: 15 ms at 1000 agents at once)."""
        if self.cgroups.scanned_at is not None and \
                now - self.cgroups.scanned_at < containers.RESCAN_S:
            return
        held_changed = self.cgroups.rescan(now, force=True)
        yield
        for i, a in enumerate(list(self.agents.values())):
            if self.agents.get(a.proc) is a and (self._read_cgroup(a) or held_changed):
                self._wants(a)
            if i % TICK_PIECE == TICK_PIECE - 1:
                yield

    def _moves(self, now: float) -> Iterator[None]:
        """Heat moves: the agents' places are read a piece at a time (yields between),
        then planned and applied at once; a move planned for an agent that
        left, or whose home changed meanwhile, is dropped."""
        pol = self.policy.heat
        placed = []
        agents = list(self.agents.values())
        for i, a in enumerate(agents):
            if i % (8 * TICK_PIECE) == 8 * TICK_PIECE - 1:
                yield
            if a.home_cpu is None or a.fallback or not self.policy.classes[a.latency_class].pin:
                continue
            allowed, reserved = self._usable(a)
            usable = (allowed - reserved) if allowed is not None else None
            if usable is None and reserved:
                usable = self.layout.home - reserved
            placed.append(Placed(str(a.proc), a.home_cpu, a.placed_mono, a.numa_node, usable))
        if not placed:
            return
        hot = self.tracker.hot(pol)
        moves, notes = plan_moves(placed, self.layout, self.heat, hot, pol, now)
        by_key = {str(a.proc): a for a in self.agents.values()} if moves else {}
        for m in moves:
            mover = by_key.get(m.key)
            if mover is None or mover.home_cpu != m.from_cpu or mover.fallback:
                continue
            a = mover
            self._set_home(a, m.to_cpu)
            a.want_cpus = CpuSet({m.to_cpu})
            a.placed_mono = now
            a.last_move = MoveRecord(time.time(), m.from_cpu, m.to_cpu, m.reason)
            self.dirty.add(a.proc)
            if _holds_cpu(a):
                self.cpu_dirty = True
            self.moves += 1
            log.info("agent %r pid %d moved from CPU %d to CPU %d: %s", a.agent_id, a.proc.pid,
                     m.from_cpu, m.to_cpu, m.reason)
        for n in notes:
            if n not in self.notes:
                log.warning("%s", n)
        self.notes = notes

    def _auto_register(self) -> None:
        rules = self.policy.auto_register
        if not rules:
            return
        for m in self.autoreg.scan(self.root, rules, self.agents.keys()):
            uids = tasks.uids_of(self.root, m.proc.pid)
            if uids is None:
                continue
            req = Registration(agent_id=agent_id_for(m.rule, m.comm, m.proc.pid), pid=m.proc.pid,
                           latency_class=m.rule.latency_class)
            try:
                self.register(m.proc, uids[0], req, source=f"auto:{m.rule_index}")
            except AgentRefused:
                continue
            log.info("auto-registered pid %d (%s) as %r, class %s (auto_register[%d])",
                     m.proc.pid, m.comm, req.agent_id, req.latency_class, m.rule_index)

    # -- exclusive home CPUs and pm_qos ---------------------------------------
    def _excl_wanted(self) -> CpuSet:
        ok = self.chain.exclusive_ok
        return CpuSet(a.home_cpu for a in self.agents.values()
                      if a.exclusive and a.home_cpu is not None and a.state != "failed"
                      and (ok is None or a.proc in ok))

    def reconcile_cpus(self, full: bool = True) -> None:
        """Bring victims and pm_qos in line with where agents live now (lock held).

        full=False (between ticks, after registrations): scan the host's tasks
        only when the set of exclusive CPUs changed; new tasks wait for the tick.
        """
        if not full and not self.cpu_dirty:
            # nothing an agent holds changed since the last reconcile (the chain
            # keeper's decisions come at the tick): O(agents) work saved per request
            return
        homes = [a for a in self.agents.values() if a.exclusive]
        held = CpuSet()
        for h in self.cgroups.holders:
            if not any(h.owns(a.container) for a in homes):
                held |= h.cpus
        pm = (pm_qos_wanted((a.home_cpu, a.pm_qos) for a in self.agents.values()
                            if a.pm_qos is not None and a.home_cpu is not None)
              if self.cpu_dirty else None)
        self.cpus.reconcile(self._excl_wanted(), held,
                            lambda: set(self.by_pid) | self.chain.protected, pm, full=full)
        self.cpu_dirty = False

    def release_all(self) -> None:
        """Before a full rollback (lock held): unregister every agent (restores the
        threads the journal does not hold yet) and widen inherited victims."""
        for p in list(self.agents):
            try:
                self.unregister(p)
            except Exception:
                log.exception("restoring agent pid %d", p.pid)
        self.cpus.release()
        for a in self.agents.values():
            if a.pidfd is not None:
                self.close_pidfd(a.pidfd)
                a.pidfd = None

    # -- views -----------------------------------------------------------
    def rows(self, extras: Callable[[Agent], dict[str, Any]] | None = None
             ) -> list[dict[str, Any]]:
        """Each agent's JSON row, with `extras(agent)` merged in (the chain keeper's)."""
        return [a.to_json() | (extras(a) if extras is not None else {})
                for a in sorted(self.agents.values(), key=lambda a: (a.agent_id, a.proc.pid))]

    def status(self) -> dict[str, Any]:
        classes: dict[str, int] = {}
        for a in self.agents.values():
            classes[a.latency_class] = classes.get(a.latency_class, 0) + 1
        return {
            "agents": len(self.agents), "classes": classes,
            "home_cpus": self.layout.home.to_list(),
            "completion_cpus": self.layout.completion.to_list(),
            "exclusive_cpus": self.cpus.excl.to_list(), "tasks_moved": len(self.cpus.victims),
            "held_cpus": [{"cpus": h.cpus.to_list(), "holder": h.describe()}
                          for h in self.cgroups.holders],
            "pm_qos": {str(c): v for c, v in sorted(self.cpus.pmqos.items())},
            "hot_cpus": sorted(self.tracker.hot(self.policy.heat)),
            "heat": {str(c): round(h, 4) for c, h in sorted(self.heat.items())},
            "moves": self.moves, "notes": list(self.notes),
            "agent_tick_ms": round(self.last_tick_s * 1000, 3),
        }


def _holds_cpu(a: Agent) -> bool:
    """Whether the agent's home CPU is exclusive or bounded by pm_qos because of it."""
    return a.exclusive or a.pm_qos is not None


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def parse_cpus(text: str) -> CpuSet | None:
    try:
        return CpuSet.parse_list(text)
    except CpuSetError:
        return None
