"""The scan worker (agents/scanworker.py, agents/scanchild.py) as real child processes.

  - WorkerScans with the real child finds what the tuner thread finds by itself
    (LocalScans): an agent's pipe child, the running irqbalance pids;
  - a child that breaks the protocol (a value off it, silence, a reply without end,
    exiting at start, a pid that is not its own) is killed and reaped, the call is
    answered by the calling thread's own scan, and another child is started only
    after the back-off;
  - a reply is read into a kept buffer, not a 64 KiB block per read (the heap
    growth the soak found, docs/hostile.md bug 15);
  - in a real `agentlatd run`: the worker runs with CAP_SYS_PTRACE alone under
    no_new_privs; killed with SIGKILL it is replaced and chains are still found;
    and it does not outlive a daemon killed with SIGKILL.

Processes are this test's own (sleepers, an agent and its child); the daemons'
policy names no device and keeps home CPUs shared (agentshelpers.policy_text).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator

import pytest
from agentshelpers import daemon, env_for_children, policy_text, wait_until, workdir

from agentlatd.agents.chain import ChainAgent
from agentlatd.agents.scans import LocalScans
from agentlatd.agents.scanworker import WorkerScans
from agentlatd.apply import irqbalance
from agentlatd.caps import CAP_SYS_PTRACE
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the daemon pins the agent)"),
]

ROOT = Root("/")
LIMIT_S = 60

# an agent talking to its child over pipes (a stdio tool server): the child is its chain
PIPE_AGENT = r'''
import json, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
reg = None
if len(sys.argv) > 1:
    from agentlatd.client import Client
    c = Client("pipe-agent", "interactive", socket=sys.argv[1])
    reg = c.registration
print(json.dumps({"child": child.pid, "registration": reg}), flush=True)
sys.stdin.readline()
child.kill(); child.wait()
'''


class PipeAgent:
    def __init__(self, sock: str | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PIPE_AGENT,
                                      *([sock] if sock else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env_for_children(), text=True)
        assert self.proc.stdout is not None
        self.said = json.loads(self.proc.stdout.readline())
        self.child: int = self.said["child"]
        st = tasks.starttime_of(ROOT, self.proc.pid)
        assert st is not None
        self.id = ProcId(self.proc.pid, st)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def agent() -> Iterator[PipeAgent]:
    a = PipeAgent()
    try:
        yield a
    finally:
        a.close()


def _gone(pid: int) -> bool:
    """Exited and reaped (no zombie left by the one that started it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_worker_finds_what_the_tuner_thread_finds(agent: PipeAgent) -> None:
    w = WorkerScans(ROOT)
    w.start()
    local = LocalScans(ROOT)
    try:
        assert w.irqbalance() == irqbalance.running(ROOT)
        agents = [ChainAgent(agent.id)]
        w.chain(agents, ())
        local.irqbalance()
        local.chain(agents, ())
        assert w.found == local.found
        (link,) = w.found[agent.id]
        assert link.proc.pid == agent.child and link.via.startswith("pipe:[")
        assert w.cost.agents == 1 and w.cost.fd_reads > 0
        assert w.info.pid is not None and w.info.failures == 0
        # a second request names no agent again: the worker kept the set
        w.chain(agents, ())
        assert w.found == local.found and w.info.starts == 1
        pid = w.info.pid
    finally:
        w.close()
    assert w.info.pid is None
    wait_until(lambda: _gone(pid), 5.0, what="the worker exited at close")


def test_the_worker_of_a_real_time_daemon_is_not_real_time() -> None:
    """bench/agents.py --rt and some deployments run the daemon SCHED_FIFO: its worker
    must not inherit that (a scan would then delay agents and the daemon's loop)."""
    w = WorkerScans(ROOT)
    old = os.sched_getscheduler(0), os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # this thread only, briefly
    try:
        w.start()
    finally:
        os.sched_setscheduler(0, old[0], old[1])
    try:
        w.irqbalance()  # its ready line: its set-up is done
        assert w.proc is not None and w.info.pid == w.proc.pid
        assert os.sched_getscheduler(w.proc.pid) == os.SCHED_BATCH
    finally:
        w.close()


def _fake(code: str, pids: pathlib.Path) -> list[str]:
    """A child in the worker's place: it notes its pid in `pids`, then runs `code`."""
    return [sys.executable, "-c", "import os, sys, time\n"
            f"open({str(pids)!r}, 'a').write('%d\\n' % os.getpid())\n" + code]


READY = "print('{\"ready\": %d}' % os.getpid(), flush=True)\n"
FAKES = {
    "a value off the protocol": (READY + "sys.stdin.readline()\n"
                                 "print('{\"pids\": [\"1\"]}', flush=True)\ntime.sleep(60)",
                                 "irqbalance pid"),
    "silence": (READY + "time.sleep(60)", "no reply in 0.5 s"),
    "a reply without end": (READY + "sys.stdin.readline()\n"
                            "sys.stdout.write('x' * 100000); sys.stdout.flush(); time.sleep(60)",
                            "longer than 4096 bytes"),
    "exiting at start": ("sys.exit(3)", "it exited (status 3)"),
    "a pid not its own": ("print('{\"ready\": 1}', flush=True)\ntime.sleep(60)",
                          "says it is pid 1"),
}


@pytest.mark.parametrize("how", sorted(FAKES))
def test_a_broken_worker_is_killed_and_the_thread_scans_itself(
        how: str, tmp_path: pathlib.Path) -> None:
    code, why = FAKES[how]
    now = [100.0]
    pids = tmp_path / "pids"
    fds = len(os.listdir("/proc/self/fd"))
    w = WorkerScans(ROOT, argv=_fake(code, pids), timeout_s=0.5, start_timeout_s=5.0,
                    max_reply=4096, clock=lambda: now[0])
    w.start()
    try:
        assert w.irqbalance() == irqbalance.running(ROOT)  # answered all the same
        assert w.info.pid is None and w.info.failures == 1 and w.info.starts == 1
        assert why in w.info.error
        spawned = [int(x) for x in pids.read_text().split()]
        assert len(spawned) == 1 and _gone(spawned[0]), "the broken worker was reaped"
        # within the back-off (1 s) the thread scans itself and starts nothing
        now[0] += 0.5
        assert w.irqbalance() == irqbalance.running(ROOT) and w.info.starts == 1
        # after it, another child is tried (and fails the same way: 2 s next)
        now[0] += 0.6
        w.irqbalance()
        assert w.info.starts == 2 and w.info.failures == 2
        # each child's pipes were closed with it
        assert len(os.listdir("/proc/self/fd")) == fds
    finally:
        w.close()


# a well-behaved worker that answers every irqbalance request with no pid
ECHO = READY + "for _ in sys.stdin:\n    print('{\"pids\": []}', flush=True)\n"


def test_scan_worker_replies_allocate_no_64_kib_block_per_read(tmp_path: pathlib.Path) -> None:
    """A reply is read into the worker client's kept buffer (LineBuffer). It was
    os.read(fd, 64 KiB), each read a 64 KiB block on the C heap shrunk to the few
    bytes the pipe held, appended to a bytearray that grew and shrank by realloc:
    a few times a tick, and the daemon's heap grew for good under bench/soak.py's
    churn (RSS slope 158 KiB/min, docs/hostile.md bug 15). Peak of what the
    interpreter allocated over 20 exchanges of a 13-byte reply: >= 64 KiB before,
    a few KiB now."""
    w = WorkerScans(ROOT, argv=_fake(ECHO, tmp_path / "pids"), start_timeout_s=10.0)
    w.start()
    try:
        assert w.irqbalance() == ()  # greeted: the ready line and one exchange
        tracemalloc.start()
        try:
            for _ in range(20):
                assert w.irqbalance() == ()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert w.info.failures == 0 and w.info.starts == 1
        assert peak < 32 << 10, f"peak {peak} bytes over 20 replies of 13 bytes"
    finally:
        w.close()


def _caps_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_the_daemons_worker_keeps_ptrace_alone_and_is_replaced_when_killed() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        w0 = wait_until(lambda: dm.status()["scan_worker"]["pid"], 15.0,
                        what="the scan worker started")
        st = _caps_of(w0)
        assert int(st["PPid"]) == dm.proc.pid
        assert int(st["CapEff"], 16) == 1 << CAP_SYS_PTRACE
        assert int(st["CapPrm"], 16) == 1 << CAP_SYS_PTRACE
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
        assert st["NoNewPrivs"] == "1"

        def chain_of(a: PipeAgent) -> object:
            rows = [r for r in dm.agents() if r["pid"] == a.proc.pid]
            return rows and [m for m in rows[0].get("chain", []) if m["pid"] == a.child]

        a1 = PipeAgent(str(dm.socket))
        try:
            assert a1.said["registration"]["home_cpu"] is not None
            wait_until(lambda: chain_of(a1), 15.0, what="the pipe child found by the worker")
            os.kill(w0, signal.SIGKILL)

            def replaced() -> dict[str, object] | None:
                s: dict[str, object] = dm.status()["scan_worker"]
                return s if s["pid"] not in (None, w0) else None

            s = wait_until(replaced, 20.0, what="another scan worker")
            assert s["failures"] == 1 and s["starts"] == 2
            assert "signal 9" in str(s["error"]) or "Broken pipe" in str(s["error"])
            assert f"scan worker (pid {w0}) failed" in dm.log
            wait_until(lambda: _gone(w0), 5.0, what="the killed worker reaped")
            a2 = PipeAgent(str(dm.socket))
            try:
                wait_until(lambda: chain_of(a2), 15.0,
                           what="a new agent's pipe child found by the new worker")
            finally:
                a2.close()
        finally:
            a1.close()


def test_scan_worker_killed_by_sigterm_while_it_starts() -> None:
    """A unit's stop right after its start signalled the worker before its interpreter
    had set SIGTERM to be ignored (the service test's guest). The daemon starts it
    with the signals blocked: sent at once, they are dropped, and it answers."""
    w = WorkerScans(ROOT)
    w.start()
    try:
        assert w.proc is not None
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            os.kill(w.proc.pid, sig)
        assert w.irqbalance() == irqbalance.running(ROOT)
        assert w.info.pid == w.proc.pid and w.info.failures == 0, w.info
        # and the daemon's own mask is as it was
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, set()) & {signal.SIGTERM}
    finally:
        w.close()


def test_scan_worker_killed_by_the_units_sigterm_at_every_clean_stop() -> None:
    """`systemctl stop` signals every process of the unit: the worker ignores SIGTERM
    (and SIGHUP, SIGINT) and ends when the daemon closes its stdin, so a clean stop
    logs no failed worker (the service test's guest did, at each stop)."""
    with workdir() as d, daemon(d, policy_text()) as dm:
        w = wait_until(lambda: dm.status()["scan_worker"]["pid"], 15.0,
                       what="the scan worker started")
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            os.kill(w, sig)
        t0 = dm.status()["tick"]
        wait_until(lambda: dm.status()["tick"] >= t0 + 2, 15.0, what="two tuner ticks")
        st = dm.status()["scan_worker"]
        assert st["pid"] == w and st["failures"] == 0, st
        for sig in (signal.SIGTERM, signal.SIGINT):  # the unit's stop, a terminal's ^C
            os.kill(w, sig)
        assert dm.stop(signal.SIGTERM) == 0
        assert f"scan worker (pid {w}) failed" not in dm.log, dm.log
        wait_until(lambda: _gone(w), 5.0, what="the worker ended with the daemon")


def test_the_worker_does_not_outlive_a_daemon_killed_with_sigkill() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        w = wait_until(lambda: dm.status()["scan_worker"]["pid"], 15.0,
                       what="the scan worker started")
        dm.proc.kill()
        dm.proc.wait(10)

        def dead() -> bool:
            try:
                with open(f"/proc/{w}/stat") as f:
                    return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
            except FileNotFoundError:
                return True

        wait_until(dead, 10.0, what="the worker killed with its daemon")
