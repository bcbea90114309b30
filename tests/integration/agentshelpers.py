"""Helpers for the agent tests (tests/integration/test_agents_*.py).

A real `agentlatd run` subprocess on a temporary socket and state directory
(on /dev/shm: tmpfs, as /run is in production, so journal fsyncs stay cheap),
and real agent processes: Python programs with threads, driven over stdin.

Safety: the policy here names no device (devices.include matches nothing),
turns every device knob off, and keeps interactive home CPUs "shared" unless a
test asks for "exclusive", which it must combine with scope_pid= (a process tree
the test spawned, injected by tests/support/launch.py): the host's own tasks are
never moved, no IRQ is steered, no sysctl is written, and pm_qos is never set.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agentlatd import knobset
from agentlatd import policy as policy_mod
from agentlatd.agents.applier import Applier
from agentlatd.agents.pidfdgate import AgentPidfds
from agentlatd.agents.refusal import Registration
from agentlatd.agents.registry import AgentManager
from agentlatd.apply.engine import Engine
from agentlatd.cpuset import CpuSet
from agentlatd.model.layout import CpuLayout
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

REPO = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = REPO / "tests" / "support" / "launch.py"
NOTHING = "agentlatd-test-none-*"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (restores nice/affinity "
                                                            "of other processes)")
needs_2cpus = pytest.mark.skipif(
    not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1")


def policy_text(*, completion: str = "0", home: str = "1", interval: float = 0.2,
                exclusive: str = "shared", hot: float = 0.5, cool: float = 0.2,
                hot_ticks: int = 2, min_move_interval: float = 0.0, extra: str = "") -> str:
    return f"""
[daemon]
interval = {interval}
log_level = "debug"
socket_group = "nogroup"
irqbalance = "ignore"

[cpus]
completion = "{completion}"
home = "{home}"

[devices]
include = ["{NOTHING}"]
exclude = []

[heat]
hot = {hot}
cool = {cool}
hot_ticks = {hot_ticks}
min_move_interval = {min_move_interval}

[classes.interactive]
exclusive = "{exclusive}"

[tuning]
irq_affinity = false
rps = false
rps_flow_cnt = 0
xps = false
coalesce = false
threaded_napi = false
{extra}
"""


def wait_until(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s (last: {last!r})")


TICK_KEYS = ("tick", "agent_ticks")


def tick_counts(status: Callable[[], dict[str, Any]]) -> dict[str, int]:
    """The daemon's tick counters from its status: the tuner's (`tick`) and the agent
    side's (`agent_ticks`), each of the two loops that can act on its own."""
    st = status()
    missing = [k for k in TICK_KEYS if k not in st]
    assert not missing, f"status has no {missing} tick counter: {sorted(st)}"
    return {k: int(st[k]) for k in TICK_KEYS}


def wait_ticks(status: Callable[[], dict[str, Any]], n: int = 2, timeout: float = 20.0,
               what: str = "") -> dict[str, Any]:
    """Block until both of the daemon's loops have completed at least `n` more ticks
    than when called; return the status that shows it.

    For "nothing happened" checks: a fixed sleep passes vacuously when the daemon has not
    ticked yet on a loaded machine, while two completed ticks of each loop prove the
    daemon had the chance to act (the first may have begun before the change under test)."""
    base = tick_counts(status)
    last: dict[str, Any] = {}

    def done() -> bool:
        nonlocal last
        last = status()
        return all(int(last[k]) >= base[k] + n for k in TICK_KEYS)

    wait_until(done, timeout, what=what or f"{n} more ticks of each loop (from {base})")
    return last


def statuses_over_ticks(status: Callable[[], dict[str, Any]], n: int, timeout: float = 30.0,
                        interval: float = 0.05) -> Iterator[dict[str, Any]]:
    """Every status polled until both loops have completed `n` more ticks (the last one
    yielded shows them): a "still so on every tick" check asserts on each."""
    base = tick_counts(status)
    end = time.monotonic() + timeout
    while True:
        st = status()
        yield st
        if all(int(st[k]) >= base[k] + n for k in TICK_KEYS):
            return
        if time.monotonic() > end:
            raise AssertionError(f"{n} more ticks of each loop not seen within {timeout} s "
                                 f"(from {base}, last {[st.get(k) for k in TICK_KEYS]})")
        time.sleep(interval)


def thread_affinities(pid: int) -> dict[int, str]:
    """tid -> Cpus_allowed_list of every thread of `pid` (read from /proc)."""
    out: dict[int, str] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        out[int(t)] = line.split(":", 1)[1].strip()
        except FileNotFoundError:
            continue
    return out


def all_on(pid: int, cpus: str) -> bool:
    aff = thread_affinities(pid)
    return bool(aff) and all(v == cpus for v in aff.values())


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def starttime(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[19])


def request(sock_path: str | os.PathLike[str], op: str, timeout: float = 10.0,
            **fields: Any) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(timeout)
        c.connect(str(sock_path))
        msg = {"v": 1, "op": op, "id": 1, **{k: v for k, v in fields.items() if v is not None}}
        c.sendall((json.dumps(msg) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    ans: dict[str, Any] = json.loads(buf)
    return ans


def env_for_children() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                      "LISTEN_PID", "AGENTLATD_SOCKET")}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["PYTHONUNBUFFERED"] = "1"
    return e


@contextlib.contextmanager
def workdir() -> Iterator[pathlib.Path]:
    """A fresh directory on tmpfs that any uid may traverse (the nobody test connects)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-test-", dir=base))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        if not os.environ.get("AGENTLATD_TEST_KEEP"):  # keep logs for a post-mortem
            shutil.rmtree(d, ignore_errors=True)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    dir: pathlib.Path
    config: pathlib.Path
    state_dir: pathlib.Path
    socket: pathlib.Path
    log_path: pathlib.Path
    argv: list[str]
    env: dict[str, str]

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        return request(self.socket, op, **fields)

    def result(self, op: str, **fields: Any) -> Any:
        """The answer's result; the answer must be ok."""
        ans = self.request(op, **fields)
        assert ans["ok"], ans
        return ans["result"]

    def agents(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.result("agents")
        return rows

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.result("status")
        return st

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def start_daemon(d: pathlib.Path, policy: str, *, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, log_name: str = "daemon.log",
                 prefix: tuple[str, ...] = (), heat_file: pathlib.Path | None = None,
                 scope_pid: int | None = None) -> Daemon:
    """`agentlatd run` in `d` with `policy`, answering on its socket. `prefix`: a
    command it runs under, e.g. ("ip", "netns", "exec", NS), which execs it in the
    same process (the pid is the daemon's). `heat_file`: run through
    tests/support/launch.py, whose heat source reads {"<cpu>": heat} from that file
    at every tuner tick in place of the measured heat. `scope_pid`: run through it too,
    the daemon moving only that process tree off an exclusive home CPU."""
    config = d / "agentlatd.toml"
    config.write_text(policy)
    state = d / "state"
    sock = d / "agentlatd.sock"
    log_path = d / log_name
    e = env_for_children()
    e.update(env or {})
    instruments = [*(("--heat-file", str(heat_file)) if heat_file is not None else ()),
                   *(("--exclusive-scope-pid", str(scope_pid)) if scope_pid is not None else ())]
    cli = [str(LAUNCH), *instruments, "--"] if instruments else ["-m", "agentlatd"]
    argv = [*prefix, sys.executable, *cli, "run", "--config", str(config),
            "--state-dir", str(state), "--socket", str(sock), *extra_args]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, env=e, cwd=str(d))
    dm = Daemon(proc, d, config, state, sock, log_path, argv, e)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{dm.log}")
        try:
            return bool(request(sock, "ping", timeout=1.0).get("ok"))
        except OSError:
            return False

    wait_until(up, 20.0, what="daemon answering on its socket")
    return dm


@contextlib.contextmanager
def daemon(d: pathlib.Path, policy: str, **kw: Any) -> Iterator[Daemon]:
    dm = start_daemon(d, policy, **kw)
    try:
        yield dm
    finally:
        if dm.proc.poll() is None:
            dm.proc.send_signal(signal.SIGTERM)
            try:
                dm.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                dm.proc.kill()
                dm.proc.wait()


# ---------------------------------------------------------------------------
# agent processes

AGENT = r'''
import json, os, sys, threading, time
from agentlatd.client import Client
sock, agent_id, klass, nthreads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = Client(agent_id, klass, socket=sock, flush_interval=0.2, retry_interval=0.2)
stop = threading.Event()
def sleeper():
    stop.wait()
def rogue(box):
    # a thread that widens its own affinity before agentlatd sees it: as a thread
    # started by a not-yet-pinned thread would be
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    box.append(threading.get_native_id())
    stop.wait()
threads = [threading.Thread(target=sleeper, daemon=True) for _ in range(nthreads)]
for t in threads:
    t.start()
print(json.dumps({"ready": c.registration}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "thread":
        t = threading.Thread(target=sleeper, daemon=True); t.start()
        print(json.dumps({"tid": t.native_id}), flush=True)
    elif cmd[0] == "rogue":
        box = []
        t = threading.Thread(target=rogue, args=(box,), daemon=True); t.start()
        while not box:
            time.sleep(0.001)
        print(json.dumps({"tid": box[0]}), flush=True)
    elif cmd[0] == "steps":
        for i in range(int(cmd[1])):
            with c.step(i):
                sum(range(50))
        c.flush()
        print(json.dumps({"steps": int(cmd[1])}), flush=True)
    elif cmd[0] == "status":
        print(json.dumps({"enabled": c.enabled, "reconnects": c.reconnects,
                          "registration": c.registration}), flush=True)
    elif cmd[0] == "unregister":
        c.unregister()
        print(json.dumps({"unregistered": True}), flush=True)
    elif cmd[0] == "exit":
        break
stop.set()
'''


class Agent:
    """A multi-threaded Python agent process using agentlatd.client."""

    def __init__(self, sock: pathlib.Path, agent_id: str, klass: str = "interactive",
                 nthreads: int = 3, preexec: Callable[[], None] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", AGENT, str(sock), agent_id, klass, str(nthreads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env_for_children(), preexec_fn=preexec)
        self.pid = self.proc.pid
        self.ready = self.read(20.0)["ready"]

    def read(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise AssertionError(f"agent {self.pid} said nothing within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"agent {self.pid} exited: {err}")
        out: dict[str, Any] = json.loads(line)
        return out

    def cmd(self, text: str, timeout: float = 10.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((text + "\n").encode())
        self.proc.stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"exit\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def current_affinity() -> str:
    """The affinity children of this test process start with (cpulist)."""
    cpus = sorted(os.sched_getaffinity(0))
    out: list[str] = []
    start = prev = cpus[0]
    for c in [*cpus[1:], -2]:
        if c == prev + 1:
            prev = c
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = c
    return ",".join(out)


def kill_quietly(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGKILL)
    with contextlib.suppress(Exception):
        p.wait(timeout=5)


# ---------------------------------------------------------------------------
# the daemon's agent side in this process (no socket, no tick, no other thread)

# interactive agents share their home CPU: with no pm_qos either, nothing but the
# processes registered is written
SHARED_HOMES = '[classes.interactive]\nexclusive = "shared"\n'


def agent_side(state: pathlib.Path | str, *, policy: str = SHARED_HOMES,
               root: Root | None = None,
               write_hook: Callable[[int], None] | None = None) -> tuple[Engine, AgentManager]:
    """An Engine (on the live root unless `root`: task knobs act on live processes
    only) and an AgentManager with home CPU 1 and completion CPU 0, as the daemon
    holds them."""
    witness = AgentPidfds()
    eng = Engine(root if root is not None else Root("/"), str(state),
                 policy=policy_mod.loads(policy), write_hook=write_hook,
                 knobs=knobset.witnessed(witness))
    mgr = AgentManager(Applier(eng), eng.policy, witness=witness)
    mgr.set_layout(CpuLayout(home=CpuSet({1}), completion=CpuSet({0})))
    return eng, mgr


def register_as_root(mgr: AgentManager, pid: int, latency_class: str = "interactive"
                     ) -> ProcId:
    """A register request of root's for `pid`, checked and recorded as the daemon's
    handler does (the writes come with mgr.place_pending())."""
    req = Registration(agent_id=f"a{pid}", pid=pid, latency_class=latency_class)
    p, uid = mgr.check_register(0, 0, None, req, True)
    mgr.register(p, uid, req)
    return p
