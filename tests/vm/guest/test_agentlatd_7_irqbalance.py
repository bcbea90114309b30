"""agentlatd and the real irqbalance (Debian's 1.9.2) side by side in the guest.

policy daemon.irqbalance = "cooperate" (the default): agentlatd bans its home CPUs
in the running irqbalance over irqbalance's own socket and leaves every IRQ to it.
Shown here, with both daemons running for over a minute under UDP traffic from
every CPU: no NIC queue IRQ fires on a home CPU and none is allowed there;
irqbalance keeps placing them (on the completion CPUs); a restarted irqbalance
(new pid, no ban) gets the ban back; after SIGTERM of agentlatd, and after kill -9
and `agentlatd rollback`, irqbalance's ban is what it was before.

irqbalance runs only here, never on the host (it would move the host's IRQs):
tests/run.sh unpacks the .deb into the lab cache with `dpkg -x` (no maintainer
scripts, so no service is started on the host), and the guest sees that cache.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import guestlib as g
import pytest

from agentlatd.cpuset import CpuSet

pytestmark = pytest.mark.vm
LAB = pathlib.Path(os.environ.get("AGENTLATD_VMLAB", "/var/tmp/agentlatd-vmlab"))
IRQBALANCE = LAB / "irqbalance/root/usr/sbin/irqbalance"
HOME = CpuSet({2, 3})
TRAFFIC_S = 65.0


def setup_answer(pid: int) -> str:
    """irqbalance's answer to "setup" (irqbalance.c sock_handle())."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        # irqbalance answers after a rescan's blocking sleep (10 s); a client that
        # gives up makes its send() raise SIGPIPE and kill it
        s.settimeout(90)
        s.connect(f"/run/irqbalance/irqbalance{pid}.sock")
        s.sendall(b"setup")
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode()


def banned(pid: int) -> CpuSet:
    text = setup_answer(pid)
    return CpuSet.parse_mask(text.split("BANNED", 1)[1].split()[0])


def start_irqbalance() -> subprocess.Popen[bytes]:
    os.makedirs("/run/irqbalance", exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBALANCE_")}
    p = subprocess.Popen([str(IRQBALANCE), "--foreground"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    g.wait_for(lambda: p.poll() is not None
               or os.path.exists(f"/run/irqbalance/irqbalance{p.pid}.sock"), timeout=60,
               what="irqbalance's socket")
    assert p.poll() is None, f"irqbalance exited with {p.returncode}"
    return p


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def nic_irqs(nics: g.Nics) -> list[int]:
    pats = [rf"{nics.virtio_dev}-.*", rf"{nics.e1000e}(-.*)?", rf"{nics.igb}(-.*)?"]
    return sorted({r.irq for p in pats for r in g.irqs_named(p).values()})


def start_daemon(config: pathlib.Path, work: pathlib.Path) -> subprocess.Popen[bytes]:
    sock, state = work / "agentlatd.sock", work / "state"
    env = dict(os.environ)
    with open(work / "daemon.log", "ab") as f:
        d = subprocess.Popen(
            [sys.executable, "-m", "agentlatd", "run", "--config", str(config), "--state-dir",
             str(state), "--socket", str(sock), "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=g.REPO, env=env)
    g.wait_for(lambda: d.poll() is not None or g.daemon_answers(sock), timeout=180,
               what="agentlatd answering")
    assert d.poll() is None, (work / "daemon.log").read_text()
    return d


@pytest.fixture
def irq_affinities_restored() -> Iterator[None]:
    """irqbalance rewrites every IRQ's affinity: put them all back afterwards."""
    before = {n: g.read_cpulist(n) for n in g.read_interrupts()}
    yield
    for n, cpus in before.items():
        if g.irq_path(n, "smp_affinity_list").exists():
            g.write_errno(g.irq_path(n, "smp_affinity_list"), cpus)


def test_irqbalance_cooperates_bans_home_cpus_and_gets_its_ban_back(
        agentlatd: g.Agentlatd, agentlatd_lab: Any, guest_nics: g.Nics,
        tmp_path: pathlib.Path, irq_affinities_restored: None) -> None:
    if not IRQBALANCE.exists():
        pytest.skip(f"{IRQBALANCE} missing (tests/run.sh unpacks Debian's irqbalance there)")
    agentlatd.preload()
    config = agentlatd_lab.policy("irqbalance.toml")  # daemon.irqbalance: the default
    irqs = nic_irqs(guest_nics)
    assert irqs
    ib = start_irqbalance()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        orig = banned(ib.pid)
        print(f"irqbalance {ib.pid}: {setup_answer(ib.pid)!r}; NIC IRQs {irqs}")
        daemon = start_daemon(config, tmp_path)
        # the ban takes effect at irqbalance's next pass (10 s)
        g.wait_for(lambda: banned(ib.pid) >= HOME, timeout=60, what="home CPUs banned")
        assert banned(ib.pid) == HOME | orig
        # irqbalance moves its IRQs off the banned CPUs at that pass. Without
        # interrupt remapping an x86 MSI really moves at its next interrupt, which
        # still lands on the old CPU (seen: e1000e/igb IRQs, a few interrupts a
        # minute, fired once or twice on a home CPU after their smp_affinity
        # excluded it; IRQs that never fire keep the move pending for ever)
        g.wait_for(lambda: all(not (CpuSet.parse_list(g.read_cpulist(n)) & HOME)
                               for n in irqs), timeout=60,
                   what="NIC IRQs allowed only outside the home CPUs")
        g.udp_flows_from_cpus(list(range(4)), flows=8, n=4)

        def effective(n: int) -> CpuSet:
            return CpuSet.parse_list(g.read_cpulist(n, "effective_affinity_list"))
        pending = {n for n in irqs if effective(n) & HOME}
        print(f"moves still pending at the start (effective affinity on a home CPU): "
              f"{ {n: effective(n).to_list() for n in sorted(pending)} }")
        before = g.read_interrupts()
        t_end = time.monotonic() + TRAFFIC_S
        rounds = echoes = 0
        while time.monotonic() < t_end and rounds < 10000:
            echoes += sum(g.udp_flows_from_cpus(list(range(4)), flows=8, n=8).values())
            rounds += 1
            for n in irqs:  # irqbalance keeps rebalancing: never onto a home CPU
                assert not CpuSet.parse_list(g.read_cpulist(n)) & HOME, (n, g.read_cpulist(n))
        after = g.read_interrupts()
        deltas = g.irq_deltas(before, after, irqs)
        print(f"{rounds} traffic rounds, {echoes} echoes; per-CPU NIC IRQ deltas {deltas}")
        assert echoes > 0
        on_home = {n: [d[c] for c in sorted(HOME)] for n, d in deltas.items()
                   if any(d[c] for c in HOME)}
        # an IRQ whose move had completed never fired on a home CPU; one whose move
        # was pending fired there at most twice (the move itself), and is off now
        assert not {n: v for n, v in on_home.items() if n not in pending}, on_home
        assert all(sum(v) <= 2 and not effective(n) & HOME
                   for n, v in on_home.items()), (on_home, pending)
        fired = sum(sum(d) for d in deltas.values())
        assert fired > 0
        # irqbalance still balances: the busy queue IRQs are spread over both
        # completion CPUs, not piled on one
        busy = {c for d in deltas.values() for c, k in enumerate(d) if k >= 100}
        assert busy == {0, 1}, deltas
        assert daemon.poll() is None and ib.poll() is None

        # irqbalance restarts: the new one starts without the ban; agentlatd puts it back
        stop(ib)
        ib = start_irqbalance()
        g.wait_for(lambda: banned(ib.pid) >= HOME, timeout=60,
                   what="ban reasserted in the new irqbalance")
        assert banned(ib.pid) == HOME | orig  # the new one's own ban: the same environment

        # SIGTERM: agentlatd rolls back, irqbalance's ban is its own again
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(120) == 0
        g.wait_for(lambda: banned(ib.pid) == orig, timeout=60, what="ban restored on SIGTERM")

        # kill -9: the ban stays until the journal is rolled back (the next start, or
        # `agentlatd rollback`); --print names the irqbalance command
        daemon = start_daemon(config, tmp_path)
        g.wait_for(lambda: banned(ib.pid) >= HOME, timeout=60, what="home CPUs banned again")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
        assert banned(ib.pid) >= HOME
        printed = agentlatd.run("rollback", "--print", "--state-dir", str(tmp_path / "state"))
        assert "settings cpus" in printed.stdout, printed
        # irqbalance alone placed the IRQs: agentlatd journaled no IRQ affinity
        assert "/proc/irq/" not in printed.stdout, printed
        rb = agentlatd.run("rollback", "--state-dir", str(tmp_path / "state"))
        assert rb.rc == 0, rb
        g.wait_for(lambda: banned(ib.pid) == orig, timeout=60,
                   what="ban restored by rollback after kill -9")
    finally:
        if daemon is not None:
            g.stop_daemon(daemon)
        stop(ib)
        print("--- daemon log (tail) ---\n"
              + (tmp_path / "daemon.log").read_text(errors="replace")[-3000:])

