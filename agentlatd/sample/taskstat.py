"""proc/PID/task/TID/{schedstat,stat,sched} and proc/stat, read through kept-open files.

The always-on slowest-steps view (agentlatd/steps/slowsteps.py) samples each
stepping thread several times a second, so each read must be cheap:

  schedstat  Documentation/scheduler/sched-stats.rst: on-CPU ns, run delay ns
             (runnable, waiting on a runqueue), timeslices (CONFIG_SCHED_INFO)
  stat       proc(5) field 39 "processor": the CPU the thread last ran on
  sched      kernel/sched/debug.c proc_sched_show_task(): "se.nr_migrations"
             (CONFIG_SCHED_DEBUG; absent without it: migrations are then None)
  proc/stat  per-CPU irq and softirq time (USER_HZ ticks, agentlatd/sample/stat.py)

Why a kept-open fd read with pread(2) at offset 0 rather than Root.read_text:
these are seq_files, which render anew on a read at offset 0, so one open
serves every sample: one system call per file and sample instead of three
(open, read, close). An fd on a task's file keeps naming that task: once it
exits every read fails (ESRCH), so a recycled tid is never read by mistake.
Parsers take text; the schedstat and stat parsers are sample/schedstat.py's
(the ones `agentlatd trace` uses).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from agentlatd.sample.schedstat import parse_schedstat, parse_stat_cpu
from agentlatd.sample.stat import USER_HZ
from agentlatd.sysfs.root import Root

TICK_NS = 1_000_000_000 // USER_HZ


@dataclass(frozen=True, slots=True)
class TaskSample:
    """One thread at one instant (t_ns: CLOCK_MONOTONIC, the step ring's clock)."""

    t_ns: int
    run_ns: int  # on a CPU, since the thread started
    wait_ns: int  # runnable on a runqueue, since the thread started
    cpu: int | None  # the CPU it last ran on
    migrations: int | None  # se.nr_migrations; None without CONFIG_SCHED_DEBUG


def parse_nr_migrations(text: str) -> int | None:
    """"se.nr_migrations   :   3" in proc/PID/task/TID/sched -> 3; None when absent."""
    for line in text.splitlines():
        if line.startswith("se.nr_migrations"):
            _, _, v = line.partition(":")
            try:
                return int(v.strip())
            except ValueError:
                return None
    return None


def parse_cpu_irq_ns(text: str) -> dict[int, int]:
    """proc/stat -> cpu -> irq + softirq time since boot, ns (tick resolution).

    Only the "cpuN" lines' 6th and 7th numbers (the format in agentlatd/sample/stat.py),
    read without building the whole Stat: ~10x cheaper, and the view reads proc/stat
    every poll. A kernel older than 2.6.0 (no irq fields) gives {}."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            if out:
                break  # the cpu lines come first and together
            continue
        toks = line.split(None, 8)
        name = toks[0]
        if len(name) == 3 or len(toks) < 8:
            continue  # the aggregate "cpu" line, or no irq fields
        try:
            out[int(name[3:])] = (int(toks[6]) + int(toks[7])) * TICK_NS
        except ValueError:
            continue
    return out


def _pread(fd: int, size: int) -> str:
    return os.pread(fd, size, 0).decode("ascii", "replace")


class TaskProbe:
    """One thread's schedstat, stat and sched files, opened once (module docstring)."""

    __slots__ = ("fds", "pid", "tid")

    def __init__(self, root: Root, pid: int, tid: int) -> None:
        self.pid, self.tid = pid, tid
        base = f"proc/{pid}/task/{tid}/"
        self.fds: list[int | None] = []
        try:
            for name, required in (("schedstat", True), ("stat", True), ("sched", False)):
                try:
                    self.fds.append(os.open(root.path(base + name), os.O_RDONLY | os.O_CLOEXEC))
                except OSError:
                    if required:
                        raise
                    self.fds.append(None)
        except OSError:
            self.close()
            raise

    def sample(self, now_ns: int) -> TaskSample | None:
        """The thread now; None when it has exited (or a file no longer parses)."""
        ss_fd, st_fd, sc_fd = self.fds
        if ss_fd is None or st_fd is None:
            return None
        try:
            ss = parse_schedstat(_pread(ss_fd, 128))
            cpu = parse_stat_cpu(_pread(st_fd, 1024))
            mig = parse_nr_migrations(_pread(sc_fd, 8192)) if sc_fd is not None else None
        except OSError:  # ESRCH: the thread exited
            return None
        if ss is None:
            return None
        return TaskSample(now_ns, ss.run_ns, ss.wait_ns, cpu, mig)

    def close(self) -> None:
        for fd in self.fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fds = [None, None, None]


class CpuIrqProbe:
    """proc/stat kept open: per-CPU irq + softirq ns at each read."""

    def __init__(self, root: Root) -> None:
        self.fd: int | None = os.open(root.path("proc/stat"), os.O_RDONLY | os.O_CLOEXEC)

    def sample(self) -> dict[int, int]:
        if self.fd is None:
            return {}
        chunks: list[bytes] = []
        off = 0
        while True:  # proc/stat of a large host is longer than one page
            b = os.pread(self.fd, 65536, off)
            if not b:
                break
            chunks.append(b)
            off += len(b)
        return parse_cpu_irq_ns(b"".join(chunks).decode("ascii", "replace"))

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
