"""Benchmark: the daemon-side CPU of one unregister (and one registration) among N agents.

    sudo .venv/bin/python bench/unregister.py                        # this checkout
    sudo .venv/bin/python bench/unregister.py --repo OLD --rounds 3  # and OLD, alternated
    sudo .venv/bin/python bench/unregister.py --threads 8 --latency-class background

What it runs, in a child process per round (PYTHONPATH = the checkout timed):
an Engine on the live root with its state directory on /dev/shm and an
AgentManager, as the daemon's main loop holds them (with the agents' pidfds as
their identity proof, where the checkout has it: agents/pidfdgate.py); --agents
sleeping processes (tests/support/sleepers.py) registered as class
"interactive" with home CPUs shared (pinned to CPU 1, nothing else written);
then --samples fresh processes, each registered (check_register, register,
place_pending) as --latency-class and unregistered (AgentManager.unregister:
its originals restored, its entries dropped from the journal) in turn. With
--threads N > 1 the timed processes have N threads each, and 20 of them are
registered and unregistered in turn (a Python process per sample would cost
more to start than the round). Times are this thread's CPU time
(thread_time_ns) per call: no socket, no tick, no other thread's time slices,
which on a shared 2-core machine are most of a round trip
(bench/agents.py measures that: unregister_rtt_N_agents).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent


THREADED = (
    "import threading, time\n"
    "for _ in range(int(__import__('sys').argv[1]) - 1):\n"
    "    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "time.sleep(3600)\n")


def child(agents: int, samples: int, threads: int = 1,
          latency_class: str = "interactive") -> dict[str, Any]:
    """One round, in the checkout PYTHONPATH names (imported here, not at the top)."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.sleepers import Sleepers

    import agentlatd
    from agentlatd import policy as policy_mod
    from agentlatd.agents.applier import Applier
    from agentlatd.agents.refusal import Registration
    from agentlatd.agents.registry import AgentManager
    from agentlatd.apply.engine import Engine
    from agentlatd.cpuset import CpuSet
    from agentlatd.model.layout import CpuLayout
    from agentlatd.sample.tasks import ProcId
    from agentlatd.sysfs.root import Root

    d = tempfile.mkdtemp(prefix="agentlatd-unreg-",
                         dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    kw: dict[str, Any] = {}
    mk: dict[str, Any] = {}
    try:  # the daemon's engine and registry (Daemon.__init__), where the checkout has them
        from agentlatd import knobset
        from agentlatd.agents.pidfdgate import AgentPidfds
        witness = AgentPidfds()
        kw["knobs"], mk["witness"] = knobset.witnessed(witness), witness
    except ImportError:
        pass  # an older checkout: its daemon read proc/PID/stat before each task knob call
    eng = Engine(Root("/"), d + "/state", policy=policy_mod.loads(
        '[classes.interactive]\nexclusive = "shared"\n'), **kw)
    mgr = AgentManager(Applier(eng), eng.policy, **mk)
    mgr.set_layout(CpuLayout(home=CpuSet({1}), completion=CpuSet({0})))
    procs = Sleepers(agents + (samples if threads == 1 else 0))
    pool: list[subprocess.Popen[str]] = []

    def register(pid: int, cls: str = "interactive") -> ProcId:
        req = Registration(agent_id=f"a{pid}", pid=pid, latency_class=cls)
        p, uid = mgr.check_register(0, 0, None, req, True)
        mgr.register(p, uid, req)
        assert mgr.place_pending() == {p: None}
        return p

    reg: list[float] = []
    unreg: list[float] = []
    try:
        for pid in procs.pids[:agents]:
            register(pid)
        entries = len(eng.entries())
        timed = procs.pids[agents:]
        if threads > 1:
            pool = [subprocess.Popen([sys.executable, "-c", THREADED, str(threads)],
                                     stdout=subprocess.PIPE, text=True)
                    for _ in range(min(samples, 20))]
            for q in pool:
                assert q.stdout is not None and q.stdout.readline() == "ready\n"
            timed = [pool[i % len(pool)].pid for i in range(samples)]
        for pid in timed:
            t0 = time.thread_time_ns()
            p = register(pid, latency_class)
            t1 = time.thread_time_ns()
            assert mgr.unregister(p) is not None
            t2 = time.thread_time_ns()
            reg.append((t1 - t0) / 1000)
            unreg.append((t2 - t1) / 1000)
    finally:
        try:
            eng.rollback()
            eng.close()
        finally:
            try:
                procs.close(60)
            finally:
                procs.kill()
                for q in pool:
                    q.kill()
                    q.wait()
                shutil.rmtree(d, ignore_errors=True)
    return {"repo": str(pathlib.Path(agentlatd.__file__).resolve().parent.parent),
            "agents": agents, "journal_entries": entries, "threads": threads,
            "latency_class": latency_class,
            "register_cpu": summary(reg), "unregister_cpu": summary(unreg)}


def summary(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"n": len(s), "p50_us": round(statistics.median(s), 1),
            "p99_us": round(s[min(len(s) - 1, int(0.99 * len(s)))], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000, help="agents registered meanwhile")
    ap.add_argument("--samples", type=int, default=300, help="register+unregister pairs timed")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per checkout, alternated")
    ap.add_argument("--repo", type=pathlib.Path, action="append", default=[],
                    help="another checkout to time, alternated with this one")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads of each timed process (default 1)")
    ap.add_argument("--latency-class", default="interactive",
                    choices=("interactive", "background", "normal"),
                    help="class the timed processes register as (default interactive)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    if args.child:
        print(json.dumps(child(args.agents, args.samples, args.threads, args.latency_class)))
        return 0
    if os.geteuid() != 0:
        print("bench/unregister.py: run as root (it pins and restores its own processes)",
              file=sys.stderr)
        return 2
    out = []
    for _ in range(args.rounds):
        for repo in [REPO, *args.repo]:
            env = dict(os.environ, PYTHONPATH=str(repo.resolve()))
            got = subprocess.run([sys.executable, __file__, "--child", "--agents",
                                  str(args.agents), "--samples", str(args.samples),
                                  "--threads", str(args.threads),
                                  "--latency-class", args.latency_class],
                                 env=env, cwd="/", check=True, capture_output=True, text=True)
            row = json.loads(got.stdout)
            row["load"] = os.getloadavg()[0]
            out.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
