"""Benchmark: one agent's home CPU choice (plan/agents.py choose_home_within), the
placement every registration makes, by the host's CPU count. Not a test: it prints
figures.

    .venv/bin/python bench/placement.py                        # this checkout
    .venv/bin/python bench/placement.py --repo /tmp/old --repo .   # side by side

The layout is made up, no IO: CPUs in SMT pairs (c, c + N/2), the completion CPUs
both threads of the first quarter of the cores, every other CPU a home CPU, all on
one node, every CPU at heat 0.1 with one agent. Each --repo runs in its own
interpreter (its agentlatd first on sys.path), in turn, --rounds times; the best
round per CPU count is printed (us per choice).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent

ONE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from agentlatd.cpuset import CpuSet
from agentlatd.model.layout import CpuLayout
from agentlatd.plan.agents import choose_home_within
from agentlatd.policy import HeatPolicy
out = {}
for n in json.loads(sys.argv[2]):
    half = n // 2
    sib = {c: CpuSet({c % half, c % half + half}) for c in range(n)}
    quarter = max(1, half // 4)
    comp = CpuSet([*range(quarter), *range(half, half + quarter)])
    home = CpuSet(c for c in range(n) if c not in comp)
    lay = CpuLayout(home, comp, tuple(sorted(home)), sib, dict.fromkeys(range(n), 0),
                    CpuSet(range(n)))
    pol, heat, load = HeatPolicy(), dict.fromkeys(range(n), 0.1), dict.fromkeys(home, 1)
    k = max(200, 200000 // n)
    t0 = time.perf_counter()
    for _ in range(k):
        choose_home_within(lay, heat, load, pol, allowed=None)
    out[n] = (time.perf_counter() - t0) / k * 1e6
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", type=pathlib.Path, action="append", default=[])
    ap.add_argument("--cpus", default="4,16,64,256", help="CPU counts, each a multiple of 4")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    repos = [r.resolve() for r in args.repo] or [REPO]
    cpus = [int(c) for c in args.cpus.split(",")]
    best: dict[str, dict[str, float]] = {str(r): {} for r in repos}
    for _ in range(args.rounds):
        for r in repos:
            got = json.loads(subprocess.run([sys.executable, "-c", ONE, str(r), json.dumps(cpus)],
                                            check=True, capture_output=True, text=True).stdout)
            for n, us in got.items():
                best[str(r)][n] = min(us, best[str(r)].get(n, us))
    for r, figs in best.items():
        print(r, "  ".join(f"{n} CPUs {us:.1f} us" for n, us in figs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
