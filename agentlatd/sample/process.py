"""proc/self/stat, proc/self/fd: the daemon's own cost, for the standard process_* metrics.

Documentation/filesystems/proc.rst, "Table 1-4: Contents of the stat fields"
(fs/proc/array.c do_task_stat()): field 14 utime and 15 stime in USER_HZ
ticks, 20 num_threads, 22 starttime in ticks since boot, 23 vsize in bytes,
24 rss in pages. The names and meanings are those of prometheus_client's
ProcessCollector (process_cpu_seconds_total, process_resident_memory_bytes,
...), so dashboards written for any Prometheus client work on agentlatd too.

Always the live process (Root("/")): the daemon may run on a recorded tree
(--root), but its own cost is that of this process.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root

CONTEXT = "the daemon's own process"


@dataclass(frozen=True, slots=True)
class SelfStat:
    cpu_seconds: float  # utime + stime
    threads: int
    start_ticks: int  # since boot, USER_HZ
    virtual_bytes: int
    resident_pages: int


def parse_self_stat(text: str) -> SelfStat:
    """One proc/PID/stat line; comm may hold spaces and ')': split at the LAST ')'."""
    _, sep, rest = text.rpartition(")")
    f = rest.split()
    if not sep or len(f) < 22:
        raise ValueError(f"stat line has {len(f) + 2} fields, expected >= 24")
    tck = os.sysconf("SC_CLK_TCK")
    # f[0] is field 3 (state): field N is f[N - 3]
    return SelfStat(cpu_seconds=(int(f[11]) + int(f[12])) / tck, threads=int(f[17]),
                    start_ticks=int(f[19]), virtual_bytes=int(f[20]), resident_pages=int(f[21]))


@dataclass(frozen=True, slots=True)
class ProcessSample:
    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    start_time: float  # seconds since the epoch
    open_fds: int
    max_fds: int
    threads: int


def read_process(root: Root, btime: int) -> ProcessSample | None:
    """The daemon's own process; None when proc/self cannot be read (no /proc)."""
    try:
        st = parse_self_stat(root.read_text("proc/self/stat", CONTEXT))
        fds = len(os.listdir(root.path("proc/self/fd")))
    except (KernelError, ValueError, OSError):
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return ProcessSample(
        cpu_seconds=st.cpu_seconds, resident_bytes=st.resident_pages * os.sysconf("SC_PAGESIZE"),
        virtual_bytes=st.virtual_bytes, start_time=btime + st.start_ticks / os.sysconf("SC_CLK_TCK"),
        # listdir's own fd is open while it reads the directory
        open_fds=max(0, fds - 1), max_fds=soft if soft != resource.RLIM_INFINITY else -1,
        threads=st.threads)
