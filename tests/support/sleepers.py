"""Many idle processes to register: the agent-scale bench and test share them.

`Sleepers(n)` forks n children of one helper process that sleep in pause();
`close()` ends them all (SIGKILL and reap, in the helper) and waits for the
helper; `kill()` is the last resort of a finally block. The helper is a
separate interpreter so that the caller's own threads and fds are not
forked n times.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

FORKER = r'''
import os, signal, sys
pids = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    pids.append(pid)
print(" ".join(map(str, pids)), flush=True)
sys.stdin.readline()
for p in pids:
    os.kill(p, signal.SIGKILL)
for p in pids:
    os.waitpid(p, 0)
'''


class Sleepers:
    def __init__(self, n: int) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", FORKER, str(n)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None
        self.pids = [int(x) for x in self.p.stdout.readline().split()]

    def close(self, timeout: float = 60.0) -> None:
        """End every child (the helper kills and reaps them) and the helper."""
        assert self.p.stdin is not None
        self.p.stdin.write("\n")
        self.p.stdin.flush()
        self.p.wait(timeout)

    def kill(self) -> None:
        """The last resort of a finally block: every child, then the helper.

        The children first: killed with the helper alone they were re-parented
        to init and slept on in pause() forever (18,302 of them had piled up on
        one machine). Only while the helper runs: until close() it reaps none of
        them, so each pid is still its child's (alive or a zombie), never a
        reused one."""
        if self.p.poll() is None:
            for pid in self.pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError, ValueError, subprocess.TimeoutExpired):
                self.close(5.0)  # the helper reaps them (init may not, in a container)
        with contextlib.suppress(OSError):
            self.p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(5)
