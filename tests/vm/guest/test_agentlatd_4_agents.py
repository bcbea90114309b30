"""The daemon in the guest: a registered multi-threaded agent lives on an IRQ-quiet home CPU.

`agentlatd run` (a real interpreter) with the lab policy (completion CPUs 0-1, home CPUs
2-3) steers the NICs' IRQs at its first tick; a Python agent with several threads started
BEFORE it registers (agentlatd.client.Client) must then have every thread pinned to one home
CPU, no steered IRQ may fire there under real traffic (sent from every CPU, the agent's
own included), and SIGTERM must put back every IRQ and every thread's affinity.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import guestlib as g
import pytest

pytestmark = pytest.mark.vm
CPUS = list(range(os.cpu_count() or 0))
ALL = f"0-{len(CPUS) - 1}"
NTHREADS = 4

AGENT = r"""
import json, sys, threading
from agentlatd.client import Client
stop = threading.Event()
threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(int(sys.argv[2]))]
for t in threads:
    t.start()
# registered after its threads exist: the daemon must pin threads it did not see start
c = Client("vm-agent", "interactive", socket=sys.argv[1], flush_interval=0.5)
print(json.dumps({"registration": c.registration}), flush=True)
for line in sys.stdin:
    if line.strip() == "steps":
        for i in range(200):
            with c.step(i):
                sum(range(200))
        c.flush()
        print(json.dumps({"steps": 200}), flush=True)
    elif line.strip() == "exit":
        break
stop.set()
"""


def nic_irqs(nics: g.Nics) -> dict[int, str]:
    """IRQ -> name of every IRQ of the three NICs (virtio-net, e1000e, igb)."""
    pats = [rf"{nics.virtio_dev}-.*", rf"{nics.e1000e}(-.*)?", rf"{nics.igb}(-.*)?"]
    return {r.irq: name for p in pats for name, r in g.irqs_named(p).items()}


@dataclass
class Running:
    daemon: subprocess.Popen[bytes]
    log: pathlib.Path
    socket: pathlib.Path
    state: pathlib.Path
    agent: subprocess.Popen[str]
    registration: dict[str, Any]
    before_irqs: dict[int, str]
    started_s: float  # daemon start until it answered


def _line(p: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    assert p.stdout is not None
    r, _, _ = select.select([p.stdout], [], [], timeout)
    assert r, f"agent {p.pid} said nothing within {timeout} s"
    line = p.stdout.readline()
    assert line, f"agent {p.pid} exited: {p.stderr.read() if p.stderr else ''}"
    out: dict[str, Any] = json.loads(line)
    return out


@pytest.fixture(scope="module")
def running(agentlatd: g.Agentlatd, agentlatd_lab: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    lab = agentlatd_lab
    agentlatd.preload()  # the client module, in this process (for g.daemon_answers)
    work = tmp_path_factory.mktemp("daemon")
    config = lab.policy("agents.toml", extra='[classes.interactive]\nexclusive = "shared"\n')
    sock, state, log = work / "agentlatd.sock", work / "state", work / "daemon.log"
    before_irqs = {n: g.read_cpulist(n) for n in g.read_interrupts()}
    env = dict(os.environ)
    t0 = time.monotonic()
    with open(log, "wb") as f:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "agentlatd", "run", "--config", str(config), "--state-dir",
             str(state), "--socket", str(sock), "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=g.REPO, env=env)
    agent: subprocess.Popen[str] | None = None
    try:
        g.wait_for(lambda: daemon.poll() is not None or g.daemon_answers(sock), timeout=120,
                   what="agentlatd run answering on its socket")
        assert daemon.poll() is None, log.read_text()
        started = time.monotonic() - t0
        agent = subprocess.Popen([sys.executable, "-c", AGENT, str(sock), str(NTHREADS)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=g.REPO, env=env)
        reg = _line(agent)["registration"]
        print(f"daemon answered after {started:.1f} s; agent {agent.pid} registered: {reg}")
        yield Running(daemon, log, sock, state, agent, reg, before_irqs, started)
    finally:
        g.stop_daemon(daemon)
        if agent is not None and agent.poll() is None:
            with contextlib.suppress(OSError):
                assert agent.stdin is not None
                agent.stdin.write("exit\n")
                agent.stdin.flush()
            try:
                agent.wait(10)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        print("--- daemon log (tail) ---\n" + log.read_text(errors="replace")[-3000:])


def test_every_agent_thread_is_pinned_to_one_home_cpu(
        running: Running, agentlatd: g.Agentlatd) -> None:
    home = running.registration["home_cpu"]
    assert home in g.HOME, running.registration
    pid = running.agent.pid
    g.wait_for(lambda: set(g.thread_cpus(pid).values()) == {str(home)}, timeout=20,
               what=f"every thread of agent {pid} on CPU {home}")
    threads = g.thread_cpus(pid)
    assert len(threads) >= NTHREADS + 2, threads  # main + sleepers + the client's helper
    rows: list[Any] = []

    def listed() -> bool:  # the client's helper thread, born pinned, is counted at a tick
        ran = agentlatd.fork("agents", "--socket", str(running.socket), "--json")
        assert ran.rc == 0, ran
        rows[:] = ran.json()["agents"]  # type: ignore[call-overload,index]
        return len(rows) == 1 and rows[0]["threads"] == len(threads)

    g.wait_for(listed, timeout=20, what=f"`agentlatd agents` counting {len(threads)} threads")
    (row,) = rows
    assert (row["agent_id"], row["pid"], row["home_cpu"]) == ("vm-agent", pid, home), row


def test_no_steered_irq_fires_on_the_agents_home_cpu_under_traffic(
        running: Running, agentlatd_lab: Any) -> None:
    nics = agentlatd_lab.nics
    home = running.registration["home_cpu"]
    irqs = nic_irqs(nics)
    # the daemon's first tick steered them all to the completion CPUs
    aff = {n: g.parse_cpulist(g.read_cpulist(n)) for n in irqs}
    assert all(a <= g.COMPLETION for a in aff.values()), {irqs[n]: a for n, a in aff.items()}
    start = g.read_interrupts()
    gw = {role: g.SLIRP[role][1] for role in ("e1000e", "igb")}

    def traffic() -> None:
        # from every CPU, the agent's home CPU included (an agent's own network calls)
        assert g.udp_flows_from_cpus(CPUS, flows=8, n=3) == {c: 24 for c in CPUS}
        assert g.ping_from_cpus(CPUS, gw["e1000e"], count=2) == {c: 2 for c in CPUS}
        assert g.ping_from_cpus(CPUS, gw["igb"], count=2) == {c: 2 for c in CPUS}

    traffic()  # warm-up: each moved IRQ's first interrupt lands on its old CPU
    warm = g.read_interrupts()
    moved = {n for n in irqs
             if g.parse_cpulist(g.read_cpulist(n, "effective_affinity_list")) <= aff[n]}
    fired = {n for n in irqs if sum(warm[n].counts) > sum(start[n].counts)}
    assert fired <= moved, sorted(irqs[n] for n in fired - moved)
    assert running.agent.stdin is not None
    running.agent.stdin.write("steps\n")
    running.agent.stdin.flush()
    traffic()
    assert _line(running.agent) == {"steps": 200}
    d = g.irq_deltas(warm, g.read_interrupts(), sorted(irqs))
    for n, per_cpu in d.items():
        if sum(per_cpu):
            print(f"{irqs[n]}: per-CPU {per_cpu}")
        allowed = 0 if n in moved else 1  # one interrupt on the old CPU moves the vector
        assert per_cpu[home] <= allowed, (irqs[n], per_cpu)
        assert sum(per_cpu[c] for c in g.HOME) <= allowed, (irqs[n], per_cpu)
    assert sum(sum(d[n][c] for c in g.COMPLETION) for n in d) > 0
    # and the agent never left its home CPU
    assert set(g.thread_cpus(running.agent.pid).values()) == {str(home)}


def test_sigterm_restores_every_irq_and_thread(running: Running) -> None:
    running.daemon.send_signal(signal.SIGTERM)
    assert running.daemon.wait(60) == 0, running.log.read_text()[-3000:]
    now = {n: g.read_cpulist(n) for n in running.before_irqs}
    assert g.snapshot_diff({str(k): v for k, v in running.before_irqs.items()},
                           {str(k): v for k, v in now.items()}) == []
    assert set(g.thread_cpus(running.agent.pid).values()) == {ALL}
    assert not (running.state / "journal.json").exists()
