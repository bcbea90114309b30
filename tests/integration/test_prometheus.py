"""The real Prometheus server scrapes a real `agentlatd run`; every dashboard
panel query and every recording rule is evaluated through its HTTP API.

Parts, all real: Debian's `prometheus` (2.42 on bookworm; tests/run.sh installs
it) on loopback with a temporary TSDB and a 1 s scrape interval; the daemon
scoped as in agentshelpers (no device, no IRQ, no sysctl: only the test's own
agent processes are pinned); two agents (agentlatd.client) reporting known
raw step samples. The queries come from deploy/grafana/agentlatd.json and
deploy/prometheus/agentlatd.rules.yml as shipped, so a metric renamed in
agentlatd/metrics.py without the dashboard or the rules fails here.

Merged p99: [metrics] max_agents = 1, so agent "fast" has series of its own
and agent "slow" is summed under agent="other"; histogram_quantile(0.99, sum by
(le, class) ...) over both must equal Prometheus's interpolation computed here
from the raw samples, and the raw samples' own p99 must lie in the bucket it
interpolates in.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import pathlib
import random
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from agentshelpers import (
    REPO,
    daemon,
    env_for_children,
    needs_2cpus,
    needs_root,
    policy_text,
    wait_until,
    workdir,
)
from servicehelpers import free_port

from agentlatd.stepstats import EXPORT_BOUNDS_S

pytestmark = [needs_root, needs_2cpus, pytest.mark.timeout(90)]

DASHBOARD = REPO / "deploy" / "grafana" / "agentlatd.json"
RULES = REPO / "deploy" / "prometheus" / "agentlatd.rules.yml"
NODE = "test-node"
N_SAMPLES = 2000

AGENT = r'''
import json, sys
from agentlatd.client import Client
sock, agent_id, path = sys.argv[1:4]
c = Client(agent_id, "interactive", socket=sock, flush_interval=3600, retry_interval=0.2)
print(json.dumps({"ready": c.registration}), flush=True)
for line in sys.stdin:
    if line.strip() == "steps":
        with open(path) as f:
            for v in json.load(f):
                c.record(v)
        print(json.dumps({"flushed": c.flush()}), flush=True)
    elif line.strip() == "exit":
        break
c.close()
'''


def _away_from_bounds(v_ns: int) -> bool:
    """The daemon's buckets are resolved to ~3% (stats.py): keep samples 5% clear."""
    return all(abs(v_ns / 1e9 - b) > 0.05 * b for b in EXPORT_BOUNDS_S)


def _samples(rng: random.Random, spans: list[tuple[float, float, float]]) -> list[int]:
    """N_SAMPLES log-uniform samples (ns): spans of (share, low s, high s)."""
    out: list[int] = []
    for share, lo, hi in spans:
        n = round(N_SAMPLES * share)
        while n:
            v = int(math.exp(rng.uniform(math.log(lo), math.log(hi))) * 1e9)
            if _away_from_bounds(v):
                out.append(v)
                n -= 1
    rng.shuffle(out)
    return out


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus 2.x promql/quantile.go bucketQuantile: (upper bound, cumulative count),
    +Inf last; linear interpolation inside the bucket the rank falls in."""
    total = buckets[-1][1]
    rank = q * total
    b = bisect.bisect_left([c for _, c in buckets[:-1]], rank)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    start, end, count = 0.0, buckets[b][0], buckets[b][1]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (end - start) * (rank / count)


def expected_buckets(samples_ns: list[int]) -> list[tuple[float, float]]:
    s = sorted(v / 1e9 for v in samples_ns)
    return [(b, float(bisect.bisect_right(s, b))) for b in EXPORT_BOUNDS_S] + [(math.inf, len(s))]


class AgentProc:
    def __init__(self, sock: pathlib.Path, agent_id: str, samples_file: pathlib.Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", AGENT, str(sock), agent_id,
                                      str(samples_file)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env_for_children())
        self.ready = self._read()["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"agent exited: {err}")
        out: dict[str, Any] = json.loads(line)
        return out

    def cmd(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((text + "\n").encode())
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"exit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


@contextlib.contextmanager
def prometheus(d: pathlib.Path, target: str) -> Iterator[str]:
    """Prometheus on 127.0.0.1, TSDB under `d`, scraping `target` every second."""
    port = free_port()
    cfg = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                   "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "agentlatd", "static_configs": [
            {"targets": [target], "labels": {"node": NODE}}]}],
    }
    (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = open(d / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    p = subprocess.Popen(["prometheus", f"--config.file={d / 'prometheus.yml'}",
                          f"--storage.tsdb.path={d / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{port}",
                          "--storage.tsdb.retention.time=1h"],
                         stdout=log, stderr=subprocess.STDOUT, cwd=str(d))
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert p.poll() is None, (d / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(base + "/-/ready", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False
        wait_until(ready, 20, 0.1, "prometheus ready")
        yield base
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    assert doc["status"] == "success", (expr, doc)
    res: list[dict[str, Any]] = doc["data"]["result"]
    return res


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every panel target, with Grafana's variables
    put the way Grafana would for "All nodes" and a 1 s scrape interval."""
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for t in panel["targets"]:
            expr = t["expr"].replace("$__rate_interval", "1m").replace('"$node"', '".*"')
            assert "$" not in expr.replace('"$1"', ""), expr  # every variable substituted
            out.append((panel["title"], t["refId"], expr))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"] if "record" in r]


def _fmt(res: list[dict[str, Any]]) -> str:
    vals = []
    for s in res[:4]:
        lab = ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())
                       if k not in ("__name__", "job", "instance", "node"))
        vals.append(f"{{{lab}}} {float(s['value'][1]):.6g}")
    more = f" (+{len(res) - 4})" if len(res) > 4 else ""
    return "; ".join(vals) + more


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="the prometheus binary is missing (Debian package `prometheus`; "
                           "tests/run.sh installs it)")
def test_real_prometheus_scrapes_daemon_and_every_panel_and_rule_returns_data() -> None:
    t_start = time.monotonic()
    rng = random.Random(16)
    # "fast": every step 20-400 us. "slow": 96% 50-800 us, 4% 5-40 ms. Merged,
    # 2% of 4000 steps are slow, so the merged p99 is in the slow tail, while
    # "fast"'s own p99 is under 400 us: merging per-agent quantiles gets it wrong.
    fast = _samples(rng, [(1.0, 20e-6, 400e-6)])
    slow = _samples(rng, [(0.96, 50e-6, 800e-6), (0.04, 5e-3, 40e-3)])
    port = free_port()
    extra = f'\n[metrics]\nlisten = "127.0.0.1:{port}"\nmax_agents = 1\n'
    with workdir() as d:
        (d / "fast.json").write_text(json.dumps(fast))
        (d / "slow.json").write_text(json.dumps(slow))
        agents: list[AgentProc] = []
        with daemon(d, policy_text(extra=extra)) as dm:
            try:
                agents.append(AgentProc(dm.socket, "fast", d / "fast.json"))
                agents.append(AgentProc(dm.socket, "slow", d / "slow.json"))
                assert all(a.ready for a in agents)
                wait_until(lambda: len(dm.agents()) == 2, 10, what="two agents registered")
                with prometheus(d, f"127.0.0.1:{port}") as base:
                    # a first scrape sees both agents at zero steps
                    wait_until(lambda: query(base, 'sum(agentlatd_agent_step_seconds_count'
                                                   '{class="interactive"})'), 15, 0.2,
                               "a scrape with both agents")
                    for a in agents:
                        assert a.cmd("steps")["flushed"] is True
                    wait_until(lambda: [s for s in query(
                        base, 'sum(agentlatd_agent_step_seconds_count{class="interactive"})')
                        if float(s["value"][1]) == 2 * N_SAMPLES], 15, 0.2, "the steps scraped")
                    # `agentlatd agents`: the last minute holds every step just sent
                    rows = {r["agent_id"]: r for r in dm.agents()}
                    for aid in ("fast", "slow"):
                        assert rows[aid]["recent"]["1m"]["steps"] == N_SAMPLES, rows[aid]
                        assert rows[aid]["recent"]["10m"]["steps"] == N_SAMPLES, rows[aid]
                    assert rows["slow"]["recent"]["1m"]["p999_ns"] > 5e6 > \
                        rows["fast"]["recent"]["1m"]["p999_ns"]
                    # rate() over CPU counters needs two scrapes after the first: counted
                    # in Prometheus's own samples of `up`, not assumed after a sleep
                    def scrapes() -> int:
                        got = query(base, 'count_over_time(up{job="agentlatd"}[10m])')
                        return int(float(got[0]["value"][1])) if got else 0
                    n0 = scrapes()
                    wait_until(lambda: scrapes() >= n0 + 2, 15, 0.2, "two more scrapes")
                    _check_merged_p99(base, fast, slow)
                    report = _check_panels_and_rules(base)
                    up = query(base, 'up{job="agentlatd"}')
                    assert up and float(up[0]["value"][1]) == 1
            finally:
                for a in agents:
                    a.close()
    print("\n".join(report))
    print(f"test wall time {time.monotonic() - t_start:.1f} s")


def _check_merged_p99(base: str, fast: list[int], slow: list[int]) -> None:
    # the series: "fast" on its own, "slow" summed under agent="other"
    counts = {s["metric"]["agent"]: float(s["value"][1])
              for s in query(base, "agentlatd_agent_step_seconds_count")}
    assert counts == {"fast": N_SAMPLES, "other": N_SAMPLES}, counts
    both = fast + slow
    exp = expected_buckets(both)
    got = {float(s["metric"]["le"]): float(s["value"][1]) for s in query(
        base, "sum by (le) (agentlatd_agent_step_seconds_bucket)")}
    assert [got[b] for b, _ in exp] == [c for _, c in exp], (got, exp)
    want = bucket_quantile(0.99, exp)
    raw = sorted(both)[math.ceil(0.99 * len(both)) - 1] / 1e9  # nearest rank
    fast_p99 = sorted(fast)[math.ceil(0.99 * len(fast)) - 1] / 1e9
    res = {}
    for name, expr in (
            ("counts", "histogram_quantile(0.99, sum by (le, class) "
                       "(agentlatd_agent_step_seconds_bucket))"),
            ("rate", "histogram_quantile(0.99, sum by (le, class) "
                     "(rate(agentlatd_agent_step_seconds_bucket[5m])))")):
        r = query(base, expr)
        assert len(r) == 1 and r[0]["metric"] == {"class": "interactive"}, r
        res[name] = float(r[0]["value"][1])
    i = bisect.bisect_left(EXPORT_BOUNDS_S, want)
    lo, hi = (EXPORT_BOUNDS_S[i - 1] if i else 0.0), EXPORT_BOUNDS_S[i]
    print(f"\nmerged p99: prometheus {res['counts']:.6g} s (over rate(): {res['rate']:.6g} s); "
          f"from the raw samples: interpolated {want:.6g} s, nearest-rank {raw:.6g} s "
          f"(bucket {lo:g}..{hi:g} s); agent fast alone: p99 {fast_p99:.6g} s")
    assert res["counts"] == pytest.approx(want, rel=1e-9)
    assert res["rate"] == pytest.approx(want, rel=1e-6)
    assert lo < raw <= hi  # the true p99 is in the bucket Prometheus interpolates in
    assert raw > 5e-3 > fast_p99  # and merging per-agent quantiles would have missed it


def _check_panels_and_rules(base: str) -> list[str]:
    report = ["", "dashboard panels (deploy/grafana/agentlatd.json):"]
    empty = []
    for title, ref, expr in dashboard_queries():
        res = query(base, expr)
        if not res:
            empty.append(f"panel {title!r} {ref}: {expr}")
        report.append(f"  {title} [{ref}]: {expr}\n      -> {_fmt(res)}")
    report.append("recording rules (deploy/prometheus/agentlatd.rules.yml):")
    for record, expr in rule_exprs():
        res = query(base, expr)
        if not res:
            empty.append(f"rule {record}: {expr}")
        report.append(f"  {record}\n      -> {_fmt(res)}")
    assert not empty, "no data for:\n" + "\n".join(empty)
    # the panels that must show a real number, not just a series
    p99 = query(base, 'histogram_quantile(0.99, sum by (le, class, node) '
                      '(rate(agentlatd_agent_step_seconds_bucket[1m])))')
    assert all(math.isfinite(float(s["value"][1])) for s in p99), p99
    return report


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is missing (Debian package `prometheus`)")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    tests = sorted((REPO / "deploy" / "prometheus").glob("*.test.yml"))
    assert tests
    r = subprocess.run(["promtool", "test", "rules", *map(str, tests)], capture_output=True,
                       text=True, timeout=120, cwd=str(REPO / "deploy" / "prometheus"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_dashboard_is_well_formed() -> None:
    """Every panel has a query, a unique id and a title; variables are the known ones."""
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["title"] and p["targets"] for p in doc["panels"])
    assert {v["name"] for v in doc["templating"]["list"]} == {"datasource", "node"}
    assert dashboard_queries()
    assert os.path.basename(DASHBOARD) == "agentlatd.json"
