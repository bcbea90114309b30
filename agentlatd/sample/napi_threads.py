"""proc/PID/{stat,status}: the threaded-NAPI kernel threads "napi/<dev>-<napi_id>".

Kernel: net/core/dev.c napi_kthread_create() starts one kthread per NAPI
instance once sys/class/net/<dev>/threaded is 1 (Documentation/ABI/testing/
sysfs-class-net "threaded"; Documentation/networking/napi.rst "Threaded
NAPI"): kthread_run(napi_threaded_poll, n, "napi/%s-%d", dev->name,
n->napi_id). It is created without kthread_bind(), so it is not
PF_NO_SETAFFINITY and sched_setaffinity(2) moves it; nothing in the kernel
does (it inherits kthreadd's mask: every housekeeping CPU).

comm is cut at TASK_COMM_LEN - 1 = 15 characters (proc(5) /proc/PID/comm), so
"napi/enp175s0f0np0-8193" reads "napi/enp175s0f" and only a prefix of the
device name survives; owner() matches such a name when exactly one device
fits it.

  proc/PID/stat     comm (field 2), flags (9: PF_KTHREAD), starttime (22)
  proc/PID/status   Cpus_allowed_list: the thread's affinity

read_napi_threads(root) reads; parse_cpus_allowed and owner take text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.sample.tasks import CONTEXT, list_pids, parse_pid_stat, read_pid_stat
from agentlatd.sysfs.root import Root

PREFIX = "napi/"
COMM_MAX = 15  # TASK_COMM_LEN - 1
_FULL = re.compile(r"^napi/(?P<dev>.+)-(?P<id>\d+)$")


@dataclass(frozen=True, slots=True)
class NapiThreadSample:
    pid: int
    starttime: int
    comm: str  # "napi/eth0-8193", maybe cut at 15 characters
    cpus: CpuSet | None  # Cpus_allowed_list (None: unreadable)


def parse_cpus_allowed(text: str) -> CpuSet | None:
    """The Cpus_allowed_list line of proc/PID/status."""
    for line in text.splitlines():
        if line.startswith("Cpus_allowed_list:"):
            try:
                return CpuSet.parse_list(line.split(":", 1)[1].strip())
            except CpuSetError:
                return None
    return None


def owner(comm: str, devices: Iterable[str]) -> tuple[str, int | None] | None:
    """(device, napi id) a napi/... comm names; None when none (or not one) fits.

    A full name ("napi/eth0-8193") names its device exactly; a cut one
    ("napi/enp175s0f", 15 characters) names the single device whose
    "napi/<dev>-" starts with it or starts it.
    """
    if not comm.startswith(PREFIX):
        return None
    names = set(devices)
    m = _FULL.match(comm)
    if m is not None and m["dev"] in names:
        return m["dev"], int(m["id"])
    if len(comm) < COMM_MAX:
        return None
    fits = [d for d in names
            if f"{PREFIX}{d}-".startswith(comm) or comm.startswith(f"{PREFIX}{d}-")]
    return (fits[0], None) if len(fits) == 1 else None


def read_napi_threads(root: Root) -> tuple[NapiThreadSample, ...]:
    """Every kernel thread whose comm starts with "napi/", by pid."""
    out: list[NapiThreadSample] = []
    for pid in list_pids(root):
        try:
            st = parse_pid_stat(read_pid_stat(root, pid))
        except (KernelError, ValueError):
            continue  # exited between listdir and read
        if not st.kthread or not st.comm.startswith(PREFIX) or st.no_setaffinity:
            continue
        try:
            cpus = parse_cpus_allowed(root.read_text(f"proc/{pid}/status", CONTEXT))
        except KernelError:
            continue
        out.append(NapiThreadSample(pid, st.starttime, st.comm, cpus))
    return tuple(out)
