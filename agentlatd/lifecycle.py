"""The daemon's start and stop, and the file descriptors its main loop watches.

  Listener   the registration socket: passed in, inherited from systemd
             (agentlatd.socket) or bound here; only a socket bound here has its
             file removed at exit
  Wakeup     a self-pipe: signal handlers and other threads make the loop turn
  Pidfds     one pidfd per agent, readable when the process exits
  recover_agents / rollback_all   the journal at start and at stop
  raise_nofile / drop_caps        process limits and capabilities at start
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import selectors
import signal
import socket
from collections.abc import Callable, Iterable
from typing import Any

from agentlatd import caps, sdnotify
from agentlatd.agents.applier import AGENT_KNOBS, Applier
from agentlatd.agents.chain import ChainKeeper
from agentlatd.agents.registry import AgentManager
from agentlatd.api.server import bind_socket
from agentlatd.apply.engine import Engine
from agentlatd.errors import AgentlatdError
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.daemon")

_BACK = ("restored", "unchanged", "gone")


class Listener:
    """The registration socket, from acquire() until it is served or released."""

    def __init__(self, path: str, group: str, sock: socket.socket | None = None) -> None:
        self.path = path
        self.group = group
        self.sock = sock
        self.owned = True  # False: passed in; its file is the caller's (or systemd's)

    def acquire(self) -> socket.socket:
        sock = self.sock if self.sock is not None else sdnotify.inherited_socket(self.path)
        if sock is None:
            sock = bind_socket(self.path, mode=0o660, group=self.group)
        else:
            sock.setblocking(False)
            # passed by systemd (agentlatd.socket) or the caller: its file is
            # theirs, left in place at exit so the socket keeps accepting
            self.owned = False
        self.sock = sock
        return sock

    def release(self) -> None:
        """A start that failed before serving: close it (and remove its file if ours)."""
        if self.sock is not None:
            self.sock.close()
            if self.owned:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
        self.sock = None


class Wakeup:
    """A self-pipe the loop's selector watches; signals set flags and write to it."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.stop = False
        self.hup = False

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.wfd, b"w")

    def drain(self, _mask: int) -> None:
        with contextlib.suppress(OSError):
            while os.read(self.rfd, 4096):
                pass

    def on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            self.hup = True
        else:
            self.stop = True
        self.wake()

    def install(self, sel: selectors.BaseSelector) -> None:
        sel.register(self.rfd, selectors.EVENT_READ, self.drain)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self.on_signal)

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            with contextlib.suppress(OSError):
                os.close(fd)


class Pidfds:
    """The agents' pidfds in the loop's selector: `on_exit(proc)` when one exits."""

    def __init__(self, sel: selectors.BaseSelector, on_exit: Callable[[ProcId], None]) -> None:
        self.sel = sel
        self.on_exit = on_exit
        self.fds: set[int] = set()

    def watch(self, agents: Iterable[Any]) -> None:
        for a in agents:
            fd = a.pidfd
            if fd is None or fd in self.fds:
                continue
            p = a.proc
            try:
                self.sel.register(fd, selectors.EVENT_READ,
                                  lambda _m, p=p, fd=fd: self._exited(p, fd))
            except (ValueError, KeyError, OSError):
                continue
            self.fds.add(fd)

    def _exited(self, p: ProcId, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.sel.unregister(fd)
        self.fds.discard(fd)
        self.on_exit(p)

    def close(self, fd: int) -> None:
        if fd in self.fds:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.sel.unregister(fd)
            self.fds.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def recover_agents(engine: Engine, applier: Applier) -> None:
    """At start: a crashed run's journal restored or adopted (the engine), then the
    agent side's own entries restored (their processes register again)."""
    rec = engine.recover()
    if rec.action != "none":
        log.info("journal: %s", rec.message)
    with engine.hold():
        left = [(k, t) for k, t, _ in applier.entries(AGENT_KNOBS)]
        if left:
            res = applier.restore(left)
            log.info("restored %d agent-side change(s) of the previous run (%d not)",
                     sum(1 for r in res if r.status in _BACK),
                     sum(1 for r in res if r.status not in _BACK))


def rollback_all(engine: Engine, manager: AgentManager, chain: ChainKeeper) -> bool:
    """At stop: every change back (chains, agents, then the journal). True when all is."""
    with engine.hold():
        try:
            with contextlib.suppress(Exception):
                chain.release_all()
            manager.upkeep.release_all()
            rep = engine.rollback()
        except AgentlatdError as e:
            log.error("rollback failed: %s", e)
            return False
    n = sum(1 for r in rep.results if r.status == "restored")
    if rep.ok:
        log.info("rolled back: %d original(s) restored", n)
    else:
        log.error("rollback incomplete: %s", "; ".join(rep.notes) or
                  "; ".join(r.message for r in rep.results
                            if r.status not in (*_BACK, "managed"))[:500])
    return rep.ok


def raise_nofile() -> None:
    """One pidfd per agent plus one fd per client: lift the soft fd limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                        else 1 << 20, hard))


def drop_caps(root: Root) -> None:
    """Keep CAP_NET_ADMIN, CAP_SYS_NICE, CAP_SYS_PTRACE only (agentlatd/caps.py).

    After the socket is bound and chowned, before the tuner thread starts
    (capabilities are per thread). Only on the live root: a run on a recorded
    tree (tests, --root) writes files, not the kernel.
    """
    if not root.is_host:
        return
    try:
        caps.drop()
    except OSError as e:  # e.g. a seccomp filter refusing prctl: serve on, say so
        log.warning("cannot drop capabilities: %s", e)
