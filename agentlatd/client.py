"""Python client: register this process with agentlatd and report step latency.

    from agentlatd.client import Client

    client = Client("planner")                 # registers this process (interactive)
    while True:
        with client.step():                    # times the step locally
            plan_next_action()

Socket: the `socket=` argument, else $AGENTLATD_SOCKET, else the policy's
default (/run/agentlatd/agentlatd.sock). Protocol: docs/protocol.md.

The step path makes no system call: `with client.step()` reads
time.perf_counter_ns() twice (clock_gettime(CLOCK_MONOTONIC) through the
vDSO), appends the duration to a deque and writes one record (step id, tid,
start, end) into the step ring, a memfd mapped shared that the daemon and
`agentlatd trace --slow-steps` read (agentlatd/steps/ring.py; format in
docs/protocol.md). bench/agents.py measures it with and without the ring.
A helper thread (daemon=True) wakes every `flush_interval` seconds, or once
`flush_steps` samples are waiting, turns the samples into a sparse histogram
(agentlatd.stepstats) and sends one "step" report: one line, one answer
read back without blocking. The same thread notices a daemon restart (EOF or
EPIPE on the socket) and connects and registers again, so the
process is pinned again without the application doing anything.

No daemon (no socket, connection refused, no permission to connect): one
RuntimeWarning, then step() only writes its ring record; the helper thread tries again every
`retry_interval` seconds and registers when a daemon appears. A daemon that
refuses the registration (wrong uid, bad arguments) raises RegistrationError
from Client(): that is a bug to fix, not a condition to hide.

After fork() the child's copy of a Client is inert (the registration is the
parent's process); create a new Client in the child to register it.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import grp
import itertools
import json
import os
import socket as _socket
import threading
import time
import warnings
import weakref
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from agentlatd.api import protocol
from agentlatd.steps.ring import FLAG_RAISED, RingWriter, step_key
from agentlatd.stepstats import sparse
from agentlatd.sysfs.root import HOST
from agentlatd.wire import DEFAULT_SOCKET, Op

ENV_SOCKET = "AGENTLATD_SOCKET"
_perf = time.perf_counter_ns


def socket_path(explicit: str | None = None) -> str:
    """The socket to use: explicit, else $AGENTLATD_SOCKET, else the policy default."""
    return explicit or os.environ.get(ENV_SOCKET) or DEFAULT_SOCKET


class ClientError(Exception):
    """The daemon answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RegistrationError(ClientError):
    pass


def connect_hint(err: int | None, path: str) -> str:
    """What to do about a failed connect, for the person reading the error."""
    if err in (errno.EACCES, errno.EPERM):
        # unix(7): connecting needs write permission on the socket: mode 0660, owned by
        # root and the policy's daemon.socket_group (agentlatd by default)
        try:
            group = grp.getgrgid(os.stat(path).st_gid).gr_name
        except (OSError, KeyError):
            group = "agentlatd"
        return (f"; only root and members of the group {group} may connect: "
                f"`sudo usermod -aG {group} $USER`, then log in again")
    if err in (errno.ENOENT, errno.ECONNREFUSED):
        return "; is the daemon running? (`systemctl status agentlatd`)"
    return ""


class Unavailable(OSError):
    """No daemon serves the socket."""


class Connection:
    """A blocking request/answer connection (for the CLI and registration)."""

    def __init__(self, path: str | None = None, *, timeout: float = 5.0) -> None:
        self.path = socket_path(path)
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise Unavailable(e.errno, f"cannot connect to agentlatd at {self.path}: "
                                       f"{e.strerror}{connect_hint(e.errno, self.path)}") from e
        self.buf = bytearray()
        self._ids = itertools.count(1)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                return line
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "agentlatd closed the connection")
            self.buf += chunk

    def read_answer(self, req_id: Any) -> Any:
        """Read answers until the one for `req_id`; its result, or ClientError."""
        while True:
            msg = json.loads(self._line())
            if msg.get("id") != req_id:
                continue  # the answer to a request whose reader gave up waiting
            if msg.get("ok"):
                return msg.get("result")
            err = msg.get("error") or {}
            raise ClientError(str(err.get("code", "unknown")),
                              str(err.get("message", "agentlatd refused the request")))

    def request(self, op: Op, **fields: Any) -> Any:
        rid = next(self._ids)
        self.send(protocol.request(op, rid, **fields))
        return self.read_answer(rid)


_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def chain_member(m: int | str | dict[str, Any]) -> dict[str, Any]:
    """A chain member as the protocol spells it: 1234 -> {"pid": 1234},
    "10.0.0.2:7777" -> {"address": "10.0.0.2:7777", "proto": "udp"}."""
    if isinstance(m, bool):
        raise TypeError("a chain member is a pid, an \"ADDR:PORT\" string or a dict")
    if isinstance(m, int):
        return {"pid": m}
    if isinstance(m, str):
        return {"address": m, "proto": "udp"}
    return dict(m)


def _after_fork_in_child() -> None:
    global _tls
    # the forking thread keeps its threading.local values in the child, whose
    # tid is another: cache it anew
    _tls = threading.local()
    for c in list(_clients):
        c._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# the kernel tid of the calling thread, cached per thread: get_native_id() is a
# system call, a threading.local attribute ~40 ns (a dict keyed by get_ident()
# ~90 ns). Replaced in a forked child, whose threads are new.
_tls = threading.local()


def _tid() -> int:
    try:
        return _tls.tid  # type: ignore[no-any-return]
    except AttributeError:
        tid = _tls.tid = threading.get_native_id()
        return tid


class _Step:
    """One timed step. Only the client and the id are stored here (two stores: the
    object is made per step); __exit__ reads the rest from the client."""

    __slots__ = ("_c", "_t0", "step_id")

    def __init__(self, client: Client, step_id: Any) -> None:
        self._c = client
        self.step_id = step_id

    def __enter__(self) -> _Step:
        self._t0 = _perf()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        t1 = _perf()
        t0 = self._t0
        c = self._c
        q = c._samples
        q.append(t1 - t0)
        w = c._ring_words
        if w is not None:
            # RingWriter.write inlined, the same stores in the same order (docs/protocol.md
            # "Writer protocol"): a Python call costs ~15 % of the step's 2 us budget on
            # the 2-core CI machine (bench/agents.py step_cpu_ns)
            seq = c._ring_claim()
            i = 8 + (seq & c._ring_mask) * 6
            k = self.step_id
            if k is None:
                k = seq
            elif k.__class__ is not int or not 0 <= k <= 0xFFFF_FFFF_FFFF_FFFF:
                k = step_key(k, seq)
            try:  # _tid() inlined too
                tid = _tls.tid
            except AttributeError:
                tid = _tid()
            w[i] = 0
            w[i + 1] = k
            w[i + 2] = t0
            w[i + 3] = t1
            w[i + 4] = tid if et is None else tid | FLAG_RAISED << 32
            w[i] = seq + 1
            w[4] = seq + 1
        elif c._ring_write is not None:  # a big-endian host: the struct path
            c._ring_write(self.step_id, _tid(), t0, t1, 0 if et is None else FLAG_RAISED)
        if len(q) >= c.flush_steps:
            c._wake.set()


class _NoStep:
    __slots__ = ()

    def __enter__(self) -> _NoStep:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_STEP = _NoStep()


class _RingStep:
    """No daemon, but a step ring: the step is still marked for `agentlatd trace --slow-steps`."""

    __slots__ = ("_ring", "_t0", "step_id")

    def __init__(self, ring: Any, step_id: Any) -> None:
        self._ring = ring
        self.step_id = step_id
        self._t0 = 0

    def __enter__(self) -> _RingStep:
        self._t0 = _perf()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._ring(self.step_id, _tid(), self._t0, _perf(), 0 if et is None else 1)


class Client:
    """Registers the calling process (or `pid`) and reports its step latency."""

    def __init__(self, agent_id: str | None = None, latency_class: str = "interactive", *,
                 socket: str | None = None, pid: int | None = None,
                 deadline_ns: int | None = None, budget_ns: int | None = None,
                 devices: Iterable[str] = (), flush_interval: float = 1.0,
                 flush_steps: int = 4096, retry_interval: float = 5.0,
                 timeout: float = 5.0, background: bool = True,
                 step_ring: bool = True, ring_capacity: int = 4096) -> None:
        self.path = socket_path(socket)
        self.agent_id = agent_id or f"{_comm()}-{os.getpid()}"
        self.latency_class = latency_class
        self.pid = pid
        self.deadline_ns = deadline_ns
        self.budget_ns = budget_ns
        self.devices = list(devices)
        self.flush_interval = flush_interval
        self.flush_steps = max(1, flush_steps)
        self.retry_interval = retry_interval
        self.timeout = timeout
        self.chain: list[dict[str, Any]] = []  # declared chain members, sent again on reconnect
        self.registration: dict[str, Any] | None = None
        self.warned = False
        self.reconnects = 0
        self.dropped = 0
        self.reports = 0
        self._samples: collections.deque[int] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False
        self._owner = os.getpid()
        self._next_try = 0.0
        self._thread: threading.Thread | None = None
        # the step markers (agentlatd/steps/ring.py, docs/protocol.md): each step's
        # (id, tid, start, end) for `agentlatd trace --slow-steps` and the daemon
        self.ring: RingWriter | None = None
        self._ring_write: Any = None
        self._ring_words: memoryview | None = None  # the ring's u64 view (little-endian hosts)
        self._ring_claim: Any = None
        self._ring_mask = 0
        if step_ring:
            try:
                self.ring = RingWriter(ring_capacity)
                self._ring_claim = self.ring.claim
                self._ring_mask = self.ring.mask
                if self.ring.words is not None:
                    self._ring_words = self.ring.words
                else:
                    self._ring_write = self.ring.write
            except OSError as e:  # no memfd (seccomp, old kernel): steps are still timed
                warnings.warn(f"agentlatd client: no step ring ({e.strerror}); per-step "
                              "attribution falls back to wakeup-to-block cycles",
                              RuntimeWarning, stacklevel=2)
        _clients.add(self)
        self._connect_and_register(initial=True)
        if background:
            self._thread = threading.Thread(target=self._run, name="agentlatd-client",
                                            daemon=True)
            self._thread.start()

    # -- public ----------------------------------------------------------
    @property
    def enabled(self) -> bool:
        """Registered with a running daemon."""
        return self._conn is not None and self.registration is not None

    @property
    def home_cpu(self) -> int | None:
        return self.registration.get("home_cpu") if self.registration else None

    def step(self, step_id: Any = None) -> Any:
        """`with client.step(id):` times one step (without a daemon, only its ring record)."""
        if self._conn is None:
            ring = self.ring
            return _NO_STEP if ring is None else _RingStep(ring.write, step_id)
        return _Step(self, step_id)

    def record(self, duration_ns: int) -> None:
        """Add a step measured by the caller."""
        if self._conn is not None:
            self._samples.append(int(duration_ns))

    def declare_chain(self, members: Iterable[int | str | dict[str, Any]]) -> Any:
        """Name the local processes this agent waits on, for agentlatd to place with
        it (docs/protocol.md, "Chains"): pids, "ADDR:PORT" strings (a UDP socket
        bound there; {"address": ..., "proto": "tcp"} for TCP) or member objects.
        Replaces the previous list ([] clears it) and is sent again after a
        reconnect. The daemon's answer, or None without a daemon; ClientError
        when it refuses (a process of another uid, for a non-admin caller)."""
        self.chain = [chain_member(m) for m in members]
        with self._lock:
            conn = self._conn
            if conn is None or self.registration is None:
                return None
            return conn.request(Op.CHAIN, pid=self.pid, agent_id=self.agent_id, members=self.chain)

    def flush(self) -> bool:
        """Send the waiting samples now (blocking briefly). True when sent."""
        return self._flush()

    def unregister(self) -> None:
        """Flush, unregister (the daemon restores affinity, nice, ioprio) and stop."""
        self._flush()
        with self._lock:
            if self._conn is not None and self.registration is not None:
                with contextlib.suppress(OSError, ClientError, ValueError):
                    self._conn.request(Op.UNREGISTER, pid=self.pid, agent_id=self.agent_id)
            self.registration = None
        self.close()

    def close(self) -> None:
        """Stop the helper thread and close the connection (the registration stays
        until the process exits; use unregister() to end it earlier)."""
        self._closed = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._ring_write = None
        self._ring_words = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unregister()

    # -- internals -------------------------------------------------------
    def _forked(self) -> None:
        self._closed = True
        self._conn = None
        self.registration = None
        self._thread = None
        self._samples = collections.deque()
        # the parent's ring stays the parent's: the child never writes it (its header
        # names the parent's pid, so readers ignore the inherited fd)
        self._ring_write = None
        self._ring_words = None
        self.ring = None

    def _register_fields(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id, "pid": self.pid, "latency_class": self.latency_class,
                "deadline_ns": self.deadline_ns, "budget_ns": self.budget_ns,
                "devices": self.devices or None}

    def _connect_and_register(self, *, initial: bool = False) -> bool:
        try:
            conn = Connection(self.path, timeout=self.timeout)
        except Unavailable as e:
            self._next_try = time.monotonic() + self.retry_interval
            if not self.warned:
                self.warned = True
                warnings.warn(f"agentlatd client: {e.strerror}; running without agentlatd "
                              f"(steps are not measured; retrying every "
                              f"{self.retry_interval:g} s)", RuntimeWarning, stacklevel=3)
            return False
        try:
            reg = conn.request(Op.REGISTER, **self._register_fields())
        except ClientError as e:
            conn.close()
            if initial:
                raise RegistrationError(e.code, f"agentlatd refused to register "
                                                f"{self.agent_id!r}: {e.message}") from None
            self._next_try = time.monotonic() + self.retry_interval
            return False
        except (OSError, ValueError):
            conn.close()
            self._next_try = time.monotonic() + self.retry_interval
            return False
        if self.chain:
            try:
                conn.request(Op.CHAIN, pid=self.pid, agent_id=self.agent_id, members=self.chain)
            except ClientError as e:
                warnings.warn(f"agentlatd client: chain not declared again: {e.message}",
                              RuntimeWarning, stacklevel=2)
            except (OSError, ValueError):
                conn.close()
                self._next_try = time.monotonic() + self.retry_interval
                return False
        with self._lock:
            self._conn = conn
            self.registration = reg
        if not initial:
            self.reconnects += 1
        return True

    def _disconnect(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self.registration = None
        self._next_try = 0.0  # try again at once (a restarted daemon is usually up)

    def _drain(self) -> list[int]:
        q = self._samples
        out: list[int] = []
        pop = q.popleft
        for _ in range(len(q)):
            try:
                out.append(pop())
            except IndexError:  # the other thread drained it meanwhile
                break
        return out

    def _flush(self) -> bool:
        samples = self._drain()
        with self._lock:
            conn = self._conn
            if conn is None:
                self.dropped += len(samples)
                return False
            try:
                self._check(conn)
                if samples:
                    hist = sparse(samples)
                    conn.send(protocol.request(
                        Op.STEP, f"s{self.reports}", pid=self.pid, agent_id=self.agent_id,
                        count=len(samples), hist={str(b): c for b, c in hist.items()},
                        sum_ns=sum(samples), max_ns=max(samples),
                        dropped=self.dropped or None))
                    self.dropped = 0
                    self.reports += 1
                return True
            except (OSError, ValueError):
                pass
        self.dropped += len(samples)
        self._disconnect()
        return False

    def _check(self, conn: Connection) -> None:
        """Read the answers waiting, without blocking; raise OSError on EOF."""
        conn.sock.setblocking(False)
        try:
            while True:
                try:
                    chunk = conn.sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    break
                if not chunk:
                    raise ConnectionResetError(errno.ECONNRESET, "agentlatd closed the connection")
                conn.buf += chunk
        finally:
            conn.sock.settimeout(self.timeout)
        while b"\n" in conn.buf:
            i = conn.buf.find(b"\n")
            line = bytes(conn.buf[:i])
            del conn.buf[:i + 1]
            msg = json.loads(line)
            if not msg.get("ok"):
                code = (msg.get("error") or {}).get("code")
                if code == protocol.NOT_REGISTERED:
                    # the daemon lost us (restart, unregistered by an admin): register again
                    raise ConnectionResetError(errno.ECONNRESET, "not registered")

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._closed or os.getpid() != self._owner:
                return
            if self._conn is None:
                if time.monotonic() >= self._next_try:
                    self._connect_and_register()
                else:
                    self.dropped += len(self._drain())
                continue
            self._flush()


def _comm() -> str:
    return HOST.read_optional(f"proc/{os.getpid()}/comm") or "agent"
