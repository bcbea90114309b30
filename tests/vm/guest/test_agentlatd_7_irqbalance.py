"""agentlatd and the real irqbalance (Debian's 1.9.2) side by side in the guest.

policy daemon.irqbalance = "cooperate" (the default). With irqbalance's socket:
agentlatd bans its home CPUs in it ("settings cpus") and hands the IRQs it steers
over ("settings ban irqs", beside irqbalance's own --banirq), then steers them.
Shown, with both daemons running for over a minute under traffic on every NIC:
not one interrupt of a NIC IRQ on a home CPU (counted from the moment every
firing IRQ's effective affinity left the home CPUs), no steered IRQ moved by
irqbalance, irqbalance still placing the IRQs it keeps (only on the completion
CPUs); a restarted irqbalance (new pid, no ban) gets both bans back; after
SIGTERM of agentlatd, and after kill -9 and `agentlatd rollback`, irqbalance's
CPU and IRQ bans are what they were before.
Without a socket agentlatd can reach (irqbalance binds an unnamed abstract one
when run/irqbalance is missing: irqbalance.c init_socket()): agentlatd falls
back to irqbalance's environment file, which needs a service manager to
restart irqbalance; this guest has none (no systemd), so the change is refused
and said, and the file is left untouched. The file format agentlatd writes is
then read by the real irqbalance (started as its unit would, with the file's
environment), and agentlatd's restore gives the very bytes back.

irqbalance runs only here, never on the host (it would move the host's IRQs):
tests/run.sh unpacks the .deb into the lab cache with `dpkg -x` (no maintainer
scripts, so no service is started on the host), and the guest sees that cache.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import guestlib as g
import pytest

from agentlatd.apply import irqbalance_env as ie
from agentlatd.apply.irqbalance_ban import parse_setup
from agentlatd.cpuset import CpuSet
from agentlatd.sysfs.root import Root

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


def bans(pid: int) -> tuple[CpuSet, frozenset[int]]:
    """(banned CPUs, banned IRQs) of irqbalance `pid`, from its "setup" answer."""
    s = parse_setup(setup_answer(pid))
    return s.banned, frozenset(s.banned_irqs)


def banned(pid: int) -> CpuSet:
    return bans(pid)[0]


def start_irqbalance(*args: str, env_file: pathlib.Path | None = None,
                     socket_dir: bool = True,
                     log: pathlib.Path | None = None) -> subprocess.Popen[bytes]:
    """irqbalance --foreground ARGS; with `env_file`, its environment read from that
    file as systemd's EnvironmentFile= would (KEY=value lines, exported); without
    `socket_dir`, run/irqbalance is missing, so it binds no socket agentlatd can reach."""
    if socket_dir:
        os.makedirs("/run/irqbalance", exist_ok=True)
    else:
        shutil.rmtree("/run/irqbalance", ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRQBALANCE_")}
    cmd = [str(IRQBALANCE), "--foreground", *args]
    if env_file is not None:
        cmd = ["sh", "-c", 'set -a; . "$0"; exec "$@"', str(env_file), *cmd]
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    if socket_dir:
        g.wait_for(lambda: p.poll() is not None
                   or os.path.exists(f"/run/irqbalance/irqbalance{p.pid}.sock"), timeout=60,
                   what="irqbalance's socket")
    else:
        g.wait_for(lambda: p.poll() is not None or listens_abstract(p.pid), timeout=60,
                   what="irqbalance listening on an unnamed abstract socket")
    assert p.poll() is None, f"irqbalance exited with {p.returncode}"
    return p


def listens_abstract(pid: int) -> bool:
    """Whether `pid` listens on an abstract Unix socket (autobind "@xxxxx"), as
    irqbalance does when it cannot bind run/irqbalance/irqbalance<pid>.sock.
    /proc/net/unix: Num RefCount Protocol Flags Type St Inode Path; Flags
    0x10000 = __SO_ACCEPTCON (listening)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    for line in pathlib.Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if (len(f) >= 8 and int(f[6]) in inodes and f[7].startswith("@")
                and int(f[3], 16) & 0x10000):
            return True
    return False


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


def steady_ticks(sock: pathlib.Path, n: int, timeout: float = 60.0) -> list[tuple[int, Any]]:
    """The status of `n` ticks seen one after another, each of which changed nothing (its
    "changes" counts no changed or clamped knob); AssertionError at the first that did."""
    from agentlatd.client import Connection

    seen: list[tuple[int, Any]] = []
    end = time.monotonic() + timeout
    while len(seen) < n:
        assert time.monotonic() < end, f"fewer than {n} ticks in {timeout} s: {seen}"
        with Connection(str(sock), timeout=10.0) as c:
            st = c.request("status")
        if seen and st["tick"] == seen[-1][0]:
            time.sleep(0.2)
            continue
        changes = st["changes"]
        assert not changes.get("changed") and not changes.get("clamped"), (st["tick"], changes)
        seen.append((st["tick"], changes))
    return seen


@pytest.fixture
def irq_affinities_restored() -> Iterator[None]:
    """irqbalance rewrites every IRQ's affinity: put them all back afterwards."""
    before = {n: g.read_cpulist(n) for n in g.read_interrupts()}
    yield
    for n, cpus in before.items():
        if g.irq_path(n, "smp_affinity_list").exists():
            g.write_errno(g.irq_path(n, "smp_affinity_list"), cpus)


def effective(n: int) -> CpuSet:
    return CpuSet.parse_list(g.read_cpulist(n, "effective_affinity_list"))


def traffic_round(nics: g.Nics) -> int:
    """Traffic on every NIC from every CPU: UDP flows over virtio-net (every queue),
    pings over e1000e and igb (their user-net gateways). Echoes and replies received."""
    got = sum(g.udp_flows_from_cpus(list(range(4)), flows=8, n=8).values())
    for gw in (g.SLIRP["e1000e"][1], g.SLIRP["igb"][1]):
        got += sum(g.ping_from_cpus([0, 2], gw, count=2).values())
    return got


@pytest.mark.timeout(720)  # 65 s of traffic plus a dozen irqbalance passes of 10 s under TCG
def test_irqbalance_cooperates_bans_home_cpus_and_gets_its_ban_back(
        agentlatd: g.Agentlatd, agentlatd_lab: Any, guest_nics: g.Nics,
        tmp_path: pathlib.Path, irq_affinities_restored: None) -> None:
    if not IRQBALANCE.exists():
        pytest.skip(f"{IRQBALANCE} missing (tests/run.sh unpacks Debian's irqbalance there)")
    agentlatd.preload()
    config = agentlatd_lab.policy("irqbalance.toml")  # daemon.irqbalance: the default
    irqs = nic_irqs(guest_nics)
    assert irqs
    queues = sorted(r.irq for r in g.irqs_named(rf"{guest_nics.virtio_dev}-(input|output)\.\d+")
                    .values())
    everything = g.read_interrupts()
    # irqbalance's own --banirq: an IRQ that is none of the devices agentlatd tunes
    own = next(n for n, r in sorted(everything.items()) if n > 0 and n not in irqs
               and not r.name.startswith("nvme"))
    start_affinity = {n: g.read_cpulist(n) for n in everything}
    ib = start_irqbalance(f"--banirq={own}")
    daemon: subprocess.Popen[bytes] | None = None
    try:
        orig = bans(ib.pid)
        assert orig[1] == {own}, orig
        print(f"irqbalance {ib.pid}: {setup_answer(ib.pid)!r}; NIC IRQs {irqs}, queues {queues}")
        daemon = start_daemon(config, tmp_path)
        # both bans take effect at irqbalance's next pass (10 s)
        g.wait_for(lambda: banned(ib.pid) >= HOME, timeout=90, what="home CPUs banned")
        cpus_now, irqs_now = bans(ib.pid)
        assert cpus_now == HOME | orig[0]
        # the IRQs agentlatd steers are handed over, irqbalance's own ban kept
        assert own in irqs_now and set(queues) <= irqs_now, (irqs_now, queues)
        steered = sorted(irqs_now - {own})
        g.wait_for(lambda: all(not (CpuSet.parse_list(g.read_cpulist(n)) & HOME)
                               for n in irqs), timeout=60,
                   what="NIC IRQs allowed only outside the home CPUs")
        # Without interrupt remapping an x86 MSI moves at its next interrupt (which
        # still lands on the old CPU). Drive traffic until every IRQ that fires has
        # moved; an IRQ still pending then did not fire in two rounds of traffic on
        # every NIC (virtio's config IRQ): the strict check below covers it too
        rounds = 0
        while True:
            b0 = g.read_interrupts()
            assert traffic_round(guest_nics) > 0
            d0 = g.irq_deltas(b0, g.read_interrupts(), irqs)
            rounds += 1
            pending = {n for n in irqs if effective(n) & HOME}
            if not pending or (rounds >= 2 and all(not sum(d0[n]) for n in pending)):
                break
            assert rounds < 20, {n: effective(n).to_list() for n in pending}
        affinity = {n: g.read_cpulist(n) for n in steered}
        print(f"steered (handed over) {steered}: {affinity}; idle with a pending move: "
              f"{ {n: effective(n).to_list() for n in sorted(pending)} }")
        before = g.read_interrupts()
        t_end = time.monotonic() + TRAFFIC_S
        rounds = echoes = 0
        while time.monotonic() < t_end and rounds < 10000:
            echoes += traffic_round(guest_nics)
            rounds += 1
            for n in irqs:  # never allowed on a home CPU
                assert not CpuSet.parse_list(g.read_cpulist(n)) & HOME, (n, g.read_cpulist(n))
            # irqbalance never moved a steered IRQ (drift)
            assert {n: g.read_cpulist(n) for n in steered} == affinity
        after = g.read_interrupts()
        deltas = g.irq_deltas(before, after, irqs)
        print(f"{rounds} traffic rounds over {TRAFFIC_S:.0f} s, {echoes} echoes/replies; "
              f"per-CPU NIC IRQ deltas {deltas}")
        assert echoes > 0
        # exact: not one interrupt of a NIC IRQ on a home CPU in the whole window
        on_home = {n: [d[c] for c in sorted(HOME)] for n, d in deltas.items()
                   if any(d[c] for c in HOME)}
        assert not on_home, on_home
        # the busy queue IRQs are spread over both completion CPUs
        busy = {c for d in deltas.values() for c, k in enumerate(d) if k >= 100}
        assert busy == {0, 1}, deltas
        # irqbalance still balances the IRQs it keeps: it moved some, only onto the
        # completion CPUs
        moved = {n: g.read_cpulist(n) for n in g.read_interrupts()
                 if n not in irqs_now and g.irq_path(n, "smp_affinity_list").exists()
                 and g.read_cpulist(n) != start_affinity.get(n)}
        print(f"moved by irqbalance: {moved}")
        assert moved and all(not CpuSet.parse_list(v) & HOME for v in moved.values()), moved
        assert daemon.poll() is None and ib.poll() is None
        # steady state: three ticks in a row write nothing. A ban written again every
        # tick would also rescan the Machine every tick (tick.py's followup stage)
        quiet = steady_ticks(tmp_path / "agentlatd.sock", 3)
        print(f"steady ticks: {quiet}")

        # irqbalance restarts: the new one has only its own bans; agentlatd puts its back
        stop(ib)
        ib = start_irqbalance(f"--banirq={own}")
        g.wait_for(lambda: bans(ib.pid)[0] >= HOME and bans(ib.pid)[1] >= set(steered),
                   timeout=90, what="bans reasserted in the new irqbalance")
        assert bans(ib.pid) == (HOME | orig[0], frozenset({own, *steered}))

        # SIGTERM: agentlatd rolls back, irqbalance's bans are its own again
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(120) == 0
        g.wait_for(lambda: bans(ib.pid) == orig, timeout=90, what="bans restored on SIGTERM")

        # kill -9: the bans stay until the journal is rolled back; --print names both
        daemon = start_daemon(config, tmp_path)
        g.wait_for(lambda: bans(ib.pid)[0] >= HOME and bans(ib.pid)[1] >= set(steered),
                   timeout=90, what="bans again")
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
        assert bans(ib.pid)[1] >= set(steered)
        printed = agentlatd.run("rollback", "--print", "--state-dir", str(tmp_path / "state"))
        assert "settings cpus" in printed.stdout and "settings ban irqs" in printed.stdout, printed
        rb = agentlatd.run("rollback", "--state-dir", str(tmp_path / "state"))
        assert rb.rc == 0, rb
        g.wait_for(lambda: bans(ib.pid) == orig, timeout=90,
                   what="bans restored by rollback after kill -9")
    finally:
        if daemon is not None:
            g.stop_daemon(daemon)
        stop(ib)
        print("--- daemon log (tail) ---\n"
              + (tmp_path / "daemon.log").read_text(errors="replace")[-3000:])


DEFAULT = pathlib.Path("/etc/default/irqbalance")


def test_irqbalance_without_socket_falls_back_to_its_environment_file(
        agentlatd: g.Agentlatd, agentlatd_lab: Any, tmp_path: pathlib.Path,
        irq_affinities_restored: None) -> None:
    if not IRQBALANCE.exists():
        pytest.skip(f"{IRQBALANCE} missing (tests/run.sh unpacks Debian's irqbalance there)")
    agentlatd.preload()
    config = agentlatd_lab.policy("irqbalance-env.toml")
    debian = (IRQBALANCE.parents[2] / "etc/default/irqbalance").read_bytes()
    had = DEFAULT.read_bytes() if DEFAULT.exists() else None
    # the guest's / is an overlay on a tmpfs: this lands in guest RAM only
    DEFAULT.parent.mkdir(parents=True, exist_ok=True)
    DEFAULT.write_bytes(debian)
    log = tmp_path / "irqbalance.log"
    ib = start_irqbalance(socket_dir=False, log=log)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        daemon = start_daemon(config, tmp_path)
        dlog = tmp_path / "daemon.log"
        # agentlatd chose the environment file (no socket) and, with no service
        # manager to restart irqbalance, refused the change: nothing edited
        g.wait_for(lambda: b"not a systemd service" in dlog.read_bytes(), timeout=120,
                   what="the fallback refused without a service manager")
        assert ie.NAME.encode() in dlog.read_bytes()
        assert DEFAULT.read_bytes() == debian
        assert daemon.poll() is None and ib.poll() is None
        g.stop_daemon(daemon)
        daemon = None
        assert DEFAULT.read_bytes() == debian
        stop(ib)

        # the format, read by the real irqbalance: the knob edits a copy of the file
        # (a recorded tree: no restart), irqbalance starts with that environment as
        # its unit would, and bans exactly those CPUs
        tree = tmp_path / "tree"
        (tree / "etc/default").mkdir(parents=True)
        copy = tree / "etc/default/irqbalance"
        copy.write_bytes(debian)
        knob = ie.IrqbalanceEnvKnob()
        knob.write(Root(str(tree)), str(DEFAULT), HOME.to_list())
        assert copy.read_bytes() != debian
        ib = start_irqbalance(env_file=copy)
        g.wait_for(lambda: banned(ib.pid) == HOME, timeout=90,
                   what="irqbalance banning the CPUs of the edited file")
        note = knob.restore(Root(str(tree)), str(DEFAULT), debian.decode(),
                            written=HOME.to_list(), journaled=frozenset())
        assert note == "" and copy.read_bytes() == debian  # the very bytes back
        stop(ib)
        ib = start_irqbalance(env_file=copy)
        g.wait_for(lambda: banned(ib.pid) == CpuSet(), timeout=90,
                   what="irqbalance with the restored file bans nothing")
    finally:
        if daemon is not None:
            g.stop_daemon(daemon)
        stop(ib)
        os.makedirs("/run/irqbalance", exist_ok=True)
        if had is None:
            DEFAULT.unlink(missing_ok=True)
        else:
            DEFAULT.write_bytes(had)
        print("--- irqbalance log (tail) ---\n" + log.read_text(errors="replace")[-1500:])
        if (tmp_path / "daemon.log").exists():
            print("--- daemon log (tail) ---\n"
                  + (tmp_path / "daemon.log").read_text(errors="replace")[-3000:])
