"""Benchmark of the daemon's always-on slowest-steps view (agentlatd/steps/slowsteps.py):
what one poll costs the daemon with 1 and with 100 agents. Not a test: it prints figures.

    .venv/bin/python bench/slowsteps.py                     # 1 and 100 agents
    .venv/bin/python bench/slowsteps.py --agents 1 10 100 --seconds 10 --json

What it runs: N real agent processes (Python, agentlatd.client.Client with its step
ring and no daemon), each stepping --rate times a second (50 us of CPU, then a sleep),
one step in 50 slowed by a 2 ms sleep inside it (a slow step for the view to
attribute; the agents declare a 1 ms deadline, the view's threshold). In this
process, the daemon's SlowSteps object polls them every --period seconds, exactly as
the daemon's thread does (poll() is the thread's body), for --seconds.

  poll_cpu_us   this thread's CPU time per poll (time.thread_time_ns: the cost to the
                daemon, whatever else the shared machine runs), p50 / p99 / max
  cpu_ms_per_s  this thread's CPU time per second of the run, polls and waits together:
                the daemon's CPU share for the view
  adaptive      false: a poll every --period exactly; true: as the daemon's thread
                paces itself (SlowSteps.next_wait(): longer periods when a poll costs
                more than 2 % of one), period_s_mean the periods it chose
  records/poll  ring records read per poll; slow_steps: seen above the threshold;
                slow_kept: attributed and kept (the last 16 per agent)
The N values run one after another in the same run, so their ratio is comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agentlatd.steps.slowsteps import SlowSteps, Target  # noqa: E402 - after sys.path
from agentlatd.sysfs.root import Root  # noqa: E402

AGENT = """
import sys, time, warnings
warnings.simplefilter("ignore")
from agentlatd.client import Client
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
c = Client("bench", "normal", socket="/nonexistent/agentlatd.sock", background=False)
print("up", flush=True)
end = time.monotonic() + seconds
i = 0
gap = 1.0 / rate
while time.monotonic() < end:
    with c.step(i):
        t = time.perf_counter_ns() + 50_000
        while time.perf_counter_ns() < t:
            pass
        if i % 50 == 49:
            time.sleep(0.002)
    i += 1
    time.sleep(gap)
"""


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def run(n: int, rate: float, seconds: float, period: float, adaptive: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", AGENT, str(rate), "600"],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "up"
        view = SlowSteps(Root("/"), period_s=period)
        view.set_targets(tuple(Target(p.pid, None, f"bench{p.pid}", 1_000_000) for p in procs))
        view.poll()  # opens the rings and the threads' files: not the steady state
        view.poll()
        cpu: list[float] = []
        waits: list[float] = []
        recs0 = sum(a.steps for a in view.snapshot())
        end = time.monotonic() + seconds
        t_cpu0 = time.thread_time_ns()
        t0 = time.monotonic()
        while time.monotonic() < end:
            w = view.next_wait() if adaptive else period  # as the daemon's thread waits
            waits.append(w)
            time.sleep(w)
            view.poll()
            cpu.append(view.poll_cpu_ns / 1000.0)
        share = (time.thread_time_ns() - t_cpu0) / 1e9 / (time.monotonic() - t0)
        snap = view.snapshot()
        recs = sum(a.steps for a in snap) - recs0
        out = {"agents": n, "polls": len(cpu),
               "poll_cpu_us": {"p50": round(statistics.median(cpu), 1),
                               "p99": round(pct(cpu, 0.99), 1), "max": round(max(cpu), 1),
                               "mean": round(statistics.fmean(cpu), 1)},
               "adaptive": adaptive, "period_s_mean": round(statistics.fmean(waits), 3),
               "cpu_ms_per_s": round(share * 1000.0, 2),
               "records_per_poll": round(recs / len(cpu), 1),
               "rings_found": sum(1 for a in snap if a.ring),
               "slow_steps": sum(a.slow_steps for a in snap),
               "slow_kept": sum(len(a.slowest) for a in snap),
               "unattributed": sum(a.unattributed for a in snap)}
        view.stop()
        return out
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[1, 100])
    ap.add_argument("--rate", type=float, default=100.0, help="steps/s per agent (default 100)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--period", type=float, default=0.1, help="the view's poll period (0.1 s, "
                                                             "the daemon's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = {"host_cpus": os.cpu_count(), "kernel": os.uname().release, "period_s": args.period,
           "rate_per_agent": args.rate,
           "runs": [run(n, args.rate, args.seconds, args.period, adaptive)
                    for n in args.agents for adaptive in (False, True)]}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k, v in res.items():
            if k != "runs":
                print(f"{k:16} {v}")
        for r in res["runs"]:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
