"""Run a function inside a network namespace, in a thread of its own.

setns(2) with CLONE_NEWNET moves only the calling thread, and a socket stays in
the namespace it was made in: a short-lived thread enters the namespace, makes
what the caller needs there (a netlink socket, a namespace's cookie) and ends,
so no thread of agentlatd is ever left in another namespace. Needs
CAP_SYS_ADMIN (namespaces(7)).
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h

T = TypeVar("T")


def setns_net(fd: int) -> None:
    """setns(fd, CLONE_NEWNET) for the calling thread only; OSError when refused."""
    fn = getattr(os, "setns", None)  # Python 3.12+
    if fn is not None:
        fn(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def in_netns(fd: int, make: Callable[[], T]) -> T:
    """make(), called by a thread that entered the namespace nsfs fd `fd` names.

    OSError when the namespace cannot be entered or make() raised one (EIO when
    the thread died of anything else). The caller keeps and closes `fd`."""
    out: list[tuple[T | None, OSError | None]] = []

    def run() -> None:
        # its own thread: the setns() below dies with it
        try:
            setns_net(fd)
            out.append((make(), None))
        except OSError as e:
            out.append((None, e))

    t = threading.Thread(target=run, name="agentlatd-netns", daemon=True)
    t.start()
    t.join()
    if not out:
        raise OSError(errno.EIO, "setns helper thread died")
    value, err = out[0]
    if err is not None:
        raise err
    return value  # type: ignore[return-value]  # make() returned it
