"""Prometheus metrics: rendered on demand, text 0.0.4 or OpenMetrics 1.0, by hand.

Formats: https://prometheus.io/docs/instrumenting/exposition_formats/ (text
0.0.4) and https://github.com/OpenObservability/OpenMetrics/blob/main/specification/OpenMetrics.md
(OpenMetrics 1.0: counter families named without _total, info and stateset
types, "# EOF"). Label values escape backslash, double quote and newline.

Why by hand and not prometheus_client's exposition: measured on the same
View by bench/tick.py (256 CPUs, 100 agents; README, choices table), the
hand-written renderer takes 12.2 ms where generate_latest takes 46.4 ms
(3.8x; OpenMetrics 2.7x), and the .deb needs no python3-prometheus-client at
run time. prometheus_client stays a dev
dependency: the tests parse both formats with its parsers, so a formatting
mistake fails a test.

Where the work happens (none of it in the tuner's tick):
  main thread   Metrics: counters fed by the service hooks each tick
                (O(CPUs) additions), and view(): a frozen View built only
                when someone asks (a scrape, a textfile write)
  HTTP thread   GET /metrics: asks the main loop for a View (one wake-up;
                served within a loop turn), renders it, gzips it when the
                scraper's Accept-Encoding allows, OpenMetrics when its Accept
                asks for application/openmetrics-text
  textfile      a thread writing node_exporter's textfile every
                [metrics] textfile_interval seconds (tmp, fsync, rename)

listen and textfile are exclusive (policy.py refuses both): node_exporter
would re-export every series of the file under its own target.

Naming (https://prometheus.io/docs/practices/naming/): base units, _total
counters for everything counted (kernel interrupt and softirq counts and
times, steps, changes), gauges only for states; rate() in PromQL, not in the
daemon. Identities are info metrics (agentlatd_agent_info{home_cpu=...}),
CPU roles a stateset; the daemon's own cost uses the standard process_* names.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import http.server
import ipaddress
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentlatd import __version__
from agentlatd import stepstats as stats
from agentlatd.agents.agent import AgentState
from agentlatd.agents.applier import AGENT_KNOBS
from agentlatd.agents.chainrow import NO_CHAIN, ChainRow, MemberState
from agentlatd.apply.engine import (
    CHANGED,
    CLAMPED,
    FAILED,
    MANAGED,
    RESTORED,
    UNSUPPORTED,
    ApplyReport,
    Drift,
    DriftAction,
    RollbackReport,
)
from agentlatd.cpuset import CpuSet
from agentlatd.errors import AgentlatdError, PolicyError
from agentlatd.knobset import REGISTRY
from agentlatd.model.container import ContainerId
from agentlatd.model.machine import Rates
from agentlatd.model.roles import Role
from agentlatd.policy import LATENCY_CLASSES, MetricsPolicy, Policy
from agentlatd.sample.process import read_process
from agentlatd.sample.softirqs import Softirqs
from agentlatd.sample.stat import Stat, parse_stat
from agentlatd.sample.tasks import ProcId
from agentlatd.steps.slowview import AgentSlow
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
PREFIX = "agentlatd_"
OTHER = "other"  # the agent label of the agents beyond [metrics] max_agents
ROLES = (Role.HOME, Role.COMPLETION, Role.OTHER)
USER_HZ = os.sysconf("SC_CLK_TCK")  # /proc/stat times are in these ticks

Labels = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------------
# the exposition formats


@dataclass(slots=True)
class Family:
    """One metric family: full name (counters without _total, info without _info),
    type, help, samples (suffix, labels, value).

    A sample's suffix "" means the type's own: "_total" for a counter, "_info"
    for an info; histograms give "_bucket", "_sum", "_count".
    """

    name: str
    type: str  # gauge | counter | histogram | info | stateset | untyped
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: Any) -> None:
        self.samples.append((suffix, tuple((k, str(v)) for k, v in labels.items()), value))


_DEFAULT_SUFFIX = {"counter": "_total", "info": "_info"}


def escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(v: str, openmetrics: bool = False) -> str:
    v = v.replace("\\", "\\\\").replace("\n", "\\n")
    return v.replace('"', '\\"') if openmetrics else v


def format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def format_le(v: float) -> str:
    """A bucket bound the way Go's strconv formats it (prometheus_client's floatToGoString)."""
    if math.isinf(v):
        return "+Inf"
    return repr(float(v))


def render(families: Iterable[Family], openmetrics: bool = False) -> str:
    """Families as exposition text; families without samples are left out.

    0.0.4: counters are typed under their _total name, info and stateset as
    gauges (the format has neither). OpenMetrics: the base name and the real
    type, and the closing "# EOF".
    """
    out: list[str] = []
    for f in families:
        if not f.samples:
            continue
        dflt = _DEFAULT_SUFFIX.get(f.type, "")
        if openmetrics:
            tname, ttype = f.name, ("unknown" if f.type == "untyped" else f.type)
        else:
            tname = f.name + dflt
            ttype = "gauge" if f.type in ("info", "stateset") else f.type
        out.append(f"# HELP {tname} {escape_help(f.help, openmetrics)}")
        out.append(f"# TYPE {tname} {ttype}")
        name = f.name
        for suffix, labels, value in f.samples:
            lab = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
            sname = name + (suffix or dflt)
            out.append(f"{sname}{{{lab}}} {format_value(value)}" if lab
                       else f"{sname} {format_value(value)}")
    if openmetrics:
        out.append("# EOF")
    return "\n".join(out) + "\n" if out else ""


# ---------------------------------------------------------------------------
# the frozen view a scrape renders


@dataclass(frozen=True, slots=True)
class StepSeries:
    """One agent's (or the "other" agents' of one class) step histogram."""

    agent: str
    klass: str
    buckets: tuple[int, ...]  # stats.EXPORT_N counts, NOT cumulative
    sum_s: float
    count: int


@dataclass(frozen=True, slots=True)
class AgentInfo:
    agent: str
    klass: str
    pid: int
    home_cpu: int | None
    state: AgentState
    pod_uid: str = ""  # from the agent's cgroup path (model/container.py)
    container: str = ""  # short (12 hex) container id


@dataclass(frozen=True, slots=True)
class View:
    """Everything one render needs, copied out of the main thread's state.

    Nothing in it is mutated after it is built (tuples, frozen values and the
    tick's own frozen snapshots), so another thread may render it.
    """

    time: float
    start_time: float
    ready: bool
    ticks: int
    tick_failures: int
    tick_seconds_total: float
    tick_duration_s: float
    last_tick_time: float
    samplers: tuple[tuple[str, float, bool, int, int], ...]
    changes: tuple[tuple[str, str, tuple[tuple[Labels, int], ...]], ...]  # (name, help, rows)
    active_changes: int | None
    reloads: tuple[tuple[str, int], ...]
    last_reload_ok: bool
    discontinuities: tuple[tuple[str, int], ...]
    online: CpuSet
    completion: CpuSet
    home: CpuSet
    hot_cpus: int
    rates: Rates | None
    softirqs: Softirqs | None
    stat: Stat | None
    cpu_irqs_total: tuple[tuple[int, float], ...]
    home_irqs_total: float
    home_softirqs_total: tuple[tuple[str, float], ...]
    agents_by_class: tuple[tuple[str, int], ...]
    steps: tuple[StepSeries, ...]
    agent_info: tuple[AgentInfo, ...]
    # completion chains (agents/chain.py), for the agents with series of their own:
    # (agent, member state, members), (agent, decision the guard undid); and the
    # guard's undo counts by decision kind
    chain_members: tuple[tuple[str, MemberState, int], ...]
    decisions_undone: tuple[tuple[str, str], ...]
    guard_undone: tuple[tuple[str, int], ...]
    class_budgets: tuple[tuple[str, float], ...]
    max_agents: int
    per_cpu_vectors: bool
    # the slowest-steps view (steps/slowsteps.py), agents with series of their own only:
    # (agent, slow steps, ((cause, ns), ...))
    slow_steps: tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...] = ()
    # the scan worker (agents/scanworker.py): 1 while a child answers, 0 while the
    # tuner thread scans itself; None: the daemon has none (no families then)
    scan_worker_up: int | None = None
    scan_worker_failures: int = 0
    # process events (agents/forks.py): 1 while followed, 0 while the tick lists
    # forks; None: not reported (no families then)
    fork_events_up: int | None = None
    fork_events_overflows: int = 0
    # processes agents forked (agents/forks.py): (remembered, journaled); None: not
    # reported
    forked: tuple[int, int] | None = None


class AgentLike(Protocol):
    """What view() reads of a registered agent (agents/registry.py Agent)."""

    agent_id: str
    latency_class: str
    home_cpu: int | None

    @property
    def state(self) -> AgentState: ...

    @property
    def proc(self) -> ProcId: ...

    @property
    def container(self) -> ContainerId: ...

    @property
    def hist(self) -> stats.Histogram: ...


@dataclass(slots=True)
class _Sampler:
    duration_s: float = 0.0
    success: bool = True
    runs: int = 0
    failures: int = 0


@dataclass(slots=True)
class _Retired:
    buckets: list[int] = field(default_factory=lambda: [0] * stats.EXPORT_N)
    sum_ns: int = 0
    count: int = 0


class Metrics:
    """The daemon's metrics state, owned by the main thread.

    observe_*() after each tick accumulate counters; view() copies what a
    render needs into a frozen View. Counters are cumulative since the daemon
    started (rate() handles the reset at a restart), kernel counters since boot.
    """

    def __init__(self) -> None:
        self.start_time = time.time()
        self.ticks = 0
        self.tick_failures = 0
        self.tick_seconds_total = 0.0
        self.tick_duration_s = 0.0
        self.last_tick_time = 0.0
        self.samplers: dict[str, _Sampler] = {}
        self.applied: dict[str, int] = {}  # knob -> count
        self.clamped: dict[str, int] = {}
        self.failed: dict[tuple[str, str], int] = {}  # (knob, errclass)
        self.unsupported: dict[str, int] = {}
        self.managed: dict[str, int] = {}
        self.rolled_back: dict[str, int] = {}
        self.rollback_failed: dict[str, int] = {}
        self.drifted: dict[tuple[str, str], int] = {}  # (knob, action)
        self.reloads: dict[str, int] = {"ok": 0, "error": 0}
        self.last_reload_ok = True
        self.active_changes: int | None = None
        self.ready = False
        # the last tick's view
        self.rates: Rates | None = None
        self.softirqs: Softirqs | None = None
        self.stat: Stat | None = None
        self.online: CpuSet = CpuSet()
        self.completion: CpuSet = CpuSet()
        self.home: CpuSet = CpuSet()
        self.hot_threshold: float | None = None
        self.hot_cpus: CpuSet = CpuSet()
        # device interrupts per CPU since the daemon started (sum of the tick
        # deltas of every numbered IRQ; the kernel has no per-CPU total of its own)
        self.cpu_irqs_total: dict[int, float] = {}
        self.guard_undone: dict[str, int] = {}  # decision kind -> times the guard undid it
        self.scan_worker_up: int | None = None
        self.scan_worker_failures = 0
        self.fork_events_up: int | None = None
        self.fork_events_overflows = 0
        self.forked: tuple[int, int] | None = None
        self.home_irqs_total = 0.0
        self.home_softirqs_total: dict[str, float] = {}
        self.discontinuities: dict[str, int] = {}
        # step series: which agents have series of their own (bounded by
        # max_agents); an agent keeps the group it got at its first view for
        # life, so no series jumps between an agent label and "other"
        self._group: dict[Any, bool] = {}  # agent key -> True: own series, False: "other"
        self._own = 0
        self._other_last: dict[Any, tuple[str, tuple[int, ...], int, int]] = {}
        self._retired: dict[str, _Retired] = {}  # class -> counts of "other" agents gone

    # -- samplers --------------------------------------------------------
    def observe_sampler(self, name: str, duration_s: float, ok: bool) -> None:
        s = self.samplers.setdefault(name, _Sampler())
        s.duration_s, s.success = duration_s, ok
        s.runs += 1
        if not ok:
            s.failures += 1

    @contextlib.contextmanager
    def sampler(self, name: str) -> Iterator[None]:
        """with metrics.sampler("counters"): ...  -- times it; an exception = failure (re-raised)."""
        t0 = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.observe_sampler(name, time.monotonic() - t0, ok)

    # -- engine ----------------------------------------------------------
    def observe_apply(self, report: ApplyReport) -> None:
        if report.dry_run:
            return
        for r in report.results:
            if r.status == CHANGED:
                _inc(self.applied, r.knob)
            elif r.status == CLAMPED:
                _inc(self.clamped, r.knob)
            elif r.status == FAILED:
                _inc(self.failed, (r.knob, "unknown" if r.errclass is None else str(r.errclass)))
            elif r.status == UNSUPPORTED:
                _inc(self.unsupported, r.knob)
            elif r.status == MANAGED:
                _inc(self.managed, r.knob)
        if report.recovery is not None and report.recovery.rollback is not None:
            self.observe_rollback(report.recovery.rollback)

    def observe_rollback(self, report: RollbackReport) -> None:
        for r in report.results:
            if r.status == RESTORED:
                _inc(self.rolled_back, r.knob)
            elif r.status in (FAILED, CLAMPED):
                _inc(self.rollback_failed, r.knob)

    def observe_drift(self, drifts: Iterable[Drift]) -> None:
        for d in drifts:
            _inc(self.drifted, (d.knob, str(d.action)))

    def observe_reload(self, ok: bool) -> None:
        self.reloads["ok" if ok else "error"] += 1
        self.last_reload_ok = ok

    # -- the tick --------------------------------------------------------
    def observe_tick(self, *, duration_s: float, rates: Rates | None = None,
                     completion: CpuSet | None = None, home: CpuSet | None = None,
                     online: CpuSet | None = None, hot_threshold: float | None = None,
                     active_changes: int | None = None, hot_cpus: Iterable[int] | None = None,
                     softirqs: Softirqs | None = None, stat: Stat | None = None,
                     failed: bool = False,
                     guard_undone: Mapping[str, int] | None = None,
                     scan_worker: tuple[bool, int] | None = None,
                     fork_events: tuple[bool, int] | None = None,
                     forked: tuple[int, int] | None = None) -> None:
        """The end of one tick: O(CPUs + vectors x home CPUs) additions, no rendering.

        hot_cpus: the home CPUs the placement calls hot (heat >= heat.hot for
        heat.hot_ticks ticks); without it, heat >= hot_threshold in this tick.
        softirqs/stat: the tick's kernel counters (cumulative since boot).
        """
        self.ticks += 1
        if failed:
            self.tick_failures += 1
        self.tick_duration_s = duration_s
        self.tick_seconds_total += duration_s
        self.last_tick_time = time.time()
        if completion is not None:
            self.completion = completion
        if home is not None:
            self.home = home
        if online is not None:
            self.online = online
        if hot_threshold is not None:
            self.hot_threshold = hot_threshold
        if active_changes is not None:
            self.active_changes = active_changes
        if softirqs is not None:
            self.softirqs = softirqs
        if stat is not None:
            self.stat = stat
        if rates is not None:
            self.rates = rates
            for d in rates.discontinuities:
                _inc(self.discontinuities, d.kind)
            dt = rates.interval_s if rates.interval_s > 0 and math.isfinite(rates.interval_s) else 0.0
            if dt:
                tot = self.cpu_irqs_total
                for cpu, r in rates.irq_per_cpu.items():
                    tot[cpu] = tot.get(cpu, 0.0) + r * dt
                for cpu in self.home:
                    self.home_irqs_total += rates.irq_per_cpu.get(cpu, 0.0) * dt
                for vec, per_cpu in rates.softirq_rate.items():
                    got = sum(per_cpu.get(cpu, 0.0) for cpu in self.home)
                    self.home_softirqs_total[vec] = self.home_softirqs_total.get(vec, 0.0) + got * dt
            thr = self.hot_threshold
            self.hot_cpus = CpuSet(c for c in self.home if thr is not None
                                   and rates.heat.get(c, 0.0) >= thr)
        if hot_cpus is not None:
            self.hot_cpus = CpuSet(hot_cpus)
        if guard_undone is not None:
            self.guard_undone = dict(guard_undone)
        if scan_worker is not None:  # (a child answers, children found broken so far)
            self.scan_worker_up, self.scan_worker_failures = int(scan_worker[0]), scan_worker[1]
        if fork_events is not None:  # (followed, queue overflows so far)
            self.fork_events_up, self.fork_events_overflows = int(fork_events[0]), fork_events[1]
        if forked is not None:  # (remembered, journaled)
            self.forked = forked

    # -- the view --------------------------------------------------------
    def view(self, agents: Iterable[AgentLike] = (), policy: Policy | None = None,
             chain: Callable[[Any], ChainRow] | None = None,
             slow_steps: Iterable[AgentSlow] = ()) -> View:
        """A frozen copy of what a render needs (main thread; O(agents + families))."""
        pol = policy
        cap = pol.metrics.max_agents if pol is not None else 32
        by_class: dict[str, int] = dict.fromkeys(LATENCY_CLASSES, 0)
        own: dict[tuple[str, str], list[Any]] = {}
        other: dict[str, list[Any]] = {}
        info: list[AgentInfo] = []
        members: dict[tuple[str, MemberState], int] = {}
        undone: set[tuple[str, str]] = set()
        agents = list(agents)
        live = {a.proc for a in agents}
        # departures first: a slot freed now goes to an agent new in this view
        for key in [k for k in self._group if k not in live]:
            if self._group.pop(key):
                self._own -= 1
            last = self._other_last.pop(key, None)
            if last is not None:
                # an "other" agent left: its steps stay in the "other" counters,
                # which must never go down (rate() would read a reset)
                r = self._retired.setdefault(last[0], _Retired())
                for i, c in enumerate(last[1]):
                    r.buckets[i] += c
                r.sum_ns += last[2]
                r.count += last[3]
        for a in agents:
            key = a.proc
            cls = a.latency_class
            by_class[cls] = by_class.get(cls, 0) + 1
            g = self._group.get(key)
            if g is None:
                g = self._own < cap
                self._group[key] = g
                self._own += g
            h = a.hist
            if g:
                acc = own.setdefault((a.agent_id, cls), [[0] * stats.EXPORT_N, 0, 0])
                ct = a.container
                info.append(AgentInfo(a.agent_id, cls, key.pid, a.home_cpu, a.state,
                                      ct.pod_uid, ct.short_id))
                row = chain(a) if chain is not None else NO_CHAIN
                for state in row.member_states:
                    k = (a.agent_id, state)
                    members[k] = members.get(k, 0) + 1
                undone.update((a.agent_id, d) for d in row.refused)
            else:
                acc = other.setdefault(cls, [[0] * stats.EXPORT_N, 0, 0])
                self._other_last[key] = (cls, tuple(h.export), h.sum_ns, h.count)
            b = acc[0]
            for i, c in enumerate(h.export):
                if c:
                    b[i] += c
            acc[1] += h.sum_ns
            acc[2] += h.count
        for cls, r in self._retired.items():
            acc = other.setdefault(cls, [[0] * stats.EXPORT_N, 0, 0])
            for i, c in enumerate(r.buckets):
                acc[0][i] += c
            acc[1] += r.sum_ns
            acc[2] += r.count
        steps = [StepSeries(aid, cls, tuple(v[0]), v[1] / 1e9, v[2]) for (aid, cls), v in own.items()]
        steps += [StepSeries(OTHER, cls, tuple(v[0]), v[1] / 1e9, v[2]) for cls, v in other.items()]
        steps.sort(key=lambda s: (s.agent == OTHER, s.agent, s.klass))
        info.sort(key=lambda i: (i.agent, i.pid))
        changes: list[tuple[str, str, tuple[tuple[Labels, int], ...]]] = []
        for name, help_, counts in (
                ("changes_applied", "Knob writes applied and read back", self.applied),
                ("changes_clamped", "Knob writes the kernel clamped or ignored", self.clamped),
                ("changes_unsupported", "Knob writes the device or kernel does not support",
                 self.unsupported),
                ("changes_managed", "IRQ affinity writes refused: kernel-managed IRQ", self.managed),
                ("changes_rolled_back", "Originals restored by rollback", self.rolled_back),
                ("changes_rollback_failed", "Originals rollback could not restore",
                 self.rollback_failed)):
            changes.append((name, help_, tuple(((("knob", k),), n) for k, n in sorted(counts.items()))))
        changes.append(("changes_failed", "Knob writes that failed, by error class",
                        tuple(((("knob", k), ("errclass", e)), n)
                              for (k, e), n in sorted(self.failed.items()))))
        # every device knob x the two usual actions from 0, so that increase()
        # and the drift panel have a series before the first drift
        drifted = {(k, str(a)): 0 for k in _device_knobs()
                   for a in (DriftAction.REASSERTED, DriftAction.YIELDED)}
        drifted.update(self.drifted)
        changes.append(("changes_drifted", "Knobs another writer changed after agentlatd set "
                        "them, by action taken",
                        tuple(((("knob", k), ("action", a)), n)
                              for (k, a), n in sorted(drifted.items()))))
        budgets = tuple((name, c.budget_us / 1e6) for name, c in sorted(pol.classes.items())
                        if c.budget_us > 0) if pol is not None else ()
        return View(
            time=time.time(), start_time=self.start_time, ready=self.ready, ticks=self.ticks,
            tick_failures=self.tick_failures, tick_seconds_total=self.tick_seconds_total,
            tick_duration_s=self.tick_duration_s, last_tick_time=self.last_tick_time,
            samplers=tuple((n, s.duration_s, s.success, s.runs, s.failures)
                           for n, s in sorted(self.samplers.items())),
            changes=tuple(changes), active_changes=self.active_changes,
            reloads=tuple(sorted(self.reloads.items())), last_reload_ok=self.last_reload_ok,
            discontinuities=tuple(sorted(self.discontinuities.items())),
            online=self.online or (self.home | self.completion), completion=self.completion,
            home=self.home, hot_cpus=len(self.hot_cpus), rates=self.rates, softirqs=self.softirqs,
            stat=self.stat, cpu_irqs_total=tuple(sorted(self.cpu_irqs_total.items())),
            home_irqs_total=self.home_irqs_total,
            home_softirqs_total=tuple(sorted(self.home_softirqs_total.items())),
            agents_by_class=tuple(sorted(by_class.items())), steps=tuple(steps),
            agent_info=tuple(info),
            chain_members=tuple((aid, st, n) for (aid, st), n in sorted(members.items())),
            decisions_undone=tuple(sorted(undone)),
            guard_undone=tuple(sorted(self.guard_undone.items())),
            class_budgets=budgets, max_agents=cap,
            per_cpu_vectors=pol.metrics.per_cpu_softirq_vectors if pol is not None else False,
            slow_steps=_slow_series(slow_steps, {aid for aid, _ in own}),
            scan_worker_up=self.scan_worker_up, scan_worker_failures=self.scan_worker_failures,
            fork_events_up=self.fork_events_up, fork_events_overflows=self.fork_events_overflows,
            forked=self.forked)

    def render(self, agents: Iterable[AgentLike] = (), policy: Policy | None = None,
               openmetrics: bool = False) -> str:
        """view() and render it (tests, one-shot tools; the daemon splits the two)."""
        return render_view(self.view(agents, policy), openmetrics)


def _slow_series(rows: Iterable[AgentSlow], own: set[str]
                 ) -> tuple[tuple[str, int, tuple[tuple[str, int], ...]], ...]:
    """Slow-step time by cause for the agents with series of their own (at most
    metrics.max_agents: 4 causes each); the others are in `agentlatd agents --slow`."""
    return tuple(sorted((r.agent_id, r.slow_steps, tuple((str(c), ns) for c, ns in r.time_by_cause))
                        for r in rows if r.agent_id in own and r.ring))


def _device_knobs() -> tuple[str, ...]:
    return tuple(sorted(k for k in REGISTRY if k not in AGENT_KNOBS))


def _inc(d: dict[Any, int], key: Any, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


# ---------------------------------------------------------------------------
# View -> families (pure) -> text


def families(v: View) -> list[Family]:
    fs: list[Family] = []

    def fam(name: str, type_: str, help_: str) -> Family:
        f = Family(PREFIX + name, type_, help_)
        fs.append(f)
        return f

    fam("build", "info", "agentlatd version").add(1, version=__version__)
    fam("start_time_seconds", "gauge", "Unix time the daemon started").add(v.start_time)
    fam("ready", "gauge", "1 once the first apply succeeded (READY=1 sent to systemd)").add(
        1 if v.ready else 0)
    fam("ticks", "counter", "Ticks (sample, plan, apply) completed").add(v.ticks)
    fam("tick_failures", "counter", "Ticks in which sampling, planning or applying raised "
        "(a knob that fails is a result, not a tick failure)").add(v.tick_failures)
    fam("tick_seconds", "counter", "Time spent in ticks; rate() of it over rate() of "
        "agentlatd_ticks_total is the mean tick duration").add(v.tick_seconds_total)
    fam("tick_duration_seconds", "gauge", "Duration of the last tick").add(v.tick_duration_s)
    if v.last_tick_time:
        fam("last_tick_timestamp_seconds", "gauge", "Unix time the last tick ended").add(
            v.last_tick_time)

    sd = fam("sampler_duration_seconds", "gauge", "Duration of the sampler's last run")
    ss = fam("sampler_success", "gauge", "1 if the sampler's last run succeeded, else 0")
    sr = fam("sampler_runs", "counter", "Runs of the sampler")
    sf = fam("sampler_failures", "counter", "Failed runs of the sampler")
    for name, dur, ok, runs, failures in v.samplers:
        sd.add(dur, sampler=name)
        ss.add(1 if ok else 0, sampler=name)
        sr.add(runs, sampler=name)
        sf.add(failures, sampler=name)

    # CPUs
    role = fam("cpu_role", "stateset", "CPU role in the current plan: home (agents), "
               "completion (IRQs and softirqs), other")
    rname = PREFIX + "cpu_role"
    for c in sorted(v.online | v.home | v.completion):
        cur = Role.HOME if c in v.home else Role.COMPLETION if c in v.completion else Role.OTHER
        for r in ROLES:
            role.add(1 if r is cur else 0, cpu=c, **{rname: r})
    rates = v.rates
    if rates is not None:
        heat = fam("cpu_heat", "gauge", "Per-CPU heat score of the last tick (policy [heat])")
        for c in sorted(rates.heat):
            heat.add(rates.heat[c], cpu=c)
    irq = fam("cpu_interrupts", "counter", "Device interrupts (numbered IRQs, not LOC/RES/IPI "
              "rows) handled on the CPU since the daemon started")
    for c, n in v.cpu_irqs_total:
        irq.add(n, cpu=c)
    si = v.softirqs
    if si is not None:
        if v.per_cpu_vectors:
            sirq = fam("cpu_softirqs", "counter", "Softirqs run on the CPU since boot, by vector "
                       "(/proc/softirqs)")
            for vec in sorted(si.counts):
                for c, n in zip(si.cpus, si.counts[vec], strict=False):
                    sirq.add(n, cpu=c, vector=vec)
        else:
            sirq = fam("cpu_softirqs", "counter", "Softirqs run on the CPU since boot, all "
                       "vectors (/proc/softirqs; per vector: policy metrics.per_cpu_softirq_vectors)")
            cols = [0] * len(si.cpus)
            for row in si.counts.values():
                for i, n in enumerate(row[:len(cols)]):
                    cols[i] += n
            for c, n in zip(si.cpus, cols, strict=True):
                sirq.add(n, cpu=c)
        vt = fam("softirqs", "counter", "Softirqs run since boot, all CPUs, by vector")
        for vec in sorted(si.counts):
            vt.add(sum(si.counts[vec]), vector=vec)
    st = v.stat
    if st is not None:
        secs = fam("cpu_irq_seconds", "counter", "Time the CPU spent in hardirq and softirq "
                   "context since boot (/proc/stat irq, softirq; 0 without "
                   "CONFIG_IRQ_TIME_ACCOUNTING)")
        for c in sorted(st.cpus):
            t = st.cpus[c]
            if t.irq is not None:
                secs.add(t.irq / USER_HZ, cpu=c, context="hardirq")
            if t.softirq is not None:
                secs.add(t.softirq / USER_HZ, cpu=c, context="softirq")
    fam("home_cpus_hot", "gauge", "Home CPUs that are hot (heat >= heat.hot)").add(v.hot_cpus)
    fam("home_irqs", "counter",
        "Device interrupts that landed on home CPUs since the daemon started").add(v.home_irqs_total)
    hst = fam("home_softirqs", "counter",
              "Softirqs that ran on home CPUs since the daemon started, by vector")
    for vec, n in v.home_softirqs_total:
        hst.add(n, vector=vec)
    disc = fam("discontinuities", "counter",
               "Counter discontinuities seen (reset, CPU hotplug, IRQ set change, clock)")
    for kind, n in v.discontinuities:
        disc.add(n, kind=kind)

    # agents
    ag = fam("agents", "gauge", "Registered agents by latency class")
    for cls, n in v.agents_by_class:
        ag.add(n, **{"class": cls})
    fam("agent_series_cap", "gauge", "Agents with step series of their own (policy "
        "metrics.max_agents); the rest are summed under agent=\"other\"").add(v.max_agents)
    ai = fam("agent", "info", "A registered agent with step series of its own: class, pid, "
             "home CPU (\"\" when it has none), placement state, pod UID and short "
             "container id from its cgroup (\"\" outside containers)")
    for a in v.agent_info:
        ai.add(1, agent=a.agent, **{"class": a.klass}, pid=a.pid,
               home_cpu="" if a.home_cpu is None else a.home_cpu, state=a.state,
               pod_uid=a.pod_uid, container=a.container)
    cm = fam("agent_chain_members", "gauge", "Processes an agent waits on (its chain), by "
             "placement state (agents with series of their own)")
    for aid, mstate, n in v.chain_members:
        cm.add(n, agent=aid, state=mstate)
    du = fam("agent_decision_undone", "gauge", "Placement decisions the do-no-harm guard "
             "undid for the agent (never retried; 1 each)")
    for aid, d in v.decisions_undone:
        du.add(1, agent=aid, decision=d)
    gu = fam("guard_undone", "counter", "Placement decisions undone because they made an "
             "agent slower, by decision kind")
    for kind, n in v.guard_undone:
        gu.add(n, decision=kind)
    if v.scan_worker_up is not None:
        fam("scan_worker_up", "gauge", "1 while the scan worker (the child process that scans "
            "every process for irqbalance and agents' chains) answers; 0 while the tuner "
            "thread scans itself until another starts").add(v.scan_worker_up)
        fam("scan_worker_failures", "counter", "Scan workers found broken (dead, silent or "
            "off the protocol), killed and replaced").add(v.scan_worker_failures)
    if v.fork_events_up is not None:
        fam("fork_events_up", "gauge", "1 while the kernel's process events tell which "
            "processes agents fork (an agent's exit restores them all); 0 while the agent "
            "tick lists them, 64 agents a tick").add(v.fork_events_up)
        fam("fork_events_overflows", "counter", "Times the process events' queue "
            "overflowed (events lost; the next tick listed every agent's forks)"
            ).add(v.fork_events_overflows)
    if v.forked is not None:
        fk = fam("forked_processes", "gauge", "Processes agents forked that inherited "
                 "agentlatd's values, remembered for their restore at the agent's exit "
                 "(state=\"remembered\"), and of those the ones journaled, which a rollback "
                 "after a crash restores too (state=\"journaled\")")
        fk.add(v.forked[0], state="remembered")
        fk.add(v.forked[1], state="journaled")
    step = fam("agent_step_seconds", "histogram", "Agent step latency reported by the agent "
               "(agent=\"other\": the agents beyond metrics.max_agents, per class)")
    les = [format_le(b) for b in stats.EXPORT_BOUNDS_S] + ["+Inf"]
    for s in v.steps:
        cum = 0
        lab = {"agent": s.agent, "class": s.klass}
        for le, c in zip(les, s.buckets, strict=True):
            cum += c
            step.add(cum, "_bucket", **lab, le=le)
        step.add(s.count, "_count", **lab)
        step.add(s.sum_s, "_sum", **lab)
    ss = fam("agent_slow_steps", "counter", "Steps above the agent's slow threshold (its "
             "deadline, else its p99) seen by the always-on slowest-steps view")
    sc = fam("agent_slow_step_seconds", "counter", "Time of the agent's slow steps by cause: "
             "runnable (waiting for a CPU), irq (its CPU's interrupts), on_cpu, blocked "
             "(schedstat over a window around each step; agentlatd agents --slow)")
    for aid, n, causes in v.slow_steps:
        ss.add(n, agent=aid)
        for cause, ns in causes:
            sc.add(ns / 1e9, agent=aid, cause=cause)
    bud = fam("class_budget_seconds", "gauge", "Step latency budget of the latency class "
              "(policy classes.NAME.budget_us; classes without one are absent)")
    for cls, b in v.class_budgets:
        bud.add(b, **{"class": cls})

    # changes
    for name, help_, rows in v.changes:
        f = fam(name, "counter", help_)
        for labels, n in rows:
            f.samples.append(("", labels, n))
    if v.active_changes is not None:
        fam("changes_active", "gauge", "Knobs currently changed (entries in the rollback "
            "journal)").add(v.active_changes)

    rl = fam("policy_reloads", "counter", "Policy reloads (SIGHUP) by result")
    for res, n in v.reloads:
        rl.add(n, result=res)
    fam("policy_last_reload_success", "gauge", "1 if the last reload succeeded (or none "
        "happened), 0 if the old policy stayed in force").add(1 if v.last_reload_ok else 0)
    return fs


_HOST = Root("/")
_btime: int | None = None


def process_families(root: Root = _HOST) -> list[Family]:
    """The standard process_* metrics of this process (read now: the scrape's IO)."""
    global _btime
    if _btime is None:
        try:
            _btime = parse_stat(root.read_text("proc/stat")).btime or 0
        except Exception:
            _btime = 0
    p = read_process(root, _btime)
    if p is None:
        return []
    out = []
    for name, type_, help_, value in (
            ("process_cpu_seconds", "counter", "Total user and system CPU time spent in seconds.",
             p.cpu_seconds),
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
             p.resident_bytes),
            ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
             p.virtual_bytes),
            ("process_start_time_seconds", "gauge",
             "Start time of the process since unix epoch in seconds.", p.start_time),
            ("process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds),
            ("process_max_fds", "gauge", "Maximum number of open file descriptors.", p.max_fds),
            ("process_threads", "gauge", "Number of OS threads in the process.", p.threads)):
        f = Family(name, type_, help_)
        f.add(value)
        out.append(f)
    return out


def render_view(v: View, openmetrics: bool = False, *, process: bool = True) -> str:
    return render(families(v) + (process_families() if process else []), openmetrics)


# ---------------------------------------------------------------------------
# outputs


def parse_listen(value: str) -> tuple[str, int] | None:
    """[metrics] listen -> (host, port); "" -> None. PolicyError when malformed.

    "127.0.0.1:9641", "[::1]:9641", "localhost:9641". A non-loopback address
    is allowed and logged as a warning when the server starts (the Kubernetes
    DaemonSet keeps it on loopback behind kube-rbac-proxy).
    """
    v = value.strip()
    if not v:
        return None
    host, sep, port_s = v.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise PolicyError(f'expected "HOST:PORT" (e.g. "127.0.0.1:9641"), got {value!r}',
                          key="metrics.listen")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise PolicyError(f"port {port} out of range 0..65535", key="metrics.listen")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def wants_openmetrics(accept: str) -> bool:
    """Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5 (Prometheus 2.x)."""
    for part in accept.split(","):
        mt, _, params = part.strip().partition(";")
        if mt.strip().lower() != "application/openmetrics-text":
            continue
        q = 1.0
        for p in params.split(";"):
            k, _, val = p.strip().partition("=")
            if k.strip() == "q":
                with contextlib.suppress(ValueError):
                    q = float(val)
        if q > 0:
            return True
    return False


def wants_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        enc, _, params = part.strip().partition(";")
        if enc.strip().lower() == "gzip" and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


Source = Callable[[], "View | None"]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    exporter: Exporter

    def health(self) -> tuple[int, bytes]:
        """/healthz: 200 while ticks keep coming (the watchdog's analogue for
        orchestrators without sd_notify, e.g. a Kubernetes livenessProbe)."""
        published, max_age = self.exporter.last_tick, self.exporter.max_age
        if published is None:
            return 503, b"starting: no tick yet\n"
        age = time.monotonic() - published
        if age > max_age:
            return 503, f"stale: last tick {age:.0f} s ago (limit {max_age:.0f} s)\n".encode()
        return 200, b"ok\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = f"agentlatd/{__version__}"
    protocol_version = "HTTP/1.1"

    def _reply(self, code: int, body: bytes, ctype: str, head: bool = False,
               headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        text = "text/plain; charset=utf-8"
        ex = self.server.exporter
        if path == "/metrics":
            om = wants_openmetrics(self.headers.get("Accept", ""))
            body = ex.render(om)
            if body is None:
                self._reply(503, b"no metrics yet: the daemon has not finished its first tick\n",
                            text, head)
                return
            hdrs: tuple[tuple[str, str], ...] = (("Vary", "Accept, Accept-Encoding"),)
            if wants_gzip(self.headers.get("Accept-Encoding", "")):
                body = gzip.compress(body, compresslevel=6)
                hdrs += (("Content-Encoding", "gzip"),)
            self._reply(200, body, OPENMETRICS_TYPE if om else CONTENT_TYPE, head, hdrs)
        elif path == "/healthz":
            code, body = self.server.health()
            self._reply(code, body, text, head)
        elif path == "/readyz":
            ok = ex.ready
            self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready: first apply pending\n",
                        text, head)
        elif path == "/":
            self._reply(200, b"agentlatd: /metrics /healthz /readyz\n", text, head)
        else:
            self._reply(404, b"not found: try /metrics\n", text, head)

    def do_GET(self) -> None:
        self._route(False)

    def do_HEAD(self) -> None:
        self._route(True)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


class Exporter:
    """Serves and/or writes metrics per policy [metrics], rendering on demand.

    source() returns the View to render (the service asks the main loop for
    one; tests pass metrics.view). configure(policy.metrics) starts, moves or
    stops the HTTP server and the textfile writer (at start and after each
    reload; PolicyError for a malformed listen value before changing
    anything). tick() after each tick (for /healthz), set_ready() once the
    first apply is done, close() at exit. HTTP: /metrics; /healthz (200 while
    a tick came within max_age seconds, else 503); /readyz (200 once ready).
    """

    def __init__(self, source: Source, *, max_age: float = 30.0) -> None:
        self.source = source
        self.max_age = max_age
        self.ready = False
        self.last_tick: float | None = None  # time.monotonic() of the last tick
        self.renders = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._listen: tuple[str, int] | None = None
        self._textfile = ""
        self._interval = 15.0
        self._tf_thread: threading.Thread | None = None
        self._tf_stop = threading.Event()
        self._textfile_errno: int | None = None
        self.textfile_errors = 0
        self.textfile_writes = 0
        self._prebound: tuple[tuple[str, int], _Server] | None = None  # bind()

    @property
    def wanted(self) -> bool:
        """Someone reads what publish() is given (the HTTP server or a textfile)."""
        return self._server is not None or bool(self._textfile)

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port) of the HTTP server, None when off."""
        if self._server is None:
            return None
        a = self._server.server_address
        return str(a[0]), int(a[1])

    def render(self, openmetrics: bool = False, *, process: bool = True) -> bytes | None:
        """Render the source's View now (any thread); None when there is none yet.

        process=False leaves out the process_* families: the textfile's reader,
        node_exporter, exports its own process_* series under the same names
        and refuses a collector that repeats them.
        """
        v = self.source()
        if v is None:
            return None
        self.renders += 1
        return render_view(v, openmetrics, process=process).encode()

    def configure(self, pol: MetricsPolicy) -> None:
        listen = parse_listen(pol.listen)
        if listen != self._listen:
            self._stop_server()
            if listen is not None:
                self._start_server(listen)
            self._listen = listen
        if pol.textfile != self._textfile or pol.textfile_interval != self._interval:
            self._stop_textfile()
            self._textfile, self._interval = pol.textfile, pol.textfile_interval
            self._textfile_errno = None
            if pol.textfile:
                self._start_textfile()

    @staticmethod
    def _bind(listen: tuple[str, int]) -> _Server:
        host, port = listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(_Server):
            address_family = family

        return Server((host, port), _Handler)

    def bind(self, pol: MetricsPolicy) -> None:
        """Bind the HTTP listener now, serve it at configure(): for the daemon's
        start, so that an address that cannot be bound fails the start before
        anything is changed (AgentlatdError naming it), where a reload only logs."""
        listen = parse_listen(pol.listen)
        if listen is None or self._prebound is not None:
            return
        try:
            self._prebound = (listen, self._bind(listen))
        except OSError as e:
            raise AgentlatdError(f"metrics.listen {pol.listen}: cannot listen there: "
                                 f"{e.strerror or e}") from None

    def unbind(self) -> None:
        """Close a listener bind() made and configure() never served."""
        if self._prebound is not None:
            self._prebound[1].server_close()
            self._prebound = None

    def _start_server(self, listen: tuple[str, int]) -> None:
        host, port = listen
        pre, self._prebound = self._prebound, None
        if pre is not None and pre[0] != listen:
            pre[1].server_close()
            pre = None
        try:
            srv = pre[1] if pre is not None else self._bind(listen)
        except OSError as e:
            # at a reload: a port in use must not stop the tuning; the outage is logged
            log.error("metrics: cannot listen on %s:%d: %s; HTTP metrics off", host, port,
                      e.strerror or e)
            return
        srv.exporter = self
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="agentlatd-metrics", daemon=True)
        self._thread.start()
        a = self.address
        if not is_loopback(host):
            log.warning("metrics: listening on %s:%s, which is not a loopback address: anyone "
                        "who can reach it can read agent ids and CPU load", host, a[1] if a else port)
        else:
            log.info("metrics: serving http://%s:%s/metrics", host, a[1] if a else port)

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _start_textfile(self) -> None:
        self._tf_stop = threading.Event()
        self._tf_thread = threading.Thread(target=self._textfile_loop, args=(self._tf_stop,),
                                           name="agentlatd-textfile", daemon=True)
        self._tf_thread.start()

    def _stop_textfile(self) -> None:
        self._tf_stop.set()
        if self._tf_thread is not None:
            self._tf_thread.join(timeout=10)
            self._tf_thread = None

    def _textfile_loop(self, stop: threading.Event) -> None:
        path, interval = self._textfile, self._interval
        while not stop.is_set():
            body = self.render(False, process=False)
            if body is not None and not stop.is_set():
                self._write_textfile(path, body)
            stop.wait(interval if body is not None else min(1.0, interval))

    def set_ready(self, ready: bool = True) -> None:
        self.ready = ready

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def _write_textfile(self, path: str, body: bytes) -> None:
        try:
            write_atomic(path, body)
        except OSError as e:
            self.textfile_errors += 1
            code = e.errno or 0
            lvl = logging.ERROR if code != self._textfile_errno else logging.DEBUG
            self._textfile_errno = code
            log.log(lvl, "metrics: cannot write textfile %s: %s (%s)", path,
                    errno.errorcode.get(code, str(code)), e.strerror)
            return
        self.textfile_writes += 1
        if self._textfile_errno is not None:
            log.info("metrics: textfile %s written again", path)
            self._textfile_errno = None

    def close(self) -> None:
        self._stop_server()
        self.unbind()
        self._listen = None
        self._stop_textfile()
        self._textfile = ""


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """tmp in the same directory -> fsync -> rename: readers see the old or the new file.

    The tmp name ends in ".tmp", which node_exporter's textfile collector
    ignores (it reads *.prom only).
    """
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
