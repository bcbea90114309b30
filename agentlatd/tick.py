"""One tick of device tuning: sample (all the IO) -> Snapshot -> plan_tick (pure) -> TickPlan.

The daemon's tuner thread, `agentlatd plan`, `apply`, `status`, `trace` and
`capture` all run this, so `agentlatd plan --root DIR` is the daemon's tick on a
recorded tree (with rates when the capture holds two counter samples).

  stage       module                         input                     output
  counters    sample/counters.py, model/     the previous counters     CounterSnapshot, Rates
              rates.py
  machine     sample/machine.py (read),      a rescan is due           Machine
              model/build.py (pure)
  links       agents/links.py                the agents' homes         AgentLinks
  irqbalance  apply/irqbalance*.py           the journaled ban         its pids, its own ban
  feedback    the previous apply's report    ApplyReport               Feedback
  plan        plan/build.py (pure)           Snapshot + Policy         TickPlan
  followup    Sampler.resample, then plan    this apply's report       the changes of
                                                                       FOLLOWUP knobs

Every sampling stage is timed and its success recorded in the Snapshot's
stage table (node_exporter's per-collector duration and success): the metrics
export that table as it is. A failing stage leaves its default (no rates, no
links) and an error; it never stops the tick.

Apply feedback feeds the next plan, as irqbalance's activate.c feeds placement:
a change the kernel refused for good (an unsupported knob, a kernel-managed
IRQ, a value it rejects, a write it does not permit) is held back by plan_tick,
with its reason, until the next machine rescan, instead of being planned and
refused again every tick. An IRQ affinity write refused with ENOSPC (no
interrupt vector left on those CPUs) marks its CPUs vector-full until the next
rescan: the next plan aims no IRQ that must move at them (irqbalance sets
a negative slots_left on the CPU). An object that vanished, or a write that created
new ones (threaded NAPI's kthreads), asks for a rescan at the next tick.

Some writes make the plan they belong to miss something (plan/build.py FOLLOWUP):
threaded NAPI's kthreads exist only once `threaded` is written, and irqbalance
moves IRQs until the ban that hands them over is written. Such an apply is
followed, in the same tick, by a second pass: the Machine scanned again
(Sampler.resample), planned again, and only the changes of the knobs the write
calls for applied. The daemon's first tick thus hands over READY=1 with every
IRQ in place, not one the outgoing irqbalance moved after the sample.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Protocol, TypeVar

from agentlatd.agents.applier import TASK_KNOBS
from agentlatd.agents.chain import ChainAgent
from agentlatd.agents.links import LinkTracker
from agentlatd.apply import irqbalance, irqbalance_ban, irqbalance_env
from agentlatd.apply.engine import CHANGED, CLAMPED, ApplyReport
from agentlatd.apply.irqbalance_env import Channel
from agentlatd.capture import previous_sample
from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import AgentlatdError, PolicyError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.kernel.knobnames import KnobName
from agentlatd.model.agent_links import NONE, AgentHome, AgentLinks
from agentlatd.model.build import build_machine
from agentlatd.model.machine import Machine, Rates
from agentlatd.model.rates import compute_rates
from agentlatd.plan.build import followup_knobs, make_plan
from agentlatd.plan.changes import Change, Plan
from agentlatd.policy import Policy
from agentlatd.sample.counters import CounterSnapshot, read_counters
from agentlatd.sample.cpuhp import cpus_in_transition
from agentlatd.sample.machine import read_machine
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.tick")

MACHINE_TTL = 60.0  # seconds between full rescans of the Machine (plus on discontinuities)
# a CPU hotplug whose callbacks have not finished after this long is stuck, not running:
# drift is judged again (a failed hotplug rolls target back, so this is a guard only)
CPUHP_LIMIT_S = 60.0

# what the kernel refuses for good, per (knob, target, value): planned again only
# after a rescan (a driver, a link or the kernel changed): EIO/EPERM on a managed
# IRQ, EOPNOTSUPP, EINVAL, EACCES. EBUSY and EAGAIN are tried again at the next
# tick, as irqbalance's activate.c does ("Do not blacklist the IRQ on transient
# errors"; any other error sets BALANCE_NONE). ENOSPC on smp_affinity does not hold
# the IRQ back either: activate.c makes the CPU's slots_left negative and forces a
# rebalance, and placement.c puts no IRQ on a CPU with slots_left <= 0 (irqbalance
# cd9212f). Here the CPUs of that write become Feedback.vector_full, an input of the
# next plan; all of them, also for a mask: the kernel returns ENOSPC only when no CPU
# of the mask has a free vector (irq_matrix_alloc, kernel/irq/matrix.c).
HOLD_BACK = frozenset({ErrClass.MANAGED.value, ErrClass.UNSUPPORTED.value,
                       ErrClass.INVALID.value, ErrClass.DENIED.value})
# a change of a process (task.*) names threads that come and go between ticks; the
# agent side retries those itself
NOT_HELD = frozenset(TASK_KNOBS)

T = TypeVar("T")

# the journal's irqbalance entries, (knob, target, original): Sampler.sample's input
Journaled = tuple[tuple[str, str, str], ...]
IRQBALANCE_KNOBS = frozenset({irqbalance_ban.NAME, irqbalance_ban.IRQS_NAME, irqbalance_env.NAME})
NO_CHANNEL = Channel("", None)  # no ban to make (no irqbalance, or not "cooperate")


class JournalEntryLike(Protocol):
    @property
    def knob(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def original(self) -> str: ...


class StageTiming(NamedTuple):
    """One row of a tick's stage table."""

    stage: str
    seconds: float
    ok: bool


@dataclass(frozen=True, slots=True)
class Held:
    """A change the kernel refused at an earlier tick, not planned again until a rescan."""

    knob: str
    target: str
    desired: str
    errclass: str
    message: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.knob, self.target)


@dataclass(frozen=True, slots=True)
class Feedback:
    """What the last apply tells the next plan."""

    held: tuple[Held, ...] = ()
    rescan: bool = False  # an object vanished, or a write created new ones (threaded NAPI)
    # CPUs an irq.affinity write found out of interrupt vectors (ENOSPC), until a rescan
    vector_full: CpuSet = field(default_factory=CpuSet)

    def find(self, c: Change) -> Held | None:
        for h in self.held:
            if h.key == c.key and h.desired == c.desired:
                return h
        return None


def written(report: ApplyReport) -> frozenset[str]:
    """The knobs an apply changed."""
    return frozenset(r.knob for r in report.results if r.status in (CHANGED, CLAMPED))


def feedback_of(report: ApplyReport, prev: Feedback) -> Feedback:
    """Fold one apply report into the feedback the next tick plans with."""
    held = {h.key: h for h in prev.held}
    for r in report.results:
        if r.errclass in HOLD_BACK and r.knob not in NOT_HELD:
            held[(r.knob, r.target)] = Held(r.knob, r.target, r.desired, r.errclass or "",
                                            r.message)
    full = set(prev.vector_full)
    for r in report.results:
        if r.errclass == ErrClass.NO_SPACE and r.knob == KnobName.IRQ_AFFINITY:
            try:
                full.update(CpuSet.parse_list(r.desired))
            except CpuSetError:  # not a CPU list: nothing to learn about CPUs
                log.warning("irq.affinity %s: ENOSPC for %r, not a CPU list", r.target, r.desired)
    gone = any(r.errclass == ErrClass.GONE.value for r in report.results)
    created = bool(followup_knobs(written(report)))
    return Feedback(tuple(held[k] for k in sorted(held)), prev.rescan or gone or created,
                    CpuSet(full))


@dataclass(frozen=True, slots=True)
class TickInput:
    """What the main thread hands the tuner for its next tick, replaced whole (never
    mutated): a reload swaps the policy here, so one tick never mixes two policies."""

    policy: Policy
    agent_homes: tuple[AgentHome, ...] = ()
    chain_agents: tuple[ChainAgent, ...] = ()
    tune_devices: bool = True


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one tick read, frozen: the input of plan_tick."""

    t: float
    policy: Policy
    machine: Machine | None
    counters: CounterSnapshot | None = None
    rates: Rates | None = None
    rescanned: bool = False  # the Machine was rebuilt this tick
    hotplug: bool = False  # CPUs came or went since the last tick
    # a tick after the one that saw a CPU hotplug, up to and including the first tick
    # that reads its callbacks done (sample/cpuhp.py): drivers' re-spread may land here
    hotplug_running: bool = False
    links: AgentLinks = NONE
    irqbalance_pids: tuple[int, ...] = ()
    # how the home CPUs are banned in irqbalance and what it banned before agentlatd
    irqbalance: Channel = NO_CHANNEL
    feedback: Feedback = field(default_factory=Feedback)
    timings: tuple[StageTiming, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TickPlan:
    plan: Plan | None
    changes: tuple[Change, ...] = ()  # plan.changes less those held back
    held: tuple[Held, ...] = ()
    policy_error: PolicyError | None = None
    error: str = ""


def plan_tick(snap: Snapshot, policy: Policy) -> TickPlan:
    """The plan of one snapshot. Pure: the same snapshot and policy give the same plan."""
    if snap.machine is None:
        return TickPlan(None, error="no machine to plan for")
    try:
        plan = make_plan(snap.machine, policy, rates=snap.rates,
                         irqbalance_running=bool(snap.irqbalance_pids), agent_links=snap.links,
                         irqbalance_banned=snap.irqbalance.base,
                         irqbalance_env=snap.irqbalance.env_file,
                         irqbalance_banned_irqs=snap.irqbalance.irqs,
                         vector_full=snap.feedback.vector_full)
    except PolicyError as e:  # nothing is planned, so nothing is written
        return TickPlan(None, policy_error=e, error=f"planning failed: {e}")
    except AgentlatdError as e:
        return TickPlan(None, error=f"planning failed: {e}")
    changes: list[Change] = []
    held: list[Held] = []
    for c in plan.changes:
        h = snap.feedback.find(c)
        if h is None:
            changes.append(c)
        else:
            held.append(h)
    return TickPlan(plan, tuple(changes), tuple(held))


def followup_changes(tp: TickPlan, knobs: frozenset[str]) -> tuple[Change, ...]:
    """The followup pass's changes: those of `tp` (planned on a sample taken after
    the first writes) for `knobs` only; the first pass did (or reported) the rest.
    The daemon's tuner and `agentlatd apply` both take them from here."""
    return tuple(c for c in tp.changes if c.knob in knobs)


def scan_machine(root: Root) -> Machine:
    """The Machine under `root` now: read (sample/machine.py), then built (model/build.py)."""
    return build_machine(read_machine(root))


class StageTable:
    """The stage table of one tick: each stage timed, its failure kept as an error."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.rows: list[StageTiming] = []
        self.errors: list[str] = []

    def run(self, stage: str, what: str, fn: Callable[[], T], default: T,
            level: int = logging.WARNING) -> T:
        """fn()'s value, or `default` when it raised (a failing stage must not stop
        the daemon: the error is this tick's, logged at `level`)."""
        t0 = self.clock()
        try:
            out, ok = fn(), True
        except Exception as e:
            self.errors.append(f"{what} failed: {e}")
            log.log(level, "%s failed: %s", what, e, exc_info=not isinstance(e, AgentlatdError))
            out, ok = default, False
        self.rows.append(StageTiming(stage, self.clock() - t0, ok))
        return out

    def add(self, stage: str, seconds: float, error: str = "") -> None:
        """A stage run elsewhere (the pure plan: its error is a value, not an exception)."""
        if error:
            self.errors.append(error)
        self.rows.append(StageTiming(stage, seconds, not error))


class Sampler:
    """The sampling side of the tick and the little it keeps between ticks (the previous
    counters, the Machine until a rescan is due, the agent links' rx counters, the
    apply feedback). Owned by one thread."""

    def __init__(self, root: Root, *, clock: Callable[[], float] = time.monotonic,
                 machine_ttl: float = MACHINE_TTL,
                 irqbalance_pids: Callable[[], tuple[int, ...]] | None = None) -> None:
        self.root = root
        self.clock = clock
        self.machine_ttl = machine_ttl
        self.prev: CounterSnapshot | None = None
        self.machine: Machine | None = None
        self.machine_t = 0.0
        self.policy: Policy | None = None
        self.links = LinkTracker()
        self.feedback = Feedback()
        self.cpuhp_busy: frozenset[int] = frozenset()  # CPUs whose hotplug still runs
        self.cpuhp_since = 0.0  # when the hotplug they belong to was seen
        self.cpuhp_pending = False  # a hotplug was seen and the tick after its end is to come
        # the pids of the running irqbalance (the tuner's ProcScans.irqbalance)
        self.irqbalance_pids = (irqbalance_pids if irqbalance_pids is not None
                                else irqbalance.Watch(root).running)

    def record(self, report: ApplyReport) -> None:
        """The apply report of this tick: the next tick's feedback stage reads it."""
        self.feedback = feedback_of(report, self.feedback)

    def rescan(self) -> None:
        self.feedback = replace(self.feedback, rescan=True)

    def sample(self, inp: TickInput, journaled: Journaled = ()) -> Snapshot:
        """Read one tick. `journaled`: the journal's irqbalance entries (knob, target,
        original): what irqbalance banned before agentlatd, and on which channel."""
        t0 = self.clock()
        pol = inp.policy
        st = StageTable(self.clock)
        no_counters: tuple[Rates | None, CounterSnapshot | None] = (None, None)
        rates, snap = st.run("counters", "sampling", lambda: self._counters(pol), no_counters)
        hotplug = rates is not None and any(d.kind == "cpu_hotplug"
                                            for d in rates.discontinuities)
        due = (self.machine is None or self.feedback.rescan or pol is not self.policy
               or t0 - self.machine_t > self.machine_ttl
               or (rates is not None and any(d.kind in ("cpu_hotplug", "irq_set_changed")
                                             for d in rates.discontinuities)))
        rescanned = False
        if due:
            m = st.run("machine", "machine scan", lambda: scan_machine(self.root), None)
            if m is not None:
                self.machine, self.machine_t, self.policy, rescanned = m, t0, pol, True
                # a rescan tries refused knobs again (a driver, link or kernel changed)
                self.feedback = Feedback()
        running = self.cpuhp_pending or hotplug
        if running:
            st.run("cpuhp", "CPU hotplug state", lambda: self._cpuhp(hotplug, t0), None)
        links = st.run("links", "agent link sampling",
                       lambda: self.links.update(self.root, inp.agent_homes, pol), NONE)
        no_irqbalance: tuple[tuple[int, ...], Channel] = ((), NO_CHANNEL)
        pids, channel = st.run("irqbalance", "irqbalance sampling",
                               lambda: self._irqbalance(pol, inp.tune_devices, journaled),
                               no_irqbalance)
        return Snapshot(t=t0, policy=pol, machine=self.machine, counters=snap, rates=rates,
                        rescanned=rescanned, hotplug=hotplug, hotplug_running=running and not hotplug,
                        links=links, irqbalance_pids=pids,
                        irqbalance=channel, feedback=self.feedback,
                        timings=tuple(st.rows), errors=tuple(st.errors))

    def resample(self, snap: Snapshot, table: StageTable,
                 journaled: Journaled = ()) -> Snapshot | None:
        """`snap` with the Machine and irqbalance read again now, after an apply that
        calls for a followup (module docstring), timed in `table`; the counters, rates
        and agent links stay this tick's. The Machine read here is kept: it shows
        this tick's first writes. The feedback's rescan still stands for the next
        tick, which sees the followup's own writes. None when the scan failed (an
        error of the stage table): no followup then, the next tick's rescan does it."""
        m = table.run("followup", "followup machine scan", lambda: scan_machine(self.root), None)
        if m is None:
            return None
        self.machine = m
        no_irqbalance: tuple[tuple[int, ...], Channel] = ((), NO_CHANNEL)
        pids, channel = table.run("followup-irqbalance", "followup irqbalance sampling",
                                  lambda: self._irqbalance(snap.policy, True, journaled),
                                  no_irqbalance)
        return replace(snap, machine=m, irqbalance_pids=pids, irqbalance=channel)

    def _cpuhp(self, hotplug: bool, now: float) -> None:
        """Follow the CPU hotplug seen at this tick (or an earlier one) until its
        callbacks are done, plus one tick: the drivers' re-spread is over by the time a
        read finds state == target, and that tick's drift check sees all of it. Read only
        from the tick that sees a hotplug on: nothing per tick on a machine with none."""
        if hotplug:
            self.cpuhp_since = now
            busy = cpus_in_transition(self.root)  # which CPU: every one, once per hotplug
        elif self.cpuhp_busy:
            busy = cpus_in_transition(self.root, self.cpuhp_busy)
        else:
            busy = frozenset()
        if busy and now - self.cpuhp_since > CPUHP_LIMIT_S:
            log.warning("CPU hotplug of CPU %s has not finished after %.0f s "
                        "(cpuN/hotplug/state != target): judging drift again",
                        CpuSet(busy), now - self.cpuhp_since)
            busy = frozenset()
        self.cpuhp_busy = busy or frozenset()
        self.cpuhp_pending = hotplug or bool(self.cpuhp_busy)

    def _counters(self, pol: Policy) -> tuple[Rates | None, CounterSnapshot | None]:
        snap = read_counters(self.root, None, self.prev)
        rates = compute_rates(self.prev, snap, pol.heat) if self.prev is not None else None
        self.prev = snap
        return rates, snap

    def _irqbalance(self, pol: Policy, tune_devices: bool,
                    journaled: Journaled) -> tuple[tuple[int, ...], Channel]:
        """irqbalance's pids, and (daemon.irqbalance = "cooperate") how the home CPUs
        are banned in it and what it banned before agentlatd (irqbalance_env.choose:
        the journal's channel first, else its socket, else its environment file)."""
        pids = self.irqbalance_pids()
        if not pids or pol.daemon.irqbalance != "cooperate" or not tune_devices:
            return pids, NO_CHANNEL
        try:
            return pids, irqbalance_env.choose(self.root, pids, journaled)
        except (AgentlatdError, OSError) as e:  # its socket: plan without its own ban
            log.debug("irqbalance's ban not read: %s", e)
            return pids, NO_CHANNEL


def irqbalance_entries(entries: Iterable[JournalEntryLike]) -> Journaled:
    """The journal's irqbalance entries as Sampler.sample takes them."""
    return tuple((e.knob, e.target, e.original) for e in entries
                 if e.knob in IRQBALANCE_KNOBS)


# -- a tick from the command line ---------------------------------------------------
# A capture (agentlatd/capture.py) records the counter files twice, a second apart.


def sample_once(root: Root, policy: Policy, *, interval: float = 0.0,
                journaled: Journaled = (),
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> Snapshot:
    """The daemon's tick with rates, once: on a recorded tree with the two counter
    samples its capture holds (no rates from a one-sample capture); on a live root
    with two samples `interval` seconds apart (no rates for interval 0)."""
    s = Sampler(root, clock=clock)
    inp = TickInput(policy)
    prev = previous_sample(root)
    if prev is None:
        if interval > 0:
            s.sample(inp, journaled)
            sleep(interval)
        return s.sample(inp, journaled)
    snap = s.sample(inp, journaled)
    older, age = prev
    if snap.counters is None:
        return snap
    # the rates of the recorded interval, timed by the capture's clock
    before = replace(read_counters(older, None, None), t=0.0, base_t=None, fresh=None)
    cur = replace(snap.counters, t=age, base_t=None, fresh=None)
    return replace(snap, counters=cur, rates=compute_rates(before, cur, policy.heat))
