"""The main loop first: background threads give way while it serves.

The daemon's threads share one interpreter lock. A background thread (the
tuner, the slow-steps view) reading /proc while the main loop answers a
request does not just take turns with it every switch interval: each system
call either thread makes lets the other take the lock, so the two interleave
call by call and a registration's few hundred microseconds of Python stretch
to twice that, plus up to a switch interval's wait (bench/agents.py: with
both background threads stopped, register p99 at 1000 agents fell from
1.9-3.0 ms to 1.0-1.2 ms, p50 unchanged).

So the main loop says when it serves (Pacer.serving) and when it waits for
the next event (Pacer.waiting), and Root's readers (sysfs/root.py), through
which every background thread reads the kernel, call give_way() first: in a
thread marked with paced(), while the main loop serves, that waits until it
waits again, at most WAIT_S per read and BUDGET_S per second in all. The
budget bounds what a busy main loop (a request flood) can cost the tuner: at
most a tenth of each second, then its reads go on unpaced until the second
is over. The main thread and threads not marked are never delayed.
"""

from __future__ import annotations

import threading
import time

WAIT_S = 0.002  # the longest one read waits for the main loop
BUDGET_S = 0.1  # the most a paced thread waits in one second


class _Paced(threading.local):
    on = False
    window = 0.0  # monotonic start of the current one-second window
    spent = 0.0  # seconds waited in it


class Pacer:
    def __init__(self, wait_s: float = WAIT_S, budget_s: float = BUDGET_S) -> None:
        self.wait_s = wait_s
        self.budget_s = budget_s
        self._idle = threading.Event()
        self._idle.set()
        self._local = _Paced()

    # -- the main loop ---------------------------------------------------
    def serving(self) -> None:
        """The main loop has work (a request, a tick slice): paced threads wait."""
        self._idle.clear()

    def waiting(self) -> None:
        """The main loop is about to block for its next event."""
        self._idle.set()

    # -- background threads ----------------------------------------------
    def paced(self) -> None:
        """Mark the calling thread: its reads give way to the main loop from now on."""
        self._local.on = True

    def give_way(self) -> None:
        loc = self._local
        if not loc.on or self._idle.is_set():
            return
        now = time.monotonic()
        if now - loc.window >= 1.0:
            loc.window, loc.spent = now, 0.0
        left = self.budget_s - loc.spent
        if left <= 0.0:
            return
        self._idle.wait(min(self.wait_s, left))
        loc.spent += time.monotonic() - now


# one per process: the daemon's main loop drives it, its background threads pace on it
PACER = Pacer()
give_way = PACER.give_way
