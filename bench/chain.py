"""Benchmark of chain discovery (agents/chain.py ChainScanner): what one scan batch
costs on this host. Not a test: it prints figures.

    sudo .venv/bin/python bench/chain.py                   # 50 agents, 20 batches
    sudo .venv/bin/python bench/chain.py --agents 200 --json

What it runs, in this process (no daemon: the scanner is the tuner thread's
code, called directly): --agents sleeping processes forked here, each with a
UDP socket connected to one shared UDP server process on loopback and a pipe
child (so every agent has two members to find). Then --batches full batches
(every agent due, as after RESCAN_S), each timed, on the live host with all
its processes and network namespaces: the namespace readlinks of every
process, the socket tables of each namespace, the agents' and children's fd
tables, the holder search. Reported: ms per batch (p50, max), ms per agent,
namespaces and fd reads per batch, members found per agent (must be 2).
The host's own process count is in the output: the namespace pass is O(processes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import time

from agentlatd.agents.chain import ChainAgent, ChainScanner
from agentlatd.sample import tasks
from agentlatd.sysfs.root import Root


def _agent(port: int) -> int:
    """Fork a sleeping agent: a connected UDP socket and a pipe child."""
    pid = os.fork()
    if pid:
        return pid
    try:  # pragma: no cover - child
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", port))
        r, w = os.pipe()
        kid = os.fork()
        if kid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(0)
        signal.pause()
    finally:
        os._exit(0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    root = Root("/")
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    server = os.fork()
    if server == 0:  # pragma: no cover - child: the server, holding the bound socket
        signal.pause()
        os._exit(0)
    srv.close()  # from here only the server process holds it
    pids: list[int] = []
    try:
        pids = [_agent(port) for _ in range(a.agents)]
        time.sleep(0.5)
        agents = []
        for p in pids:
            st = tasks.starttime_of(root, p)
            if st is not None:
                agents.append(ChainAgent(tasks.ProcId(p, st)))
        sc = ChainScanner()
        ms: list[float] = []
        t = 0.0
        for _ in range(a.batches):
            t += 10.0  # every agent due
            t0 = time.perf_counter()
            sc.update(root, agents, now=t)
            ms.append((time.perf_counter() - t0) * 1000)
        found = [len(v) for v in sc.found.values()]
        out = {"agents": len(agents), "host_processes": len(tasks.list_pids(root)),
               "batches": a.batches, "batch_ms_p50": round(statistics.median(ms), 2),
               "batch_ms_max": round(max(ms), 2),
               "ms_per_agent": round(statistics.median(ms) / max(1, len(agents)), 3),
               "namespaces": sc.cost.namespaces, "fd_reads": sc.cost.fd_reads,
               "truncated": sc.cost.truncated,
               "members_per_agent": sorted(set(found))}
        if a.json:
            print(json.dumps(out))
        else:
            for k, v in out.items():
                print(f"{k:20} {v}")
        return 0
    finally:
        for p in [*pids, server]:
            for kid in tasks.descendants(root, p):
                os.kill(kid, signal.SIGKILL)
            os.kill(p, signal.SIGKILL)
            os.waitpid(p, 0)


if __name__ == "__main__":
    sys.exit(main())
