"""Verified on known causes: one cause injected at a time into the C and the Python
agent loop, and the share of the slow steps' delay `trace --slow-steps` blames on it
(agentlatd/tools/bench/causes.py says how). Root and bpftrace needed; ~40 s.

    python bench/causes.py                      # both agents, every cause
    python bench/causes.py --agent c --json     # the C agent only, JSON
    python bench/causes.py --phase 3 --threshold 2
    python bench/causes.py --cost               # what the tracer costs the agent
    python bench/causes.py --backend tracefs    # the same check, bpftrace forced off
    python bench/causes.py --load 36            # under 36 busy loops (a heavily loaded host)
    python bench/causes.py --cost --backend bpftrace --backend tracefs
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from agentlatd.tools.bench import causes
from agentlatd.tools.trace.bpftrace import Unavailable


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agent", choices=(*causes.AGENTS, "both"), default="both")
    p.add_argument("--case", action="append", choices=causes.CASES,
                   help="inject only these (repeatable; default: all, 'none' first)")
    p.add_argument("--phase", type=float, default=1.5, help="seconds per cause (default 1.5)")
    p.add_argument("--threshold", type=float, default=1.0, help="slow step, ms (default 1)")
    p.add_argument("--backend", action="append", choices=("bpftrace", "tracefs"),
                   help="the slow-steps tracer (repeatable: each in turn; default bpftrace)")
    p.add_argument("--load", type=int, default=0,
                   help="busy loops at nice 0 on any CPU through the phases (default 0)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--cost", action="store_true",
                   help="instead: the C agent's step p50/p99 untraced, traced, untraced again")
    a = p.parse_args(argv)
    # SIGTERM (a timeout(1), a CI cancel) unwinds like ^C: the lab's finally removes
    # its namespaces, loop device and tmpfs file
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.cost:
        try:
            cost = causes.run_cost(max(a.phase, 3.0), backends=tuple(a.backend or ("bpftrace",)))
        except Unavailable as e:
            print(f"causes: {e}", file=sys.stderr)
            return 2
        print(json.dumps(cost, indent=1) if a.json else causes.render_cost(cost), end="")
        return 0
    agents = causes.AGENTS if a.agent == "both" else (a.agent,)
    try:
        doc = causes.run(agents, tuple(a.case or causes.CASES), a.phase, int(a.threshold * 1e6),
                         log=lambda m: print(m, file=sys.stderr), backends=tuple(a.backend or ("bpftrace",)),
                         load=max(0, a.load))
    except Unavailable as e:
        print(f"causes: {e}", file=sys.stderr)
        return 2
    ok = all((c := r.checked_share()) is None or c >= 0.9 for run in doc["runs"] for r in run["_rows"])
    for run in doc["runs"]:
        del run["_rows"]
    if a.json:
        print(json.dumps(doc, indent=1))
    else:
        print(" ".join(["python", "bench/causes.py", *argv]))
        print("load average {:.1f} at the start, {:.1f} at the end".format(*doc["loadavg"]))
        for run in doc["runs"]:
            print(run["table"])
            if run["lost_events"] or run["ring_missed"]:
                print(f"  ({run['lost_events']} events lost, {run['ring_missed']} ring records missed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
