"""A new agent's pidfd, and the proof that it names the process a registration checked.

check_register() opens the pidfd BEFORE the read of proc/PID/stat that
identifies the process (registry._identify): while the pidfd's process runs,
the pid is its, so one poll of the pidfd in register() proves that the read
was that process's (pidfd_open(2), "pidfd_open() ... the PID could be
recycled"; the order is its recommended one). Opened after the read, as a
re-registration's or a caller's that skipped the check does, it takes a
second stat read to tell the process from a newer one with the same pid.

So an agent's pidfd is proof of its identity for as long as it is not
readable: AgentPidfds gives that proof to the task knobs of the daemon's
engine (sample/tasks.py Witness), in place of the proc/PID/stat read each of
their reads and writes made.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

from agentlatd.errors import KernelError
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

Creds = tuple[int, int]  # (real uid, effective uid) of a process's main thread


class PidfdGate:
    """Holds at most one pidfd, from the last check to the register that follows it,
    with the credentials the check read (the agent's, while it ran: agents/forks.py
    needs them when its forks outlive it, and it may be gone before they are read)."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self._held: tuple[ProcId, int, Creds] | None = None

    def opened(self, pid: int) -> int | None:
        """A pidfd for `pid`, opened before the identifying read (None: no pidfds here)."""
        self.drop()
        with contextlib.suppress(KernelError):
            return tasks.pidfd_open(pid)
        return None

    def keep(self, p: ProcId, fd: int, creds: Creds) -> None:
        """The check identified `fd`'s pid as `p`, running as `creds`: register() takes it."""
        self.drop()
        self._held = (p, fd, creds)

    def drop(self) -> None:
        if self._held is not None:
            os.close(self._held[1])  # in no selector yet
            self._held = None

    def take(self, p: ProcId) -> tuple[int | None, bool, Creds | None]:
        """(the pidfd of `p` or None, whether `p` has exited, its credentials as the
        check read them or None): the pidfd the check opened when it was for `p`,
        else one opened now and checked by a read."""
        held, self._held = self._held, None
        if held is not None and held[0] == p:
            return held[1], not tasks.pidfd_running(held[1]), held[2]
        if held is not None:
            os.close(held[1])
        fd = None
        with contextlib.suppress(KernelError):
            fd = tasks.pidfd_open(p.pid)
        # opened after the check: the pidfd may name a newer process
        return fd, fd is not None and not tasks.alive(self.root, p), None


class AgentPidfds:
    """The registered agents' pidfds as a tasks.Witness (module docstring).

    Bound to the registry's lookup (AgentManager.pidfd_of) and to the thread
    that binds it, the main loop's: the pidfds are opened and closed there,
    and a call from another thread (the tuner's drift check reads every
    journaled knob) gets no proof and reads /proc, so no thread ever polls an
    fd that another may have closed and reused meanwhile."""

    def __init__(self) -> None:
        self._of: Callable[[int, int], int | None] | None = None
        self._thread = 0

    def bind(self, pidfd_of: Callable[[int, int], int | None]) -> None:
        self._of = pidfd_of
        self._thread = threading.get_ident()

    def vouches(self, pid: int, starttime: int) -> bool:
        of = self._of
        if of is None or threading.get_ident() != self._thread:
            return False
        fd = of(pid, starttime)
        return fd is not None and tasks.pidfd_running(fd)
