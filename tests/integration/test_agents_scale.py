"""1000 registered agents; a crash-restart that restores agents that never come back;
auto-registration by comm."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from agentshelpers import (
    agent_side,
    all_on,
    current_affinity,
    daemon,
    kill_quietly,
    needs_2cpus,
    needs_root,
    policy_text,
    register_as_root,
    start_daemon,
    thread_affinities,
    wait_ticks,
    wait_until,
    workdir,
)
from support.sleepers import Sleepers

from agentlatd.agents.chain import SCAN_PIECE, ChainKeeper, ChainScanner, Link
from agentlatd.agents.registry import REAP_PIECE
from agentlatd.agents.threads import proc_of
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

pytestmark = [needs_root, needs_2cpus]



def test_1000_registered_agents() -> None:
    n = 1000
    forker = Sleepers(n)
    try:
        pids = forker.pids
        assert len(pids) == n
        with workdir() as d, daemon(d, policy_text()) as dm:
            t0 = time.monotonic()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.settimeout(60)
                c.connect(str(dm.socket))
                c.sendall(b"".join(
                    (json.dumps({"v": 1, "op": "register", "id": i, "agent_id": f"a{i:04d}",
                                 "pid": pid}) + "\n").encode() for i, pid in enumerate(pids)))
                f = c.makefile("rb")
                answers = [json.loads(f.readline()) for _ in pids]
            took = time.monotonic() - t0
            assert [a["id"] for a in answers] == list(range(n))
            bad = [a for a in answers if not a["ok"]]
            assert not bad, bad[:3]
            assert all(a["result"]["home_cpu"] == 1 for a in answers)
            assert all(all_on(p, "1") for p in pids)
            rows = dm.agents()
            assert len(rows) == n and {r["pid"] for r in rows} == set(pids)
            # a few ticks of each loop with 1000 agents, counted: none may be dropped or
            # lose its journal entry (after a bare sleep the daemon may not have ticked)
            st = wait_ticks(dm.status, 3, timeout=60.0)
            assert st["agents"] == n and st["journal_entries"] == n
            print(f"\n1000 registrations in {took:.2f} s; agent tick {st['agent_tick_ms']} ms")
            forker.close()
            wait_until(lambda: dm.status()["agents"] == 0, 20.0, what="all 1000 dropped at exit")
            assert dm.status()["journal_entries"] == 0
    finally:
        forker.kill()


LATE_THREADS = r'''
import sys, threading
stop = threading.Event()
print("ready", flush=True)
sys.stdin.readline()          # registered by the test meanwhile: start threads now
for _ in range(3):
    threading.Thread(target=stop.wait, daemon=True).start()
print("started", flush=True)
sys.stdin.readline()
'''


def test_after_a_crash_agents_that_never_register_again_are_restored() -> None:
    """Threads born pinned (cloned after registration) are journaled too."""
    orig = current_affinity()
    p = subprocess.Popen([sys.executable, "-c", LATE_THREADS], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        assert p.stdout.readline().strip() == "ready"
        with workdir() as d:
            dm = start_daemon(d, policy_text())
            try:
                assert dm.request("register", agent_id="late", pid=p.pid)["ok"]
                p.stdin.write("go\n")
                p.stdin.flush()
                assert p.stdout.readline().strip() == "started"
                aff = thread_affinities(p.pid)
                assert len(aff) == 4 and set(aff.values()) == {"1"}
                wait_until(lambda: dm.status()["journal_entries"] == 4, 5.0,
                           what="born-pinned threads journaled")
                assert all_on(p.pid, "1")
                dm.stop(signal.SIGKILL)
                dm = start_daemon(d, policy_text(), log_name="daemon2.log")
                # the new daemon restored everything of the old run's agents at start
                assert all_on(p.pid, orig), thread_affinities(p.pid)
                assert dm.agents() == []
                assert "restored 4 agent-side change(s)" in dm.log
            finally:
                if dm.proc.poll() is None:
                    assert dm.stop() == 0, dm.log
    finally:
        kill_quietly(p)


def test_auto_registration_by_comm() -> None:
    with workdir() as d:
        name = f"alauto{os.getpid() % 100000}"
        exe = d / name
        shutil.copy("/bin/sleep", exe)
        pol = policy_text(extra=f"""
[[auto_register]]
agent_id = "auto-agent"
latency_class = "interactive"
comm = "{name}"
""")
        with daemon(d, pol) as dm:
            p = subprocess.Popen([str(exe), "60"])
            other = subprocess.Popen(["sleep", "60"])
            try:
                wait_until(lambda: all_on(p.pid, "1"), 5.0, what="auto-registered and pinned")
                rows = dm.agents()
                assert [(r["agent_id"], r["pid"], r["source"]) for r in rows] == \
                    [("auto-agent", p.pid, "auto:0")]
                assert all_on(other.pid, current_affinity())
                # unregistered by hand: not registered again while it lives, over three
                # counted ticks of each loop (auto-registration scans at a tick; a bare
                # sleep could end before one ran)
                assert dm.request("unregister", pid=p.pid)["ok"]
                wait_ticks(dm.status, 3)
                assert dm.agents() == [] and all_on(p.pid, current_affinity())
            finally:
                kill_quietly(p)
                kill_quietly(other)


def test_a_mass_exit_is_dropped_a_batch_per_reap(tmp_path: pathlib.Path) -> None:
    """Agents whose processes all exit at once are dropped REAP_PIECE per reap()
    (one loop turn each, one journal save per batch): dropping all of them in
    one turn was one journal pass per agent, ~60 ms of the main loop at 1000
    agents, during which no registration was answered. Each batch forgets
    exactly its own agents' entries."""
    n = 2 * REAP_PIECE + 5
    # the live root (task affinity acts on live processes only: these sleepers);
    # home CPUs shared and no pm_qos: nothing but the sleepers is written
    eng, mgr = agent_side(tmp_path / "state")
    forker = Sleepers(n)
    try:
        for pid in forker.pids:
            register_as_root(mgr, pid)
        assert all(r is None for r in mgr.place_pending().values())
        procs = list(mgr.agents)
        assert len(procs) == n and len(eng.entries()) == n
        forker.close()
        for p in procs:
            mgr.mark_dead(p)
        left = n
        while left:
            assert mgr.reap() == min(REAP_PIECE, left)
            left -= min(REAP_PIECE, left)
            assert len(mgr.agents) == left and len(mgr.dead) == left
            journaled = {proc_of(e.target) for e in eng.entries()}
            assert journaled == set(mgr.agents)
        assert mgr.reap() == 0 and not eng.entries()
    finally:
        forker.kill()
        eng.close()


def test_chain_passes_in_pieces_settle_what_changed_between_pieces(tmp_path: pathlib.Path) -> None:
    """The chain keeper's once-per-tick passes yield every SCAN_PIECE agents (the
    loop serves requests there): an agent that left after its piece was read
    leaves no member wanted on its behalf, a member that registered as an agent
    meanwhile is left to its own class, and publish leaves out an agent gone
    before its piece."""
    n = 2 * SCAN_PIECE + 1
    eng, mgr = agent_side(tmp_path / "state")
    keeper = ChainKeeper(mgr, ChainScanner())
    agents, members = Sleepers(n), Sleepers(2)
    try:
        def reg(pid: int) -> ProcId:
            p = register_as_root(mgr, pid)
            assert all(r is None for r in mgr.place_pending().values())
            return p

        procs = [reg(pid) for pid in agents.pids]
        m1, m2 = (tasks.proc_id(Root("/"), pid) for pid in members.pids)
        assert m1 is not None and m2 is not None
        first, last = procs[0], procs[-1]
        keeper.scanner.found = {first: (Link(m1, "tcp"), Link(m2, "tcp")),
                                last: (Link(m1, "tcp"),)}
        steps = keeper._wanted_steps()
        next(steps)  # the first piece read `first`
        mgr.unregister(first)
        reg(m2.pid)  # a member turned agent meanwhile
        with pytest.raises(StopIteration) as stop:
            while True:
                next(steps)
        assert stop.value.value == {m1: {last: "tcp"}}
        pub = keeper.publish_steps()
        next(pub)
        mgr.unregister(last)  # gone before its piece
        with pytest.raises(StopIteration) as stop:
            while True:
                next(pub)
        published = {c.proc for c in stop.value.value}
        assert last not in published and first not in published
        assert published == set(mgr.agents) == {p for p in procs[1:-1]} | {m2}
    finally:
        for p in list(mgr.agents):
            mgr.unregister(p)
        agents.kill()
        members.kill()
        eng.close()
