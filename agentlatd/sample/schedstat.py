"""proc/PID/task/TID/schedstat: per-thread run delay, always on and cheap.

Documentation/scheduler/sched-stats.rst ("/proc/<pid>/schedstat"): three
numbers, "time spent on the cpu (ns)", "time spent waiting on a runqueue
(ns)", "# of timeslices run on this cpu". The second is the sum of every
wakeup-to-run and preempted-to-run delay of the thread: no tracing, no BPF,
readable by the process owner. Two samples give the thread's run delay per
timeslice over an interval: a mean, not a tail, but it needs nothing.
(kernel/sched/stats.h sched_info_enqueue/dequeue; needs CONFIG_SCHED_INFO,
which schedstats-less kernels still have; the file is absent without it.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root


@dataclass(frozen=True, slots=True)
class SchedStat:
    run_ns: int  # on the CPU
    wait_ns: int  # runnable, waiting on a runqueue
    slices: int  # times it was switched in


@dataclass(frozen=True, slots=True)
class RunDelay:
    """What a thread did between two samples."""

    tid: int
    run_ns: int
    wait_ns: int
    slices: int

    @property
    def mean_wait_ns(self) -> float:
        return self.wait_ns / self.slices if self.slices else 0.0


def parse_schedstat(text: str) -> SchedStat | None:
    """"0 2214929 1" -> SchedStat; None when malformed."""
    toks = text.split()
    if len(toks) < 3:
        return None
    try:
        return SchedStat(int(toks[0]), int(toks[1]), int(toks[2]))
    except ValueError:
        return None


def read_schedstat(root: Root, pid: int, tid: int) -> str:
    return root.read_text(f"proc/{pid}/task/{tid}/schedstat")


def parse_stat_cpu(text: str) -> int | None:
    """The CPU a thread last ran on: field 39 of proc/PID/task/TID/stat (proc(5) "processor").

    The comm field (2) may hold spaces and parentheses: count fields after the
    last ')'.
    """
    _, sep, rest = text.rpartition(")")
    if not sep:
        return None
    toks = rest.split()
    # rest starts at field 3 (state); field 39 is index 36
    try:
        return int(toks[36])
    except (IndexError, ValueError):
        return None


def sample_threads(root: Root, pid: int) -> dict[int, SchedStat]:
    """tid -> SchedStat of every thread of `pid` now ({} when it is gone)."""
    out: dict[int, SchedStat] = {}
    for name in root.listdir(f"proc/{pid}/task"):
        if not name.isdigit():
            continue
        tid = int(name)
        try:
            s = parse_schedstat(read_schedstat(root, pid, tid))
        except KernelError:  # the thread ended between the listing and the read
            continue
        if s is not None:
            out[tid] = s
    return out


def last_cpus(root: Root, pid: int) -> dict[int, int]:
    """tid -> CPU each thread of `pid` last ran on."""
    out: dict[int, int] = {}
    for name in root.listdir(f"proc/{pid}/task"):
        if name.isdigit():
            cpu = parse_stat_cpu(root.read_optional(f"proc/{pid}/task/{name}/stat"))
            if cpu is not None:
                out[int(name)] = cpu
    return out


def delta(before: Mapping[int, SchedStat], after: Mapping[int, SchedStat]) -> list[RunDelay]:
    """Per-thread run delay between two samples; threads in both only, counters
    that went backwards (a recycled tid) dropped."""
    out: list[RunDelay] = []
    for tid in sorted(after):
        b, a = before.get(tid), after[tid]
        if b is None or a.run_ns < b.run_ns or a.wait_ns < b.wait_ns or a.slices < b.slices:
            continue
        out.append(RunDelay(tid, a.run_ns - b.run_ns, a.wait_ns - b.wait_ns, a.slices - b.slices))
    return out
