"""What following the host's forks costs the daemon (agents/forks.py). Not a test:
it prints figures.

    sudo .venv/bin/python bench/forks.py                       # this checkout
    sudo .venv/bin/python bench/forks.py --repo /tmp/old --repo .   # side by side

Per checkout (--repo, in the order given, each its own `agentlatd run` with
bench/agents.py's policy: nothing but the benchmark's processes is touched):
--agents sleeping processes registered, then two periods of --seconds each:

  idle    nothing else runs
  storm   a process that is no agent forks children that exit at once, paced
          at --rate forks a second (every fork and exit on the host is an event
          for the daemon; the socket filter passes processes, not threads)

  main_cpu_ms_per_s   the daemon main thread's CPU time (/proc/PID/schedstat)
                      per second of each period; storm minus idle is the cost
                      of the events, and us_per_fork that over the forks made
  agent_tick_ms       the agent tick as `status` reports it at the end of the
                      idle period (without events it lists 64 agents' forks)
  register_rtt_idle,  then two more periods, idle and storm, in which 20 fresh
  register_rtt_storm  sleeping processes are registered and unregistered in
                      turn all along: the register round trips (a backlog of
                      events is read a piece at a time, between requests)
  forks_source        `status` forks.source of that checkout ("events",
                      "listing", or absent: a checkout from before events)
  agent_storm_*       a last period: a registered background agent forks
                      --agent-rate children a second, each living
                      --child-life seconds (remembered, and journaled from the
                      checkout that journals them, then forgotten and dropped):
                      us_per_agent_fork is its main thread CPU over idle per fork;
                      journaled_max the most `status` showed journaled at once
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from agents import (  # noqa: E402
    POLICY,
    Conn,
    cpu_ns,
    register_load,
    start_daemon,
    stop_daemon,
    summary,
)
from support.sleepers import Sleepers  # noqa: E402

# a paced fork loop, bounded by its deadline: prints how many forks it made. Its
# children exit at once (reaped one by one), or with LIFE > 0 sleep that long
# (reaped as they end); with "wait" it first reads a line on stdin (the caller
# registers it as an agent meanwhile)
_STORM = r"""
import os, sys, time
rate, seconds, life = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
if sys.argv[4:] == ["wait"]:
    sys.stdin.readline()
t0 = time.monotonic(); end = t0 + seconds; n = 0; kids = set()
while True:
    now = time.monotonic()
    if now >= end:
        break
    due = t0 + n / rate
    if due > now:
        time.sleep(due - now)
    pid = os.fork()
    if pid == 0:
        if life > 0:
            time.sleep(life)
        os._exit(0)
    n += 1
    if life <= 0:
        os.waitpid(pid, 0)
        continue
    kids.add(pid)
    while kids:
        done, _ = os.waitpid(-1, os.WNOHANG)
        if not done:
            break
        kids.discard(done)
for pid in kids:
    os.waitpid(pid, 0)
print(n, flush=True)
"""


def _agent_storm(dm_pid: int, c: Conn, seconds: float, rate: float, life: float
                 ) -> tuple[float, int, int]:
    """(main thread CPU ms per second, forks made, most journaled at once) while a
    registered background agent forks (_STORM, children living `life` s)."""
    p = subprocess.Popen([sys.executable, "-c", _STORM, str(rate), str(seconds), str(life),
                          "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None
    try:
        _, ans = c.rtt("register", agent_id="forker", pid=p.pid, latency_class="background")
        assert ans["ok"], ans
        c0, t0 = cpu_ns(dm_pid), time.monotonic()
        p.stdin.write("go\n")
        p.stdin.flush()
        most = 0
        while p.poll() is None:
            _, st = c.rtt("status")
            most = max(most, int((st["result"].get("forks") or {}).get("journaled", 0)))
            time.sleep(0.1)
        ms = (cpu_ns(dm_pid) - c0) / 1e6 / (time.monotonic() - t0)
        out, _ = p.communicate(timeout=60)
        return ms, int(out.strip()), most
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _period(dm_pid: int, seconds: float, rate: float | None,
            c: Conn | None = None, pids: list[int] | None = None
            ) -> tuple[float, int, list[float]]:
    """(main thread CPU ms per second, forks made, register round trips in us) over
    one period; with `c`, `pids` are registered and unregistered in turn all along
    (the round trips also cost the main thread: compare periods with the same)."""
    c0, t0 = cpu_ns(dm_pid), time.monotonic()
    storm = None if rate is None else subprocess.Popen(
        [sys.executable, "-c", _STORM, str(rate), str(seconds), "0"],
        stdout=subprocess.PIPE, text=True)
    rtts: list[float] = []
    end = t0 + seconds
    i = 0
    while time.monotonic() < end:
        if c is None or not pids:
            time.sleep(max(0.0, end - time.monotonic()))
            break
        pid = pids[i % len(pids)]
        i += 1
        dt, ans = c.rtt("register", agent_id=f"f{pid}", pid=pid)
        assert ans["ok"], ans
        rtts.append(dt)
        _, ans = c.rtt("unregister", pid=pid)
        assert ans["ok"], ans
        time.sleep(0.002)
    forks = 0
    if storm is not None:
        out, _ = storm.communicate(timeout=seconds + 60)
        forks = int(out.strip())
    dt = time.monotonic() - t0
    return (cpu_ns(dm_pid) - c0) / 1e6 / dt, forks, rtts


def run_one(repo: pathlib.Path, agents: int, seconds: float, rate: float,
            agent_rate: float, child_life: float) -> dict[str, Any]:
    d = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-bench-", dir="/dev/shm"))
    (d / "p.toml").write_text(POLICY)
    dm, sock = start_daemon(repo, d, ["-m", "agentlatd"])
    load = Sleepers(agents)
    fresh = Sleepers(20)
    try:
        c = Conn(sock)
        register_load(c, load.pids)
        time.sleep(1.0)
        idle, _, _ = _period(dm.pid, seconds, None)
        _, st = c.rtt("status")
        storm, forks, _ = _period(dm.pid, seconds, rate)
        _, reg_idle = _period(dm.pid, seconds, None, c, fresh.pids)[1:]
        _, reg_storm = _period(dm.pid, seconds, rate, c, fresh.pids)[1:]
        idle2, _, _ = _period(dm.pid, seconds, None)
        agent_storm, agent_forks, journaled = _agent_storm(dm.pid, c, seconds, agent_rate,
                                                           child_life)
        c.close()
        res = st["result"]
        return {"repo": str(repo), "agents": agents, "seconds": seconds,
                "forks_source": (res.get("forks") or {}).get("source"),
                "idle_main_cpu_ms_per_s": round(idle, 2),
                "storm_main_cpu_ms_per_s": round(storm, 2),
                "forks": forks, "forks_per_s": round(forks / seconds, 1),
                "us_per_fork": round((storm - idle) * 1000 * seconds / max(1, forks), 2),
                "agent_tick_ms": res.get("agent_tick_ms"),
                "register_rtt_idle": summary(reg_idle),
                "register_rtt_storm": summary(reg_storm),
                "agent_storm_main_cpu_ms_per_s": round(agent_storm, 2),
                "agent_forks": agent_forks,
                "us_per_agent_fork": round((agent_storm - idle2) * 1000 * seconds
                                           / max(1, agent_forks), 2),
                "agent_storm_journaled_max": journaled}
    finally:
        fresh.close()
        load.close()
        stop_daemon(dm)
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", action="append", type=pathlib.Path,
                    help="checkout whose agentlatd the daemon runs (repeat to compare)")
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="forks a second in the storm")
    ap.add_argument("--agent-rate", type=float, default=200.0,
                    help="forks a second of the registered agent (agent_storm_*)")
    ap.add_argument("--child-life", type=float, default=0.5,
                    help="seconds each of the agent's children lives")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (the daemon pins and journals the benchmark's processes)",
              file=sys.stderr)
        return 2
    rows = [run_one(r.resolve(), args.agents, args.seconds, args.rate, args.agent_rate,
                    args.child_life)
            for r in (args.repo or [HERE.parent])]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(" ".join(f"{k}={v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
