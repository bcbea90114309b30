"""The daemon's always-on slowest-steps view: attribution without a tracer (pure).

Input, per slow step read from an agent's step ring (agentlatd/steps/ring.py):
two samples of its thread (agentlatd/sample/taskstat.py) that bracket it, at
`a` (at or before the step's start) and `b` (at or after its end), and the
irq + softirq time of the CPU it ran on at the same two instants. Over the
window W = b - a the kernel says how long the thread was on a CPU (run), how
long runnable but waiting on a runqueue (wait: Documentation/scheduler/
sched-stats.rst "run delay"), on which CPU it ran and how often it migrated.

The split of the step's wall time D, in this order, each capped by what is left:
  runnable  wait * D / W       run delay spread evenly over the window (between
                              steps too: a wakeup from the agent's idle wait
                              is delayed outside any step)
  on_cpu    run * D / busy     busy = the thread's step time inside W: a loop's
                              CPU is spent in its steps
  irq       the CPU's irq + softirq time over W, times D / W (interrupt time
              is neither the thread's run time nor its run delay when it
              interrupts the running thread, under IRQ_TIME_ACCOUNTING)
  blocked   the rest: asleep in the step (a recv, a lock, a disk read)

A window as long as the step is exact; a longer one (the sampler's period,
see steps/slowsteps.py) gives a mean over the window: what `agentlatd trace
--slow-steps` gives exactly, with a tracer, this gives always and roughly.
Every SlowStep carries window_ns so a reader can tell. proc/stat irq time
has tick resolution (10 ms): the irq share is a rate, not an event count.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentlatd import stepstats as stats
from agentlatd.sample.taskstat import TaskSample
from agentlatd.steps.ring import StepRecord


class Cause(StrEnum):
    RUNNABLE = "runnable"  # waiting for a CPU behind other tasks
    IRQ = "irq"  # the CPU's hard and soft interrupts
    ON_CPU = "on_cpu"  # the step's own work
    BLOCKED = "blocked"  # asleep: I/O, a peer, a lock


CAUSES = tuple(Cause)
MIN_STEPS_FOR_P99 = 100  # below this many steps there is no p99 to call a step slow by


@dataclass(frozen=True, slots=True)
class SlowStep:
    seq: int
    step: int
    tid: int
    start_ns: int
    end_ns: int
    cpu: int | None
    migrations: int | None  # during the window; None: the kernel does not say
    window_ns: int  # the bracket the split comes from (>= the step when exact)
    causes: tuple[tuple[Cause, int], ...]  # ns per cause, summing to the duration

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def main_cause(self) -> Cause:
        return max(self.causes, key=lambda c: c[1])[0]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "step": self.step, "tid": self.tid, "start_ns": self.start_ns,
                "end_ns": self.end_ns, "duration_ns": self.duration_ns, "cpu": self.cpu,
                "migrations": self.migrations, "window_ns": self.window_ns,
                "cause": str(self.main_cause),
                "causes_ns": {str(c): ns for c, ns in self.causes}}


def attribute(rec: StepRecord, a: TaskSample, b: TaskSample, step_time_in_window: int,
              irq_a: Mapping[int, int], irq_b: Mapping[int, int]) -> SlowStep:
    """Split one step's wall time (module docstring). `step_time_in_window`: the
    thread's total step time between a and b, this step's included."""
    d = max(0, rec.end_ns - rec.start_ns)
    w = max(1, b.t_ns - a.t_ns)
    busy = max(d, step_time_in_window)
    wait = max(0, b.wait_ns - a.wait_ns)
    run = max(0, b.run_ns - a.run_ns)
    left = d
    runnable = min(left, wait * d // w)
    left -= runnable
    on_cpu = min(left, run * d // busy)
    left -= on_cpu
    cpu = b.cpu if b.cpu is not None else a.cpu
    irq = 0
    if cpu is not None and cpu in irq_a and cpu in irq_b:
        irq = min(left, max(0, irq_b[cpu] - irq_a[cpu]) * d // w)
    left -= irq
    mig = None
    if a.migrations is not None and b.migrations is not None:
        mig = max(0, b.migrations - a.migrations)
    return SlowStep(rec.seq, rec.step, rec.tid, rec.start_ns, rec.end_ns, cpu, mig, w,
                    ((Cause.RUNNABLE, runnable), (Cause.IRQ, irq), (Cause.ON_CPU, on_cpu),
                     (Cause.BLOCKED, left)))


class AgentBook:
    """One agent's view: its steps' histogram (for the p99 threshold), the last
    `keep` slow steps, and the time by cause summed over every slow step."""

    __slots__ = ("hist", "missed", "slow", "slow_count", "steps", "time_by_cause",
                 "unattributed")

    def __init__(self, keep: int) -> None:
        self.hist = stats.Histogram.empty()
        self.slow: deque[SlowStep] = deque(maxlen=keep)
        self.slow_count = 0
        self.steps = 0
        self.missed = 0  # ring records overwritten before the view read them
        self.unattributed = 0  # slow steps with no sample before them (a thread new to the view)
        self.time_by_cause: dict[Cause, int] = dict.fromkeys(CAUSES, 0)

    def threshold_ns(self, deadline_ns: int | None) -> int | None:
        """A step is slow above the agent's declared deadline, else above the p99
        of the steps the view has seen (None until there are enough)."""
        if deadline_ns:
            return deadline_ns
        if self.hist.count < MIN_STEPS_FOR_P99:
            return None
        return self.hist.percentile(0.99)

    def add_steps(self, durations: Iterable[int]) -> None:
        for d in durations:
            self.hist.add(d)
            self.steps += 1

    def add_slow(self, s: SlowStep) -> None:
        """Keep an attributed slow step (slow_count is the caller's: it counts the
        unattributed ones too)."""
        self.slow.append(s)
        for c, ns in s.causes:
            self.time_by_cause[c] += ns


@dataclass(frozen=True, slots=True)
class AgentSlow:
    """What `agentlatd agents --slow` and the metrics show of one agent."""

    agent_id: str
    pid: int
    threshold_ns: int | None
    steps: int
    slow_steps: int
    unattributed: int
    missed: int
    time_by_cause: tuple[tuple[Cause, int], ...]
    slowest: tuple[SlowStep, ...]  # the last N slow steps, slowest first
    ring: bool  # the process has a step ring

    def to_json(self) -> dict[str, Any]:
        total = sum(ns for _, ns in self.time_by_cause)
        return {"agent_id": self.agent_id, "pid": self.pid, "ring": self.ring,
                "threshold_ns": self.threshold_ns, "steps": self.steps,
                "slow_steps": self.slow_steps, "unattributed": self.unattributed,
                "ring_missed": self.missed,
                "time_by_cause_ns": {str(c): ns for c, ns in self.time_by_cause},
                "share_by_cause": {str(c): round(ns / total, 4) if total else 0.0
                                   for c, ns in self.time_by_cause},
                "slowest": [s.to_json() for s in self.slowest]}


def summarize(agent_id: str, pid: int, book: AgentBook | None, threshold_ns: int | None,
              ring: bool) -> AgentSlow:
    if book is None:
        return AgentSlow(agent_id, pid, threshold_ns, 0, 0, 0, 0,
                         tuple((c, 0) for c in CAUSES), (), ring)
    return AgentSlow(agent_id, pid, threshold_ns, book.steps, book.slow_count,
                     book.unattributed, book.missed, tuple(book.time_by_cause.items()),
                     tuple(sorted(book.slow, key=lambda s: -s.duration_ns)), ring)
