"""Benchmark: what the daemon's background work adds to the registration round
trip's tail with many agents registered. Not a test: it prints figures.

    sudo .venv/bin/python bench/regtail.py                       # defaults below
    sudo .venv/bin/python bench/regtail.py --rounds 3 --json
    sudo .venv/bin/python bench/regtail.py --variants shipped --repo /tmp/old --repo . --rounds 8

What it runs: bench/agents.py's daemon and policy (nothing but the benchmark's
own processes is touched), SCHED_FIFO 10 as bench/agents.py --rt, --agents
sleeping processes registered, then its register round (bench/agents.py
register_round: --samples fresh processes, each registered, registered again
and unregistered, one at a time), once per variant of the daemon:

  shipped        `python -m agentlatd run`, as is
  no-tuner       the tuner thread not started (its first tick, made by the
                 start, stands): no sampling, planning or chain scan after it
  no-slow-steps  the slow-steps view's thread not started
  no-agent-tick  the main loop's agent tick never begun (new threads, forks,
                 cgroup moves, the chain keeper and the publish to the tuner)

Each variant is the unmodified daemon started through a launcher that turns
one job off before `runpy` runs agentlatd (as bench/threads.py names its
threads): the daemon reads no switch of its own. The variants run in turn,
--rounds times, each round with a fresh daemon and the same number of agents,
so they share the machine's state; pooled figures are printed last.

--repo CHECKOUT (repeatable; default this one): run the daemon of each checkout,
every variant of each in turn within a round, for a before/after of two trees
measured side by side (one run per tree is not: on a shared 2-core machine two
runs of the same tree differ by 2x at p99). The client is always this one.

  register_rtt   the first register's round trip (us): p50, p99, max
  register_cpu   the daemon main thread's CPU time during it (us, p50; see
                 bench/agents.py for why its p99 is not read)

Read the difference between "shipped" and a variant as that job's share of
the tail; bench/agents.py's register p99 target is 500 us at 1000 agents.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from agents import POLICY, Conn, register_load, register_round, start_daemon, summary  # noqa: E402 - bench/ on sys.path
from support.sleepers import Sleepers  # noqa: E402 - after tests/ is on sys.path

# variant -> the statement the launcher runs before agentlatd's __main__
OFF = {
    "shipped": "",
    "no-tuner": "from agentlatd import tuner\ntuner.Tuner.start = lambda self: None",
    "no-slow-steps": ("from agentlatd.steps import slowsteps\n"
                      "slowsteps.SlowSteps.start = lambda self: None"),
    "no-agent-tick": ("from agentlatd import agentwork\n"
                      "agentwork.AgentWork.begin_tick = lambda self: None"),
}
LAUNCH = """
import runpy, sys
{off}
sys.argv[0] = "agentlatd"
runpy.run_module("agentlatd", run_name="__main__", alter_sys=True)
"""


def one_run(variant: str, agents: int, samples: int, repo: pathlib.Path = REPO
            ) -> tuple[list[float], list[float]]:
    """A fresh daemon of `variant` (checkout `repo`) with `agents` agents: the
    register round's round trips and main-thread CPU times (us)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-bench-",
                                      dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    (d / "p.toml").write_text(POLICY)
    dm, sock = start_daemon(repo, d, ["-c", LAUNCH.format(off=OFF[variant])])
    load = Sleepers(agents)
    try:
        c = Conn(sock)
        register_load(c, load.pids)
        c.close()
        time.sleep(1.0)  # past the registrations' own agent tick
        cpu: list[float] = []
        first, _, _ = register_round(sock, samples, dm.pid, cpu)
    finally:
        load.close()
        dm.send_signal(signal.SIGTERM)
        rc = dm.wait(60)
        shutil.rmtree(d, ignore_errors=True)
    if rc != 0:
        raise SystemExit(f"bench/regtail.py: the {variant} daemon exited {rc}")
    return first, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=500, help="registrations timed per run")
    ap.add_argument("--rounds", type=int, default=2, help="runs of every variant, in turn")
    ap.add_argument("--variants", default=",".join(OFF),
                    help=f"comma-separated, of {', '.join(OFF)}")
    ap.add_argument("--repo", type=pathlib.Path, action="append", default=[],
                    help="a checkout whose daemon to run (repeatable; default this one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in OFF]
    if bad or not variants:
        ap.error(f"--variants: unknown {', '.join(bad) or '(none given)'}")
    repos = [r.resolve() for r in args.repo] or [REPO]
    if missing := [str(r) for r in repos if not (r / "agentlatd" / "__init__.py").is_file()]:
        ap.error(f"--repo: no agentlatd/ in {', '.join(missing)}")
    # a run's name: the variant, with its checkout's when there are several
    name = {(r, v): v if len(repos) == 1 else f"{r}:{v}" for r in repos for v in variants}
    if os.geteuid() != 0:
        print("bench/regtail.py: run as root (the daemon pins the agents)", file=sys.stderr)
        return 2
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # the daemon inherits it
    rtt: dict[str, list[float]] = {n: [] for n in name.values()}
    cpu: dict[str, list[float]] = {n: [] for n in name.values()}
    runs: list[dict[str, Any]] = []
    for i in range(args.rounds):
        for (repo, v), n in name.items():
            r, c = one_run(v, args.agents, args.samples, repo)
            rtt[n] += r
            cpu[n] += c
            runs.append({"round": i, "variant": n, "register_rtt": summary(r),
                         "register_cpu_p50_us": summary(c)["p50_us"]})
            if not args.json:
                print(json.dumps(runs[-1]), flush=True)
    pooled = {n: {"register_rtt": summary(rtt[n]), "register_cpu_p50_us": summary(cpu[n])["p50_us"]}
              for n in name.values()}
    if args.json:
        print(json.dumps({"agents": args.agents, "host_cpus": os.cpu_count(),
                          "kernel": os.uname().release, "runs": runs, "pooled": pooled},
                         indent=2))
    else:
        print(f"pooled over {args.rounds} round(s), {args.agents} agents registered:")
        for v, figs in pooled.items():
            s = figs["register_rtt"]
            print(f"  {v:14} register p50 {s['p50_us']:7.1f}  p99 {s['p99_us']:7.1f}  "
                  f"max {s['max_us']:7.1f} us   daemon CPU p50 {figs['register_cpu_p50_us']:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
