"""The daemon's always-on slowest-steps view (agentlatd/steps/slowsteps.py) on known
causes, with real processes: a registered Python Client agent whose steps share its CPU
with a busy loop (-> "runnable"), and one whose steps sleep (-> "blocked"). Read through
the socket ("slow_steps") and `agentlatd agents --slow [--json]`. Every process here is
bounded in time and killed at the end; the daemon's policy touches no device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.agentshelpers import (
    daemon,
    env_for_children,
    needs_root,
    policy_text,
    wait_until,
    workdir,
)

pytestmark = [needs_root]

AGENT = """
import sys, time, warnings
warnings.simplefilter("ignore")
from agentlatd.client import Client
sock, agent_id, mode = sys.argv[1], sys.argv[2], sys.argv[3]
c = Client(agent_id, "normal", socket=sock, deadline_ns=1_000_000, flush_interval=0.2)
print("up", flush=True)
end = time.monotonic() + 60
i = 0
while time.monotonic() < end:
    with c.step(i):
        if mode == "spin":  # 300 us of CPU
            t = time.perf_counter_ns() + 300_000
            while time.perf_counter_ns() < t:
                pass
        else:  # asleep 3 ms
            time.sleep(0.003)
    if mode != "spin":
        time.sleep(0.002)
    i += 1
"""

HOG = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"


def _spawn(argv: list[str], cpu: set[int], nice: int = 0,
           fifo: bool = False) -> subprocess.Popen[str]:
    def pre() -> None:
        os.sched_setaffinity(0, cpu)
        if nice:
            os.nice(nice)
        if fifo:  # never waits for a CPU behind the shared machine's other work
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env_for_children(),
                            preexec_fn=pre)


@pytest.fixture
def lab() -> Iterator[tuple[Any, int, int]]:
    """A daemon, a spinning agent sharing CPU 1 with a busy loop (nice 5 against 0: the
    hog's slices delay its steps by milliseconds) and a sleeping agent on CPU 0,
    SCHED_FIFO so that its wakeups are not delayed by whatever else runs there."""
    cpu = {1} if {0, 1} <= os.sched_getaffinity(0) else {0}
    procs: list[subprocess.Popen[str]] = []
    with workdir() as d, daemon(d, policy_text()) as dm:
        try:
            spin = _spawn([sys.executable, "-c", AGENT, str(dm.socket), "hogged", "spin"], cpu, 5)
            procs.append(spin)
            sleep = _spawn([sys.executable, "-c", AGENT, str(dm.socket), "sleepy", "sleep"],
                           {0}, fifo=True)
            procs.append(sleep)
            for p in (spin, sleep):
                assert p.stdout is not None and p.stdout.readline().strip() == "up"
            procs.append(subprocess.Popen([sys.executable, "-c", HOG], text=True,
                                          preexec_fn=lambda: os.sched_setaffinity(0, cpu)))
            yield dm, spin.pid, sleep.pid
        finally:
            for p in procs:
                p.kill()
                p.wait(timeout=10)


def _row(dm: Any, pid: int, min_slow: int) -> dict[str, Any] | None:
    for r in dm.result("slow_steps"):
        if r["pid"] == pid and len(r["slowest"]) >= min_slow:
            return dict(r)
    return None


def test_hogged_agent_shows_runnable_and_sleeping_agent_blocked(lab: tuple[Any, int, int]) -> None:
    dm, spin, sleep = lab
    hog = wait_until(lambda: _row(dm, spin, 8), 30.0, 0.2, "8 attributed slow steps (hogged)")
    share = hog["share_by_cause"]
    assert hog["ring"] and hog["threshold_ns"] == 1_000_000
    # the injected cause: waiting on the runqueue behind the busy loop
    assert share["runnable"] >= 0.5 and share["runnable"] == max(share.values()), hog
    for st in hog["slowest"]:
        assert sum(st["causes_ns"].values()) == st["duration_ns"] >= 1_000_000
        assert st["window_ns"] >= st["duration_ns"] and st["cpu"] in (0, 1)

    slp = wait_until(lambda: _row(dm, sleep, 8), 30.0, 0.2, "8 attributed slow steps (sleepy)")
    assert slp["share_by_cause"]["blocked"] == max(slp["share_by_cause"].values()), slp

    # the command line: the table and --json carry the same view
    env = env_for_children()
    out = subprocess.run([sys.executable, "-m", "agentlatd", "agents", "--slow", "--socket",
                          str(dm.socket)], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    hog_line = next(ln for ln in lines if ln.startswith("hogged"))
    assert "RUNNABLE" in lines[0] and "runnable" in out.stdout
    assert max(len(ln) for ln in lines) <= 80, out.stdout
    assert hog_line.split()[1] == str(spin)
    js = subprocess.run([sys.executable, "-m", "agentlatd", "agents", "--slow", "--json",
                         "--socket", str(dm.socket)], capture_output=True, text=True, env=env,
                        timeout=30)
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    row = next(r for r in doc["agents"] if r["pid"] == spin)
    assert row["slowest"] and row["slowest"][0]["cause"] in ("runnable", "on_cpu")
    assert row["share_by_cause"]["runnable"] >= 0.5


def test_view_survives_vanished_and_unknown_processes() -> None:
    """SlowSteps alone (the daemon thread's body, poll()): an agent killed between polls,
    and a target pid with no process, leave the view polling and answering."""
    from agentlatd.steps.slowsteps import SlowSteps, Target
    from agentlatd.sysfs.root import Root

    agent = subprocess.Popen([sys.executable, "-c", AGENT, "/nonexistent/agentlatd.sock",
                              "lone", "sleep"], stdout=subprocess.PIPE, text=True,
                             env=env_for_children())
    view = SlowSteps(Root("/"))
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "up"
        gone = 4_000_000  # above pid_max's default: no such process
        view.set_targets((Target(agent.pid, None, "lone", 1_000_000),
                          Target(gone, None, "ghost", None)))

        def attributed() -> bool:
            view.poll()
            rows = {r.agent_id: r for r in view.snapshot()}
            return rows["lone"].ring and len(rows["lone"].slowest) >= 3 and not rows["ghost"].ring

        wait_until(attributed, 20.0, 0.1, "3 attributed slow steps without a daemon")
        agent.kill()
        agent.wait(10)
        polls = view.polls
        view.poll()
        view.poll()
        assert view.polls == polls + 2
        assert {r.agent_id for r in view.snapshot()} == {"lone", "ghost"}
        view.set_targets(())
        view.poll()
        assert view.snapshot() == ()
    finally:
        view.stop()
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)


RING_LATER = """
import sys
from agentlatd.steps.ring import RingWriter
print("up", flush=True)
sys.stdin.readline()
ring = RingWriter(64)
print("ring", flush=True)
sys.stdin.readline()
"""


def _ring_later() -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", RING_LATER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env_for_children())
    assert p.stdout is not None and p.stdout.readline().strip() == "up"
    return p


def _make_ring(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "ring"


def _has_ring(view: Any) -> bool:
    return bool(view.snapshot()[0].ring)


def test_a_ring_made_after_registration_is_found_at_the_next_look() -> None:
    """`agentlatd exec` registers a process before its Client makes the ring: the
    view looks again FIND_EVERY_S later (its clock stepped by the test)."""
    from agentlatd.steps.slowsteps import FIND_EVERY_S, SlowSteps, Target
    from agentlatd.sysfs.root import Root

    now = [1000.0]
    agent = _ring_later()
    view = SlowSteps(Root("/"), clock=lambda: now[0])
    try:
        view.set_targets((Target(agent.pid, None, "late"),))
        view.poll()
        assert not _has_ring(view)
        _make_ring(agent)
        now[0] += FIND_EVERY_S / 2
        view.poll()
        assert not _has_ring(view)  # looked for at most once per FIND_EVERY_S
        now[0] += FIND_EVERY_S / 2
        view.poll()
        assert _has_ring(view)
    finally:
        view.stop()
        agent.kill()
        agent.wait(10)


def test_a_ringless_agent_past_its_first_minute_is_looked_for_within_find_max() -> None:
    """An agent without a ring is looked for less often after FIND_FRESH_S (1000 of
    them cost the view 200 fd listings a second at FIND_EVERY_S), but a ring it
    makes then is still found within FIND_MAX_S."""
    from agentlatd.steps.slowsteps import FIND_EVERY_S, FIND_FRESH_S, FIND_MAX_S, SlowSteps, Target
    from agentlatd.sysfs.root import Root

    now = [0.0]
    agent = _ring_later()
    view = SlowSteps(Root("/"), clock=lambda: now[0])
    try:
        view.set_targets((Target(agent.pid, None, "old"),))
        while now[0] < FIND_FRESH_S + 40:
            view.poll()
            now[0] += 1.0
        assert not _has_ring(view)
        _make_ring(agent)
        made = now[0]
        while not _has_ring(view):
            assert now[0] <= made + FIND_MAX_S, "ring not found within FIND_MAX_S"
            now[0] += 1.0
            view.poll()
        assert now[0] > made + FIND_EVERY_S  # the looks did back off
    finally:
        view.stop()
        agent.kill()
        agent.wait(10)


def test_a_ringless_agents_row_follows_its_target() -> None:
    """A ringless agent's row is made once per target, not each poll: a new
    deadline or agent id handed in shows at the next poll."""
    from agentlatd.steps.slowsteps import SlowSteps, Target
    from agentlatd.sysfs.root import Root

    agent = _ring_later()  # no ring unless told
    view = SlowSteps(Root("/"))
    pid = agent.pid
    try:
        view.set_targets((Target(pid, None, "a", None),))
        view.poll()
        first = view.snapshot()
        assert (first[0].agent_id, first[0].threshold_ns, first[0].ring) == ("a", None, False)
        view.poll()
        assert view.snapshot()[0] is first[0]  # the same row: not made again
        view.set_targets((Target(pid, None, "b", 2_000_000),))
        view.poll()
        row = view.snapshot()[0]
        assert (row.agent_id, row.threshold_ns) == ("b", 2_000_000)
    finally:
        view.stop()
        agent.kill()
        agent.wait(10)
