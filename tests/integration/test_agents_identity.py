"""A registration's process identity: the pidfd opened before the identifying read.

check_register() opens a new agent's pidfd before it reads proc/PID/stat, and
register() proves with one poll of that pidfd that the process it identified is
the one the pidfd names (no second stat read per registration). These pin the
races that proof stands for, on real processes.
"""

from __future__ import annotations

import os
import pathlib
import signal

import pytest
from agentshelpers import agent_side, needs_2cpus, needs_root
from support.sleepers import Sleepers

from agentlatd.agents.refusal import AgentRefused, Refusal, Registration

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
