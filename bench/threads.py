"""Benchmark of the daemon's background threads with many idle agents: what the
tuner and slow-steps threads cost the main thread (they share the GIL, so each
millisecond they run in Python is a millisecond a request may wait). Not a
test: it prints figures.

    sudo .venv/bin/python bench/threads.py                          # this checkout
    sudo .venv/bin/python bench/threads.py --repo /work/main --repo . --pairs 3

What it runs: a real `agentlatd run` subprocess with bench/agents.py's policy
(devices.include matches nothing, every device knob off, interactive home
CPUs "shared": nothing but the benchmark's own processes is touched), its
state directory on /dev/shm; --agents sleeping processes (tests/support/
sleepers.py, no step ring) registered one by one; then, after --settle
seconds, a --window seconds long look at the daemon's threads:

  cpu_ms_per_s   per thread (by its name in /proc/PID/task/TID/comm): utime +
                 stime over the window, ms of CPU per second of wall time; and
                 "child processes": the daemon's children (the scan worker),
                 whole processes
  tuner_tick_ms  the `status` op's tuner_tick_ms, read once a second
                 (median and max)
  chain_scan_ms  the chain scan's part of the tuner tick (status chain_scan.ms)
  host_processes every process on the host at the window's end: irqbalance
                 detection and chain discovery look at all of them

With several --repo, each runs in turn (--pairs rounds of all of them, in
order), with the same sleeping processes, so before/after are side by side
on the same machine state; the medians over rounds are printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
from agents import POLICY, Conn, register_load, start_daemon  # noqa: E402 - after bench/ is on sys.path
from support.sleepers import Sleepers  # noqa: E402 - after tests/ is on sys.path

TICK_S = os.sysconf("SC_CLK_TCK")
# The daemon, with each Python thread's name given to the kernel (prctl PR_SET_NAME,
# 15 bytes: "agentlatd-tuner", "agentlatd-slows") so /proc/PID/task/TID/comm tells
# the threads apart; Python 3.11 leaves every thread's comm "python". The daemon's
# own code is not changed: the launcher wraps threading.Thread.run, then runs
# `python -m agentlatd` as is.
LAUNCH = """
import ctypes, runpy, sys, threading
prctl = ctypes.CDLL(None, use_errno=True).prctl
run = threading.Thread.run
def named(self):
    prctl(15, self.name.encode()[:15], 0, 0, 0)
    run(self)
threading.Thread.run = named
sys.argv[0] = "agentlatd"
runpy.run_module("agentlatd", run_name="__main__", alter_sys=True)
"""


def thread_cpu(pid: int) -> dict[str, float]:
    """Thread name -> utime + stime (s) of every thread of `pid` (same names summed;
    the main thread, whose tid is the pid, is "main")."""
    out: dict[str, float] = {}
    kids: list[str] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = "main" if tid == str(pid) else f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                # after the comm's closing parenthesis: field 3 (state) is [0]
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[name] = out.get(name, 0.0) + (int(rest[11]) + int(rest[12])) / TICK_S
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += f.read().split()
        except OSError:
            pass  # it ended, or no CONFIG_PROC_CHILDREN
    # the daemon's child processes (the scan worker: agents/scanworker.py), whole:
    # the work it takes off the threads still costs the host CPU
    for kid in kids:
        try:
            with open(f"/proc/{kid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited
        out["child processes"] = (out.get("child processes", 0.0)
                                  + (int(rest[11]) + int(rest[12])) / TICK_S)
    return out


def one_run(repo: pathlib.Path, pids: list[int], settle: float, window: float) -> dict[str, Any]:
    d = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-bench-",
                                      dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    (d / "p.toml").write_text(POLICY)
    dm, sock = start_daemon(repo, d, ["-c", LAUNCH])
    out: dict[str, Any] = {"repo": str(repo)}
    try:
        c = Conn(sock)
        register_load(c, pids)
        time.sleep(settle)
        ticks: list[float] = []
        scans: list[float] = []
        w0, c0 = time.monotonic(), thread_cpu(dm.pid)
        end = w0 + window
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            _, st = c.rtt("status")
            ticks.append(st["result"].get("tuner_tick_ms") or 0.0)
            scans.append(st["result"].get("chain_scan", {}).get("ms") or 0.0)
        w1, c1 = time.monotonic(), thread_cpu(dm.pid)
        c.close()
        # the per-process reads scale with every process on the host, not the agents only
        out["host_processes"] = sum(1 for n in os.listdir("/proc") if n.isdigit())
        out["cpu_ms_per_s"] = {k: round((c1[k] - c0.get(k, 0.0)) * 1000 / (w1 - w0), 1)
                               for k in sorted(c1)}
        out["tuner_tick_ms"] = {"p50": round(statistics.median(ticks), 2),
                                "max": round(max(ticks), 2)}
        out["chain_scan_ms"] = {"p50": round(statistics.median(scans), 2),
                                "max": round(max(scans), 2)}
    finally:
        dm.send_signal(signal.SIGTERM)
        out["daemon_rc"] = dm.wait(60)
        shutil.rmtree(d, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after the last register")
    ap.add_argument("--window", type=float, default=5.0, help="seconds of CPU time looked at")
    ap.add_argument("--repo", type=pathlib.Path, action="append", default=[],
                    help="the checkout whose daemon runs (repeat: each in turn; default this one)")
    ap.add_argument("--pairs", type=int, default=1, help="rounds over the --repo list")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/threads.py: run as root (the daemon pins the agents)", file=sys.stderr)
        return 2
    repos = [r.resolve() for r in args.repo] or [REPO]
    load = Sleepers(args.agents)
    runs: list[dict[str, Any]] = []
    try:
        for i in range(args.pairs):
            for repo in repos:
                r = one_run(repo, load.pids, args.settle, args.window)
                r["round"] = i
                runs.append(r)
                if not args.json:
                    print(json.dumps(r), flush=True)
    finally:
        load.close()
    med: dict[str, dict[str, float]] = {}
    for repo in repos:
        mine = [r for r in runs if r["repo"] == str(repo)]
        names = sorted({k for r in mine for k in r["cpu_ms_per_s"]})
        med[str(repo)] = {f"cpu_ms_per_s {k}": round(statistics.median(
            r["cpu_ms_per_s"].get(k, 0.0) for r in mine), 1) for k in names}
        med[str(repo)]["tuner_tick_ms p50"] = round(statistics.median(
            r["tuner_tick_ms"]["p50"] for r in mine), 2)
        med[str(repo)]["chain_scan_ms p50"] = round(statistics.median(
            r["chain_scan_ms"]["p50"] for r in mine), 2)
    if args.json:
        print(json.dumps({"agents": args.agents, "host_cpus": os.cpu_count(),
                          "kernel": os.uname().release, "runs": runs, "median": med}, indent=2))
    else:
        for repo, figs in med.items():
            print(f"median over {args.pairs} round(s): {repo}")
            for k, v in figs.items():
                print(f"  {k:40} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
