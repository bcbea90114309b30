"""`agentlatd bench`: the design note's section 12 evaluation on this machine.

Builds three network namespaces and two veth pairs of its own, compiles a C
agent probe, and runs configurations Q (quiet), A (baseline), B (manual
tuning) and D (agentlatd) interleaved, several runs each, under a bounded
NET_RX flood, disk writeback and CPU hogs. Writes report.json and
report.html (plots) to --out and prints the headline table.

It changes only what it creates (namespaces, veths and their RPS, its own
processes' affinities) and, through agentlatd in D, per-CPU PM QoS; all of
it is undone on exit, Ctrl-C and SIGTERM. Needs root, iproute2 and gcc.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import replace
from types import FrameType
from typing import Any

from agentlatd import jsonout
from agentlatd.errors import AgentlatdError
from agentlatd.exitcodes import Exit
from agentlatd.tools.bench import report
from agentlatd.tools.bench.configs import ALL, CONFIGS, ORDER
from agentlatd.tools.bench.harness import QUICK, Bench, Settings
from agentlatd.tools.bench.noise import NoiseSpec

HELP = "run the Q/A/B/D latency evaluation under completion noise and write a report"
EXAMPLES = (
    "agentlatd bench --quick",
    "agentlatd bench --out /tmp/agentlatd-bench",
    "agentlatd bench --runs 12 --seconds 4",
    "agentlatd bench --quick --configs Q,A --json",
    "agentlatd bench --check || echo \"exit $?: 3 = a target not met\"",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 short runs per configuration, under 60 s")
    p.add_argument("--out", default="agentlatd-bench", metavar="DIR",
                   help="report directory (default: ./agentlatd-bench)")
    p.add_argument("--runs", type=int, metavar="N",
                   help="runs per configuration (default 10; quick 2)")
    p.add_argument("--seconds", type=float, metavar="S",
                   help="C agent seconds per run (default 4; quick 1.5)")
    p.add_argument("--configs", default=",".join(ORDER), metavar="LIST",
                   help="configurations to run, of Q,A,B,D,E (default Q,A,B,D)")
    p.add_argument("--pps", type=int, metavar="N", help="flood packets per second (default 150000)")
    p.add_argument("--writeback-mbps", type=int, metavar="N",
                   help="disk writeback noise in MB/s, 0 = none (default 16): its requests share "
                        "the disk's queue with the agent's reads, which no CPU placement changes")
    p.add_argument("--hogs", type=int, metavar="N", help="CPU hog processes (default 1)")
    p.add_argument("--exclusive-scope", choices=("bench", "host"), default="bench",
                   help="D: tasks agentlatd moves off the agent's home CPU: the bench's own "
                        "(default) or every movable task of the host (the daemon's default)")
    p.add_argument("--attribute", choices=("auto", "bpftrace", "tracefs", "off"),
                   help="the C agent's slow steps (>= p99) by cause: one more run per configuration "
                        "after the measured ones, traced by trace --slow-steps's tracer (auto: "
                        "bpftrace, else tracefs; the default, off with --quick)")
    p.add_argument("--json", action="store_true", help="print report.json to stdout at the end")
    p.add_argument("--check", action="store_true",
                   help="exit with status 3 when a target of the evaluation is not met "
                        "(p999(D) <= 1.2 x p999(Q), noise(D) within 10%% of A)")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as KeyboardInterrupt so every finally block runs."""


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else Settings()
    keys = tuple(k.strip().upper() for k in args.configs.split(",") if k.strip())
    bad = [k for k in keys if k not in CONFIGS]
    if bad or not keys:
        raise AgentlatdError(f"unknown configuration {', '.join(bad) or '(none)'}: "
                             f"choose from {', '.join(ALL)}.")
    if args.runs is not None:
        if not 1 <= args.runs <= 100:
            raise AgentlatdError("--runs must be between 1 and 100.")
        s = replace(s, runs=args.runs)
    if args.seconds is not None:
        if not 0.2 <= args.seconds <= 60:
            raise AgentlatdError("--seconds must be between 0.2 and 60.")
        s = replace(s, seconds=args.seconds)
    if args.pps is not None:
        if not 0 < args.pps <= 2_000_000:
            raise AgentlatdError("--pps must be between 1 and 2000000.")
        s = replace(s, noise=replace(s.noise, pps=args.pps))
    elif not isinstance(s.noise, NoiseSpec):  # pragma: no cover - defensive
        s = replace(s, noise=NoiseSpec())
    wb = getattr(args, "writeback_mbps", None)
    if wb is not None:
        if not 0 <= wb <= 1000:
            raise AgentlatdError("--writeback-mbps must be between 0 and 1000.")
        s = replace(s, noise=replace(s.noise, writeback_mbps=wb))
    hogs = getattr(args, "hogs", None)
    if hogs is not None:
        if not 0 <= hogs <= 64:
            raise AgentlatdError("--hogs must be between 0 and 64.")
        s = replace(s, noise=replace(s.noise, hogs=hogs))
    return replace(s, configs=keys, exclusive_scope=getattr(args, "exclusive_scope", "bench"),
                   attribute=getattr(args, "attribute", None) or s.attribute)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    out_dir = os.path.abspath(args.out)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)

    bench = Bench(settings, log=log)
    old = signal.signal(signal.SIGTERM, _on_term)
    try:
        log(f"bench: configurations {','.join(settings.configs)}, {settings.runs} runs each, "
            f"{settings.seconds:g} s + {settings.py_seconds:g} s (Python) per run")
        doc = bench.run()
    except KeyboardInterrupt:
        # bench.run's finally has already restored everything
        print("agentlatd bench: interrupted; namespaces, veths and settings restored.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    doc["argv"] = list(sys.argv)
    jpath, hpath = report.write(doc, out_dir)
    if args.json:
        sys.stdout.write(jsonout.dumps(doc, indent=1) + "\n")
    else:
        sys.stdout.write(doc["headline"])
        sys.stdout.write(f"\nreport: {hpath}\n        {jpath}\n")
    errors = [r for r in doc["runs"] if "error" in r]
    if errors and len(errors) == len(doc["runs"]):
        return Exit.FAILED
    return check_status(doc) if getattr(args, "check", False) else Exit.OK


def check_status(doc: dict[str, Any]) -> int:
    """`--check`: TARGET_MISSED when a target is not met, or could not be measured."""
    targets = doc.get("summary", {}).get("targets", {})
    missed = [name for name, t in targets.items() if not t.get("met")]
    if not targets or missed:
        print(f"agentlatd bench: target(s) not met: {', '.join(missed) or 'none measured'}",
              file=sys.stderr)
        return Exit.TARGET_MISSED
    return Exit.OK
