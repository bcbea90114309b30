"""A real process that grows threads and child processes on command, and reads of
every task's affinity, nice and ioprio from the kernel.

For the restore tests of task knobs (tests/apply/test_crash_matrix.py,
tests/hostile/test_task_trust.py): what agentlatd set on an agent must come back
to the original on every path, also on threads and processes born after the
registration, which inherit the creator's affinity, nice and ioprio (clone()
and fork(): kernel/fork.c dup_task_struct(), sched_fork(), copy_io()).

Every process here exits on its own after LIFETIME_S (bounded even when a test
dies without its teardown); kill() ends the whole family first.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys

from agentlatd.sample import tasks
from agentlatd.sysfs.root import HOST

LIFETIME_S = 90

# stdin commands, one answer line each:
#   thread      a thread started by the MAIN thread       -> its tid
#   fork        a child process forked by the main thread that starts one
#               thread of its own                          -> "pid tid"
#   own NICE    a thread that sets its own nice NICE       -> its tid
#   orphan      a child that forks a grandchild (with one thread of its own)
#               and exits, so the grandchild is re-parented -> "pid tid" of it
_PROGRAM = r"""
import os, sys, threading, time
LIFE = float(sys.argv[1])
end = time.monotonic() + LIFE
def sleeper(box=None, nice=None):
    if nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if box is not None:
        box.append(threading.get_native_id())
    time.sleep(max(0.0, end - time.monotonic()))
def start(nice=None):
    box = []
    threading.Thread(target=sleeper, args=(box, nice), daemon=True).start()
    while not box:
        time.sleep(0.001)
    return box[0]
def fork(orphan):
    # a child that starts one thread of its own or, with orphan, a grandchild that
    # does while the child in between exits: "pid tid" of the one with the thread
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        sys.stdin = open(os.devnull)
        if not orphan or os.fork() == 0:
            tid = start()
            os.write(w, f"{os.getpid()} {tid}\n".encode())
            os.close(w)
            time.sleep(max(0.0, end - time.monotonic()))
        os._exit(0)
    os.close(w)
    if orphan:
        os.waitpid(pid, 0)
    return os.fdopen(r).readline().strip()
print("up", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "thread":
        print(start(), flush=True)
    elif cmd[0] == "own":
        print(start(int(cmd[1])), flush=True)
    elif cmd[0] in ("fork", "orphan"):
        print(fork(cmd[0] == "orphan"), flush=True)
    elif cmd[0] == "exit":
        break
"""


def task_values(pid: int, tid: int) -> tuple[str, int, str]:
    """(Cpus_allowed_list, nice, ioprio) of one thread, read from the kernel."""
    aff = ""
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                aff = line.split(":", 1)[1].strip()
    return aff, os.getpriority(os.PRIO_PROCESS, tid), tasks.get_ioprio(tid)


class Family:
    """A process (the agent) and what it starts after its registration."""

    def __init__(self) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", _PROGRAM, str(LIFETIME_S)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.p.pid
        assert self._answer() == "up"
        self.forked: list[int] = []

    def _answer(self, timeout: float = 10.0) -> str:
        assert self.p.stdout is not None
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        assert r, f"process {self.pid} said nothing within {timeout} s"
        return self.p.stdout.readline().strip()

    def _cmd(self, text: str) -> str:
        assert self.p.stdin is not None
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        return self._answer()

    def thread(self) -> int:
        """A thread started by the main thread (it inherits the main thread's values)."""
        return int(self._cmd("thread"))

    def own_nice(self, nice: int) -> int:
        """A thread that sets its own nice right after it starts."""
        return int(self._cmd(f"own {nice}"))

    def fork(self) -> tuple[int, int]:
        """(pid, tid of its extra thread) of a child forked by the main thread."""
        return self._forked("fork")

    def orphan(self) -> tuple[int, int]:
        """(pid, tid of its extra thread) of a grandchild whose parent (a child the
        main thread forked) has exited: no longer under the agent in /proc."""
        return self._forked("orphan")

    def _forked(self, cmd: str) -> tuple[int, int]:
        pid, tid = (int(x) for x in self._cmd(cmd).split())
        self.forked.append(pid)
        return pid, tid

    def tasks(self) -> dict[tuple[int, int], tuple[str, int, str]]:
        """(pid, tid) -> task_values of every thread of the process and its forks."""
        out = {}
        for pid in [self.pid, *self.forked]:
            for tid in tasks.list_tids(HOST, pid):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError, OSError):
                    out[(pid, tid)] = task_values(pid, tid)
        return out

    def kill(self) -> None:
        for pid in [*self.forked, self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.p.wait(10)
        for f in (self.p.stdin, self.p.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
