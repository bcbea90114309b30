"""The registration path in one process: what a register and an unregister cost
the daemon's main thread, without the socket, the wakeups or the other threads.

    sudo .venv/bin/python bench/regpath.py                       # this checkout
    sudo .venv/bin/python bench/regpath.py --repo /tmp/main --repo .   # before/after

For each --repo (alternating, --rounds times), a child interpreter with that
checkout's agentlatd builds what the daemon builds for the agent side (an
Engine on the live root with its journal on /dev/shm, an AgentManager with home
CPU 1, classes shared: nothing but the benchmark's own sleeping processes is
written), registers --agents sleeping processes, then times --samples fresh
ones, one at a time:

  register_us    check_register + register + place_pending: the request's
                 identity checks, the class policy, the journal append and the
                 pin, as the daemon runs them between reading a register
                 request and answering it
  unregister_us  unregister: the originals restored, the entries dropped
  *_cpu_us       the same in this thread's CPU time (time.thread_time_ns): what
                 the path costs whatever else the machine runs (wall time on a
                 shared machine is mostly other processes' time slices)

bench/agents.py measures the same through the daemon's socket (round trip,
with the ticks and the other threads); this one isolates the path's own cost,
which a shared 2-core machine blurs less.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent

CHILD = r'''
import gc, json, os, shutil, sys, tempfile, time
repo, n_load, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path[:0] = [repo, os.path.join(repo, "tests")]
from support.sleepers import Sleepers
from agentlatd import policy as policy_mod
from agentlatd.agents.applier import Applier
from agentlatd.agents.refusal import Registration
from agentlatd.agents.registry import AgentManager
from agentlatd.apply.engine import Engine
from agentlatd.cpuset import CpuSet
from agentlatd.model.layout import CpuLayout
from agentlatd.sysfs.root import Root

d = tempfile.mkdtemp(prefix="agentlatd-regpath-", dir="/dev/shm")
eng = Engine(Root("/"), d + "/state",
             policy=policy_mod.loads('[classes.interactive]\nexclusive = "shared"\n'))
mgr = AgentManager(Applier(eng), eng.policy)
mgr.set_layout(CpuLayout(home=CpuSet({1}), completion=CpuSet({0})))
load, fresh = Sleepers(n_load), Sleepers(n)


def reg(pid):
    req = Registration(agent_id=f"a{pid}", pid=pid, latency_class="interactive")
    p, uid = mgr.check_register(0, 0, None, req, True)
    mgr.register(p, uid, req)
    out = mgr.place_pending()
    assert all(r is None for r in out.values()), out
    return p


try:
    for pid in load.pids:
        reg(pid)
    gc.collect()
    gc.freeze()  # as the daemon does once started
    perf, cpu = time.perf_counter_ns, time.thread_time_ns
    r_us, u_us, r_cpu, u_cpu = [], [], [], []
    for pid in fresh.pids:
        t0, c0 = perf(), cpu()
        p = reg(pid)
        t1, c1 = perf(), cpu()
        assert os.sched_getaffinity(pid) == {1}
        t2, c2 = perf(), cpu()
        mgr.unregister(p)
        t3, c3 = perf(), cpu()
        r_us.append((t1 - t0) / 1000)
        u_us.append((t3 - t2) / 1000)
        r_cpu.append((c1 - c0) / 1000)
        u_cpu.append((c3 - c2) / 1000)
    print(json.dumps({"register_us": r_us, "unregister_us": u_us, "register_cpu_us": r_cpu,
                      "unregister_cpu_us": u_cpu, "journal_entries": len(eng.entries())}))
finally:
    fresh.close()  # every child killed and reaped: none may keep stdout open
    load.close()
    eng.close()
    shutil.rmtree(d, ignore_errors=True)
'''


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50_us": round(pct(xs, 0.5), 1), "p90_us": round(pct(xs, 0.9), 1),
            "p99_us": round(pct(xs, 0.99), 1), "max_us": round(max(xs), 1),
            "mean_us": round(statistics.fmean(xs), 1)}


def run_one(repo: pathlib.Path, agents: int, samples: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(repo.resolve()), str(agents),
                          str(samples)], check=True, capture_output=True, text=True,
                         cwd="/", env=dict(os.environ, PYTHONPATH=str(repo.resolve())))
    res: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000, help="agents registered throughout")
    ap.add_argument("--samples", type=int, default=500, help="registrations timed per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per repo, alternating")
    ap.add_argument("--repo", type=pathlib.Path, action="append", default=[],
                    help="a checkout to measure (repeat for before/after; default: this one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/regpath.py: run as root (it pins and restores its own sleeping "
              "processes)", file=sys.stderr)
        return 2
    repos = args.repo or [REPO]
    keys = ("register_us", "unregister_us", "register_cpu_us", "unregister_cpu_us")
    got: dict[str, dict[str, list[float]]] = {str(r): {k: [] for k in keys} for r in repos}
    per_round: dict[str, list[float]] = {str(r): [] for r in repos}
    for _ in range(args.rounds):
        for r in repos:
            res = run_one(r, args.agents, args.samples)
            for k in keys:
                got[str(r)][k] += res[k]
            per_round[str(r)].append(round(pct(res["register_cpu_us"], 0.5), 1))
    out: dict[str, Any] = {"host_cpus": os.cpu_count(), "agents": args.agents,
                           "samples_per_round": args.samples, "rounds": args.rounds}
    for r in repos:
        out[str(r)] = {k: summary(v) for k, v in got[str(r)].items()}
        out[str(r)]["register_cpu_p50_per_round_us"] = per_round[str(r)]
    if len(repos) == 2:
        a, b = (out[str(r)] for r in repos)
        for k in keys:
            out[f"ratio_{k.removesuffix('_us')}_p50"] = round(b[k]["p50_us"] / a[k]["p50_us"], 3)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
