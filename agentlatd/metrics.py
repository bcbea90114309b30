"""Prometheus metrics: text exposition format 0.0.4, written by hand.

Format: https://prometheus.io/docs/instrumenting/exposition_formats/ ("Text-based
format": # HELP / # TYPE lines, name{label="value"} value, label values escape
backslash, double quote and newline; HELP escapes backslash and newline).

Why by hand and not prometheus-client: the daemon exposes ~20 families built
from values it already holds each tick; the text format is a page of rules,
and the .deb then needs no python3-prometheus-client at run time (Debian 12
has 0.16, another dependency to track). prometheus-client stays a dev
dependency: tests parse our output with its parser
(text_string_to_metric_families), so a formatting mistake fails a test.

Two outputs, per policy [metrics] (both may be on):
  listen    "127.0.0.1:9641": HTTP GET /metrics from a thread. It serves the
            bytes rendered at the end of the last tick (one reference swap;
            no lock, no work on the scrape path), so a scrape never waits for
            a tick and never sees half a tick.
  textfile  node_exporter's textfile collector file
            (/var/lib/prometheus/node-exporter/agentlatd.prom): written
            atomically each tick (tmp in the same directory, fsync, rename),
            the way node_exporter's docs ask, so it never reads a torn file.

Metric names follow https://prometheus.io/docs/practices/naming/: base units
(seconds), _total for counters, rates of kernel counters as counters too
(agentlatd_home_irqs_total grows by the interrupts that landed on home CPUs
each tick; rate() over it is the interrupts/s). The per-tick rates are also
gauges, for a quick look without PromQL.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import ipaddress
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentlatd import __version__
from agentlatd.apply.engine import (
    CHANGED,
    CLAMPED,
    FAILED,
    MANAGED,
    RESTORED,
    UNSUPPORTED,
    ApplyReport,
    Drift,
    RollbackReport,
)
from agentlatd.cpuset import CpuSet
from agentlatd.errors import PolicyError
from agentlatd.model.machine import Rates
from agentlatd.policy import LATENCY_CLASSES, MetricsPolicy

log = logging.getLogger("agentlatd.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "agentlatd_"
QUANTILES = (("0.5", "p50_ns"), ("0.99", "p99_ns"), ("0.999", "p999_ns"))

Labels = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------------
# the exposition format


@dataclass(slots=True)
class Family:
    """One metric family: name (without PREFIX), type, help, samples."""

    name: str
    type: str  # "gauge" | "counter" | "summary" | "untyped"
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)  # (suffix, labels, value)

    def add(self, value: float, suffix: str = "", **labels: Any) -> None:
        self.samples.append((suffix, tuple((k, str(v)) for k, v in labels.items()), value))


def escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def render(families: Iterable[Family]) -> str:
    """Families as exposition text; families without samples are left out."""
    out: list[str] = []
    for f in families:
        if not f.samples:
            continue
        name = PREFIX + f.name
        out.append(f"# HELP {name} {escape_help(f.help)}")
        out.append(f"# TYPE {name} {f.type}")
        for suffix, labels, value in f.samples:
            lab = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
            out.append(f"{name}{suffix}{{{lab}}} {format_value(value)}" if lab
                       else f"{name}{suffix} {format_value(value)}")
    return "\n".join(out) + "\n" if out else ""


# ---------------------------------------------------------------------------
# what the daemon tells us


@dataclass(slots=True)
class _Sampler:
    duration_s: float = 0.0
    success: bool = True
    runs: int = 0
    failures: int = 0


def _get(row: Mapping[str, Any], key: str) -> Any:
    return row.get(key)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Metrics:
    """The daemon's metrics state: counters and the last tick's gauges.

    Fed by the daemon loop (one thread); render() builds the text. Counters
    are cumulative since the daemon started (Prometheus handles the reset at
    a restart through agentlatd_start_time_seconds / rate()).
    """

    def __init__(self) -> None:
        self.start_time = time.time()
        self.ticks = 0
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
        self.completion: CpuSet = CpuSet()
        self.home: CpuSet = CpuSet()
        self.hot_threshold: float | None = None
        self.hot_cpus: CpuSet = CpuSet()
        self.agents: list[Mapping[str, Any]] = []
        self.guard_undone: dict[str, int] = {}  # decision kind -> times the guard undid it
        # cumulative interrupts / softirqs that landed on home CPUs
        self.home_irqs_total = 0.0
        self.home_softirqs_total: dict[str, float] = {}
        self.discontinuities: dict[str, int] = {}

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
                _inc(self.failed, (r.knob, r.errclass or "unknown"))
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
            _inc(self.drifted, (d.knob, d.action))

    def observe_reload(self, ok: bool) -> None:
        self.reloads["ok" if ok else "error"] += 1
        self.last_reload_ok = ok

    # -- the tick --------------------------------------------------------
    def observe_tick(self, *, duration_s: float, rates: Rates | None = None,
                     completion: CpuSet | None = None, home: CpuSet | None = None,
                     hot_threshold: float | None = None,
                     agents: Iterable[Mapping[str, Any]] | None = None,
                     active_changes: int | None = None,
                     hot_cpus: Iterable[int] | None = None,
                     guard_undone: Mapping[str, int] | None = None) -> None:
        """The end of one tick. agents: rows of `agentlatd agents --json` (agent_id,
        latency_class, home_cpu, steps, p50_ns, p99_ns, p999_ns, optionally sum_ns);
        missing keys are skipped. hot_cpus: the home CPUs the placement calls hot
        (heat >= heat.hot for heat.hot_ticks ticks); without it, heat >= hot_threshold
        in this tick."""
        self.ticks += 1
        self.tick_duration_s = duration_s
        self.last_tick_time = time.time()
        if completion is not None:
            self.completion = completion
        if home is not None:
            self.home = home
        if hot_threshold is not None:
            self.hot_threshold = hot_threshold
        if agents is not None:
            self.agents = list(agents)
        if active_changes is not None:
            self.active_changes = active_changes
        if rates is not None:
            self.rates = rates
            for d in rates.discontinuities:
                _inc(self.discontinuities, d.kind)
            dt = rates.interval_s if rates.interval_s > 0 and math.isfinite(rates.interval_s) else 0.0
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

    # -- output ----------------------------------------------------------
    def families(self) -> list[Family]:
        fs: list[Family] = []

        def fam(name: str, type_: str, help_: str) -> Family:
            f = Family(name, type_, help_)
            fs.append(f)
            return f

        fam("build_info", "gauge", "agentlatd version (always 1)").add(1, version=__version__)
        fam("start_time_seconds", "gauge", "Unix time the daemon started").add(self.start_time)
        fam("ready", "gauge", "1 once the first apply succeeded (READY=1 sent to systemd)").add(
            1 if self.ready else 0)
        fam("ticks_total", "counter", "Ticks (sample, plan, apply) completed").add(self.ticks)
        fam("tick_duration_seconds", "gauge", "Duration of the last tick").add(self.tick_duration_s)
        if self.last_tick_time:
            fam("last_tick_timestamp_seconds", "gauge", "Unix time the last tick ended").add(
                self.last_tick_time)

        sd = fam("sampler_duration_seconds", "gauge", "Duration of the sampler's last run")
        ss = fam("sampler_success", "gauge", "1 if the sampler's last run succeeded, else 0")
        sr = fam("sampler_runs_total", "counter", "Runs of the sampler")
        sf = fam("sampler_failures_total", "counter", "Failed runs of the sampler")
        for name in sorted(self.samplers):
            s = self.samplers[name]
            sd.add(s.duration_s, sampler=name)
            ss.add(1 if s.success else 0, sampler=name)
            sr.add(s.runs, sampler=name)
            sf.add(s.failures, sampler=name)

        # CPUs
        role = fam("cpu_role", "gauge", "CPU role in the current plan (always 1; role label)")
        for c in sorted(self.completion):
            role.add(1, cpu=c, role="completion")
        for c in sorted(self.home):
            role.add(1, cpu=c, role="home")
        r = self.rates
        if r is not None:
            heat = fam("cpu_heat", "gauge", "Per-CPU heat score of the last tick (policy [heat])")
            for c in sorted(r.heat):
                heat.add(r.heat[c], cpu=c)
            irq = fam("cpu_irqs_per_second", "gauge",
                      "Device interrupts per second on the CPU in the last tick")
            for c in sorted(r.irq_per_cpu):
                irq.add(r.irq_per_cpu[c], cpu=c)
            sirq = fam("cpu_softirqs_per_second", "gauge",
                       "Softirqs per second on the CPU in the last tick, by vector")
            for vec in sorted(r.softirq_rate):
                for c in sorted(r.softirq_rate[vec]):
                    sirq.add(r.softirq_rate[vec][c], cpu=c, vector=vec)
            share = fam("cpu_irq_time_ratio", "gauge",
                        "Share of the CPU's time in hardirq and softirq context in the last tick")
            for c in sorted(r.irq_time_share):
                share.add(r.irq_time_share[c], cpu=c)
            fam("home_irqs_per_second", "gauge",
                "Device interrupts per second landing on home CPUs in the last tick").add(
                sum(r.irq_per_cpu.get(c, 0.0) for c in self.home))
            hs = fam("home_softirqs_per_second", "gauge",
                     "Softirqs per second landing on home CPUs in the last tick, by vector")
            for vec in sorted(r.softirq_rate):
                hs.add(sum(r.softirq_rate[vec].get(c, 0.0) for c in self.home), vector=vec)
            fam("home_cpus_hot", "gauge", "Home CPUs that are hot (heat >= heat.hot)").add(
                len(self.hot_cpus))
        fam("home_irqs_total", "counter",
            "Device interrupts that landed on home CPUs since the daemon started").add(
            self.home_irqs_total)
        hst = fam("home_softirqs_total", "counter",
                  "Softirqs that ran on home CPUs since the daemon started, by vector")
        for vec in sorted(self.home_softirqs_total):
            hst.add(self.home_softirqs_total[vec], vector=vec)
        disc = fam("discontinuities_total", "counter",
                   "Counter discontinuities seen (reset, CPU hotplug, IRQ set change, clock)")
        for kind in sorted(self.discontinuities):
            disc.add(self.discontinuities[kind], kind=kind)

        # agents
        by_class: dict[str, int] = {}
        step = fam("agent_step_seconds", "summary", "Agent step latency reported by the agent")
        home_cpu = fam("agent_home_cpu", "gauge", "The agent's home CPU")
        for a in sorted(self.agents, key=lambda a: str(_get(a, "agent_id"))):
            aid = str(_get(a, "agent_id"))
            cls = str(_get(a, "latency_class") or "")
            by_class[cls] = by_class.get(cls, 0) + 1
            for q, key in QUANTILES:
                v = _get(a, key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    step.add(v / 1e9, agent_id=aid, latency_class=cls, quantile=q)
            n = _get(a, "steps")
            if isinstance(n, int) and not isinstance(n, bool):
                step.add(n, "_count", agent_id=aid, latency_class=cls)
            total = _get(a, "sum_ns")  # optional: the histogram's exact sum
            mean = _get(a, "mean_ns")
            if not _num(total) and _num(mean) and isinstance(n, int):
                total = mean * n
            if _num(total):
                step.add(total / 1e9, "_sum", agent_id=aid, latency_class=cls)
            hc = _get(a, "home_cpu")
            if isinstance(hc, int) and not isinstance(hc, bool):
                home_cpu.add(hc, agent_id=aid)
        # completion chains: the processes each agent waits on, under the agent
        members = fam("agent_chain_members", "gauge",
                      "Processes an agent waits on (its chain), by placement state")
        refused = fam("agent_decision_undone", "gauge",
                      "Placement decisions the do-no-harm guard undid for the agent (never retried)")
        for a in sorted(self.agents, key=lambda a: str(_get(a, "agent_id"))):
            aid = str(_get(a, "agent_id"))
            chain = _get(a, "chain")
            if isinstance(chain, list):
                states: dict[str, int] = {}
                for m in chain:
                    if isinstance(m, Mapping):
                        st = str(m.get("state", ""))
                        states[st] = states.get(st, 0) + 1
                for st in sorted(states):
                    members.add(states[st], agent_id=aid, state=st)
            ref = _get(a, "refused")
            if isinstance(ref, list):
                for dec in sorted(str(x) for x in ref):
                    refused.add(1, agent_id=aid, decision=dec)
        undone = fam("guard_undone_total", "counter",
                     "Placement decisions undone because they made an agent slower, by kind")
        for kind in sorted(self.guard_undone):
            undone.add(self.guard_undone[kind], decision=kind)
        ag = fam("agents", "gauge", "Registered agents by latency class")
        for cls in sorted(set(LATENCY_CLASSES) | set(by_class)):
            ag.add(by_class.get(cls, 0), latency_class=cls)

        # changes
        for name, help_, counts in (
                ("changes_applied_total", "Knob writes applied and read back", self.applied),
                ("changes_clamped_total", "Knob writes the kernel clamped or ignored", self.clamped),
                ("changes_unsupported_total", "Knob writes the device or kernel does not support",
                 self.unsupported),
                ("changes_managed_total", "IRQ affinity writes refused: kernel-managed IRQ",
                 self.managed),
                ("changes_rolled_back_total", "Originals restored by rollback", self.rolled_back),
                ("changes_rollback_failed_total", "Originals rollback could not restore",
                 self.rollback_failed)):
            f = fam(name, "counter", help_)
            for knob in sorted(counts):
                f.add(counts[knob], knob=knob)
        f = fam("changes_failed_total", "counter", "Knob writes that failed, by error class")
        for (knob, ec) in sorted(self.failed):
            f.add(self.failed[(knob, ec)], knob=knob, errclass=ec)
        f = fam("changes_drifted_total", "counter",
                "Knobs another writer changed after agentlatd set them, by action taken")
        for (knob, action) in sorted(self.drifted):
            f.add(self.drifted[(knob, action)], knob=knob, action=action)
        if self.active_changes is not None:
            fam("changes_active", "gauge", "Knobs currently changed (entries in the rollback "
                "journal)").add(self.active_changes)

        rl = fam("policy_reloads_total", "counter", "Policy reloads (SIGHUP) by result")
        for res in ("ok", "error"):
            rl.add(self.reloads[res], result=res)
        fam("policy_last_reload_success", "gauge", "1 if the last reload succeeded (or none "
            "happened), 0 if the old policy stayed in force").add(1 if self.last_reload_ok else 0)
        return fs

    def render(self) -> str:
        return render(self.families())


def _inc(d: dict[Any, int], key: Any, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


# ---------------------------------------------------------------------------
# outputs


def parse_listen(value: str) -> tuple[str, int] | None:
    """[metrics] listen -> (host, port); "" -> None. PolicyError when malformed.

    "127.0.0.1:9641", "[::1]:9641", "localhost:9641". A non-loopback address
    is allowed (the Kubernetes DaemonSet listens on the node's address for
    Prometheus) and logged as a warning when the server starts.
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


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    body: bytes = b""
    published: float | None = None  # time.monotonic() of the last publish
    ready: bool = False
    max_age: float = 30.0

    def health(self) -> tuple[int, bytes]:
        """/healthz: 200 while ticks keep publishing (the watchdog's analogue for
        orchestrators without sd_notify, e.g. a Kubernetes livenessProbe)."""
        if self.published is None:
            return 503, b"starting: no tick published yet\n"
        age = time.monotonic() - self.published
        if age > self.max_age:
            return 503, f"stale: last tick {age:.0f} s ago (limit {self.max_age:.0f} s)\n".encode()
        return 200, b"ok\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = f"agentlatd/{__version__}"
    protocol_version = "HTTP/1.1"

    def _reply(self, code: int, body: bytes, ctype: str, head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _route(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        text = "text/plain; charset=utf-8"
        if path == "/metrics":
            self._reply(200, self.server.body, CONTENT_TYPE, head)
        elif path == "/healthz":
            code, body = self.server.health()
            self._reply(code, body, text, head)
        elif path == "/readyz":
            ok = self.server.ready
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
    """Serves and/or writes the rendered metrics per policy [metrics].

    configure(policy.metrics) starts, moves or stops the HTTP server and sets
    the textfile path (call it at start and after each reload; it raises
    PolicyError for a malformed listen value before changing anything).
    publish(text) after each tick; set_ready() once the first apply is done.
    close() at exit. HTTP paths: /metrics; /healthz (200 while a tick was
    published within max_age seconds, else 503); /readyz (200 once ready).
    """

    def __init__(self, *, max_age: float = 30.0) -> None:
        self.max_age = max_age
        self._ready = False
        self._published: float | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._listen: tuple[str, int] | None = None
        self._textfile = ""
        self._body = b""
        self._textfile_errno: int | None = None
        self.textfile_errors = 0

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port) of the HTTP server, None when off."""
        if self._server is None:
            return None
        a = self._server.server_address
        return str(a[0]), int(a[1])

    def configure(self, pol: MetricsPolicy) -> None:
        listen = parse_listen(pol.listen)
        if listen != self._listen:
            self._stop_server()
            if listen is not None:
                self._start_server(listen)
            self._listen = listen
        if pol.textfile != self._textfile:
            self._textfile = pol.textfile
            self._textfile_errno = None
            if pol.textfile and self._body:
                self._write_textfile(self._body)

    def _start_server(self, listen: tuple[str, int]) -> None:
        host, port = listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(_Server):
            address_family = family

        try:
            srv = Server((host, port), _Handler)
        except OSError as e:
            # a port in use must not stop the tuning; the metric outage is logged
            log.error("metrics: cannot listen on %s:%d: %s; HTTP metrics off", host, port,
                      e.strerror or e)
            return
        srv.body = self._body
        srv.published, srv.ready, srv.max_age = self._published, self._ready, self.max_age
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

    def set_ready(self, ready: bool = True) -> None:
        self._ready = ready
        if self._server is not None:
            self._server.ready = ready

    def publish(self, text: str) -> None:
        body = text.encode()
        self._body = body
        self._published = time.monotonic()
        if self._server is not None:
            self._server.body = body  # one reference swap: a scrape sees one whole tick
            self._server.published = self._published
        if self._textfile:
            self._write_textfile(body)

    def _write_textfile(self, body: bytes) -> None:
        try:
            write_atomic(self._textfile, body)
        except OSError as e:
            self.textfile_errors += 1
            code = e.errno or 0
            lvl = logging.ERROR if code != self._textfile_errno else logging.DEBUG
            self._textfile_errno = code
            log.log(lvl, "metrics: cannot write textfile %s: %s (%s)", self._textfile,
                    errno.errorcode.get(code, str(code)), e.strerror)
            return
        if self._textfile_errno is not None:
            log.info("metrics: textfile %s written again", self._textfile)
            self._textfile_errno = None

    def close(self) -> None:
        self._stop_server()
        self._listen = None


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
