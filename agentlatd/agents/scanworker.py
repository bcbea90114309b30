"""The tick's scans of every process (agents/scans.py) in a child process.

Why: the daemon's threads share one interpreter lock. With 1000 agents the chain
scan and the irqbalance watch were ~96% of the tuner thread's work (py-spy), and a
request that arrives while the tuner holds the lock waits for it, up to a switch
interval, however little the tuner has left to do: bench/regtail.py measured the
tuner thread as the largest share of the registration tail (p99 1.5 ms against
0.97 ms without it), and with the two scans turned off the tail was that of no
tuner at all. In a child process the scan runs beside the loop, on another CPU or
when the loop waits, ordered by the kernel's scheduler (never real-time: SCHED_BATCH
where the daemon runs SCHED_FIFO, agents/scanchild.py) instead of by the interpreter lock.

WorkerScans is the tuner thread's ProcScans: each call is one request and one reply
(agents/scanwire.py) over the child's stdin and stdout, waited for without the lock.
The thread that owns it is the only one that calls it; the chain keeper reads
`found` and `cost` (each replaced whole) and status reads `info` (a frozen value).

Trust and lifetime:
- the child is this interpreter run isolated (-I: no PYTHON* variables, no user
  site, not the working directory on sys.path) with agentlatd's own directory
  first on its path, an empty environment but PATH, and no other descriptor;
- it starts only after the daemon dropped its capabilities (start(), in the main
  thread before the socket serves; a replacement in the tuner thread), so it
  inherits at most those, and keeps CAP_SYS_PTRACE alone (agents/scanchild.py);
- it dies with the daemon: SIGKILL when the thread that started it ends
  (PR_SET_PDEATHSIG: the main thread, or the tuner thread, which ends with the
  daemon), and EOF on its stdin when the daemon closes it or exits;
- a reply is checked like client input (scanwire.decode_*), read with a deadline
  (TIMEOUT_S) and at most MAX_REPLY bytes; a reply that fails any of that, a dead
  or silent child, is a broken worker: it is killed and reaped, this thread scans
  itself (LocalScans, what the daemon did before there was a worker) and a new
  child is started after a back-off (1 s doubling to RETRY_MAX_S).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import agentlatd
from agentlatd.agents import scanwire
from agentlatd.agents.chain import ChainAgent, Link, ScanCost
from agentlatd.agents.scans import LocalScans
from agentlatd.errors import AgentlatdError
from agentlatd.policy import ChainRule
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.daemon")

TIMEOUT_S = 30.0  # one reply: a chain batch on a host with ~20000 processes takes ~1 s
START_TIMEOUT_S = 20.0  # the interpreter's start and imports (seconds under QEMU TCG)
MAX_REPLY = 32 << 20  # bytes: MAX_SCANS_PER_TICK agents with hundreds of links each
RETRY_MAX_S = 60.0
_BUF = 1 << 16  # the reply buffer's first size; it doubles for a longer reply
_T = TypeVar("_T")
# what a unit's stop or the daemon's terminal sends every process: the daemon's to
# handle, never the worker's (agents/scanchild.py)
QUIET_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); "
          "from agentlatd.agents.scanchild import main; sys.exit(main(sys.argv[2:]))")


class LineBuffer:
    """The child's reply lines, read into one buffer that is kept from reply to reply.

    Why not os.read(fd, 64 KiB) into a bytearray: each os.read allocates 64 KiB on
    the C heap and shrinks it to what the pipe held, and the bytearray grows by
    realloc and shrinks once its line is taken; a few times a tick, with the
    daemon's longer-lived allocations landing in the holes, that grew the heap
    for good (docs/hostile.md, bug 15: the soak's RSS slope). Here a read lands
    in the buffer's free tail (readv), and a line is copied out once, at its own
    size.
    """

    def __init__(self, size: int = _BUF) -> None:
        self._first = size
        self._buf = bytearray(size)
        self._n = 0  # bytes held

    def __len__(self) -> int:
        return self._n

    def clear(self) -> None:
        """Drop what is held; a buffer grown by a long reply goes back to its first size."""
        self._n = 0
        if len(self._buf) != self._first:
            self._buf = bytearray(self._first)

    def line(self) -> bytes | None:
        """The first complete line (with its newline), taken out; None without one."""
        i = self._buf.find(b"\n", 0, self._n)
        if i < 0:
            return None
        with memoryview(self._buf) as mv:
            out = bytes(mv[:i + 1])
            rest = self._n - (i + 1)
            if rest:  # not in this protocol (one line answers one request); kept for the next
                mv[:rest] = bytes(mv[i + 1:self._n])
        self._n = rest
        return out

    def fill(self, fd: int) -> int:
        """One read from `fd` into the free tail (os.readv's errors are the caller's);
        the bytes read, 0 at end of file."""
        if self._n == len(self._buf):
            self._buf += bytes(len(self._buf))
        with memoryview(self._buf) as mv, mv[self._n:] as tail:
            got = os.readv(fd, [tail])
        self._n += got
        return got


def child_argv(root: Root, daemon_pid: int) -> list[str]:
    """The command that starts the worker for `root`, from this agentlatd's own files."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(agentlatd.__file__)))
    return [sys.executable, "-I", "-c", _CHILD, pkg_parent, root.base, str(daemon_pid)]


class Broken(Exception):
    """The worker cannot be trusted to answer: dead, silent, or off the protocol."""


class ScanFailed(AgentlatdError):
    """The worker answered that a scan failed (the tick's stage reports it)."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """The worker as `agentlatd status` shows it."""

    pid: int | None = None  # the child answering (set up, privileges dropped); None: the
    # tuner thread scans itself now
    starts: int = 0  # children started, the first one included
    failures: int = 0  # times a child was found broken and killed
    error: str = ""  # why the last one was

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "starts": self.starts, "failures": self.failures,
                "error": self.error}


class WorkerScans:
    """ProcScans through the child; LocalScans in the calling thread while there is none."""

    def __init__(self, root: Root, *, argv: Sequence[str] | None = None,
                 timeout_s: float = TIMEOUT_S, start_timeout_s: float = START_TIMEOUT_S,
                 max_reply: int = MAX_REPLY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        # tests start another program in its place (a worker that misbehaves)
        self.argv = list(argv) if argv is not None else child_argv(root, os.getpid())
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.max_reply = max_reply
        self.clock = clock
        self.local = LocalScans(root)
        self.enabled = False  # start(): not before the daemon dropped its capabilities
        self.proc: subprocess.Popen[bytes] | None = None
        self._greeted = False  # its ready line read
        self._buf = LineBuffer()
        self._sent: dict[ProcId, ChainAgent] = {}  # the agents the child holds
        self._found: Mapping[ProcId, tuple[Link, ...]] = {}
        self._cost = ScanCost()
        self._in_a_row = 0  # failures since the last good reply: the back-off
        self._retry_at = 0.0
        self.info = WorkerInfo()

    @property
    def found(self) -> Mapping[ProcId, tuple[Link, ...]]:
        return self._found

    @property
    def cost(self) -> ScanCost:
        return self._cost

    def start(self) -> None:
        """Start the child (its ready line is read at the first request); from now on
        a broken one is replaced. The daemon calls it once its capabilities are dropped."""
        self.enabled = True
        self._ready(greet=False)

    # -- ProcScans -------------------------------------------------------------
    def irqbalance(self) -> tuple[int, ...]:
        pids = self._exchange(scanwire.irqbalance_request, scanwire.decode_irqbalance,
                              "irqbalance watch")
        return pids if pids is not None else self.local.irqbalance()

    def chain(self, agents: Sequence[ChainAgent], rules: Sequence[ChainRule]) -> None:
        by_proc = {a.proc: a for a in agents}

        def request() -> bytes:
            # the child holds `by_proc` once it has read this; every failed exchange
            # forgets it (_end), so the next child is sent every agent
            sent, self._sent = self._sent, by_proc
            return scanwire.chain_request([a for a in agents if sent.get(a.proc) != a],
                                          [p for p in sent if p not in by_proc], rules)

        got: tuple[Mapping[ProcId, tuple[Link, ...]], ScanCost] | None = self._exchange(
            request, lambda line: scanwire.decode_chain(line, by_proc), "chain scan")
        if got is None:
            self.local.chain(agents, rules)
            got = self.local.found, self.local.cost
        self._publish(by_proc, *got)

    def _exchange(self, request: Callable[[], bytes], decode: Callable[[bytes], _T],
                  what: str) -> _T | None:
        """One request to the child and its decoded reply; None when there is no child
        to ask or it broke (killed: the caller scans itself). A scan the child reports
        failed is ScanFailed: the tick's stage says so, the child serves on. The request
        is made once the child is ready (a new one knows no agents yet)."""
        if not self._ready():
            return None
        try:
            got = decode(self._ask(request()))
        except scanwire.WorkerError as e:
            self._good()
            raise ScanFailed(f"{what} (scan worker): {e}") from None
        except (Broken, scanwire.BadReply) as e:
            self._broke(e)
            return None
        self._good()
        return got

    def close(self) -> None:
        """End the child: EOF on its stdin, then SIGKILL if it has not exited in 2 s."""
        self.enabled = False
        self._end(grace_s=2.0)

    # -- the child ---------------------------------------------------------------
    def _publish(self, by_proc: Mapping[ProcId, ChainAgent],
                 scanned: Mapping[ProcId, tuple[Link, ...]], cost: ScanCost) -> None:
        # agents not scanned this batch keep what the last batch that scanned them found
        found = {p: v for p, v in self._found.items() if p in by_proc}
        found.update((p, v) for p, v in scanned.items() if p in by_proc)
        self._found, self._cost = found, cost

    def _ready(self, greet: bool = True) -> bool:
        """A child to ask: started when there is none (after the back-off), its ready
        line read first (`greet`: now, not at the next call)."""
        if self.proc is None and (not self.enabled or self.clock() < self._retry_at):
            return False
        try:
            if self.proc is None:
                self._spawn()
            if greet and not self._greeted:
                self._greet()
        except (OSError, Broken, scanwire.BadReply) as e:
            self._broke(e)
            return False
        return True

    def _spawn(self) -> None:
        self._greeted = False
        # the child ignores these (agents/scanchild.py) once its interpreter is up; until
        # then they stay blocked, as this thread's mask is across fork and exec: a unit's
        # stop while the worker started killed it (the service test's guest, at stops
        # right after starts)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, QUIET_SIGNALS)
        try:
            self.proc = subprocess.Popen(
                self.argv, bufsize=0, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=None, env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")},
                cwd="/", close_fds=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        # the last child's buffer and agents were dropped when it was ended (_end)
        self.info = replace(self.info, starts=self.info.starts + 1)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.set_blocking(self.proc.stdin.fileno(), False)
        os.set_blocking(self.proc.stdout.fileno(), False)

    def _greet(self) -> None:
        assert self.proc is not None
        pid = scanwire.decode_ready(self._read_line(self.clock() + self.start_timeout_s))
        if pid != self.proc.pid:
            raise Broken(f"the worker says it is pid {pid}, not {self.proc.pid}")
        self._greeted = True
        self.info = replace(self.info, pid=pid)
        log.info("scan worker started (pid %d)", pid)

    def _ask(self, request: bytes) -> bytes:
        deadline = self.clock() + self.timeout_s
        self._write(request, deadline)
        return self._read_line(deadline)

    def _write(self, data: bytes, deadline: float) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                n = 0
            except OSError as e:  # EPIPE: the child is gone
                raise Broken(f"write: {os.strerror(e.errno or errno.EIO)}") from None
            view = view[n:]
            if view:
                self._wait(fd, select.POLLOUT, deadline)

    def _read_line(self, deadline: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            line = self._buf.line()
            if line is not None:
                return line
            if len(self._buf) > self.max_reply:
                raise Broken(f"a reply longer than {self.max_reply} bytes")
            self._wait(fd, select.POLLIN, deadline)
            try:
                got = self._buf.fill(fd)
            except BlockingIOError:
                continue
            except OSError as e:
                raise Broken(f"read: {os.strerror(e.errno or errno.EIO)}") from None
            if not got:
                raise Broken(f"it exited ({self._exit_status()})")

    def _wait(self, fd: int, event: int, deadline: float) -> None:
        left = deadline - self.clock()
        if left <= 0:
            raise Broken("no reply in time")
        p = select.poll()
        p.register(fd, event)
        if not p.poll(max(1, int(left * 1000))):
            raise Broken(f"no reply in {self.timeout_s:g} s")

    def _exit_status(self) -> str:
        assert self.proc is not None
        try:
            rc = self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            return "its output closed"
        return f"killed by signal {-rc}" if rc < 0 else f"status {rc}"

    def _good(self) -> None:
        self._in_a_row = 0

    def _broke(self, e: BaseException) -> None:
        pid = self.proc.pid if self.proc is not None else None
        self._end(grace_s=0.0)
        self._in_a_row += 1
        wait = min(RETRY_MAX_S, 2.0 ** (self._in_a_row - 1))
        self._retry_at = self.clock() + wait
        why = str(e) or type(e).__name__
        self.info = replace(self.info, failures=self.info.failures + 1, error=why)
        log.warning("scan worker%s failed: %s; the tuner thread scans itself until "
                    "another starts (in %.0f s)", f" (pid {pid})" if pid else "", why, wait)

    def _end(self, grace_s: float) -> None:
        """The child gone, and what it held with it (the only place self.proc turns None)."""
        proc, self.proc = self.proc, None
        self._sent = {}
        self._buf.clear()  # what a broken child sent (up to max_reply) is not kept
        self.info = replace(self.info, pid=None)
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # EOF: a healthy child exits
        if grace_s > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace_s)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
