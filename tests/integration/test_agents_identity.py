"""A registration's process identity: the pidfd opened before the identifying read.

check_register() opens a new agent's pidfd before it reads proc/PID/stat, and
register() proves with one poll of that pidfd that the process it identified is
the one the pidfd names (no second stat read per registration). The engine's
task knobs take the same proof (agents/pidfdgate.py AgentPidfds) in place of
the proc/PID/stat read before each of their reads and writes. These pin the
races that proof stands for, and what it saves, on real processes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from agentshelpers import agent_side, needs_2cpus, needs_root, register_as_root
from support.sleepers import Sleepers

from agentlatd import knobset
from agentlatd.agents.pidfdgate import AgentPidfds
from agentlatd.agents.refusal import AgentRefused, Refusal, Registration
from agentlatd.agents.registry import AgentManager
from agentlatd.apply.engine import Engine
from agentlatd.errors import KernelError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.kernel.knobnames import KnobName
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId, ThreadId
from agentlatd.sysfs.root import Root

pytestmark = [needs_root, needs_2cpus]


def _req(pid: int) -> Registration:
    return Registration(agent_id=f"a{pid}", pid=pid, latency_class="interactive")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_process_that_exits_between_check_and_register_is_refused(
        tmp_path: pathlib.Path) -> None:
    """Checked alive, then killed and reaped before register(): refused as
    exited, no agent kept, the pidfd closed, nothing journaled."""
    eng, mgr = agent_side(tmp_path / "state")
    procs = Sleepers(1)
    try:
        pid = procs.pids[0]
        fds = _fds()
        p, uid = mgr.check_register(0, 0, None, _req(pid), True)
        assert _fds() == fds + 1  # the pidfd, opened before the identifying read
        procs.close()  # SIGKILL and reaped by its parent: the pid may be reused now
        with pytest.raises(AgentRefused) as e:
            mgr.register(p, uid, _req(pid))
        assert e.value.why is Refusal.NO_SUCH_PROCESS
        assert p not in mgr.agents and not mgr.new_pidfds
        assert _fds() == fds
        assert mgr.place_pending() == {}
        assert not eng.entries()
    finally:
        procs.kill()
        eng.close()


def test_a_check_not_followed_by_its_register_leaves_no_fd(tmp_path: pathlib.Path) -> None:
    """check_register() refused later in the request (or checked twice): the
    pidfd it opened is closed, and a register() for another process than the
    one checked opens its own."""
    eng, mgr = agent_side(tmp_path / "state")
    procs = Sleepers(2)
    try:
        a, b = procs.pids
        fds = _fds()
        mgr.check_register(0, 0, None, _req(a), True)
        pb, uid = mgr.check_register(0, 0, None, _req(b), True)
        assert _fds() == fds + 1  # a's pidfd closed, b's open
        mgr.register(pb, uid, _req(b))
        assert mgr.agents[pb].pidfd is not None
        assert all(r is None for r in mgr.place_pending().values())
        assert os.sched_getaffinity(b) == {1}
        fds = _fds()  # b's pidfd and the journal's log
        # a check of an agent already registered opens nothing
        mgr.check_register(0, 0, None, _req(b), True)
        assert _fds() == fds
        # a refused check leaves nothing open
        os.kill(a, signal.SIGSTOP)
        with pytest.raises(AgentRefused):
            mgr.check_register(0, 0, None, Registration(
                agent_id="x", pid=a, latency_class="interactive", starttime=1), True)
        assert _fds() == fds
    finally:
        procs.kill()
        eng.close()


class CountingRoot(Root):
    """The live root, counting the files read through it (by kernel path)."""

    def __init__(self) -> None:
        super().__init__("/")
        self.reads: collections.Counter[str] = collections.Counter()

    def read_bytes(self, rel: str, context: str | None = None) -> bytes:
        self.reads[rel] += 1
        return super().read_bytes(rel, context)


@dataclass
class OneAgent:
    eng: Engine
    mgr: AgentManager
    procs: Sleepers
    pid: int
    p: ProcId


@contextlib.contextmanager
def one_agent(tmp_path: pathlib.Path, root: Root | None = None,
              latency_class: str = "interactive") -> Iterator[OneAgent]:
    """A sleeping process registered by root as `latency_class` and placed, in an
    agent side on `root` (the live one by default); killed and closed after."""
    eng, mgr = agent_side(tmp_path / "state", root=root)
    procs = Sleepers(1)
    try:
        pid = procs.pids[0]
        p = register_as_root(mgr, pid, latency_class)
        assert all(r is None for r in mgr.place_pending().values())
        yield OneAgent(eng, mgr, procs, pid, p)
    finally:
        procs.kill()
        eng.close()


def test_an_agents_pidfd_replaces_the_stat_read_of_each_task_knob_read_and_write(
        tmp_path: pathlib.Path) -> None:
    """Class "background" writes three knobs on the thread; each was read and
    written after a proc/PID/stat read (7 in all with the identifying one,
    before AgentPidfds). Now only the registration's identifying read is made,
    and the unregister's restores make none; the writes land as before."""
    root = CountingRoot()
    with one_agent(tmp_path, root, "background") as one:
        eng, mgr, pid, p = one.eng, one.mgr, one.pid, one.p
        stat = f"proc/{pid}/stat"
        assert root.reads[stat] == 1  # _identify's, which the pidfd was opened before
        if tasks.pidfd_ids(mgr.agents[p].pidfd or -1) is not None:
            # the credentials came from the pidfd (PIDFD_GET_INFO, Linux 6.13)
            assert root.reads[f"proc/{pid}/status"] == 0
        assert os.getpriority(os.PRIO_PROCESS, pid) == 10
        assert os.sched_getaffinity(pid) == {0}
        assert len(eng.entries()) == 3
        root.reads.clear()
        mgr.unregister(p)
        assert root.reads[stat] == 0
        assert os.getpriority(os.PRIO_PROCESS, pid) == 0
        assert not eng.entries()


def test_the_witness_proves_nothing_to_another_thread(tmp_path: pathlib.Path) -> None:
    """The tuner thread's drift check reads journaled task knobs too: from any
    thread but the one that bound it the witness vouches for nothing (that
    thread may close an agent's pidfd, and its number be reused, meanwhile),
    and the knob reads proc/PID/stat as without one."""
    root = CountingRoot()
    with one_agent(tmp_path, root) as one:
        mgr, pid, p = one.mgr, one.pid, one.p
        knob = knobset.witnessed(witness := AgentPidfds())[KnobName.TASK_AFFINITY]
        witness.bind(mgr.pidfd_of)
        target = ThreadId(pid, p.starttime, pid).target
        assert witness.vouches(pid, p.starttime)
        assert not witness.vouches(pid, p.starttime + 1)  # another process's start time
        seen: list[bool] = []
        values: list[str] = []

        def other() -> None:
            seen.append(witness.vouches(pid, p.starttime))
            values.append(knob.read(root, target))

        root.reads.clear()
        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert seen == [False] and values == ["1"]
        assert root.reads[f"proc/{pid}/stat"] == 1
        root.reads.clear()
        assert knob.read(root, target) == "1"
        assert root.reads[f"proc/{pid}/stat"] == 0


def test_the_witness_does_not_vouch_for_an_agent_that_exited(tmp_path: pathlib.Path) -> None:
    """Killed and reaped while still registered (its pidfd not yet seen by the
    loop): the pidfd is readable, so the proof fails and the knob's read of
    proc/PID/stat says the thread is gone, as it did before AgentPidfds."""
    with one_agent(tmp_path) as one:
        mgr, pid, p = one.mgr, one.pid, one.p
        witness = AgentPidfds()
        witness.bind(mgr.pidfd_of)
        assert witness.vouches(pid, p.starttime)
        one.procs.close()  # SIGKILL and reaped
        assert p in mgr.agents
        assert not witness.vouches(pid, p.starttime)
        knob = knobset.witnessed(witness)[KnobName.TASK_AFFINITY]
        with pytest.raises(KernelError) as e:
            knob.read(Root("/"), ThreadId(pid, p.starttime, pid).target)
        assert e.value.errclass is ErrClass.GONE


def test_the_pidfd_tells_the_credentials_proc_status_tells() -> None:
    """A process with real uid 65534 and effective uid 65533 (raw setresuid):
    PIDFD_GET_INFO's (tgid, ruid, euid) are proc/PID/status's; for a process
    that exited, None (the caller falls back to status, which says "gone")."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time; os.setresuid(65534, 65533, 0); "
         "print('ok', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    fd = None
    try:
        assert child.stdout is not None and child.stdout.readline() == "ok\n"
        fd = os.pidfd_open(child.pid)
        got = tasks.pidfd_ids(fd)
        if got is None:
            pytest.skip("PIDFD_GET_INFO needs Linux 6.13; this kernel falls back to "
                        "proc/PID/status")
        assert got == tasks.status_ids(Root("/"), child.pid) == (child.pid, 65534, 65533)
        child.kill()
        child.wait()
        assert tasks.pidfd_ids(fd) is None
    finally:
        if fd is not None:
            os.close(fd)
        child.kill()
        child.wait()


def test_without_a_pidfd_the_credentials_come_from_proc_status(tmp_path: pathlib.Path) -> None:
    """A re-registration (the agent's pidfd is in the registry, none is opened)
    or a kernel without pidfds: the check reads proc/PID/status, and refuses a
    process of another uid for a non-admin peer as before."""
    root = CountingRoot()
    with one_agent(tmp_path, root) as one:
        mgr, pid, p = one.mgr, one.pid, one.p
        root.reads.clear()
        assert mgr.check_register(0, 0, None, _req(pid), True) == (p, 0)
        assert root.reads[f"proc/{pid}/status"] == 1
        with pytest.raises(AgentRefused) as e:
            mgr.check_register(4242, 4242, None, _req(pid), False)
        assert e.value.why is Refusal.NOT_PERMITTED


def test_the_placement_gives_the_originals_later_threads_inherit(tmp_path: pathlib.Path) -> None:
    """Agent.orig (what a thread born later with agentlatd's value gets back)
    is the main thread's value the placement read right before writing it,
    for each knob the class writes: no reads of its own before the answer."""
    eng, mgr = agent_side(tmp_path / "state")
    procs = Sleepers(2)
    try:
        bg, inter = procs.pids
        os.setpriority(os.PRIO_PROCESS, bg, 5)
        before = {KnobName.TASK_AFFINITY: tasks.get_affinity(bg).to_list(),
                  KnobName.TASK_NICE: "5", KnobName.TASK_IOPRIO: tasks.get_ioprio(bg)}
        inter_aff = tasks.get_affinity(inter).to_list()
        pb = register_as_root(mgr, bg, "background")
        pi = register_as_root(mgr, inter)
        assert mgr.agents[pb].orig == {} and mgr.agents[pi].orig == {}
        assert all(r is None for r in mgr.place_pending().values())
        assert os.getpriority(os.PRIO_PROCESS, bg) == 10
        assert mgr.agents[pb].orig == before
        # interactive writes the affinity only: the only original it needs
        assert mgr.agents[pi].orig == {KnobName.TASK_AFFINITY: inter_aff}
        # placed again (its class re-applied): the first originals stay
        mgr.dirty.add(pb)
        assert all(r is None for r in mgr.place_pending().values())
        assert mgr.agents[pb].orig == before
    finally:
        procs.kill()
        eng.rollback()
        eng.close()
