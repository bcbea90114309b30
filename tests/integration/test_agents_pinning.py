"""Agents pinned for real: a daemon subprocess, multi-threaded agent processes,
every thread's Cpus_allowed_list read from /proc after each event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from agentshelpers import (
    Agent,
    all_on,
    current_affinity,
    daemon,
    env_for_children,
    kill_quietly,
    needs_2cpus,
    needs_root,
    nice_of,
    policy_text,
    start_daemon,
    thread_affinities,
    wait_until,
    workdir,
)

pytestmark = [needs_root, needs_2cpus]


def test_register_pins_every_thread_then_new_threads_then_unregister_restores() -> None:
    orig = current_affinity()
    with workdir() as d, daemon(d, policy_text()) as dm, \
            Agent(dm.socket, "planner", nthreads=4) as ag:
        assert ag.ready["home_cpu"] == 1, ag.ready
        assert ag.ready["state"] == "placed"
        aff = thread_affinities(ag.pid)
        assert len(aff) >= 5  # main + 4 sleepers + the client's helper thread
        assert set(aff.values()) == {"1"}, aff  # every thread, right after register

        # a thread started by a pinned thread is born pinned
        tid = ag.cmd("thread")["tid"]
        assert thread_affinities(ag.pid)[tid] == "1"
        # a thread that widened its own affinity before agentlatd saw it: the tick pins it
        rogue = ag.cmd("rogue")["tid"]
        wait_until(lambda: thread_affinities(ag.pid).get(rogue) == "1", 5.0,
                   what="new thread pinned within a tick")
        assert all_on(ag.pid, "1")

        ag.cmd("steps 500")
        rows = wait_until(lambda: [r for r in dm.agents() if r["steps"] >= 500], 5.0,
                          what="step report")
        row = rows[0]
        for k in ("agent_id", "pid", "latency_class", "home_cpu", "threads", "steps",
                  "p50_ns", "p99_ns", "p999_ns", "last_move"):
            assert k in row
        assert row["agent_id"] == "planner" and row["pid"] == ag.pid
        assert row["threads"] == len(thread_affinities(ag.pid))
        assert 0 < row["p50_ns"] <= row["p99_ns"] <= row["p999_ns"]

        # the CLI shows the same
        out = subprocess.run([sys.executable, "-m", "agentlatd", "agents", "--socket",
                              str(dm.socket), "--json"], capture_output=True, text=True,
                             env=env_for_children(), timeout=30)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["schema_version"] == 1
        assert [r["agent_id"] for r in doc["agents"]] == ["planner"]
        text = subprocess.run([sys.executable, "-m", "agentlatd", "agents", "--socket",
                               str(dm.socket)], capture_output=True, text=True,
                              env=env_for_children(), timeout=30).stdout
        assert "planner" in text and all(len(line) <= 80 for line in text.splitlines())

        ag.cmd("unregister")
        aff = thread_affinities(ag.pid)
        # every thread back, including those agentlatd never journaled (born pinned)
        assert set(aff.values()) == {orig}, aff
        assert dm.agents() == []
        # each logged once, after its answer (handlers.py): both lines are there
        # once the agents op that follows was answered
        for line in (f"agent 'planner' pid {ag.pid} registered: class interactive, uid 0, "
                     "by socket", f"agent 'planner' pid {ag.pid} dropped: unregistered"):
            assert dm.log.count(line) == 1, dm.log
    assert dm.proc.returncode == 0, dm.log


def test_background_class_goes_to_completion_cpus_with_lower_nice_and_ioprio() -> None:
    orig = current_affinity()
    with workdir() as d, daemon(d, policy_text()) as dm, \
            Agent(dm.socket, "indexer", klass="background", nthreads=2) as ag:
        assert ag.ready["home_cpu"] is None and ag.ready["cpus"] == "0"
        assert all_on(ag.pid, "0")
        for tid in thread_affinities(ag.pid):
            assert nice_of(tid) == 10
        io = subprocess.run(["ionice", "-p", str(ag.pid)], capture_output=True, text=True)
        assert "best-effort: prio 7" in io.stdout, io.stdout
        ag.cmd("unregister")
        assert all_on(ag.pid, orig)
        for tid in thread_affinities(ag.pid):
            assert nice_of(tid) == 0
        io = subprocess.run(["ionice", "-p", str(ag.pid)], capture_output=True, text=True)
        assert "prio 7" not in io.stdout, io.stdout


def test_normal_class_is_left_where_it_is() -> None:
    orig = current_affinity()
    with workdir() as d, daemon(d, policy_text()) as dm, \
            Agent(dm.socket, "chat", klass="normal", nthreads=1) as ag:
        assert ag.ready["home_cpu"] is None and ag.ready["cpus"] is None
        assert all_on(ag.pid, orig)
        assert dm.status()["journal_entries"] == 0


def test_process_exit_drops_the_registration() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        ag = Agent(dm.socket, "short", nthreads=1)
        try:
            assert [r["pid"] for r in dm.agents()] == [ag.pid]
            kill_quietly(ag.proc)
            wait_until(lambda: dm.agents() == [], 5.0, what="registration dropped on exit")
            # its journal entries went with it: nothing is left to restore
            assert dm.status()["journal_entries"] == 0
        finally:
            ag.close()


def test_daemon_sigterm_restores_then_restart_repins_after_reconnect() -> None:
    orig = current_affinity()
    with workdir() as d:
        dm = start_daemon(d, policy_text())
        try:
            with Agent(dm.socket, "survivor", nthreads=3) as ag:
                assert all_on(ag.pid, "1")
                assert dm.stop(signal.SIGTERM) == 0, dm.log
                # SIGTERM rolled back every change
                assert all_on(ag.pid, orig), thread_affinities(ag.pid)
                assert not dm.socket.exists()
                dm = start_daemon(d, policy_text(), log_name="daemon2.log")
                # the client notices, reconnects and registers again: pinned again
                wait_until(lambda: all_on(ag.pid, "1"), 10.0, what="re-pinned after restart")
                st = ag.cmd("status")
                assert st["enabled"] and st["reconnects"] >= 1
                assert [r["pid"] for r in dm.agents()] == [ag.pid]
        finally:
            assert dm.stop() == 0, dm.log


def test_daemon_kill9_then_restart_keeps_the_true_originals() -> None:
    orig = current_affinity()
    with workdir() as d:
        dm = start_daemon(d, policy_text())
        try:
            with Agent(dm.socket, "survivor", nthreads=2) as ag:
                assert all_on(ag.pid, "1")
                dm.stop(signal.SIGKILL)
                assert all_on(ag.pid, "1")  # nobody restored: the journal holds the originals
                dm = start_daemon(d, policy_text(), log_name="daemon2.log")
                wait_until(lambda: [r for r in dm.agents() if r["pid"] == ag.pid], 10.0,
                           what="re-registered after restart")
                assert all_on(ag.pid, "1")
                assert dm.stop(signal.SIGTERM) == 0, dm.log
                # the originals are the pre-crash ones, not agentlatd's own "1"
                assert all_on(ag.pid, orig), thread_affinities(ag.pid)
        finally:
            if dm.proc.poll() is None:
                dm.stop()


def test_exec_runs_a_command_registered() -> None:
    with workdir() as d, daemon(d, policy_text()) as dm:
        code = ("import os,time;print(sorted(os.sched_getaffinity(0)), flush=True);"
                "time.sleep(0.5)")
        out = subprocess.run([sys.executable, "-m", "agentlatd", "exec", "--agent-id", "ex",
                              "--socket", str(dm.socket), "--", sys.executable, "-c", code],
                             capture_output=True, text=True, env=env_for_children(), timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[1]"
        wait_until(lambda: dm.agents() == [], 5.0, what="exec'd command's exit dropped it")


def test_exec_without_a_daemon_warns_and_runs() -> None:
    with workdir() as d:
        out = subprocess.run([sys.executable, "-m", "agentlatd", "exec", "--socket",
                              str(d / "none.sock"), "--", "true"],
                             capture_output=True, text=True, env=env_for_children(), timeout=30)
        assert out.returncode == 0
        assert "warning" in out.stderr and "unregistered" in out.stderr


def test_client_without_a_daemon_is_a_no_op_with_one_warning() -> None:
    code = r"""
import warnings, sys
from agentlatd.client import Client
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    c = Client("x", socket=sys.argv[1], retry_interval=60)
    for i in range(1000):
        with c.step(i):
            pass
    c.close()
print(len(w), c.enabled, c.registration)
"""
    with workdir() as d:
        out = subprocess.run([sys.executable, "-c", code, str(d / "none.sock")],
                             capture_output=True, text=True, env=env_for_children(), timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["1", "False", "None"]


def test_socket_mode_and_group() -> None:
    import grp
    with workdir() as d, daemon(d, policy_text()) as dm:
        st = os.stat(dm.socket)
        assert st.st_mode & 0o777 == 0o660
        assert st.st_gid == grp.getgrnam("nogroup").gr_gid
