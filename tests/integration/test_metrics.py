"""Prometheus metrics (agentlatd/metrics.py): the text we write is parsed by
prometheus-client's own parser (text_string_to_metric_families), the HTTP
endpoint and the node_exporter textfile work, and a real daemon's endpoint
scrapes and parses with the families the issue lists: per-CPU heat and
IRQ/softirq rates, IRQs and softirqs on home CPUs, per-agent step quantiles
and counts, changes applied / failed / rolled back / drifted, per-sampler
duration and success.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from servicehelpers import NotifySocket, free_port, policy_text, run_daemon, veth_netns, wait_until

from agentlatd.apply.engine import ApplyReport, Drift, KnobResult, RollbackReport
from agentlatd.cpuset import CpuSet
from agentlatd.errors import PolicyError
from agentlatd.metrics import Exporter, Metrics, parse_listen, render, write_atomic
from agentlatd.model.machine import Discontinuity, Rates
from agentlatd.policy import MetricsPolicy

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


# -- pure: the text format ---------------------------------------------------------


def test_rendered_text_parses_and_carries_every_family() -> None:
    m = Metrics()
    m.observe_sampler("counters", 0.0021, True)
    m.observe_sampler("machine", 0.0100, False)
    m.observe_tick(duration_s=0.015, rates=_rates(), completion=CpuSet({0}), home=CpuSet({1, 2}),
                   hot_threshold=0.5, active_changes=3,
                   agents=[{"agent_id": "planner", "latency_class": "interactive", "home_cpu": 1,
                            "steps": 1200, "p50_ns": 40_000, "p99_ns": 90_000,
                            "p999_ns": 400_000, "sum_ns": 60_000_000}])
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
    s = _parse(m.render())

    assert _value(s["agentlatd_cpu_heat"], "agentlatd_cpu_heat", cpu="0") == pytest.approx(1.9)
    assert _value(s["agentlatd_cpu_irqs_per_second"], "agentlatd_cpu_irqs_per_second",
                  cpu="0") == 5000
    assert _value(s["agentlatd_cpu_softirqs_per_second"], "agentlatd_cpu_softirqs_per_second",
                  cpu="1", vector="NET_RX") == 4
    assert _value(s["agentlatd_cpu_role"], "agentlatd_cpu_role", cpu="1", role="home") == 1
    # on home CPUs: CPU 1 and 2 only (CPU 0 is a completion CPU)
    assert _value(s["agentlatd_home_irqs_per_second"], "agentlatd_home_irqs_per_second") == 10
    assert _value(s["agentlatd_home_softirqs_per_second"], "agentlatd_home_softirqs_per_second",
                  vector="NET_RX") == 4
    # counters integrate rate x interval (2 s)
    assert _value(s["agentlatd_home_irqs"], "agentlatd_home_irqs_total") == 20
    assert _value(s["agentlatd_home_softirqs"], "agentlatd_home_softirqs_total",
                  vector="TIMER") == 1000
    assert _value(s["agentlatd_home_cpus_hot"], "agentlatd_home_cpus_hot") == 1  # CPU 1: 0.6 >= 0.5
    # per-agent step summary (seconds) and count
    step = s["agentlatd_agent_step_seconds"]
    assert _value(step, "agentlatd_agent_step_seconds", agent_id="planner",
                  quantile="0.999") == pytest.approx(4e-4)
    assert _value(step, "agentlatd_agent_step_seconds_count", agent_id="planner") == 1200
    assert _value(step, "agentlatd_agent_step_seconds_sum", agent_id="planner") == pytest.approx(0.06)
    assert _value(s["agentlatd_agents"], "agentlatd_agents", latency_class="interactive") == 1
    assert _value(s["agentlatd_agents"], "agentlatd_agents", latency_class="background") == 0
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
    assert _value(s["agentlatd_changes_drifted"], "agentlatd_changes_drifted_total",
                  knob="irq.affinity", action="yielded") == 1
    assert _value(s["agentlatd_changes_active"], "agentlatd_changes_active") == 3
    # samplers
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


def test_label_values_are_escaped() -> None:
    m = Metrics()
    nasty = 'a"b\\c\nd'
    m.observe_tick(duration_s=0.0, agents=[{"agent_id": nasty, "latency_class": "normal",
                                            "steps": 1, "p50_ns": 1, "p99_ns": 1, "p999_ns": 1}])
    text = m.render()
    assert 'agent_id="a\\"b\\\\c\\nd"' in text
    s = _parse(text)
    assert _value(s["agentlatd_agent_step_seconds"], "agentlatd_agent_step_seconds_count",
                  agent_id=nasty) == 1


def test_sampler_context_manager_records_failure_and_reraises() -> None:
    m = Metrics()
    with m.sampler("ok"):
        pass
    with pytest.raises(RuntimeError), m.sampler("boom"):
        raise RuntimeError("x")
    assert m.samplers["ok"].success and not m.samplers["boom"].success
    assert m.samplers["boom"].failures == 1


def test_render_skips_empty_families_and_formats_values() -> None:
    from agentlatd.metrics import Family

    f = Family("x", "gauge", "help with \\ and\nnewline")
    f.add(float("inf"), a="1")
    f.add(1e-7)
    text = render([f, Family("empty", "gauge", "nothing")])
    assert "agentlatd_empty" not in text
    assert "# HELP agentlatd_x help with \\\\ and\\nnewline" in text
    assert 'agentlatd_x{a="1"} +Inf' in text
    _parse(text)


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


def _get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str, str]:
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read().decode()
    finally:
        c.close()


def test_exporter_http_health_ready_and_reconfigure(tmp_path: pathlib.Path) -> None:
    ex = Exporter(max_age=0.5)
    try:
        ex.configure(MetricsPolicy(listen="127.0.0.1:0"))
        addr = ex.address
        assert addr is not None
        port = addr[1]
        assert _get(port, "/healthz")[0] == 503  # nothing published yet
        assert _get(port, "/readyz")[0] == 503
        m = Metrics()
        m.observe_tick(duration_s=0.001)
        ex.publish(m.render())
        code, ctype, body = _get(port, "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert "agentlatd_ticks_total 1" in body
        _parse(body)
        assert _get(port, "/healthz")[0] == 200
        ex.set_ready()
        assert _get(port, "/readyz")[0] == 200
        time.sleep(0.7)
        code, _, body = _get(port, "/healthz")
        assert code == 503 and "stale" in body  # no tick for longer than max_age
        assert _get(port, "/nope")[0] == 404

        # reconfigure: textfile on, HTTP moved to another port, then off
        tf = tmp_path / "agentlatd.prom"
        ex.configure(MetricsPolicy(listen="127.0.0.1:0", textfile=str(tf)))
        assert tf.exists() and "agentlatd_ticks_total 1" in tf.read_text()
        assert ex.address is not None
        ex.configure(MetricsPolicy(listen="", textfile=str(tf)))
        assert ex.address is None
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
    ex = Exporter()
    try:
        with caplog.at_level(logging.ERROR, logger="agentlatd.metrics"):
            ex.configure(MetricsPolicy(listen=f"127.0.0.1:{port}"))
        assert ex.address is None
        assert "cannot listen" in caplog.text
        ex.publish("x 1\n")  # still fine without a server
    finally:
        ex.close()
        busy.close()


def test_textfile_write_is_atomic_and_errors_are_reported(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "a.prom"
    write_atomic(str(p), b"x 1\n")
    assert p.read_text() == "x 1\n" and (p.stat().st_mode & 0o777) == 0o644
    assert [q.name for q in tmp_path.iterdir()] == ["a.prom"]  # no tmp file left
    ex = Exporter()
    with caplog.at_level(logging.DEBUG, logger="agentlatd.metrics"):
        ex.configure(MetricsPolicy(textfile=str(tmp_path / "missing-dir" / "a.prom")))
        ex.publish("x 1\n")
        ex.publish("x 2\n")
    assert ex.textfile_errors == 2
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert "ENOENT" in caplog.text


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
    textfile = tmp_path / "agentlatd.prom"
    try:
        with veth_netns() as ns:
            pol = policy_text(include="agt0", rps=True, interval=0.3,
                              metrics_listen=f"127.0.0.1:{port}", textfile=str(textfile))
            with run_daemon(tmp_path, pol, notify=notify, netns=ns) as d:
                notify.wait_for("READY=1", timeout=60)
                url = f"http://127.0.0.1:{port}/metrics"

                def ticks() -> float:
                    s = _parse(_scrape_in(ns, url))
                    return _value(s["agentlatd_ticks"], "agentlatd_ticks_total")

                first = ticks()
                wait_until(lambda: ticks() >= first + 2, 20, "two more ticks")
                s = _parse(_scrape_in(ns, url))
                tf = _parse(textfile.read_text())
                assert d.alive(), d.log
                d.signal(signal.SIGTERM)
                assert d.wait(30) == 0, d.log
        # no daemon, no series: the textfile goes with it (absent() alerts work)
        assert not textfile.exists()
        assert _value(s["agentlatd_ready"], "agentlatd_ready") == 1
        # the two rx queues of agt0 were steered
        assert _value(s["agentlatd_changes_applied"], "agentlatd_changes_applied_total",
                      knob="net.rps_cpus") == 2
        # heat and rates for every online CPU once two snapshots exist
        ncpu = os.cpu_count() or 1
        heat = s["agentlatd_cpu_heat"]
        assert {x.labels["cpu"] for x in heat} == {str(c) for c in range(ncpu)}, heat
        assert s["agentlatd_cpu_irqs_per_second"] and s["agentlatd_cpu_softirqs_per_second"]
        assert "agentlatd_home_irqs_per_second" in s and "agentlatd_home_softirqs" in s
        roles = {x.labels["role"] for x in s["agentlatd_cpu_role"]}
        assert roles == {"completion", "home"}, s["agentlatd_cpu_role"]
        # every sampler reports duration and success
        samplers = {x.labels["sampler"] for x in s["agentlatd_sampler_success"]}
        assert samplers, s.keys()
        assert {x.labels["sampler"] for x in s["agentlatd_sampler_duration_seconds"]} == samplers
        assert all(x.value == 1 for x in s["agentlatd_sampler_success"])
        # the textfile held the same families, and parsed
        assert "agentlatd_cpu_heat" in tf and "agentlatd_changes_applied" in tf
    finally:
        notify.close()


def test_metrics_json_rows_match_agents_json_contract() -> None:
    """observe_tick takes `agentlatd agents --json` rows as they are (issue 4 contract)."""
    row = json.loads('{"agent_id": "a", "pid": 1, "latency_class": "normal", "home_cpu": null,'
                     ' "threads": 1, "steps": 0, "p50_ns": null, "p99_ns": null, "p999_ns": null}')
    m = Metrics()
    m.observe_tick(duration_s=0.0, agents=[row])
    s = _parse(m.render())
    assert _value(s["agentlatd_agent_step_seconds"], "agentlatd_agent_step_seconds_count",
                  agent_id="a") == 0
    assert "agentlatd_agent_home_cpu" not in s
