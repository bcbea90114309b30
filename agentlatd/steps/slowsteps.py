"""The daemon's always-on slowest-steps view: the IO end (its own thread).

Every `period_s` (0.1 s) one poll, for each registered agent whose process
keeps a step ring (agentlatd/steps/ring.py; found through /proc/PID/fd, as
`agentlatd trace --slow-steps` finds it, looked for again while absent: every
5 s for the agent's first minute, when a ring usually appears (a Client starts
after `agentlatd exec` registered its process), then every 5 s doubled per miss,
at most every 60 s: an agent that keeps no ring (a C agent without step
markers, a sleeping process) costs a listing of its fds a minute, not every 5 s):
  1. the ring's new records (at most `max_records` per agent and poll; older
     ones count as ring_missed), O(new records);
  2. one sample (agentlatd/sample/taskstat.py: schedstat, stat, sched through
     kept-open fds, one pread each) of each thread that stepped in the last
     `active_s` seconds (at most `max_threads` per agent), and one read of
     proc/stat for the per-CPU irq/softirq time;
  3. each new step above the agent's threshold (its deadline, else the p99
     of its reported steps, else of the steps the view read) bracketed by the
     thread's sample at or before its start and this poll's sample is
     attributed (agentlatd/steps/slowview.py) and kept (the last `keep`).
So a poll costs, per agent with a ring, its new records plus three small
reads per stepping thread (bench/slowsteps.py measures it with 1 and 100
agents); an agent without one costs nothing between its look-ups: its row is
summarized again only when its target changes (bench/threads.py: the thread's
CPU with 1000 of them). The cost is bounded: when a poll took more than
`max_cpu_share` (2 %) of the period in CPU time, the next one comes later (up
to `max_period_s`, 1 s), so with many agents the view stays within ~2 % of one
CPU and its windows grow.

Threads share nothing mutable: the main thread hands in the targets as a
tuple replaced whole (set_targets) and reads back the published tuple of
frozen AgentSlow (snapshot()); everything else belongs to this thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

from agentlatd.errors import KernelError
from agentlatd.sample.taskstat import CpuIrqProbe, TaskProbe, TaskSample
from agentlatd.steps import slowview as sv
from agentlatd.steps.ring import RingReader
from agentlatd.sysfs.pacing import PACER
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.slowsteps")

HISTORY = 64  # samples kept per thread: brackets steps up to HISTORY * period_s long
RECENT = 256  # step intervals kept per thread, for its step time inside a window
FIND_EVERY_S = 5.0
# a ring looked for every FIND_EVERY_S while the agent is this young; after, the
# wait doubles per miss up to FIND_MAX_S: 1000 ringless agents cost 200 fd
# listings a second at 5 s (~12 ms of this thread's CPU a second, bench/threads.py)
FIND_FRESH_S = 60.0
FIND_MAX_S = 60.0
# targets_steps() yields every this many agents: the whole pass cost 3-4 ms of
# the main loop at 1000 agents, which a registration arriving meanwhile waited for
TARGETS_PIECE = 64


@dataclass(frozen=True, slots=True)
class Target:
    """A registered agent, as the main thread hands it over."""

    pid: int
    starttime: int | None
    agent_id: str
    deadline_ns: int | None = None
    p99_ns: int | None = None  # of the steps its client reported (None: none reported)


@dataclass(slots=True)
class _Thread:
    probe: TaskProbe
    samples: deque[TaskSample] = field(default_factory=lambda: deque(maxlen=HISTORY))
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=RECENT))
    last_step_ns: int = 0


@dataclass(slots=True)
class _Agent:
    target: Target
    book: sv.AgentBook
    reader: RingReader | None = None
    next_find: float = 0.0
    first_seen: float = 0.0
    find_wait: float = FIND_EVERY_S  # the wait after the next miss (doubles past FIND_FRESH_S)
    row: sv.AgentSlow | None = None  # its summary while it has no ring (None: to make)
    threads: dict[int, _Thread] = field(default_factory=dict)
    threads_skipped: int = 0


def targets_of(agents: Iterable[object],
               p99_cache: dict[object, tuple[int, int | None]] | None = None
               ) -> tuple[Target, ...]:
    """Targets from registry Agents (agents/registry.py: proc, agent_id, deadline_ns,
    hist): read in the main thread, once per tick. `p99_cache`: proc -> (step count,
    p99), so an agent whose histogram did not grow costs no percentile."""
    steps = targets_steps(agents, p99_cache)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            out: tuple[Target, ...] = stop.value
            return out


def targets_steps(agents: Iterable[object],
                  p99_cache: dict[object, tuple[int, int | None]] | None = None
                  ) -> Generator[None, None, tuple[Target, ...]]:
    """targets_of() a piece at a time (yields every TARGETS_PIECE agents, for the
    main loop to serve requests between); the agents are listed once, first."""
    agents = list(agents)
    out: list[Target] = []
    for i, a in enumerate(agents):
        if i % TARGETS_PIECE == TARGETS_PIECE - 1:
            yield
        proc = getattr(a, "proc", None)
        if proc is None:
            continue
        hist = getattr(a, "hist", None)
        n = hist.count if hist is not None else 0
        hit = p99_cache.get(proc) if p99_cache is not None else None
        if hit is not None and hit[0] == n:
            p99 = hit[1]
        else:
            p99 = hist.percentile(0.99) if hist is not None and n >= sv.MIN_STEPS_FOR_P99 \
                else None
            if p99_cache is not None:
                p99_cache[proc] = (n, p99)
        out.append(Target(proc.pid, getattr(proc, "starttime", None),
                          str(getattr(a, "agent_id", proc.pid)),
                          getattr(a, "deadline_ns", None), p99))
    if p99_cache is not None and len(p99_cache) > len(out):  # agents gone
        live = {getattr(a, "proc", None) for a in agents}
        for k in [k for k in p99_cache if k not in live]:
            del p99_cache[k]
    return tuple(out)


class SlowSteps:
    def __init__(self, root: Root, *, period_s: float = 0.1, keep: int = 16,
                 max_records: int = 4096, max_threads: int = 16, active_s: float = 10.0,
                 max_cpu_share: float = 0.02, max_period_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.clock = clock  # when rings are looked for (tests step it)
        self.period_s = period_s
        self.max_cpu_share = max_cpu_share
        self.max_period_s = max_period_s
        self.keep = keep
        self.max_records = max_records
        self.max_threads = max_threads
        self.active_ns = int(active_s * 1e9)
        self._targets: tuple[Target, ...] = ()
        self._p99_cache: dict[object, tuple[int, int | None]] = {}  # the main thread's
        self._agents: dict[tuple[int, int | None], _Agent] = {}
        self._seen_targets: tuple[Target, ...] | None = None  # the tuple _agents was built from
        self._irq: deque[tuple[int, dict[int, int]]] = deque(maxlen=HISTORY)
        self._cpu: CpuIrqProbe | None = None
        self._published: tuple[sv.AgentSlow, ...] = ()
        self.polls = 0  # published with the snapshot: tests wait on it
        self.poll_cpu_ns = 0  # the last poll's CPU time (this thread)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the main thread's side -------------------------------------------
    def set_targets(self, targets: tuple[Target, ...]) -> None:
        self._targets = targets

    def update(self, agents: Iterable[object]) -> None:
        """set_targets(targets_of(agents)), with a p99 cache that only this caller
        (the main thread) touches."""
        self._targets = targets_of(agents, self._p99_cache)

    def update_steps(self, agents: Iterable[object]) -> Generator[None, None, None]:
        """update() a piece at a time (the main loop's agent tick); the targets are
        swapped in whole at the end."""
        self._targets = yield from targets_steps(agents, self._p99_cache)

    def snapshot(self) -> tuple[sv.AgentSlow, ...]:
        return self._published

    def rows(self) -> list[dict[str, object]]:
        return [a.to_json() for a in self._published]

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="agentlatd-slowsteps",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for ag in list(self._agents.values()):
            self._drop(ag)
        self._agents.clear()
        self._seen_targets = None
        if self._cpu is not None:
            self._cpu.close()
            self._cpu = None

    def next_wait(self) -> float:
        """Seconds to the next poll: period_s, longer when the last poll cost more
        than max_cpu_share of it (many agents), so the view's cost stays bounded
        (at most max_period_s; the windows, and so the split, get coarser)."""
        return min(self.max_period_s,
                   max(self.period_s, self.poll_cpu_ns / 1e9 / self.max_cpu_share))

    def _run(self) -> None:
        PACER.paced()  # its reads give way while the main loop serves (sysfs/pacing.py)
        while not self._stop.wait(self.next_wait()):
            try:
                self.poll()
            except Exception:  # a bug here must not end the view for good
                log.exception("slow-steps poll failed")

    # -- one poll (this thread; tests call it directly) -------------------
    def poll(self) -> None:
        c0 = time.thread_time_ns()
        now = self.clock()
        now_ns = time.monotonic_ns()
        targets = self._targets
        if targets is not self._seen_targets:  # the main thread handed in a new tuple
            self._seen_targets = targets
            keys = {(t.pid, t.starttime): t for t in targets}
            for key in [k for k in self._agents if k not in keys]:
                self._drop(self._agents.pop(key))
            for key, t in keys.items():
                ag = self._agents.get(key)
                if ag is None:
                    self._agents[key] = _Agent(t, sv.AgentBook(self.keep), first_seen=now)
                elif ag.target != t:
                    ag.target, ag.row = t, None
        for ag in self._agents.values():
            if ag.reader is None and now >= ag.next_find:
                self._find(ag, now)
        if any(ag.reader is not None for ag in self._agents.values()):
            irq = self._cpu_irq()
            if irq is not None:
                self._irq.append((now_ns, irq))
            for ag in self._agents.values():
                if ag.reader is not None:
                    try:
                        self._poll_agent(ag, now_ns)
                    except Exception:  # one agent's surprise must not blind the view
                        log.exception("slow-steps view of pid %d", ag.target.pid)
                        self._drop(ag)
        self.polls += 1
        self._published = tuple(self._row(ag) for ag in self._agents.values())
        self.poll_cpu_ns = time.thread_time_ns() - c0

    def _find(self, ag: _Agent, now: float) -> None:
        """Look for the agent's ring; on a miss, when to look again."""
        t = ag.target
        ag.next_find = now + ag.find_wait
        try:
            # from now: older steps have no thread sample before them to split by
            ag.reader = RingReader.open(self.root, t.pid, from_now=True)
        except (KernelError, OSError) as e:  # proc/PID/fd unreadable (EACCES)
            log.debug("step ring of pid %d: %s", t.pid, e)
        if ag.reader is not None:
            ag.row = None
            ag.find_wait = FIND_EVERY_S  # should it go, looked for again as a fresh one
            return
        if now - ag.first_seen >= FIND_FRESH_S:
            ag.find_wait = min(FIND_MAX_S, ag.find_wait * 2)

    def _row(self, ag: _Agent) -> sv.AgentSlow:
        """The agent's summary: made each poll while it has a ring (its book moves),
        else once per target (its book does not)."""
        if ag.reader is not None:
            return sv.summarize(ag.target.agent_id, ag.target.pid, ag.book,
                                self._threshold(ag), True)
        if ag.row is None:
            ag.row = sv.summarize(ag.target.agent_id, ag.target.pid, ag.book,
                                  self._threshold(ag), False)
        return ag.row

    def _cpu_irq(self) -> dict[int, int] | None:
        try:
            if self._cpu is None:
                self._cpu = CpuIrqProbe(self.root)
            return self._cpu.sample()
        except OSError as e:
            log.debug("proc/stat: %s", e)
            return None

    def _poll_agent(self, ag: _Agent, now_ns: int) -> None:
        assert ag.reader is not None
        try:
            recs = ag.reader.read_new(self.max_records)
        except (ValueError, OSError):
            self._drop_reader(ag)
            return
        ag.book.missed = ag.reader.missed
        t = ag.target
        if t.p99_ns is None and t.deadline_ns is None:
            ag.book.add_steps(r.duration_ns for r in recs)  # no reports: the ring's p99
        else:
            ag.book.steps += len(recs)
        thr = self._threshold(ag)
        for r in recs:
            th = ag.threads.get(r.tid)
            if th is None:
                if len(ag.threads) >= self.max_threads:
                    ag.threads_skipped += 1
                    continue
                try:
                    th = ag.threads[r.tid] = _Thread(TaskProbe(self.root, t.pid, r.tid))
                except OSError:
                    continue  # the thread has exited
            th.recent.append((r.start_ns, r.end_ns))
            th.last_step_ns = max(th.last_step_ns, r.end_ns)
        # one sample of each thread that stepped lately: the "after" of this
        # poll's steps and the "before" of the next poll's
        for tid in list(ag.threads):
            th = ag.threads[tid]
            if now_ns - th.last_step_ns > self.active_ns and th.samples:
                continue
            s = th.probe.sample(time.monotonic_ns())  # after the ring read: ends precede it
            if s is None:
                th.probe.close()
                del ag.threads[tid]
                continue
            th.samples.append(s)
        if thr is None:
            return
        for r in recs:
            if r.duration_ns < thr or r.duration_ns <= 0:
                continue
            ag.book.slow_count += 1
            th = ag.threads.get(r.tid)
            if th is None or len(th.samples) < 2:
                ag.book.unattributed += 1
                continue
            a = _before(th.samples, r.start_ns)
            b = th.samples[-1]
            if a is None or b.t_ns < r.end_ns:
                ag.book.unattributed += 1
                continue
            busy = sum(min(e, b.t_ns) - max(s0, a.t_ns) for s0, e in th.recent
                       if e > a.t_ns and s0 < b.t_ns)
            ag.book.add_slow(sv.attribute(r, a, b, busy, self._irq_at(a.t_ns),
                                          self._irq_at(b.t_ns)))

    @staticmethod
    def _threshold(ag: _Agent) -> int | None:
        t = ag.target
        return t.deadline_ns or t.p99_ns or ag.book.threshold_ns(None)

    def _irq_at(self, t_ns: int) -> dict[int, int]:
        for t, irq in reversed(self._irq):
            if t <= t_ns:
                return irq
        return {}

    def _drop_reader(self, ag: _Agent) -> None:
        if ag.reader is not None:
            with contextlib.suppress(Exception):
                ag.reader.close()
            ag.reader = None
            ag.row = None

    def _drop(self, ag: _Agent) -> None:
        self._drop_reader(ag)
        for th in ag.threads.values():
            th.probe.close()
        ag.threads.clear()


def _before(samples: deque[TaskSample], t_ns: int) -> TaskSample | None:
    """The latest sample taken at or before t_ns."""
    for s in reversed(samples):
        if s.t_ns <= t_ns:
            return s
    return None


def close_quietly(view: SlowSteps | None) -> None:
    if view is not None:
        with contextlib.suppress(Exception):
            view.stop()
