"""Prometheus metrics (agentlatd/metrics.py): the text we write is parsed by
prometheus-client's own parser (text_string_to_metric_families), the HTTP
endpoint and the node_exporter textfile work, and a real daemon's endpoint
scrapes and parses with the families the issue lists: per-CPU heat and
IRQ/softirq rates, IRQs and softirqs on home CPUs, per-agent step quantiles
and counts, changes applied / failed / rolled back / drifted, per-sampler
duration and success.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from agentshelpers import daemon as agent_daemon
from agentshelpers import policy_text as agent_policy
from agentshelpers import workdir
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families
from servicehelpers import NotifySocket, free_port, policy_text, run_daemon, veth_netns, wait_until

from agentlatd import stepstats as stats
from agentlatd.agents.agent import AgentState
from agentlatd.agents.chainrow import ChainRow
from agentlatd.apply.engine import ApplyReport, Drift, KnobResult, RollbackReport
from agentlatd.cpuset import CpuSet
from agentlatd.errors import PolicyError
from agentlatd.metrics import (
    Exporter,
    Family,
    Metrics,
    parse_listen,
    render,
    render_view,
    write_atomic,
)
from agentlatd.model.container import ContainerId
from agentlatd.model.machine import Discontinuity, Rates
from agentlatd.policy import MetricsPolicy, default, loads
from agentlatd.sample.softirqs import Softirqs
from agentlatd.sample.stat import CpuTimes, Stat
from agentlatd.sample.tasks import ProcId
from agentlatd.steps.slowview import CAUSES, Cause, summarize

pytestmark = pytest.mark.timeout(120)


def _parse(text: str) -> dict[str, list[Any]]:
    """family name -> samples, through prometheus-client's parser (raises on bad text)."""
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, []).extend(fam.samples)
    return out


def _value(samples: list[Any], name: str, **labels: str) -> float:
    hits = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v
                                                                for k, v in labels.items())]
    assert len(hits) == 1, f"{name}{labels}: {hits} in {samples}"
    return float(hits[0])


def _rates() -> Rates:
    return Rates(
        interval_s=2.0,
        irq_per_cpu={0: 5000.0, 1: 10.0, 2: 0.0},
        irq_rate={45: {0: 5000.0}},
        softirq_rate={"NET_RX": {0: 800.0, 1: 4.0, 2: 0.0}, "TIMER": {0: 250.0, 1: 250.0, 2: 250.0}},
        irq_time_share={0: 0.12, 1: 0.0, 2: 0.0},
        steal_share={},
        heat={0: 1.9, 1: 0.6, 2: 0.0},
        discontinuities=(Discontinuity("counter_reset", "irq 45"),),
    )


# -- pure: the view and the text formats ------------------------------------------


@dataclass
class FakeAgent:
    """What Metrics.view() reads of a registered agent (agents/registry.py Agent)."""

    agent_id: str
    latency_class: str
    proc: ProcId
    home_cpu: int | None = None
    state: AgentState = AgentState.PLACED
    hist: stats.Histogram = field(default_factory=stats.Histogram.empty)
    container: ContainerId = field(default_factory=ContainerId)


def _softirqs() -> Softirqs:
    return Softirqs(cpus=(0, 1, 2), counts={"NET_RX": (800, 4, 0), "TIMER": (250, 250, 250)})


def _stat() -> Stat:
    t = CpuTimes(user=1, nice=0, system=1, idle=10, iowait=0, irq=300, softirq=150)
    return Stat(all_cpus=None, cpus={0: t, 1: t._replace(irq=0, softirq=7)}, intr_total=None,
                intr=(), softirq_total=None, softirq=())


def _observed() -> tuple[Metrics, list[FakeAgent]]:
    m = Metrics()
    m.observe_sampler("counters", 0.0021, True)
    m.observe_sampler("machine", 0.0100, False)
    m.observe_tick(duration_s=0.015, rates=_rates(), completion=CpuSet({0}), home=CpuSet({1, 2}),
                   online=CpuSet({0, 1, 2, 3}), hot_threshold=0.5, active_changes=3,
                   softirqs=_softirqs(), stat=_stat(), failed=True)
    m.observe_apply(ApplyReport(results=(
        KnobResult("net.rps_cpus", "eth0/rx-0", "changed"),
        KnobResult("net.rps_cpus", "eth0/rx-1", "changed"),
        KnobResult("irq.affinity", "45", "failed", errclass="no_space"),
        KnobResult("irq.affinity", "46", "managed"),
        KnobResult("net.coalesce", "eth0", "unsupported"),
        KnobResult("net.xps_cpus", "eth0/tx-0", "unchanged"),
    ), journal="/run/agentlatd/journal.json"))
    m.observe_drift([Drift("irq.affinity", "47", "1", "0-3", "yielded")])
    m.observe_rollback(RollbackReport(results=(
        KnobResult("net.rps_cpus", "eth0/rx-0", "restored"),
        KnobResult("net.rps_cpus", "eth0/rx-1", "failed"),
    ), journal="j", journal_removed=False))
    m.observe_reload(False)
    m.ready = True
    planner = FakeAgent("planner", "interactive", ProcId(100, 1), home_cpu=1)
    planner.hist.add_many([40_000] * 99 + [3_000_000])  # 40 us x 99, 3 ms x 1
    return m, [planner]


def test_rendered_text_parses_and_carries_every_family() -> None:
    m, agents = _observed()
    s = _parse(m.render(agents, default()))

    assert _value(s["agentlatd_cpu_heat"], "agentlatd_cpu_heat", cpu="0") == pytest.approx(1.9)
    # kernel counters as counters: per-CPU softirqs (all vectors), per vector, irq time
    assert _value(s["agentlatd_cpu_softirqs"], "agentlatd_cpu_softirqs_total", cpu="0") == 1050
    assert _value(s["agentlatd_softirqs"], "agentlatd_softirqs_total", vector="NET_RX") == 804
    assert _value(s["agentlatd_cpu_irq_seconds"], "agentlatd_cpu_irq_seconds_total", cpu="0",
                  context="hardirq") == pytest.approx(300 / os.sysconf("SC_CLK_TCK"))
    # device interrupts per CPU: the tick's rate x its interval (2 s)
    assert _value(s["agentlatd_cpu_interrupts"], "agentlatd_cpu_interrupts_total", cpu="0") == 10000
    # no pre-computed rates any more: rate() is Prometheus's job
    assert not [n for n in s if n.endswith("_per_second") or n.endswith("_ratio")], list(s)
    # the role stateset: one sample per CPU x role, 1 for the current one
    role = s["agentlatd_cpu_role"]
    assert _value(role, "agentlatd_cpu_role", cpu="1", agentlatd_cpu_role="home") == 1
    assert _value(role, "agentlatd_cpu_role", cpu="1", agentlatd_cpu_role="completion") == 0
    assert _value(role, "agentlatd_cpu_role", cpu="3", agentlatd_cpu_role="other") == 1
    # on home CPUs: CPU 1 and 2 only (CPU 0 is a completion CPU); rate x 2 s
    assert _value(s["agentlatd_home_irqs"], "agentlatd_home_irqs_total") == 20
    assert _value(s["agentlatd_home_softirqs"], "agentlatd_home_softirqs_total",
                  vector="TIMER") == 1000
    assert _value(s["agentlatd_home_cpus_hot"], "agentlatd_home_cpus_hot") == 1  # CPU 1: 0.6 >= 0.5
    # the step histogram: cumulative buckets, +Inf = count, sum in seconds
    step = s["agentlatd_agent_step_seconds"]
    lab = {"agent": "planner", "class": "interactive"}
    assert _value(step, "agentlatd_agent_step_seconds_bucket", le="4e-05", **lab) == 0
    assert _value(step, "agentlatd_agent_step_seconds_bucket", le="6.3e-05", **lab) == 99
    assert _value(step, "agentlatd_agent_step_seconds_bucket", le="0.0025", **lab) == 99
    assert _value(step, "agentlatd_agent_step_seconds_bucket", le="0.004", **lab) == 100
    assert _value(step, "agentlatd_agent_step_seconds_bucket", le="+Inf", **lab) == 100
    assert _value(step, "agentlatd_agent_step_seconds_count", **lab) == 100
    assert _value(step, "agentlatd_agent_step_seconds_sum", **lab) == pytest.approx(
        (99 * 40_000 + 3_000_000) / 1e9)
    les = [x.labels["le"] for x in step if x.name.endswith("_bucket")]
    assert les[0] == "1e-05" and les[-2] == "10.0" and les[-1] == "+Inf" and len(les) == 32
    # identities are info metrics: the home CPU is a label, not a value
    assert _value(s["agentlatd_agent_info"], "agentlatd_agent_info", agent="planner", home_cpu="1",
                  pid="100") == 1
    assert _value(s["agentlatd_agents"], "agentlatd_agents", **{"class": "interactive"}) == 1
    assert _value(s["agentlatd_agents"], "agentlatd_agents", **{"class": "background"}) == 0
    assert _value(s["agentlatd_class_budget_seconds"], "agentlatd_class_budget_seconds",
                  **{"class": "interactive"}) == pytest.approx(200e-6)
    # changes
    assert _value(s["agentlatd_changes_applied"], "agentlatd_changes_applied_total",
                  knob="net.rps_cpus") == 2
    assert _value(s["agentlatd_changes_failed"], "agentlatd_changes_failed_total",
                  knob="irq.affinity", errclass="no_space") == 1
    assert _value(s["agentlatd_changes_managed"], "agentlatd_changes_managed_total",
                  knob="irq.affinity") == 1
    assert _value(s["agentlatd_changes_rolled_back"], "agentlatd_changes_rolled_back_total",
                  knob="net.rps_cpus") == 1
    assert _value(s["agentlatd_changes_rollback_failed"],
                  "agentlatd_changes_rollback_failed_total", knob="net.rps_cpus") == 1
    drifted = s["agentlatd_changes_drifted"]
    assert _value(drifted, "agentlatd_changes_drifted_total", knob="irq.affinity",
                  action="yielded") == 1
    # every device knob starts at 0, so increase() has a series before the first drift
    assert _value(drifted, "agentlatd_changes_drifted_total", knob="net.xps_cpus",
                  action="reasserted") == 0
    assert _value(s["agentlatd_changes_active"], "agentlatd_changes_active") == 3
    # ticks and samplers
    assert _value(s["agentlatd_tick_failures"], "agentlatd_tick_failures_total") == 1
    assert _value(s["agentlatd_tick_seconds"], "agentlatd_tick_seconds_total") == pytest.approx(0.015)
    assert _value(s["agentlatd_sampler_success"], "agentlatd_sampler_success",
                  sampler="machine") == 0
    assert _value(s["agentlatd_sampler_duration_seconds"], "agentlatd_sampler_duration_seconds",
                  sampler="counters") == pytest.approx(0.0021)
    assert _value(s["agentlatd_sampler_failures"], "agentlatd_sampler_failures_total",
                  sampler="machine") == 1
    assert _value(s["agentlatd_discontinuities"], "agentlatd_discontinuities_total",
                  kind="counter_reset") == 1
    assert _value(s["agentlatd_policy_reloads"], "agentlatd_policy_reloads_total",
                  result="error") == 1
    assert _value(s["agentlatd_ready"], "agentlatd_ready") == 1
    # the daemon's own cost, under the standard names
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds", "process_max_fds", "process_virtual_memory_bytes"):
        assert name in s, name
    assert _value(s["process_resident_memory_bytes"], "process_resident_memory_bytes") > 1e6
    assert abs(_value(s["process_start_time_seconds"], "process_start_time_seconds")
               - (time.time() - (time.monotonic() - _PROC_T0))) < 120
    # each series once: no (name, labels) twice
    keys = [(x.name, tuple(sorted(x.labels.items()))) for v in s.values() for x in v]
    assert len(keys) == len(set(keys))


_PROC_T0 = time.monotonic()


def test_openmetrics_parses_with_the_openmetrics_parser() -> None:
    """OpenMetrics 1.0: counters under their base name, real info and stateset
    types, "# EOF" last; prometheus_client's strict OpenMetrics parser reads it."""
    m, agents = _observed()
    text = m.render(agents, default(), openmetrics=True)
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in om_families(text)}
    assert fams["agentlatd_ticks"].type == "counter"
    assert fams["agentlatd_build"].type == "info"
    assert fams["agentlatd_agent"].type == "info"
    assert fams["agentlatd_cpu_role"].type == "stateset"
    assert fams["agentlatd_agent_step_seconds"].type == "histogram"
    assert fams["process_cpu_seconds"].type == "counter"
    assert "# TYPE agentlatd_ticks counter" in text and "agentlatd_ticks_total 1" in text


def test_step_series_are_capped_and_the_rest_summed_under_other() -> None:
    pol = dataclasses.replace(default(), metrics=MetricsPolicy(max_agents=2))
    m = Metrics()
    m.observe_tick(duration_s=0.0)
    agents = [FakeAgent(f"a{i}", "normal", ProcId(10 + i, 1)) for i in range(5)]
    for i, a in enumerate(agents):
        a.hist.add_many([100_000 * (i + 1)] * (i + 1))
    s = _parse(m.render(agents, pol))
    counts = {(x.labels["agent"], x.labels["class"]): x.value
              for x in s["agentlatd_agent_step_seconds"] if x.name.endswith("_count")}
    # the first two agents seen get series of their own; a2..a4 are summed: 3+4+5 steps
    assert counts == {("a0", "normal"): 1, ("a1", "normal"): 2, ("other", "normal"): 12}
    assert {x.labels["agent"] for x in s["agentlatd_agent_info"]} == {"a0", "a1"}
    # a slot freed by a0 goes to the next new agent, never to one already in "other"
    agents = [*agents[1:], FakeAgent("a5", "normal", ProcId(20, 1))]
    s = _parse(m.render(agents, pol))
    owners = {x.labels["agent"] for x in s["agentlatd_agent_step_seconds"]}
    assert owners == {"a1", "a5", "other"}


def test_other_step_counters_never_go_down_when_an_agent_leaves() -> None:
    """agent="other" sums several agents; one leaving must not lower the sum, or
    rate() reads a counter reset and the fleet p99 jumps."""
    pol = dataclasses.replace(default(), metrics=MetricsPolicy(max_agents=0))
    m = Metrics()
    m.observe_tick(duration_s=0.0)
    a, b = FakeAgent("a", "normal", ProcId(1, 1)), FakeAgent("b", "normal", ProcId(2, 1))
    a.hist.add_many([50_000] * 10)
    b.hist.add_many([5_000_000] * 5)
    before = m.view([a, b], pol).steps
    a.hist.add_many([50_000] * 3)  # steps after the last view, before it leaves: not seen
    after = m.view([b], pol).steps
    assert [(x.agent, x.count) for x in before] == [("other", 15)]
    assert [(x.agent, x.count) for x in after] == [("other", 15)]
    assert all(x >= y for x, y in zip(after[0].buckets, before[0].buckets, strict=True))
    assert after[0].sum_s == pytest.approx(before[0].sum_s)


def test_chain_members_and_undone_decisions_in_the_metrics() -> None:
    m = Metrics()
    a = FakeAgent("planner", "interactive", ProcId(100, 1), home_cpu=1)
    rows = {a.proc: ChainRow(("placed", "placed", "unmovable"), ("exclusive",))}
    m.observe_tick(duration_s=0.01, guard_undone={"exclusive": 1})
    fams = _parse(render_view(m.view([a], None, lambda ag: rows[ag.proc])))
    members = fams["agentlatd_agent_chain_members"]
    assert _value(members, "agentlatd_agent_chain_members", agent="planner", state="placed") == 2
    assert _value(members, "agentlatd_agent_chain_members", agent="planner",
                  state="unmovable") == 1
    assert _value(fams["agentlatd_agent_decision_undone"], "agentlatd_agent_decision_undone",
                  agent="planner", decision="exclusive") == 1
    assert _value(fams["agentlatd_guard_undone"], "agentlatd_guard_undone_total",
                  decision="exclusive") == 1


def test_the_scan_worker_in_the_metrics_only_when_the_daemon_has_one() -> None:
    m = Metrics()
    m.observe_tick(duration_s=0.01)
    assert "agentlatd_scan_worker_up" not in _parse(render_view(m.view()))
    m.observe_tick(duration_s=0.01, scan_worker=(False, 3))  # broken 3 times, none now
    fams = _parse(render_view(m.view()))
    assert _value(fams["agentlatd_scan_worker_up"], "agentlatd_scan_worker_up") == 0
    assert _value(fams["agentlatd_scan_worker_failures"],
                  "agentlatd_scan_worker_failures_total") == 3


def test_fork_events_in_the_metrics_only_when_reported() -> None:
    m = Metrics()
    m.observe_tick(duration_s=0.01)
    assert "agentlatd_fork_events_up" not in _parse(render_view(m.view()))
    m.observe_tick(duration_s=0.01, fork_events=(False, 2))  # listing, after 2 overflows
    fams = _parse(render_view(m.view()))
    assert _value(fams["agentlatd_fork_events_up"], "agentlatd_fork_events_up") == 0
    assert _value(fams["agentlatd_fork_events_overflows"],
                  "agentlatd_fork_events_overflows_total") == 2


def test_forked_processes_in_the_metrics_only_when_reported() -> None:
    m = Metrics()
    m.observe_tick(duration_s=0.01)
    assert "agentlatd_forked_processes" not in _parse(render_view(m.view()))
    m.observe_tick(duration_s=0.01, forked=(5, 3))
    fams = _parse(render_view(m.view()))
    assert {x.labels["state"]: x.value for x in fams["agentlatd_forked_processes"]} == {
        "remembered": 5, "journaled": 3}


def test_per_cpu_softirq_vectors_only_when_the_policy_asks() -> None:
    m = Metrics()
    m.observe_tick(duration_s=0.0, softirqs=_softirqs())
    off = _parse(m.render((), default()))["agentlatd_cpu_softirqs"]
    assert {tuple(sorted(x.labels)) for x in off} == {("cpu",)} and len(off) == 3
    pol = dataclasses.replace(default(), metrics=MetricsPolicy(per_cpu_softirq_vectors=True))
    on = _parse(m.render((), pol))["agentlatd_cpu_softirqs"]
    assert {tuple(sorted(x.labels)) for x in on} == {("cpu", "vector")} and len(on) == 6


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.observe_tick(duration_s=0.0)
    nasty = 'a"b\\c\nd'
    a = FakeAgent(nasty, "normal", ProcId(1, 1))
    a.hist.add(1000)
    text = m.render([a], default())
    assert 'agent="a\\"b\\\\c\\nd"' in text
    s = _parse(text)
    assert _value(s["agentlatd_agent_step_seconds"], "agentlatd_agent_step_seconds_count",
                  agent=nasty) == 1
    om_families(m.render([a], default(), openmetrics=True))


def test_sampler_context_manager_records_failure_and_reraises() -> None:
    m = Metrics()
    with m.sampler("ok"):
        pass
    with pytest.raises(RuntimeError), m.sampler("boom"):
        raise RuntimeError("x")
    assert m.samplers["ok"].success and not m.samplers["boom"].success
    assert m.samplers["boom"].failures == 1


def test_render_skips_empty_families_and_formats_values() -> None:
    f = Family("agentlatd_x", "gauge", "help with \\ and\nnewline")
    f.add(float("inf"), a="1")
    f.add(1e-7)
    text = render([f, Family("agentlatd_empty", "gauge", "nothing")])
    assert "agentlatd_empty" not in text
    assert "# HELP agentlatd_x help with \\\\ and\\nnewline" in text
    assert 'agentlatd_x{a="1"} +Inf' in text
    _parse(text)


def test_listen_and_textfile_together_are_refused() -> None:
    """Both on would export every series twice (once through node_exporter)."""
    with pytest.raises(PolicyError) as e:
        loads('[metrics]\nlisten = "127.0.0.1:9641"\ntextfile = "/tmp/x.prom"\n')
    assert e.value.key == "metrics.textfile" and "twice" in str(e.value)
    with pytest.raises(PolicyError) as e:
        loads("[metrics]\nmax_agents = 5000\n")
    assert e.value.key == "metrics.max_agents"


@pytest.mark.parametrize("value,expect", [
    ("", None), ("127.0.0.1:9641", ("127.0.0.1", 9641)), ("[::1]:0", ("::1", 0)),
    ("localhost:80", ("localhost", 80))])
def test_parse_listen(value: str, expect: tuple[str, int] | None) -> None:
    assert parse_listen(value) == expect


@pytest.mark.parametrize("bad", ["9641", "127.0.0.1", ":9641", "127.0.0.1:x", "1.2.3.4:70000"])
def test_parse_listen_rejects(bad: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_listen(bad)
    assert e.value.key == "metrics.listen"


# -- the exporter: HTTP and textfile ---------------------------------------------


def _get(port: int, path: str, host: str = "127.0.0.1",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


class Source:
    """A View source counting its calls: renders happen only when asked."""

    def __init__(self, m: Metrics) -> None:
        self.m = m
        self.calls = 0
        self.ready = threading.Event()
        self.ready.set()

    def __call__(self) -> Any:
        self.calls += 1
        return self.m.view((), default()) if self.m.ticks else None


def test_exporter_http_negotiates_format_and_gzip_and_renders_only_when_scraped(
        tmp_path: pathlib.Path) -> None:
    m = Metrics()
    src = Source(m)
    ex = Exporter(src, max_age=0.5)
    try:
        ex.configure(MetricsPolicy(listen="127.0.0.1:0"))
        addr = ex.address
        assert addr is not None
        port = addr[1]
        assert _get(port, "/healthz")[0] == 503  # no tick yet
        assert _get(port, "/readyz")[0] == 503
        assert _get(port, "/metrics")[0] == 503  # nothing to render yet
        for _ in range(50):  # ticks render nothing
            m.observe_tick(duration_s=0.001)
            ex.tick()
        assert ex.renders == 0
        code, h, body = _get(port, "/metrics")
        assert code == 200 and h["content-type"].startswith("text/plain; version=0.0.4")
        assert "content-encoding" not in h
        assert ex.renders == 1
        text = body.decode()
        assert "agentlatd_ticks_total 50" in text and "process_cpu_seconds_total" in text
        _parse(text)
        # gzip when asked (Prometheus sends Accept-Encoding: gzip)
        code, h, body = _get(port, "/metrics", headers={"Accept-Encoding": "gzip"})
        assert code == 200 and h["content-encoding"] == "gzip"
        assert len(body) < len(text.encode()) / 3
        _parse(gzip.decompress(body).decode())
        # OpenMetrics when asked, the way Prometheus 2.x asks
        accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                  "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
        code, h, body = _get(port, "/metrics", headers={"Accept": accept})
        assert h["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert body.endswith(b"# EOF\n")
        assert {f.name for f in om_families(body.decode())} >= {"agentlatd_ticks", "agentlatd_build"}
        code, h, body = _get(port, "/metrics", headers={"Accept": "application/openmetrics-text;q=0"})
        assert h["content-type"].startswith("text/plain")
        assert _get(port, "/healthz")[0] == 200
        ex.set_ready()
        assert _get(port, "/readyz")[0] == 200
        time.sleep(0.7)
        code, _, body = _get(port, "/healthz")
        assert code == 503 and b"stale" in body  # no tick for longer than max_age
        assert _get(port, "/nope")[0] == 404

        # reconfigure: textfile on, HTTP moved to another port, then off
        tf = tmp_path / "agentlatd.prom"
        ex.configure(MetricsPolicy(listen="", textfile=str(tf), textfile_interval=1.0))
        assert ex.address is None
        wait_until(tf.exists, 10, "the textfile written")
        ftext = tf.read_text()
        # node_exporter has process_* of its own under those names: not in the file
        assert "agentlatd_ticks_total 50" in ftext and "process_" not in ftext
        with pytest.raises(ConnectionRefusedError):
            _get(port, "/metrics")
        # a bad listen value is refused before anything changes
        with pytest.raises(PolicyError):
            ex.configure(MetricsPolicy(listen="nonsense", textfile=""))
        assert ex.address is None
    finally:
        ex.close()


def test_port_in_use_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    ex = Exporter(Source(Metrics()))
    try:
        with caplog.at_level(logging.ERROR, logger="agentlatd.metrics"):
            ex.configure(MetricsPolicy(listen=f"127.0.0.1:{port}"))
        assert ex.address is None
        assert "cannot listen" in caplog.text
        ex.tick()  # still fine without a server
    finally:
        ex.close()
        busy.close()


def test_textfile_write_is_atomic_and_errors_are_reported(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "a.prom"
    write_atomic(str(p), b"x 1\n")
    assert p.read_text() == "x 1\n" and (p.stat().st_mode & 0o777) == 0o644
    assert [q.name for q in tmp_path.iterdir()] == ["a.prom"]  # no tmp file left
    m = Metrics()
    m.observe_tick(duration_s=0.0)
    ex = Exporter(Source(m))
    try:
        with caplog.at_level(logging.DEBUG, logger="agentlatd.metrics"):
            ex.configure(MetricsPolicy(textfile=str(tmp_path / "missing-dir" / "a.prom"),
                                       textfile_interval=1.0))
            wait_until(lambda: ex.textfile_errors >= 2, 10, "two failed writes")
    finally:
        ex.close()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert "ENOENT" in caplog.text


def test_view_broker_serves_from_the_loop_thread_and_close_releases_waiters() -> None:
    from agentlatd.service import ViewBroker

    m = Metrics()
    m.observe_tick(duration_s=0.0)
    woken = threading.Event()
    broker = ViewBroker(woken.set, timeout=10)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(broker.request()))
    t.start()
    assert woken.wait(5)
    built: list[int] = []

    def build() -> Any:
        built.append(threading.get_ident())
        return m.view()

    wait_until(lambda: (broker.serve(build), got)[1], 5, "the request answered")
    t.join(5)
    assert built == [threading.get_ident()] and got[0].ticks == 1
    broker.serve(build)  # nobody asked: nothing built
    assert len(built) == 1
    woken.clear()
    t = threading.Thread(target=lambda: got.append(broker.request()))
    t.start()
    assert woken.wait(5)  # queued and waiting: the loop never answers
    broker.close()
    t.join(5)
    assert not t.is_alive() and got[-1] is None


# -- a real daemon ----------------------------------------------------------------


_SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    sys.stdout.write(r.read().decode())
"""


def _scrape_in(ns: str, url: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _SCRAPE, url],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.netns
def test_scrape_a_real_daemon(tmp_path: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    notify = NotifySocket.bind(tmp_path)
    port = free_port()
    try:
        with veth_netns() as ns:
            pol = policy_text(include="agt0", rps=True, interval=0.3,
                              metrics_listen=f"127.0.0.1:{port}")
            with run_daemon(tmp_path, pol, notify=notify, netns=ns) as d:
                notify.wait_for("READY=1", timeout=60)
                url = f"http://127.0.0.1:{port}/metrics"

                def ticks() -> float:
                    s = _parse(_scrape_in(ns, url))
                    return _value(s["agentlatd_ticks"], "agentlatd_ticks_total")

                first = ticks()
                wait_until(lambda: ticks() >= first + 2, 20, "two more ticks")
                s = _parse(_scrape_in(ns, url))
                assert d.alive(), d.log
                d.signal(signal.SIGTERM)
                assert d.wait(30) == 0, d.log
        assert _value(s["agentlatd_ready"], "agentlatd_ready") == 1
        # the two rx queues of agt0 were steered
        assert _value(s["agentlatd_changes_applied"], "agentlatd_changes_applied_total",
                      knob="net.rps_cpus") == 2
        # heat, interrupt and softirq counters for every online CPU
        ncpu = os.cpu_count() or 1
        cpus = {str(c) for c in range(ncpu)}
        assert {x.labels["cpu"] for x in s["agentlatd_cpu_heat"]} == cpus
        assert {x.labels["cpu"] for x in s["agentlatd_cpu_softirqs"]} == cpus
        assert {x.labels["cpu"] for x in s["agentlatd_cpu_interrupts"]} == cpus
        assert {x.labels["cpu"] for x in s["agentlatd_cpu_irq_seconds"]} == cpus
        assert "agentlatd_home_softirqs" in s and "agentlatd_home_irqs" in s
        roles = {x.labels["agentlatd_cpu_role"] for x in s["agentlatd_cpu_role"] if x.value == 1}
        assert roles == {"completion", "home"}, s["agentlatd_cpu_role"]
        # every sampler reports duration and success
        samplers = {x.labels["sampler"] for x in s["agentlatd_sampler_success"]}
        assert samplers, s.keys()
        assert {x.labels["sampler"] for x in s["agentlatd_sampler_duration_seconds"]} == samplers
        assert all(x.value == 1 for x in s["agentlatd_sampler_success"])
        assert _value(s["process_open_fds"], "process_open_fds") > 3
        # the scan worker answered the ticks, and none was replaced
        assert _value(s["agentlatd_scan_worker_up"], "agentlatd_scan_worker_up") == 1
        assert _value(s["agentlatd_scan_worker_failures"],
                      "agentlatd_scan_worker_failures_total") == 0
        # a daemon in a network namespace of its own has no process events (the
        # kernel's connector is the initial namespace's): the tick lists forks
        assert _value(s["agentlatd_fork_events_up"], "agentlatd_fork_events_up") == 0
        assert _value(s["agentlatd_fork_events_overflows"],
                      "agentlatd_fork_events_overflows_total") == 0
        assert {x.labels["state"]: x.value for x in s["agentlatd_forked_processes"]} == {
            "remembered": 0, "journaled": 0}
    finally:
        notify.close()


def test_textfile_of_a_real_daemon_is_written_per_interval_and_removed_at_stop() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with workdir() as d:
        tf = d / "agentlatd.prom"
        extra = f'\n[metrics]\ntextfile = "{tf}"\ntextfile_interval = 1.0\n'
        with agent_daemon(d, agent_policy(extra=extra)) as dm:
            wait_until(tf.exists, 20, "the textfile written")

            def ticks() -> float:
                return _value(_parse(tf.read_text())["agentlatd_ticks"], "agentlatd_ticks_total")

            first = ticks()
            wait_until(lambda: ticks() > first, 10, "the textfile rewritten")
            s = _parse(tf.read_text())
            assert "agentlatd_cpu_role" in s and "agentlatd_changes_drifted" in s
            assert not [n for n in s if n.startswith("process_")]
            assert dm.stop() == 0, dm.log
        # no daemon, no series: the textfile goes with it (absent() alerts work)
        assert not tf.exists()


class _StubDaemon:
    """A DaemonView (agentlatd/hooks.py): what the service hooks read of the daemon."""

    def __init__(self) -> None:
        self.policy = default()
        self.last_state: Any = None
        self.woken = threading.Event()

    def agents(self) -> list[Any]:
        return []

    def chain_row(self) -> None:
        return None

    def slow_steps(self) -> tuple[Any, ...]:
        return ()

    def hot_cpus(self) -> list[int]:
        return []

    def journal_entries(self) -> int:
        return 0

    def guard_undone(self) -> dict[str, int]:
        return {}

    def scan_worker(self) -> tuple[bool, int]:
        return True, 0

    def fork_events(self) -> tuple[bool, int]:
        return True, 0

    def forked_processes(self) -> tuple[int, int]:
        return 0, 0

    def wake(self) -> None:
        self.woken.set()


def test_metrics_rendered_every_tick_even_with_no_output_is_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The service rendered the whole exposition at the end of every tick, with
    or without a listener or textfile (2-2.5x the tick on 256 CPUs): now ticks
    only add to counters, and a render happens for a scrape, in the HTTP thread."""
    import agentlatd.metrics as metrics_mod
    from agentlatd.model.layout import CpuLayout
    from agentlatd.sdnotify import Notifier
    from agentlatd.service import Service, ViewBroker
    from agentlatd.tuner import TunerState

    renders: list[str] = []
    real = metrics_mod.render

    def counting(fams: Any, openmetrics: bool = False) -> str:
        renders.append(threading.current_thread().name)
        return real(fams, openmetrics)

    monkeypatch.setattr(metrics_mod, "render", counting)
    d = _StubDaemon()
    broker = ViewBroker(d.wake, timeout=10)
    ex = Exporter(broker.request)
    svc = Service(d, Notifier.from_env({}), Metrics(), ex, broker)
    layout = CpuLayout(home=CpuSet({1}), completion=CpuSet({0}), online=CpuSet({0, 1}))
    try:
        for seq in range(1, 21):
            st = TunerState(seq=seq, t=time.monotonic(), duration_s=0.001, layout=layout, heat={},
                            rates=_rates())
            svc.on_tick(d, st)
            svc.on_loop(d)
        assert renders == []  # 20 ticks, no output configured: nothing rendered
        ex.configure(MetricsPolicy(listen="127.0.0.1:0"))
        addr = ex.address
        assert addr is not None
        for _ in range(5):
            svc.on_tick(d, st)
        assert renders == []  # a listener, but nobody scraped
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.append(_get(addr[1], "/metrics")))
        t.start()
        # the main loop's turn answers the scrape's request for a View
        wait_until(lambda: (svc.on_loop(d), got)[1], 10, "the scrape answered")
        t.join(5)
        assert got[0][0] == 200 and b"agentlatd_ticks_total 25" in got[0][2]
        assert len(renders) == 1 and renders[0] != threading.current_thread().name
    finally:
        svc.close()


def test_slow_step_time_by_cause_only_for_agents_with_own_series() -> None:
    """The slowest-steps view's counters: agent x cause for the agents within
    metrics.max_agents, none for the rest (bounded cardinality), parsed by prometheus_client."""
    pol = dataclasses.replace(default(), metrics=MetricsPolicy(max_agents=2))
    m = Metrics()
    m.observe_tick(duration_s=0.0)
    agents = [FakeAgent(f"a{i}", "normal", ProcId(10 + i, 1)) for i in range(3)]
    rows = []
    for i, a in enumerate(agents):
        r = summarize(a.agent_id, a.proc.pid, None, 1_000_000, True)
        causes = tuple((c, (i + 1) * 1_000_000 if c is Cause.RUNNABLE else 0) for c in CAUSES)
        rows.append(dataclasses.replace(r, slow_steps=i + 1, time_by_cause=causes))
    s = _parse(render_view(m.view(agents, pol, slow_steps=rows)))
    secs = {(x.labels["agent"], x.labels["cause"]): x.value
            for x in s["agentlatd_agent_slow_step_seconds"]}
    assert secs == {(f"a{i}", str(c)): ((i + 1) / 1000 if c is Cause.RUNNABLE else 0.0)
                    for i in (0, 1) for c in CAUSES}
    assert {x.labels["agent"]: x.value for x in s["agentlatd_agent_slow_steps"]} == {
        "a0": 1, "a1": 2}
