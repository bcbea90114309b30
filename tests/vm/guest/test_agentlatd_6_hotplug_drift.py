"""The daemon on a real kernel when the kernel or a person changes what it steered.

1. CPU hotplug: `agentlatd run` (0.2 s ticks, the guest's NICs, completion CPUs 0-1, home
   2-3, drift = "yield", the default) steers the NIC IRQs; completion CPU 1 is then taken
   offline through /sys/devices/system/cpu/cpu1/online and brought back. The daemon must
   keep running, re-partition without the CPU and move every steered IRQ, RPS and XPS mask
   off it; online again the partition comes back; SIGTERM restores what agentlatd
   guarantees (test_hotplug_sigterm_restores_the_journaled_originals says what that is).
2. Drift on a real IRQ: a NIC queue IRQ the daemon steered is rewritten behind its back
   through /proc/irq/N/smp_affinity. drift = "yield" must report it and leave it alone, and
   SIGTERM must put back the value from before agentlatd (engine.py: "rollback still
   restores the original"); drift = "reassert" must write agentlatd's value back within a
   few ticks.

What the kernel does at hotplug here (6.12, seen in this guest): taking CPU 1 down, the IRQ
core moves every IRQ whose affinity held only CPU 1 to the online CPUs ("broken affinity":
e1000e/igb rx-1/tx-1 show 0,2-3 or 0-3), and virtio-net's CPU hotplug callbacks
(virtnet_cpu_dead / virtnet_cpu_online -> virtnet_set_affinity) re-spread EVERY queue's IRQ
affinity and XPS map over the online CPUs, at offline and again at online (input.Q and
tx-Q back on CPU Q). Those are kernel writes to knobs agentlatd journaled.

Every value is read from the kernel (guestlib); the daemon's own view comes from its socket
("status"), its journal file and its metrics textfile.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import guestlib as g
import pytest

pytestmark = pytest.mark.vm
INTERVAL = 0.2  # the daemon's tick (policy daemon.interval); a TCG tick takes longer anyway
CPU_SYS = pathlib.Path("/sys/devices/system/cpu")
QUEUE_IRQ = re.compile(r".*-(input|output)\.\d+|.*-[rt]x-\d+")  # virtio / e1000e / igb queues
Journal = dict[tuple[str, str], dict[str, Any]]


# --- helpers (this file's own) ---------------------------------------------------------
def nic_irqs(nics: g.Nics) -> dict[int, str]:
    """IRQ -> name of every IRQ of the three NICs (virtio-net, e1000e, igb)."""
    pats = [rf"{nics.virtio_dev}-.*", rf"{re.escape(nics.e1000e)}(-.*)?",
            rf"{re.escape(nics.igb)}(-.*)?"]
    return {r.irq: name for p in pats for name, r in g.irqs_named(p).items()}


def online_cpus() -> frozenset[int]:
    return g.parse_cpulist((CPU_SYS / "online").read_text())


def set_online(cpu: int, on: bool) -> None:
    g.write_once(CPU_SYS / f"cpu{cpu}" / "online", "1" if on else "0")


def queue_masks(ifnames: list[str]) -> dict[str, frozenset[int]]:
    """'<dev>/<queue>/rps_cpus' (and xps_cpus) -> CPU set, for every queue of `ifnames`."""
    out: dict[str, frozenset[int]] = {}
    for ifname in ifnames:
        for q in sorted((pathlib.Path("/sys/class/net") / ifname / "queues").iterdir()):
            for leaf in ("rps_cpus", "xps_cpus"):
                text = g.read_file(q / leaf)
                if (q / leaf).exists() and not text.startswith("!"):
                    out[f"{ifname}/{q.name}/{leaf}"] = g.parse_mask(text)
    return out


def steering(irqs: dict[int, str], ifnames: list[str]) -> dict[str, frozenset[int]]:
    """Every NIC IRQ's smp_affinity and every RPS/XPS mask, by name, as CPU sets."""
    out = {name: g.parse_cpulist(g.read_cpulist(n)) for n, name in irqs.items()}
    out.update(queue_masks(ifnames))
    return out


def snapshot_key(knob: str, target: str) -> str | None:
    """The g.knob_snapshot() key of a journaled knob (None: the snapshot has no such key)."""
    if knob == "irq.affinity":
        return f"/proc/irq/{target}/smp_affinity_list"
    if knob in ("net.rps_cpus", "net.xps_cpus", "net.rps_flow_cnt"):
        dev, q = target.split("/")
        return f"/sys/class/net/{dev}/queues/{q}/{knob[4:]}"
    if knob in ("net.threaded", "net.napi_defer_hard_irqs", "net.gro_flush_timeout"):
        return f"/sys/class/net/{target}/{knob[4:]}"
    return None


def same_value(key: str, a: str, b: str) -> bool:
    """Two snapshot values of `key` name the same setting (cpulist / mask spellings)."""
    if key.endswith("smp_affinity_list"):
        return g.parse_cpulist(a) == g.parse_cpulist(b)
    if key.endswith(("rps_cpus", "xps_cpus")):
        return g.parse_mask(a) == g.parse_mask(b)
    return a == b


@dataclass
class Daemon:
    """One `agentlatd run` (a fresh interpreter, as a person starts it) in its own dirs."""

    proc: subprocess.Popen[bytes]
    work: pathlib.Path
    started_s: float = 0.0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (tick, tuner_error) seen
    drifts: list[dict[str, Any]] = field(default_factory=list)  # status "drift" items seen
    _seen: set[tuple[int, str, str]] = field(default_factory=set)

    @property
    def log(self) -> pathlib.Path:
        return self.work / "daemon.log"

    @property
    def sock(self) -> pathlib.Path:
        return self.work / "agentlatd.sock"

    @property
    def state(self) -> pathlib.Path:
        return self.work / "state"

    @property
    def textfile(self) -> pathlib.Path:
        return self.work / "metrics.prom"

    def status(self) -> dict[str, Any]:
        """The socket's "status" answer; every drift item and tuner error is kept (a
        drift is in the status of the one tick that found it only)."""
        from agentlatd.client import Connection

        with Connection(str(self.sock), timeout=10.0) as c:
            st: dict[str, Any] = c.request("status")
        if st.get("tuner_error") and (st["tick"], st["tuner_error"]) not in self.errors:
            self.errors.append((st["tick"], st["tuner_error"]))
        for x in st.get("drift", ()):
            if (st["tick"], x["knob"], x["target"]) not in self._seen:
                self._seen.add((st["tick"], x["knob"], x["target"]))
                self.drifts.append({"tick": st["tick"], **x})
        return st

    def journal(self) -> Journal:
        """(knob, target) -> entry of the daemon's rollback journal ({} when none)."""
        from agentlatd.apply import journal_read  # the snapshot and its log as one
        doc = journal_read.read_json(str(self.state / "journal.json"))
        if doc is None:
            return {}
        return {(e["knob"], e["target"]): e for e in doc["entries"]}

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the metrics textfile (0 when absent)."""
        with contextlib.suppress(FileNotFoundError):
            for line in self.textfile.read_text().splitlines():
                m = re.fullmatch(r"agentlatd_(\w+)(?:\{(.*)\})? (\S+)", line)
                if m and m[1] == name and dict(re.findall(r'(\w+)="([^"]*)"', m[2] or "")) == labels:
                    return float(m[3])
        return 0.0

    def wait_ticks(self, n: int, timeout: float = 20.0,
                   each: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Wait until the daemon has published `n` more tuner ticks (calling `each` with
        every status read meanwhile); the last status."""
        first = int(self.status()["tick"])
        out: dict[str, Any] = {}

        def done() -> bool:
            out.clear()
            out.update(self.status())
            if each is not None:
                each(out)
            return int(out["tick"]) >= first + n

        g.wait_for(done, timeout=timeout, what=f"{n} daemon ticks after tick {first}")
        return out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def daemon(agentlatd: g.Agentlatd, lab: Any, work: pathlib.Path, drift: str,
           interval: float = INTERVAL) -> Iterator[Daemon]:
    """`agentlatd run` for the lab's NICs (not nvme0: this file is about NIC steering) with
    conftest Lab.policy's partition (completion 0-1, home 2-3) and threaded NAPI, plus
    daemon.interval, daemon.drift and a metrics textfile; SIGTERM (else SIGKILL) at exit."""
    agentlatd.preload()  # agentlatd.client in this process, for the socket requests
    work.mkdir(parents=True, exist_ok=True)
    names = ", ".join(f'"{n}"' for n in lab.ifnames)
    config = work / "policy.toml"
    config.write_text(
        f'[daemon]\ninterval = {interval}\ndrift = "{drift}"\n'
        '[cpus]\ncompletion = "0-1"\nhome = "2-3"\n'
        f"[devices]\ninclude = [{names}]\n"
        "[tuning]\nthreaded_napi = true\n"
        f'[metrics]\ntextfile = "{work / "metrics.prom"}"\ntextfile_interval = 1.0\n')
    env = dict(os.environ)
    t0 = time.monotonic()
    with open(work / "daemon.log", "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentlatd", "run", "--config", str(config), "--state-dir",
             str(work / "state"), "--socket", str(work / "agentlatd.sock"), "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=g.REPO, env=env)
    d = Daemon(proc, work)
    try:
        g.wait_for(lambda: proc.poll() is not None or g.daemon_answers(d.sock), timeout=120,
                   what="agentlatd run answering on its socket")
        assert proc.poll() is None, d.tail()
        d.started_s = time.monotonic() - t0
        yield d
    finally:
        g.stop_daemon(proc)
        print(f"--- daemon log ({work.name}, tail) ---\n{d.tail()}")


def steady(d: Daemon) -> dict[str, Any]:
    """Wait for tick 2: the rescan after threaded NAPI started its kthreads
    (tick.py feedback_of, plan/build.py FOLLOWUP). From then on the daemon's Machine shows its own writes and
    is rebuilt only after MACHINE_TTL (60 s), a discontinuity or SIGHUP, so a change made
    now is found by check_drift, not re-planned."""
    out: dict[str, Any] = {}

    def two() -> bool:
        out.update(d.status())
        return int(out["tick"]) >= 2

    g.wait_for(two, timeout=30, what="the daemon's second tick")
    return out


# --- 1. CPU hotplug under the running daemon -------------------------------------------
@dataclass
class Hotplug:
    cpu: int
    irqs: dict[int, str]
    before: dict[str, str]  # g.knob_snapshot() before the daemon started
    first: Journal  # the journal after the first tick (before the hotplug)
    kernel_offline: dict[str, str]  # NIC IRQ affinity right after the offline write
    offline_secs: float | None  # until re-partitioned and steered (None: timed out)
    offline_bad: dict[str, Any]  # what was still wrong then
    offline_status: dict[str, Any]
    offline_eff: dict[str, list[int]]  # effective affinity after traffic, NIC IRQs
    offline_fired: list[str]  # NIC IRQs that fired during that traffic
    kernel_online: dict[str, str]  # NIC IRQ affinity right after the online write
    online_secs: float | None  # until the partition was back (None: timed out)
    online_status: dict[str, Any]  # 3 ticks later (or once steering was right)
    online_steering: dict[str, frozenset[int]]  # then
    final: Journal  # the journal just before SIGTERM
    drifts: list[dict[str, Any]]
    errors: list[tuple[int, str]]
    hotplug_ticks: tuple[int, int]  # the status tick just before the offline and the online
    alive_until_sigterm: bool
    rc: int
    after: dict[str, str]  # g.knob_snapshot() after SIGTERM
    journal_left: bool
    unrestored: list[str]  # what this file could not put back for the tests after it


def _bad_steering(irqs: dict[int, str], ifnames: list[str], comp: frozenset[int],
                  off: int | None) -> dict[str, list[int]]:
    """NIC IRQs and non-empty RPS/XPS masks not within `comp` (or naming CPU `off`)."""
    return {k: sorted(m) for k, m in steering(irqs, ifnames).items()
            if (off is not None and off in m) or (m and not m <= comp)}


def _traffic(cpus: list[int]) -> None:
    """A little of everything from each online CPU: virtio flows, e1000e and igb pings."""
    g.udp_flows_from_cpus(cpus, flows=4, n=2)
    for role in ("e1000e", "igb"):
        g.ping_from_cpus(cpus, g.SLIRP[role][1], count=1)


@pytest.fixture(scope="module")
def hotplug(agentlatd: g.Agentlatd, agentlatd_lab: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Hotplug:
    lab = agentlatd_lab
    cands = [c for c in sorted(g.COMPLETION - {0}) if (CPU_SYS / f"cpu{c}" / "online").exists()]
    if not cands:
        pytest.skip(f"no hotpluggable completion CPU in {sorted(g.COMPLETION)} (no cpuN/online)")
    cpu = cands[-1]
    assert online_cpus() == frozenset(range(os.cpu_count() or 0)), "a CPU is offline already"
    irqs = nic_irqs(lab.nics)
    before = g.knob_snapshot(lab.ifnames)
    try:
        h = _hotplug_scenario(agentlatd, lab, tmp_path_factory.mktemp("hotplug"), cpu, irqs, before)
    finally:
        # One guest for the tier: put back what the kernel's re-spread (and the rollback of
        # knobs first journaled while the CPU was offline) left changed, for the tests after
        if (CPU_SYS / f"cpu{cpu}" / "online").read_text().strip() != "1":
            set_online(cpu, True)
        now = g.knob_snapshot(lab.ifnames)
        for key, value in before.items():
            if (key.endswith(("smp_affinity_list", "rps_cpus", "xps_cpus"))
                    and not value.startswith("!") and not same_value(key, value, now[key])):
                g.write_errno(key, value + "\n")
    h.unrestored = g.snapshot_diff(before, g.knob_snapshot(lab.ifnames))
    return h


def _hotplug_scenario(agentlatd: g.Agentlatd, lab: Any, work: pathlib.Path, cpu: int,
                      irqs: dict[int, str], before: dict[str, str]) -> Hotplug:
    comp = g.COMPLETION - {cpu}
    t0 = time.monotonic()
    with daemon(agentlatd, lab, work, "yield") as d:
        st = d.status()
        assert (st["completion_cpus"], st["home_cpus"]) == ("0-1", "2-3"), st
        first = d.journal()
        print(f"daemon up in {d.started_s:.1f} s (tick {st['tick']}, {st['tuner_tick_ms']} ms); "
              f"{len(first)} journal entries")
        bad: dict[str, Any] = {}
        offline_secs: float | None = None
        try:
            tick_off = d.status()["tick"]
            set_online(cpu, False)
            t_off = time.monotonic()
            # what the kernel itself did, read before the daemon's next tick can act
            kernel_offline = {irqs[n]: g.read_cpulist(n) for n in irqs}

            def repartitioned() -> bool:
                bad.clear()
                s = d.status()
                if (s["completion_cpus"], s["home_cpus"]) != (",".join(map(str, sorted(comp))), "2-3"):
                    bad["partition"] = (s["completion_cpus"], s["home_cpus"])
                bad.update(_bad_steering(irqs, lab.ifnames, comp, cpu))
                return not bad or d.proc.poll() is not None

            with contextlib.suppress(TimeoutError):
                g.wait_for(repartitioned, timeout=20, what="re-partition")
                offline_secs = time.monotonic() - t_off
            offline_status = d.status() if d.proc.poll() is None else {}
            # effective affinity moves at an IRQ's next interrupt (no interrupt remapping)
            pre = g.read_interrupts()
            _traffic(sorted(online_cpus()))
            post = g.read_interrupts()
            fired = [irqs[n] for n in irqs if sum(post[n].counts) > sum(pre[n].counts)]
            eff = {irqs[n]: sorted(g.parse_cpulist(g.read_cpulist(n, "effective_affinity_list")))
                   for n in irqs}
            tick_on = d.status()["tick"] if d.proc.poll() is None else -1
        finally:
            if (CPU_SYS / f"cpu{cpu}" / "online").read_text().strip() != "1":
                set_online(cpu, True)
        t_on = time.monotonic()
        kernel_online = {irqs[n]: g.read_cpulist(n) for n in irqs}
        online_secs: float | None = None

        def back() -> bool:
            s = d.status()
            return (s["completion_cpus"], s["home_cpus"]) == ("0-1", "2-3") or d.proc.poll() is not None

        with contextlib.suppress(TimeoutError):
            g.wait_for(back, timeout=20, what="the partition back")
            online_secs = time.monotonic() - t_on
        online_status: dict[str, Any] = {}
        if d.proc.poll() is None:
            # 3 more ticks to settle (fewer if every mask is right before that)
            with contextlib.suppress(TimeoutError):
                g.wait_for(lambda: not _bad_steering(irqs, lab.ifnames, g.COMPLETION, None),
                           timeout=3, what="steering back")
            online_status = d.wait_ticks(3)
        online_steering = steering(irqs, lab.ifnames)
        final = d.journal()
        alive = d.proc.poll() is None
        rc = d.stop() if alive else d.proc.returncode
    after = g.knob_snapshot(lab.ifnames)
    print(f"CPU {cpu} offline; NIC IRQ affinity right after (the kernel's doing): {kernel_offline}")
    print(f"re-partitioned and steered in {offline_secs} s: {offline_status.get('completion_cpus')}"
          f" / {offline_status.get('home_cpus')}; still wrong: {bad}")
    print(f"CPU {cpu} online; NIC IRQ affinity right after (the kernel's doing): {kernel_online}")
    print(f"partition back in {online_secs} s; drift reported: {d.drifts}; tuner errors: {d.errors}")
    print(f"hotplug scenario: {time.monotonic() - t0:.1f} s")
    return Hotplug(cpu, irqs, before, first, kernel_offline, offline_secs, dict(bad), offline_status,
                   eff, fired, kernel_online, online_secs, online_status, online_steering, final,
                   d.drifts, d.errors, (tick_off, tick_on), alive, rc, after,
                   (d.state / "journal.json").exists(), [])


def test_hotplug_offline_repartitions_and_moves_steering_off_the_cpu(hotplug: Hotplug) -> None:
    h = hotplug
    comp = sorted(g.COMPLETION - {h.cpu})
    assert h.offline_status, "the daemon exited when the CPU went offline"
    assert h.offline_secs is not None, (
        f"20 s after CPU {h.cpu} went offline, still wrong: {h.offline_bad}")
    assert (h.offline_status["completion_cpus"], h.offline_status["home_cpus"]) == \
        (",".join(map(str, comp)), "2-3"), h.offline_status
    # the kernel never leaves a vector on an offline CPU; the daemon's write moves it at
    # the IRQ's next interrupt, so every IRQ that fired since is on the completion CPU
    assert h.offline_fired, "no NIC IRQ fired during the traffic"
    assert not [k for k, e in h.offline_eff.items() if h.cpu in e], h.offline_eff
    assert {k: h.offline_eff[k] for k in h.offline_fired if h.offline_eff[k] != comp} == {}, \
        h.offline_eff


def test_hotplug_online_again_the_partition_comes_back(hotplug: Hotplug) -> None:
    h = hotplug
    assert h.online_secs is not None and h.alive_until_sigterm, (h.online_status, h.rc)
    st = h.online_status
    assert (st["completion_cpus"], st["home_cpus"]) == ("0-1", "2-3"), st
    assert st["tuner_error"] == "", st
    # transient: a tick whose sampling straddles a hotplug may fail (none has here so far);
    # any error later than 2 ticks after the offline or the online write is not
    off, on = h.hotplug_ticks
    lasting = [(t, e) for t, e in h.errors if not (off < t <= off + 2 or on < t <= on + 2)]
    assert lasting == [], (h.hotplug_ticks, h.errors)


def test_hotplug_online_again_every_nic_irq_and_mask_on_completion_cpus(hotplug: Hotplug) -> None:
    h = hotplug
    wrong = {k: sorted(m) for k, m in h.online_steering.items() if m and not m <= g.COMPLETION}
    yielded = sorted(f"{k} {t} (expected {e['written']})" for (k, t), e in h.final.items()
                     if "yielded" in e["flags"])
    assert wrong == {}, (f"on home CPUs after CPU {h.cpu} came back: {wrong}; journal entries "
                         f"yielded: {yielded}; drift reported: {h.drifts}")


def test_hotplug_sigterm_restores_the_journaled_originals(hotplug: Hotplug) -> None:
    """What agentlatd guarantees at SIGTERM: every journaled knob is back at its journaled
    original, the value it had just before agentlatd's first write. For everything the first
    tick wrote (before the hotplug) that is the pre-start snapshot, yielded entries included.
    A knob agentlatd first wrote while the CPU was offline has as its original what the
    KERNEL had written at the offline (virtio-net's re-spread): rollback restores that, not
    the pre-start value the driver itself puts back at the online."""
    h = hotplug
    assert h.rc == 0 and not h.journal_left, h.rc
    late: dict[str, str] = {}  # snapshot key -> journaled original, first journaled after the hotplug
    for (knob, target), e in h.final.items():
        key = snapshot_key(knob, target)
        if key is None or key not in h.before:
            continue
        assert same_value(key, h.after[key], e["original"]), (
            f"{knob} {target}: journaled original {e['original']!r}, now {h.after[key]!r}")
        if (knob, target) in h.first:
            assert same_value(key, e["original"], h.before[key]), (key, e, h.before[key])
        elif not same_value(key, e["original"], h.before[key]):
            late[key] = e["original"]
    diff = g.snapshot_diff(h.before, h.after)
    print(f"after SIGTERM, differences to the pre-start snapshot: {diff}")
    print(f"first journaled while CPU {h.cpu} was offline, original = the kernel's hotplug value: {late}")
    unexplained = [line for line in diff if line.split(":")[0] not in late]
    assert h.unrestored == [], f"this test could not put back for the tests after it: {h.unrestored}"
    assert unexplained == [], (
        "changed by neither agentlatd's journal nor the kernel's hotplug re-spread: "
        f"{unexplained}")


# --- 2. drift on a real IRQ -----------------------------------------------------------
def _steered_queue_irqs(d: Daemon, irqs: dict[int, str]) -> list[tuple[int, dict[str, Any]]]:
    """NIC queue IRQs the daemon wrote (journaled with a value, no flags), with entries."""
    return [(int(t), e) for (k, t), e in d.journal().items()
            if k == "irq.affinity" and int(t) in irqs and QUEUE_IRQ.fullmatch(irqs[int(t)])
            and e["written"] is not None and not e["flags"]]


def _other_cpu(*cpulists: str) -> int:
    """A CPU named by none of `cpulists` (a home CPU first: where an admin might put it)."""
    used = frozenset().union(*(g.parse_cpulist(c) for c in cpulists))
    for c in [*sorted(g.HOME), *sorted(g.COMPLETION)]:
        if c not in used:
            return c
    raise AssertionError(f"no CPU outside {cpulists}")


@dataclass
class Yielding:
    d: Daemon
    irqs: dict[int, str]
    before: dict[str, str]
    targets: list[tuple[int, dict[str, Any]]]  # steered queue IRQs, journaled by tick 1


@pytest.fixture(scope="module")
def yielding(agentlatd: g.Agentlatd, agentlatd_lab: Any,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Yielding]:
    lab = agentlatd_lab
    irqs = nic_irqs(lab.nics)
    before = g.knob_snapshot(lab.ifnames)
    # 0.5 s ticks: test_drift_yield_then_sighup needs a tick gap it can act in
    with daemon(agentlatd, lab, tmp_path_factory.mktemp("yield"), "yield", interval=0.5) as d:
        st = steady(d)
        targets = _steered_queue_irqs(d, irqs)
        print(f"daemon up in {d.started_s:.1f} s, tick {st['tick']} ({st['tuner_tick_ms']} ms); "
              f"steered queue IRQs: {[irqs[n] for n, _ in targets]}")
        assert len(targets) >= 2, targets
        yield Yielding(d, irqs, before, targets)


def test_drift_yield_reports_it_and_leaves_the_irq_alone(yielding: Yielding) -> None:
    d, irqs = yielding.d, yielding.irqs
    n, e = yielding.targets[0]
    orig = yielding.before[f"/proc/irq/{n}/smp_affinity_list"]
    assert g.parse_cpulist(e["original"]) == g.parse_cpulist(orig), (e, orig)
    assert g.parse_cpulist(g.read_cpulist(n)) == g.parse_cpulist(e["written"])
    cpu = _other_cpu(orig, e["written"])
    t0 = time.monotonic()
    g.write_once(g.irq_path(n, "smp_affinity"), f"{1 << cpu:x}\n")  # behind its back
    print(f"IRQ {n} ({irqs[n]}): original {orig}, agentlatd wrote {e['written']}, "
          f"now {g.read_cpulist(n)} (mask {1 << cpu:x} written)")

    def reported() -> bool:
        d.status()
        j = d.journal().get(("irq.affinity", str(n)), {})
        return ("yielded" in j.get("flags", ())
                and d.metric("changes_drifted_total", knob="irq.affinity", action="yielded") >= 1
                and any(x["target"] == str(n) for x in d.drifts))

    g.wait_for(reported, timeout=15, what=f"drift of IRQ {n} in status, journal and metrics")
    print(f"drift reported after {time.monotonic() - t0:.2f} s; status drift items: {d.drifts}")
    mine = [x for x in d.drifts if (x["knob"], x["target"]) == ("irq.affinity", str(n))]
    assert [(x["expected"], x["actual"], x["action"]) for x in mine] == \
        [(e["written"], str(cpu), "yielded")], d.drifts

    def untouched(_st: dict[str, Any]) -> None:
        assert g.parse_cpulist(g.read_cpulist(n)) == {cpu}, (irqs[n], g.read_cpulist(n))

    st = d.wait_ticks(4, each=untouched)  # yield: the other writer's value stays
    assert st["tuner_error"] == "", st
    assert d.metric("changes_drifted_total", knob="irq.affinity", action="reasserted") == 0


def test_drift_yield_then_sighup_still_yields(yielding: Yielding) -> None:
    d, irqs = yielding.d, yielding.irqs
    n, e = yielding.targets[1]
    cpu = _other_cpu(e["original"], e["written"])
    # act in the gap after a tick is published, so the drift is in the kernel before the
    # next tick starts, and so is the reload (which makes that tick rebuild its Machine)
    k = d.status()["tick"]
    end = time.monotonic() + 20
    t_prev = time.monotonic()  # the last status request that still showed tick k
    while True:
        t_req = time.monotonic()
        if d.status()["tick"] != k:
            break
        t_prev = t_req
        assert t_req < end, f"no tick after tick {k} in 20 s"
    t_write = time.monotonic()
    g.write_once(g.irq_path(n, "smp_affinity"), f"{1 << cpu:x}\n")
    d.proc.send_signal(signal.SIGHUP)
    g.wait_for(lambda: "policy reloaded" in d.log.read_text(), timeout=10, what="the reload")
    t_reloaded = time.monotonic()
    print(f"IRQ {n} ({irqs[n]}): agentlatd wrote {e['written']}; mask {1 << cpu:x} written "
          f"{t_write - t_prev:.3f} s and the reload seen {t_reloaded - t_prev:.3f} s after the "
          f"last status of tick {k}")
    if t_reloaded - t_prev > 0.5 * 0.8:
        pytest.skip("the drift and the reload did not both land inside one 0.5 s tick gap")
    d.wait_ticks(3)
    now = g.read_cpulist(n)
    j = d.journal()[("irq.affinity", str(n))]
    print(f"3 ticks later IRQ {n} is {now}; journal flags {j['flags']}; drift seen {d.drifts}")
    assert g.parse_cpulist(now) == {cpu} and "yielded" in j["flags"], (now, j, d.drifts)


def test_drift_yield_sigterm_restores_the_original_pre_agentlatd_values(
        yielding: Yielding, agentlatd_lab: Any) -> None:
    d = yielding.d
    final = d.journal()
    assert d.stop() == 0, d.tail()
    after = g.knob_snapshot(agentlatd_lab.ifnames)
    for n, e in yielding.targets[:2]:
        key = f"/proc/irq/{n}/smp_affinity_list"
        print(f"IRQ {n}: journal {final[('irq.affinity', str(n))]}; after SIGTERM {after[key]}")
        assert g.parse_cpulist(after[key]) == g.parse_cpulist(yielding.before[key]), (n, e)
    assert g.snapshot_diff(yielding.before, after) == []
    assert not (d.state / "journal.json").exists()


def test_drift_reassert_writes_agentlatds_value_back(
        agentlatd: g.Agentlatd, agentlatd_lab: Any, tmp_path: pathlib.Path) -> None:
    lab = agentlatd_lab
    irqs = nic_irqs(lab.nics)
    before = g.knob_snapshot(lab.ifnames)
    with daemon(agentlatd, lab, tmp_path / "reassert", "reassert") as d:
        steady(d)
        n, e = _steered_queue_irqs(d, irqs)[0]
        cpu = _other_cpu(e["original"], e["written"])
        tick0 = d.status()["tick"]
        t0 = time.monotonic()
        g.write_once(g.irq_path(n, "smp_affinity"), f"{1 << cpu:x}\n")
        print(f"IRQ {n} ({irqs[n]}): agentlatd wrote {e['written']}; mask {1 << cpu:x} written "
              f"at tick {tick0}")
        ticks: list[int] = []

        def back() -> bool:
            ticks.append(d.status()["tick"])
            return g.parse_cpulist(g.read_cpulist(n)) == g.parse_cpulist(e["written"])

        g.wait_for(back, timeout=15, what=f"IRQ {n} written back")
        print(f"written back after {time.monotonic() - t0:.2f} s (status tick {ticks[-1]})")
        assert ticks[-1] - tick0 <= 3, (tick0, ticks)
        def reported() -> bool:
            d.status()
            return (d.metric("changes_drifted_total", knob="irq.affinity", action="reasserted") >= 1
                    and any(x["target"] == str(n) for x in d.drifts))

        g.wait_for(reported, timeout=10, what=f"IRQ {n}'s reassert in status and metrics")
        mine = [x for x in d.drifts if (x["knob"], x["target"]) == ("irq.affinity", str(n))]
        print(f"status drift items: {d.drifts}")
        assert [(x["expected"], x["actual"], x["action"]) for x in mine] == \
            [(e["written"], str(cpu), "reasserted")], d.drifts
        assert d.journal()[("irq.affinity", str(n))]["flags"] == []
        st = d.wait_ticks(2)
        assert g.parse_cpulist(g.read_cpulist(n)) == g.parse_cpulist(e["written"])
        assert st["tuner_error"] == "", st
        assert d.stop() == 0, d.tail()
    assert g.snapshot_diff(before, g.knob_snapshot(lab.ifnames)) == []
