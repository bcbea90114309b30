"""Processes and threads: proc/PID/stat, proc/PID/task, and the per-thread syscalls.

Kernel files (Documentation/filesystems/proc.rst, man 5 proc):
  proc/PID/stat             field 4 ppid, 9 flags (PF_*), 19 nice, 22 starttime
                            (clock ticks since boot), 39 processor
  proc/PID/task/TID/stat    the same for one thread
  proc/PID/status           "Uid:" real, effective, saved, fs
  proc/PID/comm, proc/PID/exe, proc/PID/cgroup   for auto-registration
Syscalls (man 2): sched_setaffinity/sched_getaffinity (per thread: the pid
argument is a TID, kernel/sched/core.c find_process_by_pid()), setpriority/
getpriority(PRIO_PROCESS, tid) (per thread on Linux, man 2 setpriority
"BUGS"), ioprio_set/ioprio_get(IOPRIO_WHO_PROCESS, tid) (per thread,
block/ioprio.c), pidfd_open (5.3+).

A process is (pid, starttime), never a bare pid (style.md habit 10, psutil's
create_time rule): pids are recycled, starttime is not (within one boot). A
thread is named by the target string "<pid>:<starttime>:<tid>": every read and
write first checks that proc/PID/stat still shows that starttime and that TID
is still one of PID's threads (proc/PID/task/TID), right before the syscall.
What is left is the window between that check and the syscall itself (a few
microseconds): the tid would have to exit and the whole pid space wrap around
within it. The daemon also holds a pidfd of each agent, whose liveness proves
the pid has not been reused: check_thread takes that proof (a Witness) in place
of the proc/PID/stat read where it is given one.

Parsers take text (parse_*); readers go through Root (read_*); OSError from a
syscall becomes KernelError with context "process" (ESRCH = gone), once, here.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import platform
import re
import select
import signal
import struct
from dataclasses import dataclass
from typing import Protocol

from agentlatd.cpuset import CpuSet
from agentlatd.errors import KernelError
from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import TaskTarget, format_target, parse_target, task_target_text
from agentlatd.sysfs.root import Root

CONTEXT = "process"

# include/linux/sched.h
PF_KTHREAD = 0x00200000  # I am a kernel thread
PF_NO_SETAFFINITY = 0x04000000  # userland is not allowed to meddle with cpus_mask

PID_MAX = 1 << 22  # PID_MAX_LIMIT on 64-bit (include/linux/threads.h)


class TaskGone(KernelError):
    """The process or thread named by a target no longer exists (or was recycled)."""

    def __init__(self, op: str, target: str, detail: str) -> None:
        super().__init__(op, f"task {target} ({detail})", errno.ESRCH, CONTEXT)


# ---------------------------------------------------------------------------
# identities


@dataclass(frozen=True, slots=True)
class ProcId:
    """A process: (pid, starttime in clock ticks since boot)."""

    pid: int
    starttime: int

    def __str__(self) -> str:
        return f"{self.pid}:{self.starttime}"

    @property
    def main(self) -> ThreadId:
        """Its main thread (tid = pid): where a process's own task entries are."""
        return ThreadId(self.pid, self.starttime, self.pid)


@dataclass(frozen=True, slots=True)
class ThreadId:
    """A thread of a process: the knob target "<pid>:<starttime>:<tid>"."""

    pid: int
    starttime: int
    tid: int

    @property
    def proc(self) -> ProcId:
        return ProcId(self.pid, self.starttime)

    @property
    def key(self) -> TaskTarget:
        """The typed target of a task knob (Change.target)."""
        return TaskTarget(self.pid, self.starttime, self.tid)

    @property
    def target(self) -> str:
        """The string form (the journal's "target", a KnobResult's)."""
        text = task_target_text(self.pid, self.starttime, self.tid)
        return text if text is not None else format_target(self.key)

    @classmethod
    def parse(cls, target: str) -> ThreadId:
        return _parse_thread(target)


@functools.lru_cache(maxsize=256)
def _parse_thread(target: str) -> ThreadId:
    """ThreadId.parse, remembered: one registration's target is parsed by the
    batch's check, read, write, verify and the accounting after it (ten
    parses of one string, bench/agents.py); a ThreadId is immutable. Small: it
    only has to outlive one registration (a cache of every agent's threads
    would grow the daemon with each new process for as long as it runs:
    tests/hostile/test_socket_abuse.py's long-lived connection)."""
    t = parse_target(KnobName.TASK_AFFINITY, target)
    assert isinstance(t, TaskTarget)  # the knob's kind
    return ThreadId(t.pid, t.starttime, t.tid)


def valid_pid(v: object) -> int | None:
    """`v` as a pid when it is a JSON integer in 1..PID_MAX-1, else None."""
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return v if 0 < v < PID_MAX else None


# ---------------------------------------------------------------------------
# proc/PID/stat


@dataclass(frozen=True, slots=True)
class PidStat:
    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    nice: int
    num_threads: int
    starttime: int
    processor: int  # CPU it last ran on (-1 when the line is short)

    @property
    def kthread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    @property
    def no_setaffinity(self) -> bool:
        return bool(self.flags & PF_NO_SETAFFINITY)


def parse_pid_stat(text: str) -> PidStat:
    """One line of proc/PID/stat. comm may hold spaces and ')': split at the LAST ')'."""
    head, sep, rest = text.rpartition(")")
    if not sep:
        raise ValueError("no ')' in stat line")
    pid_s, _, comm = head.partition(" (")
    f = rest.split()
    # f[0] is field 3 (state): field N is f[N - 3]
    if len(f) < 20:
        raise ValueError(f"stat line has {len(f) + 2} fields, expected >= 22")
    return PidStat(
        pid=int(pid_s), comm=comm, state=f[0], ppid=int(f[1]), flags=int(f[6]),
        nice=int(f[16]), num_threads=int(f[17]), starttime=int(f[19]),
        processor=int(f[36]) if len(f) > 36 else -1)


def read_pid_stat(root: Root, pid: int, tid: int | None = None) -> str:
    rel = f"proc/{pid}/stat" if tid is None else f"proc/{pid}/task/{tid}/stat"
    return root.read_text(rel, CONTEXT)


def pid_stat(root: Root, pid: int, tid: int | None = None) -> PidStat | None:
    """Parsed stat of a process (or one of its threads); None when it is gone."""
    try:
        return parse_pid_stat(read_pid_stat(root, pid, tid))
    except (KernelError, ValueError):
        return None


def starttime_of(root: Root, pid: int) -> int | None:
    st = pid_stat(root, pid)
    return st.starttime if st is not None else None


def proc_id(root: Root, pid: int) -> ProcId | None:
    """(pid, starttime) of a live process, None when there is none."""
    st = starttime_of(root, pid)
    return ProcId(pid, st) if st is not None else None


def alive(root: Root, p: ProcId) -> bool:
    """The process still exists with the same starttime (not recycled)."""
    st = pid_stat(root, p.pid)
    return st is not None and st.starttime == p.starttime and st.state not in ("Z", "X")


# proc/PID/status lines are found by name, not by splitting its ~55 lines: every
# registration reads it (status_ids), and every write made for a non-admin peer
# reads a thread's (thread_uids)
def _status_field(text: str, name: str) -> str:
    """The value of line `name` ("Uid:") of proc/PID/status; ValueError without one."""
    if text.startswith(name):
        i = 0
    else:
        i = text.find("\n" + name) + 1
        if i == 0:
            raise ValueError(f"no {name} line in status")
    j = text.find("\n", i)
    return text[i + len(name):j if j >= 0 else len(text)]


def parse_status_uids(text: str) -> tuple[int, int]:
    """(real uid, effective uid) from proc/PID/status."""
    f = _status_field(text, "Uid:").split()
    return int(f[0]), int(f[1])


def uids_of(root: Root, pid: int) -> tuple[int, int] | None:
    try:
        return parse_status_uids(root.read_text(f"proc/{pid}/status", CONTEXT))
    except (KernelError, ValueError):
        return None


def parse_status_tgid(text: str) -> int:
    """Tgid (the thread-group leader's pid, i.e. the process id) from proc/PID/status.

    proc/TID/ answers for any thread id although readdir of proc/ lists only
    leaders (fs/proc/base.c proc_pid_lookup); Tgid tells them apart
    (fs/proc/array.c task_state: "Tgid:\t%d").
    """
    return int(_status_field(text, "Tgid:").split()[0])


def tgid_of(root: Root, pid: int) -> int | None:
    """The process (thread group) that task `pid` belongs to; None when it is gone."""
    try:
        return parse_status_tgid(root.read_text(f"proc/{pid}/status", CONTEXT))
    except (KernelError, ValueError):
        return None


def status_ids(root: Root, pid: int) -> tuple[int, int, int] | None:
    """(Tgid, real uid, effective uid) of task `pid` from one read of proc/PID/status;
    None when it is gone."""
    try:
        text = root.read_text(f"proc/{pid}/status", CONTEXT)
        ruid, euid = parse_status_uids(text)
        return parse_status_tgid(text), ruid, euid
    except (KernelError, ValueError, IndexError):
        return None


# PIDFD_GET_INFO (Linux 6.13; include/uapi/linux/pidfd.h): struct pidfd_info,
# PIDFD_INFO_SIZE_VER0 = 64 bytes: mask and cgroupid (u64), then pid, tgid,
# ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid and one spare (u32)
_PIDFD_INFO = struct.Struct("=QQ12I")
_PIDFD_INFO_MASK = struct.Struct("=Q")
PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO.size << 16) | (0xFF << 8) | 11  # _IOWR(0xFF, 11, ...)
PIDFD_INFO_CREDS = 1 << 1


def pidfd_ids(fd: int) -> tuple[int, int, int] | None:
    """status_ids() of the process behind a pidfd, asked of the pidfd itself
    (PIDFD_GET_INFO): one ioctl, where proc/PID/status costs an open, two
    reads and a parse of ~1.4 KB (~1 us against ~9 us per registration), and
    the credentials are by construction those of the pidfd's process. None
    where the kernel has no such ioctl (before 6.13: ENOTTY) or the process
    has exited (ESRCH): the caller reads proc/PID/status, which tells the two
    apart."""
    buf = bytearray(_PIDFD_INFO.size)
    _PIDFD_INFO_MASK.pack_into(buf, 0, PIDFD_INFO_CREDS)
    try:
        fcntl.ioctl(fd, PIDFD_GET_INFO, buf, True)
    except OSError:
        return None
    mask, _cgroup, _pid, tgid, _ppid, ruid, _rgid, euid = _PIDFD_INFO.unpack(buf)[:8]
    if not mask & PIDFD_INFO_CREDS:
        return None
    return tgid, ruid, euid


def list_pids(root: Root) -> list[int]:
    """Every process (thread group leader) under proc/."""
    return sorted(int(n) for n in root.listdir("proc") if n.isdigit())


def list_tids(root: Root, pid: int) -> list[int]:
    """The threads of `pid` (proc/PID/task); [] when it is gone."""
    try:
        return sorted(int(n) for n in root.listdir(f"proc/{pid}/task") if n.isdigit())
    except KernelError:
        return []


def children(root: Root, pid: int) -> list[int]:
    """The child processes of `pid`: proc/PID/task/*/children (CONFIG_PROC_CHILDREN,
    Documentation/filesystems/proc.rst 3.7; each thread lists the children IT
    forked). [] when the process is gone or the kernel has no such file."""
    out: set[int] = set()
    for tid in list_tids(root, pid):
        for n in root.read_optional(f"proc/{pid}/task/{tid}/children").split():
            if n.isdigit():
                out.add(int(n))
    return sorted(out)


def descendants(root: Root, pid: int, limit: int = 4096) -> list[int]:
    """Children, grandchildren, ... of `pid`, breadth first, at most `limit`."""
    out: list[int] = []
    seen = {pid}
    queue = [pid]
    while queue and len(out) < limit:
        for c in children(root, queue.pop(0)):
            if c not in seen:
                seen.add(c)
                out.append(c)
                queue.append(c)
    return out[:limit]


class TaskNotPermitted(KernelError):
    """The thread runs under credentials the uid a write is made for does not hold."""

    def __init__(self, op: str, target: str, detail: str) -> None:
        super().__init__(op, f"task {target} ({detail})", errno.EPERM, CONTEXT)


def thread_uids(root: Root, pid: int, tid: int) -> tuple[int, int] | None:
    """(real uid, effective uid) of ONE thread: proc/PID/task/TID/status.

    Credentials are per task (kernel/cred.c): a thread that called the raw
    setresuid syscall changed its own only (glibc's setresuid() makes every
    thread call it, nptl's setxid broadcast), so proc/PID/status (the main
    thread's) says nothing about the others. None when it is gone."""
    try:
        return parse_status_uids(root.read_text(f"proc/{pid}/task/{tid}/status", CONTEXT))
    except (KernelError, ValueError):
        return None


class Witness(Protocol):
    """Proof, without a /proc read, that process (pid, starttime) still runs.

    agents/pidfdgate.py's AgentPidfds: a pidfd the daemon holds for a registered
    agent, opened before the read that identified it, and not readable (the
    process has not exited, so its pid cannot have been reused: pidfd_open(2)).
    False whenever it cannot prove it: check_thread then reads proc/PID/stat."""

    def vouches(self, pid: int, starttime: int) -> bool: ...


def check_thread(root: Root, t: ThreadId, op: str, uid: int | None = None,
                 witness: Witness | None = None) -> None:
    """Raise TaskGone unless `t` is still that process's thread (see the module docstring).

    With `uid` (a write made for a non-admin peer): also TaskNotPermitted
    unless the thread's real AND effective uid are `uid`, the rule the
    registration applied to the process, now to the very thread written.

    `witness`: when it vouches for the process, its proof replaces the
    proc/PID/stat read (two of the three reads of a registration, one poll()
    each instead); the thread and credential checks are made either way."""
    if witness is None or not witness.vouches(t.pid, t.starttime):
        st = pid_stat(root, t.pid)
        if st is None or st.state in ("Z", "X"):
            raise TaskGone(op, t.target, "process exited")
        if st.starttime != t.starttime:
            raise TaskGone(op, t.target, f"pid {t.pid} now belongs to another process "
                                         f"(starttime {st.starttime}, not {t.starttime})")
    if t.tid != t.pid and not root.exists(f"proc/{t.pid}/task/{t.tid}"):
        raise TaskGone(op, t.target, "thread exited")
    if uid is not None:
        uids = thread_uids(root, t.pid, t.tid)
        if uids is None:
            raise TaskGone(op, t.target, "thread exited")
        if uids != (uid, uid):
            raise TaskNotPermitted(op, t.target, f"thread {t.tid} runs as uid {uids[0]} "
                                   f"(effective {uids[1]}), not as uid {uid} that registered "
                                   "its process: skipped")


def read_comm(root: Root, pid: int) -> str | None:
    try:
        return root.read_text(f"proc/{pid}/comm", CONTEXT).rstrip("\n")
    except KernelError:
        return None


def read_exe(root: Root, pid: int) -> str:
    """Resolved executable path ("" for kernel threads or when not permitted)."""
    return root.readlink(f"proc/{pid}/exe")


def parse_cgroup(text: str) -> str:
    """The cgroup v2 path ("0::/system.slice/x.service") from proc/PID/cgroup; "" if none."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def read_cgroup(root: Root, pid: int) -> str:
    try:
        return parse_cgroup(root.read_text(f"proc/{pid}/cgroup", CONTEXT))
    except KernelError:
        return ""


# ---------------------------------------------------------------------------
# syscalls (live kernel only)


def _kerr(op: str, tid: int, e: OSError, value: str | None = None) -> KernelError:
    return KernelError(op, f"task {tid}", e.errno or 0, CONTEXT, value)


def get_affinity(tid: int) -> CpuSet:
    try:
        # the kernel's CPU numbers: no per-element check (CpuSet._of)
        return CpuSet._of(frozenset(os.sched_getaffinity(tid)))
    except OSError as e:
        raise _kerr("sched_getaffinity", tid, e) from e


def set_affinity(tid: int, cpus: CpuSet) -> None:
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError as e:
        raise _kerr("sched_setaffinity", tid, e, cpus.to_list()) from e


def get_nice(tid: int) -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as e:
        raise _kerr("getpriority", tid, e) from e


def set_nice(tid: int, nice: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as e:
        raise _kerr("setpriority", tid, e, str(nice)) from e


# ioprio: include/uapi/linux/ioprio.h. value = class << 13 | hint << 3 | level
IOPRIO_CLASS_SHIFT = 13
IOPRIO_WHO_PROCESS = 1
_CLASSES = {0: "none", 1: "rt", 2: "be", 3: "idle"}
_CLASS_NUM = {v: k for k, v in _CLASSES.items()}
# syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl (251/252),
# include/uapi/asm-generic/unistd.h (30/31: arm64, riscv), syscall_32.tbl (289/290)
_IOPRIO_NR = {"x86_64": (251, 252), "aarch64": (30, 31), "arm64": (30, 31),
              "riscv64": (30, 31), "i386": (289, 290), "i686": (289, 290)}
_IOPRIO_RE = re.compile(r"(none|idle|rt[0-7]|be[0-7])(?:/h([0-9]{1,4}))?")


def format_ioprio(v: int) -> str:
    """Kernel ioprio value -> "be7", "idle", "none", "rt0" ("be7/h2" with a hint)."""
    cls = _CLASSES.get((v >> IOPRIO_CLASS_SHIFT) & 0x7, "none")
    level = v & 0x7
    hint = (v >> 3) & 0x3FF
    s = cls if cls in ("none", "idle") else f"{cls}{level}"
    return f"{s}/h{hint}" if hint else s


def parse_ioprio(text: str) -> int:
    """The inverse of format_ioprio; ValueError on anything else."""
    m = _IOPRIO_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"bad ioprio {text!r} (expected none, idle, rt0..rt7 or be0..be7)")
    name = m[1]
    cls = _CLASS_NUM[name.rstrip("01234567")]
    level = int(name[2]) if name[:2] in ("rt", "be") else 0
    hint = int(m[2]) if m[2] else 0
    return (cls << IOPRIO_CLASS_SHIFT) | (hint << 3) | level


_libc: ctypes.CDLL | None = None


def _syscall(nr: int, *args: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    r = int(_libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)))
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return r


def _ioprio_nr() -> tuple[int, int]:
    nr = _IOPRIO_NR.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"ioprio syscalls unknown on {platform.machine()}")
    return nr


def get_ioprio(tid: int) -> str:
    try:
        return format_ioprio(_syscall(_ioprio_nr()[1], IOPRIO_WHO_PROCESS, tid))
    except OSError as e:
        raise _kerr("ioprio_get", tid, e) from e


def set_ioprio(tid: int, value: str) -> None:
    v = parse_ioprio(value)
    try:
        _syscall(_ioprio_nr()[0], IOPRIO_WHO_PROCESS, tid, v)
    except OSError as e:
        raise _kerr("ioprio_set", tid, e, value) from e


def pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid` (readable when it exits); None where pidfds are unavailable."""
    fn = getattr(os, "pidfd_open", None)
    if fn is None:
        return None
    try:
        fd: int = fn(pid)
    except OSError as e:
        if e.errno == errno.ESRCH:
            raise _kerr("pidfd_open", pid, e) from e
        return None  # ENOSYS (pre-5.3), EMFILE: poll instead
    os.set_blocking(fd, False)
    return fd


def pidfd_running(fd: int) -> bool:
    """Whether the process behind a pidfd has not exited: one poll(), no /proc read.

    A pidfd turns readable when its process exits, zombies included (the
    kernel's pidfd_poll), so this agrees with alive() on (pid, starttime) for
    the process the pidfd was opened on, for a fraction of its cost."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return not p.poll(0)


def running(root: Root, p: ProcId, pidfd: int | None) -> bool:
    """Whether process `p` has not exited: a poll of `pidfd` when one was opened
    for it (pidfd_running, no /proc read), else alive()'s read of proc/PID/stat."""
    return pidfd_running(pidfd) if pidfd is not None else alive(root, p)


def pidfd_alive(fd: int) -> bool:
    """Whether the process behind a pidfd still runs (pidfd_send_signal with signal 0)."""
    try:
        signal.pidfd_send_signal(fd, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; we may not signal it
    except OSError:
        return False
    return True
