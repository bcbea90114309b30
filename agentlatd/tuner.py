"""The daemon's tuner thread: one tick (agentlatd/tick.py) every policy daemon.interval.

The thread shares nothing mutable with the main loop. It reads one TickInput
(policy, agent homes, chain agents) that the main thread replaces whole, once at
the start of each tick, so a SIGHUP reload takes effect between ticks and never
inside one; it writes through the Engine holding the engine's own lock; and it
publishes a frozen TunerState (one reference swap) the main loop picks up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agentlatd.agents.applier import AGENT_KNOBS
from agentlatd.agents.scans import LocalScans, ProcScans
from agentlatd.apply.engine import FAILED, UNSUPPORTED, ApplyReport, Drift, Engine
from agentlatd.cpuset import CpuSet
from agentlatd.errors import PolicyError
from agentlatd.model.agent_links import discount_heat, own_softirq_rate
from agentlatd.model.layout import CpuLayout
from agentlatd.model.machine import Machine, Rates
from agentlatd.plan.build import followup_knobs
from agentlatd.plan.changes import INCLUDE_MATCHES_NOTHING, Change, Plan, human_value
from agentlatd.sample.counters import CounterSnapshot
from agentlatd.sysfs.pacing import PACER
from agentlatd.sysfs.root import Root
from agentlatd.tick import (
    IRQBALANCE_KNOBS,
    Held,
    Sampler,
    Snapshot,
    StageTable,
    StageTiming,
    TickInput,
    followup_changes,
    irqbalance_entries,
    plan_tick,
    written,
)

log = logging.getLogger("agentlatd.daemon")


@dataclass(frozen=True, slots=True)
class TunerState:
    """What one tuner tick produced (published to the main thread)."""

    seq: int
    t: float  # the clock at its end
    duration_s: float
    layout: CpuLayout
    heat: Mapping[int, float]
    rates: Rates | None = None
    plan: Plan | None = None
    report: ApplyReport | None = None
    drift: tuple[Drift, ...] = ()
    machine: Machine | None = None
    error: str = ""
    # the tick's stage table: (stage, seconds, ok) per stage (agentlatd/metrics.py
    # exports them as node_exporter's per-collector duration and success)
    timings: tuple[StageTiming, ...] = ()
    # the tick's kernel counters: the metrics export their cumulative counts
    counters: CounterSnapshot | None = None
    held: tuple[Held, ...] = ()  # planned changes held back by apply feedback
    policy_error: PolicyError | None = None  # the policy does not fit this machine


def layout_of(machine: Machine, plan: Plan) -> CpuLayout:
    topo = machine.topology
    return CpuLayout(
        home=plan.home_cpus, completion=plan.completion_cpus,
        quiet_order=plan.quiet_home_order or tuple(sorted(plan.home_cpus)),
        siblings={c.cpu: c.smt_siblings | {c.cpu} for c in topo.cpus},
        node_of={c.cpu: c.node for c in topo.cpus}, online=topo.online)


NO_LAYOUT = CpuLayout(home=CpuSet(), completion=CpuSet())  # before the first plan
# a yield this many ticks before the tick that sees a CPU hotplug is the hotplug's own
# rewrite, however long those ticks took (on tear-down the driver's re-spread shows
# before the counters' column goes; a tick of a rescan and apply takes seconds under
# QEMU TCG). After it, the kernel's own hotplug state says when the rewrite is over.
HOTPLUG_TICKS = 2


class Tuner:
    """sample -> plan -> apply -> drift, each tick (the module docstring)."""

    def __init__(self, root: Root, engine: Engine, inp: TickInput, *,
                 scans: ProcScans | None = None,
                 heat_source: Callable[[], Mapping[int, float]] | None = None,
                 wake: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.engine = engine
        self.input = inp  # replaced whole by the main thread (set_input), read once per tick
        # the irqbalance watch and the chain scan (agents/scans.py; the daemon's runs
        # them in a child process, agents/scanworker.py)
        self.scans: ProcScans = scans if scans is not None else LocalScans(root)
        # tests inject heat for "a home CPU turns hot" on a small host
        self.heat_source = heat_source
        self.wake = wake
        self.clock = clock
        self.sampler = Sampler(root, clock=clock, irqbalance_pids=self.scans.irqbalance)
        self.seq = 0
        self.state: TunerState | None = None  # the last published state (one reference swap)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.yields: list[tuple[float, int, tuple[str, str]]] = []  # (time, tick, key) of recent yields

    def set_input(self, inp: TickInput) -> None:
        self.input = inp

    @property
    def machine(self) -> Machine | None:
        return self.sampler.machine

    def step(self) -> TunerState:
        t0 = self.clock()
        inp = self.input  # one read: this tick's policy, whatever a reload does meanwhile
        pol = inp.policy
        snap = self.sampler.sample(inp, self._journaled())
        table = StageTable(self.clock)  # the stages after sampling
        ts = self.clock()
        tp = plan_tick(snap, pol)
        table.add("plan", self.clock() - ts, tp.error)
        if tp.policy_error is not None:
            log.error("the policy does not fit this machine, nothing is tuned: %s",
                      tp.policy_error)
        plan = tp.plan
        if plan is not None:
            for n in plan.notes:  # the repeat filter says a persisting one once per window
                if n.startswith(INCLUDE_MATCHES_NOTHING):
                    log.warning("%s", n.removeprefix("WARNING: "))
        no_apply: tuple[ApplyReport | None, tuple[Drift, ...]] = (None, ())
        report, drift = no_apply
        if plan is not None and inp.tune_devices:
            report, drift = table.run("apply", "apply",
                                      lambda: self._apply(snap, tp.changes, table),
                                      no_apply, level=logging.ERROR)
        table.run("chain", "chain discovery",
                  lambda: self.scans.chain(inp.chain_agents, pol.chain), None)
        rates = snap.rates
        heat = dict(rates.heat) if rates is not None else {}
        if rates is not None and plan is not None and plan.agent_links.local:
            # an agent's own replies processed on its home CPU are not heat to move it for
            heat = discount_heat(heat, rates.softirq_rate.get("NET_RX", {}),
                                 own_softirq_rate(plan.agent_links), pol.heat)
        if self.heat_source is not None:
            heat.update(self.heat_source())
        machine = self.sampler.machine
        if plan is not None and machine is not None:
            layout = layout_of(machine, plan)
        else:  # no plan this tick: the roles of the last one stand
            layout = self.state.layout if self.state is not None else NO_LAYOUT
        self.seq += 1
        now = self.clock()
        st = TunerState(seq=self.seq, t=now, duration_s=now - t0, layout=layout, heat=heat,
                        rates=rates, plan=plan, report=report, drift=drift, machine=machine,
                        error="; ".join((*snap.errors, *table.errors)),
                        timings=(*snap.timings, *table.rows), counters=snap.counters,
                        held=tp.held, policy_error=tp.policy_error)
        self.state = st
        self.wake()
        return st

    def _apply(self, snap: Snapshot, changes: tuple[Change, ...],
               table: StageTable) -> tuple[ApplyReport, tuple[Drift, ...]]:
        pol = snap.policy
        with self.engine.hold():
            self.engine.policy = pol
            if snap.rescanned:  # knobs the kernel refused get one more try per rescan
                self.engine.forget_refusals()
            drift = self._drift(snap.hotplug, snap.t, pol.daemon.interval, pol.daemon.drift,
                                running=snap.hotplug_running)
            report = self.engine.apply(changes)
            more = followup_knobs(written(report))
            if more:  # the same tick's followup stage (tick.py)
                again = self.sampler.resample(snap, table, irqbalance_entries(
                    self.engine.entries()))
                second = (followup_changes(plan_tick(again, pol), more)
                          if again is not None else ())
                if second:
                    report = report.then(self.engine.apply(second))
        self.sampler.record(report)  # the next tick's feedback stage
        for r in report.results:
            if r.knob in IRQBALANCE_KNOBS and r.status in (FAILED, UNSUPPORTED):
                # a ban not in place leaves home CPUs to irqbalance: say why (the
                # repeat filter says a persisting one once per window)
                log.warning("%s %s not applied: %s", r.knob, r.target, r.message)
        return report, drift

    def _journaled(self) -> tuple[tuple[str, str, str], ...]:
        """The journal's irqbalance entries: what irqbalance banned before agentlatd,
        and on which channel (tick.Sampler.sample)."""
        with self.engine.hold():
            entries = self.engine.entries()
        return irqbalance_entries(entries)

    def _drift(self, hotplug: bool, now: float, interval: float, mode: str, *,
               running: bool = False) -> tuple[Drift, ...]:
        """Drift, BEFORE this tick's apply: a value another writer set since the
        last tick is judged against what agentlatd wrote (yield or reassert),
        not silently overwritten by a plan built on a rescanned Machine.

        CPU hotplug: the kernel migrates IRQs off a CPU going down and drivers
        re-spread their queues' IRQ affinity and XPS both ways (virtio_net's
        cpuhp callbacks) -- not another writer. On the tick that sees the CPU
        columns change (`hotplug`), drift is not checked, and entries yielded in
        the ticks just before it (on tear-down the driver's rewrite comes before
        the column goes) are managed again; the rebuilt plan then re-steers them,
        and apply adopts those the driver already put where the new plan wants
        them. On the ticks after it while the hotplug's callbacks run, and the
        first one after they end (`running`, sample/cpuhp.py: on bring-up they
        run after the column appears, for seconds under a slow hypervisor), what
        changed is the kernel's too: agentlatd's value is written back, whatever
        daemon.drift says, and it is not reported as drift.
        Seen in the VM tier (tests/vm/guest/test_agentlatd_6_hotplug_drift.py).
        Called with the engine lock held.
        """
        eng = self.engine
        grace = max(2.0, 3 * interval)
        self.yields = [(t, n, k) for t, n, k in self.yields
                       if now - t <= grace or self.seq - n < HOTPLUG_TICKS]
        if hotplug:
            n = eng.unyield(k for _, _, k in self.yields)
            if n:
                log.info("CPU hotplug: %d knob(s) yielded just before it are managed again "
                         "(the kernel's and drivers' own rewrite, not another writer)", n)
            self.yields = []
            return ()
        if running:
            for d in eng.check_drift("reassert"):
                log.info("CPU hotplug: %s %s was %s (the kernel's or a driver's rewrite): %s",
                         d.knob, d.target, human_value(d.knob, d.actual), d.action)
            return ()
        # drift is about device knobs another writer (irqbalance, an admin)
        # changes; with only agent entries journaled it would read every agent
        # thread under the lock for nothing
        if not any(e.knob not in AGENT_KNOBS for e in eng.entries()):
            return ()
        out = tuple(eng.check_drift())
        for d in out:  # another writer changed a knob: say so, not only in metrics
            log.warning("drift: %s %s is %s, agentlatd wrote %s: %s (daemon.drift = %s)",
                        d.knob, d.target, human_value(d.knob, d.actual),
                        human_value(d.knob, d.expected), d.action, mode)
        self.yields += [(now, self.seq, (d.knob, d.target)) for d in out if d.action == "yielded"]
        return out

    def start(self) -> None:
        self.scans.start()  # the daemon's scan worker starts here (agents/scanworker.py)
        self.thread = threading.Thread(target=self._run, name="agentlatd-tuner", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        PACER.paced()  # its reads give way while the main loop serves (sysfs/pacing.py)
        while not self.stop.wait(max(0.05, self.input.policy.daemon.interval)):
            try:
                self.step()
            except Exception:  # pragma: no cover - step() catches its own
                log.exception("tuner tick failed")

    def join(self, timeout: float = 10.0) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                # still in a tick (a scan worker's reply can take up to its
                # deadline): the scans are the thread's, never closed under it.
                # The worker ends with this process (EOF on its stdin, PDEATHSIG)
                return
        self.scans.close()
