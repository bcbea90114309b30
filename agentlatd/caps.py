"""Drop every capability the running daemon does not need (capabilities(7)).

include/uapi/linux/capability.h (capset(2), _LINUX_CAPABILITY_VERSION_3) and
include/uapi/linux/prctl.h (PR_CAPBSET_READ/DROP, PR_CAP_AMBIENT). The daemon
starts as root with the full set (outside systemd, or under a unit without
CapabilityBoundingSet=); once its socket is bound and chowned it needs only:

  CAP_NET_ADMIN   rps/xps/threaded/napi sysfs stores and ethtool/netdev
                  generic netlink writes (net-sysfs.c, GENL_ADMIN_PERM)
  CAP_SYS_NICE    sched_setaffinity, setpriority, ioprio_set on other users'
                  agents and on tasks moved off exclusive home CPUs
  CAP_SYS_PTRACE  /proc/PID/exe and task details of other users' processes
                  (ptrace_may_access; auto-registration by executable)

(systemd/agentlatd.service bounds the unit to exactly these; docs there.) It
keeps uid 0: the root-owned 0644 files (/proc/irq/N/smp_affinity_list,
rq_affinity, pm_qos_resume_latency_us, net.core sysctls) are writable by owner
permission, without CAP_DAC_OVERRIDE, and a 0444 file (a kernel-managed IRQ on
6.12+) stays unwritable, as under the unit.

Order matters: PR_CAPBSET_DROP needs CAP_SETPCAP in the effective set, so the
bounding set goes first, the ambient set next, and capset(2) last (it drops
CAP_SETPCAP itself). Without the bounding-set drop a later execve of a
set-uid-root or file-capability binary could regain what capset removed.

Capabilities are per thread: capset(2) changes the calling thread only (the
kernel has no process-wide capset), so drop() must run before the daemon starts
its threads; threads already running keep their sets, and drop() names them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from dataclasses import dataclass

log = logging.getLogger("agentlatd.caps")

CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19
CAP_SYS_NICE = 23
NEEDED: frozenset[int] = frozenset({CAP_NET_ADMIN, CAP_SYS_NICE, CAP_SYS_PTRACE})

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_MAX_CAP = 63  # two 32-bit words in capset's v3 data


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True, slots=True)
class Dropped:
    """What drop() did."""

    kept: frozenset[int]  # capabilities still effective/permitted
    bounding_dropped: int  # capabilities removed from the bounding set
    other_threads: tuple[str, ...] = ()  # threads that were running and keep their sets
    skipped: str = ""  # why nothing was done ("" = done)


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def prctl(option: int, arg2: int = 0) -> int:
    lib = _lib()
    r = int(lib.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def bounding_set() -> frozenset[int]:
    """The calling thread's capability bounding set (PR_CAPBSET_READ per capability)."""
    out = set()
    for cap in range(_MAX_CAP + 1):
        try:
            if prctl(PR_CAPBSET_READ, cap):
                out.add(cap)
        except OSError:  # EINVAL: past the kernel's last capability
            break
    return frozenset(out)


def current() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
    """(effective, permitted, inheritable) of the calling thread (capget(2))."""
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    if _lib().capget(ctypes.byref(hdr), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

    def bits(attr: str) -> frozenset[int]:
        words = [int(getattr(data[i], attr)) for i in (0, 1)]
        return frozenset(c for c in range(64) if words[c // 32] >> (c % 32) & 1)

    return bits("effective"), bits("permitted"), bits("inheritable")


def _capset(want: frozenset[int]) -> None:
    """Effective and permitted := `want`, inheritable and ambient emptied (none of
    it needs a capability: capset(2) may always drop)."""
    with contextlib.suppress(OSError):  # EINVAL before Linux 4.3: no ambient set
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    hdr = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in (0, 1):
        word = sum(1 << (c - 32 * i) for c in want if c // 32 == i)
        data[i].effective = word
        data[i].permitted = word
        data[i].inheritable = 0
    if _lib().capset(ctypes.byref(hdr), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"capset: {os.strerror(e)}")


def narrow(keep: frozenset[int]) -> frozenset[int]:
    """Keep only `keep` of the calling thread's capabilities, in a process that may
    not change its bounding set (a child of the daemon after drop(): no
    CAP_SETPCAP). no_new_privs first, so that no later execve can grant more
    (set-uid bits and file capabilities are ignored under it, prctl(2)), then
    capset(2). Returns what is kept (nothing to narrow when not root)."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if os.geteuid() != 0:
        return frozenset()
    _, perm, _ = current()
    want = keep & perm
    _capset(want)
    return want


def drop(keep: frozenset[int] = NEEDED) -> Dropped:
    """Keep only `keep` (effective, permitted), none inheritable or ambient, and
    bound the thread to `keep`. Skipped, with a debug log, when not root."""
    if os.geteuid() != 0:
        log.debug("not root (euid %d): capabilities left as they are", os.geteuid())
        return Dropped(frozenset(), 0, skipped="not root")
    others = tuple(t.name for t in threading.enumerate() if t is not threading.current_thread())
    _, perm, _ = current()
    want = keep & perm  # capset cannot add what the thread does not have
    n = 0
    for cap in sorted(bounding_set() - keep):
        prctl(PR_CAPBSET_DROP, cap)
        n += 1
    _capset(want)
    if others:
        log.warning("threads %s were running before the capability drop and keep their "
                    "capabilities", ", ".join(others))
    log.debug("capabilities: kept %s, %d removed from the bounding set",
              sorted(want), n)
    return Dropped(want, n, others)
