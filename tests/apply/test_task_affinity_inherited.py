"""Threads born pinned are restored with the thread whose pin they inherited.

A thread created by a pinned thread starts with its mask (clone() copies it).
The daemon journals such threads only at its next agent tick; a kill -9 before
that left them pinned after `agentlatd rollback` (VM tier: 5 of 6 threads of an
`agentlatd exec` agent stayed on one CPU). The task.affinity knob's restore now
also restores every other thread of the same process that has no journal entry
and still shows exactly the mask agentlatd wrote; a thread that set its own
mask, or that has its own entry, keeps what it has.

Real processes of this test only (a Python child it starts and kills), as root
(sched_setaffinity on another process's threads needs CAP_SYS_NICE).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from applyhelpers import cli, plan_file

from agentlatd import knobset
from agentlatd.apply import journal_read
from agentlatd.apply.engine import Engine
from agentlatd.cpuset import CpuSet
from agentlatd.plan.changes import Change
from agentlatd.sample import tasks
from agentlatd.sysfs.root import HOST

# The child: on "spawn N OWN" it starts N threads that keep their inherited
# mask and one that sets its own mask to the CPU OWN, then prints their tids.
_CHILD = r"""
import os, sys, threading, time
stop = threading.Event()
def worker(own, out, ready):
    if own >= 0:
        os.sched_setaffinity(0, {own})
    out.append(threading.get_native_id())
    ready.release()
    stop.wait(60)
print("up", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "spawn":
        n, own = int(cmd[1]), int(cmd[2])
        inh, mine, ready = [], [], threading.Semaphore(0)
        for i in range(n + (own >= 0)):
            own_i = own if i == n else -1
            threading.Thread(target=worker, args=(own_i, mine if i == n else inh, ready),
                             daemon=True).start()
        for _ in range(n + (own >= 0)):
            ready.acquire(timeout=10)
        print(" ".join(map(str, inh)), "|", " ".join(map(str, mine)), flush=True)
    elif cmd[0] == "fork":
        # a child that forks a grandchild (both keep the inherited mask) and a
        # child that sets its own mask to OWN; each sleeps, bounded, then exits
        own = int(cmd[1])
        r, w = os.pipe()
        pids = []
        for kind in ("tree", "own"):
            pid = os.fork()
            if pid == 0:
                os.close(r)
                if kind == "own":
                    os.sched_setaffinity(0, {own})
                    os.write(w, f"own {os.getpid()}\n".encode())
                else:
                    g = os.fork()
                    if g == 0:
                        os.write(w, f"grand {os.getpid()}\n".encode())
                        os.close(w)
                        time.sleep(60)
                        os._exit(0)
                    os.write(w, f"child {os.getpid()}\n".encode())
                os.close(w)  # the parent reads to EOF
                time.sleep(60)
                os._exit(0)
            pids.append(pid)
        os.close(w)
        got = dict(reversed(x.split()) for x in os.fdopen(r).read().split("\n") if x)
        print(" ".join(f"{v}={k}" for k, v in sorted(got.items(), key=lambda kv: kv[1])), flush=True)
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_SYS_NICE)")


class Child:
    def __init__(self) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None and self.p.stdout.readline().strip() == "up"
        self.pid = self.p.pid
        st = tasks.starttime_of(HOST, self.pid)
        assert st is not None
        self.starttime = st

    def target(self, tid: int) -> str:
        return f"{self.pid}:{self.starttime}:{tid}"

    def spawn(self, n: int, own: int) -> tuple[list[int], list[int]]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(f"spawn {n} {own}\n")
        self.p.stdin.flush()
        inh, _, mine = self.p.stdout.readline().partition("|")
        return [int(x) for x in inh.split()], [int(x) for x in mine.split()]

    def fork(self, own: int) -> dict[str, int]:
        """{"child": pid, "grand": pid (its child), "own": pid (set its own mask)}."""
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(f"fork {own}\n")
        self.p.stdin.flush()
        got = dict(x.split("=") for x in self.p.stdout.readline().split())
        self.forked = [int(v) for v in got.values()]
        return {k: int(v) for k, v in got.items()}

    def allowed(self, tid: int, pid: int | None = None) -> CpuSet:
        """Cpus_allowed_list of one thread, read from its own status file."""
        pid = self.pid if pid is None else pid
        for line in HOST.read_text(f"proc/{pid}/task/{tid}/status", "process").splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return CpuSet.parse_list(line.split(":", 1)[1].strip())
        raise AssertionError("no Cpus_allowed_list")

    def kill(self) -> None:
        for pid in getattr(self, "forked", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.p.wait(10)


@pytest.fixture
def child() -> Iterator[Child]:
    c = Child()
    try:
        yield c
    finally:
        c.kill()


def _cpus(child: Child) -> tuple[CpuSet, int, int]:
    orig = tasks.get_affinity(child.pid)
    if len(orig) < 2:
        pytest.skip("needs at least two allowed CPUs")
    return orig, max(orig), min(orig)


def _pinned_then_killed(child: Child, pin: int, tmp_path: pathlib.Path) -> pathlib.Path:
    """`agentlatd apply` pins the child's main thread to `pin` and is SIGKILLed right
    after that write, before any tick (the daemon's crash); its state directory."""
    state = tmp_path / "state"
    plan = plan_file(tmp_path / "plan.json",
                     [Change.parse("task.affinity", child.target(child.pid), "", str(pin), "t")])
    p = cli(["apply", "--plan", str(plan), "--state-dir", str(state)], crash_after_writes=1)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stdout, p.stderr)
    return state


def test_rollback_after_kill_9_restores_threads_born_pinned(child: Child,
                                                           tmp_path: pathlib.Path) -> None:
    orig, pin, own = _cpus(child)
    state = _pinned_then_killed(child, pin, tmp_path)
    assert child.allowed(child.pid) == CpuSet({pin})
    inherited, mine = child.spawn(3, own)
    assert len(inherited) == 3 and len(mine) == 1
    for tid in inherited:
        assert child.allowed(tid) == CpuSet({pin}), tid  # born pinned, journaled nowhere
    assert child.allowed(mine[0]) == CpuSet({own})
    j = journal_read.read_json(str(state / "journal.json"))
    assert j is not None
    assert [e["target"] for e in j["entries"]] == [child.target(child.pid)]

    # ExecStopPost: a fresh process with only the journal
    p = cli(["rollback", "--state-dir", str(state), "--json"])
    assert p.returncode == 0, (p.stdout, p.stderr)
    rep = json.loads(p.stdout)
    assert rep["ok"] and rep["journal_removed"], rep
    assert "3 unjournaled thread(s)" in rep["results"][0]["message"], rep
    for tid in [child.pid, *inherited]:
        assert child.allowed(tid) == orig, tid
    assert child.allowed(mine[0]) == CpuSet({own})  # it chose its own mask: left alone
    assert not (state / "journal.json").exists()


def test_recover_at_start_restores_threads_born_pinned(child: Child,
                                                       tmp_path: pathlib.Path) -> None:
    orig, pin, _own = _cpus(child)
    state = _pinned_then_killed(child, pin, tmp_path)
    inherited, _ = child.spawn(2, -1)
    with Engine(HOST, str(state), knobs=knobset.REGISTRY) as eng:
        rec = eng.recover()  # the interrupted batch is restored before anything else
    assert rec.action == "restored", rec
    assert rec.rollback is not None and rec.rollback.ok, rec
    for tid in [child.pid, *inherited]:
        assert child.allowed(tid) == orig, tid


def test_clean_stop_leaves_threads_with_their_own_entry_to_it(child: Child,
                                                              tmp_path: pathlib.Path) -> None:
    orig, pin, own = _cpus(child)
    with Engine(HOST, str(tmp_path / "state"), knobs=knobset.REGISTRY) as eng:
        rep = eng.apply([Change.parse("task.affinity", child.target(child.pid), "", str(pin), "t")])
        assert rep.results[0].status == "changed", rep
        inherited, mine = child.spawn(3, own)
        # one of the new threads gets an entry of its own, journaled with the
        # inherited pin as its original: that entry, not the main thread's,
        # decides what it gets back
        own_entry = inherited[0]
        rep = eng.apply([Change.parse("task.affinity", child.target(own_entry), "", orig.to_list(),
                                "t")])
        assert rep.results[0].status == "changed", rep
        rb = eng.rollback()
    assert rb.ok and rb.journal_removed, rb
    for tid in [child.pid, *inherited[1:]]:
        assert child.allowed(tid) == orig, tid
    # restored by its own entry, to its own journaled original, not widened
    assert child.allowed(own_entry) == CpuSet({pin})
    assert child.allowed(mine[0]) == CpuSet({own})


def test_rollback_after_kill_9_restores_processes_forked_pinned(child: Child,
                                                               tmp_path: pathlib.Path) -> None:
    """fork() copies the mask as clone() does: a process the agent forked (and the
    one that forked) is restored with it; one that set its own mask is left alone."""
    orig, pin, own = _cpus(child)
    state = _pinned_then_killed(child, pin, tmp_path)
    forked = child.fork(own)
    assert set(forked) == {"child", "grand", "own"}, forked
    for k in ("child", "grand"):
        assert child.allowed(forked[k], forked[k]) == CpuSet({pin}), k  # born pinned
    assert child.allowed(forked["own"], forked["own"]) == CpuSet({own})
    kids = sorted([forked["child"], forked["own"]])
    assert tasks.descendants(HOST, child.pid) == [*kids, forked["grand"]], "children, then theirs"

    # --print (reads only) says that the real rollback does more than its lines
    p = cli(["rollback", "--state-dir", str(state), "--print"])
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert f"taskset -p -c {orig.to_list()} {child.pid}" in p.stdout, p.stdout
    assert "forked child processes that inherited" in p.stdout, p.stdout
    assert child.allowed(forked["child"], forked["child"]) == CpuSet({pin})  # nothing written

    p = cli(["rollback", "--state-dir", str(state), "--json"])
    assert p.returncode == 0, (p.stdout, p.stderr)
    rep = json.loads(p.stdout)
    assert rep["ok"], rep
    assert "2 thread(s) of processes it forked" in rep["results"][0]["message"], rep
    assert child.allowed(child.pid) == orig
    for k in ("child", "grand"):
        assert child.allowed(forked[k], forked[k]) == orig, k
    assert child.allowed(forked["own"], forked["own"]) == CpuSet({own})  # its own choice


def test_unregister_restores_a_thread_whose_only_entry_is_of_another_knob(
        child: Child, tmp_path: pathlib.Path) -> None:
    """restore_spread asks the journal, per thread, whether an entry of ITS OWN knob
    holds it: a thread born pinned whose only entry is a task.nice one (its class
    renices it) still gets the affinity original from the main thread's entry, on the
    restore an unregister runs (Engine.restore, one key), and keeps its nice entry."""
    orig, pin, own = _cpus(child)
    with Engine(HOST, str(tmp_path / "state"), knobs=knobset.REGISTRY) as eng:
        rep = eng.apply([Change.parse("task.affinity", child.target(child.pid), "", str(pin), "t")])
        assert rep.results[0].status == "changed", rep
        inherited, mine = child.spawn(2, own)
        niced = inherited[0]
        before = tasks.get_nice(niced)
        rep = eng.apply([Change.parse("task.nice", child.target(niced), "",
                                      str(before + 1 if before < 19 else before - 1), "t")])
        assert rep.results[0].status == "changed", rep
        res = eng.restore([("task.affinity", child.target(child.pid))])
        assert [r.status for r in res] == ["restored"], res
        assert "2 unjournaled thread(s)" in res[0].message, res
        for tid in [child.pid, *inherited]:
            assert child.allowed(tid) == orig, tid
        assert child.allowed(mine[0]) == CpuSet({own})  # its own choice
        assert [e.key for e in eng.entries()] == [("task.nice", child.target(niced))]
        rb = eng.rollback()
    assert rb.ok and rb.journal_removed, rb
    assert tasks.get_nice(niced) == before
