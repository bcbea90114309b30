"""proc/: every process, and one value per process read once per process, not once per tick.

Documentation/filesystems/proc.rst; fs/proc/base.c proc_pid_readdir.

Reading one small file of every process each second (irqbalance's comm, the
chain scanner's proc/PID/ns/net) cost the tuner thread ~85 ms a tick each
with 7000 processes (in-process, on the 2-core CI box; bench/threads.py shows
the thread's CPU), and that thread shares the GIL with the one answering
registrations. Most of those values do not change, so
`PerProc` keeps them, keyed by process identity:

  identity   (pid, the inode number of proc/PID) from the directory listing
             itself (getdents' d_ino: no system call per process). A new
             process gets a new proc inode (proc_pid_readdir -> proc_fill_cache
             -> proc_pid_make_inode -> new_inode, a fresh i_ino; the dentry of
             a dead task is not reused: pid_revalidate fails), so a reused pid
             is read again. The inode of a live process can change too, when
             the kernel evicts its dentry: that costs one read, never a stale value.
  exec, setns, unshare, prctl(PR_SET_NAME)
             change a value under the same identity. Most happen right after
             fork (a shell or systemd forks, sets up, then execs; `ip netns
             exec` and `unshare -n` unshare and exec), so a process is read on
             each of its first SETTLE_READS ticks, and after that again every
             REFRESH_TICKS ticks (pid % REFRESH_TICKS picks the tick, so the
             re-reads are spread evenly): a change later in a process's life
             is seen within REFRESH_TICKS ticks instead of at once.

Owned by one thread (the tuner's): nothing in it is shared.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root

SETTLE_READS = 2
REFRESH_TICKS = 30

V = TypeVar("V")


def list_procs(root: Root) -> list[tuple[int, int]]:
    """(pid, inode of proc/PID) of every process, by pid; the inode comes with the
    directory entry (no stat)."""
    try:
        with os.scandir(root.path("proc")) as it:
            return sorted((int(e.name), e.inode()) for e in it if e.name.isdigit())
    except FileNotFoundError:
        return []
    except OSError as e:
        raise KernelError("list", "proc", e.errno or 0) from e


@dataclass(slots=True)
class _Kept(Generic[V]):
    ino: int
    value: V
    reads: int


class PerProc(Generic[V]):
    """pid -> read(pid), read again only for a new process (pid or proc inode not
    seen before), on a process's first SETTLE_READS ticks, every REFRESH_TICKS
    ticks, and each tick for values `keep` refuses; None (the process is gone or
    unreadable) is never kept. Entries of processes no longer listed are dropped,
    so it holds at most one entry per live process."""

    def __init__(self, read: Callable[[int], V | None],
                 keep: Callable[[V], bool] = lambda _v: True, *,
                 refresh_ticks: int = REFRESH_TICKS, settle_reads: int = SETTLE_READS) -> None:
        self.read = read
        self.keep = keep
        self.refresh_ticks = max(1, refresh_ticks)
        self.settle_reads = settle_reads
        self.tick = 0
        self.reads = 0  # read() calls in the last update (bench, tests)
        self._kept: dict[int, _Kept[V]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def update(self, procs: Sequence[tuple[int, int]]) -> dict[int, V]:
        """The values of `procs` ((pid, proc inode), as list_procs gives them), in
        their order; a process whose value cannot be read is left out."""
        self.tick += 1
        phase = self.tick % self.refresh_ticks
        kept: dict[int, _Kept[V]] = {}
        out: dict[int, V] = {}
        old = self._kept
        n = 0
        for pid, ino in procs:
            k = old.get(pid)
            if (k is None or k.ino != ino or k.reads < self.settle_reads
                    or pid % self.refresh_ticks == phase):
                n += 1
                v = self.read(pid)
                if v is None:
                    continue
                k = _Kept(ino, v, 1 if k is None or k.ino != ino else k.reads + 1)
            if self.keep(k.value):
                kept[pid] = k
            out[pid] = k.value
        self._kept = kept
        self.reads = n
        return out
