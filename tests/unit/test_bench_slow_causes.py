"""agentlatd/tools/bench/report.py: the share of slow-step time by cause per
configuration (the runs' `slow_steps` summaries, agentlatd/tools/bench/attribution.py),
and the headline lines that say why A is slow and what D removed."""

from __future__ import annotations

from typing import Any

from agentlatd.tools.bench import report

MS = 1_000_000


def _run(cfg: str, by: dict[str, int], culprits: list[tuple[str, str, int]]) -> dict[str, Any]:
    total = sum(by.values())
    return {"config": cfg, "slow_steps": {
        "method": "bpftrace", "threshold_ns": 400_000, "steps_seen": 9000, "slow_steps": 90,
        "lost_events": 0, "ring_missed": 0,
        "summary": {"steps": 90, "total_ns": total,
                    "by_cause": {c: {"ns": ns, "share": ns / total} for c, ns in by.items()},
                    "culprits": [{"cause": c, "who": w, "ns": ns, "share": ns / total}
                                 for c, w, ns in culprits]}}}


def test_slow_causes_sums_runs_and_names_culprits_by_command() -> None:
    runs = [_run("A", {"running": 2 * MS, "softirq": 6 * MS}, [("softirq", "NET_RX", 6 * MS)]),
            _run("A", {"running": 2 * MS, "runnable": 10 * MS},
                 [("runnable", "pid 4242 'probe'", 8 * MS), ("runnable", "pid 17 'kworker/1:0'", 2 * MS)]),
            _run("A", {}, [])]
    runs[2]["slow_steps"] = {"error": "bpftrace failed"}
    got = report.slow_causes(runs)
    assert got["runs"] == 2 and got["slow_steps"] == 180 and got["total_ns"] == 20 * MS
    assert got["by_cause"]["runnable"] == {"ns": 10 * MS, "share": 0.5, "ms_per_run": 5.0}
    assert list(got["by_cause"]) == ["runnable", "softirq", "running"]  # largest first
    assert got["culprits"][0] == {"cause": "runnable", "who": "'probe'", "ns": 8 * MS, "share": 0.4}
    assert got["errors"] == ["bpftrace failed"]


def test_headline_says_why_a_is_slow_and_what_d_removed() -> None:
    a = [_run("A", {"running": 2 * MS, "softirq": 12 * MS, "runnable": 6 * MS},
              [("softirq", "NET_RX", 12 * MS), ("runnable", "pid 9 'probe'", 6 * MS)])]
    d = [_run("D", {"running": 2 * MS, "softirq": 1 * MS, "blocked:net": 1 * MS},
              [("blocked:net", "NET_RX on CPU 0", 1 * MS)])]
    summ = {"A": {"slow_causes": report.slow_causes(a)}, "D": {"slow_causes": report.slow_causes(d)}}
    lines = report.slow_cause_lines(summ)
    text = "\n".join(lines)
    assert "slow steps (>= p99) by cause, 1 traced run each (bpftrace)" in text
    assert all(len(line) <= 80 for line in lines)
    header = next(line for line in lines if line.startswith("cfg"))
    assert header.split()[3:] == ["run", "rnbl", "sirq", "b:net"]
    row_a = next(line for line in lines if line.startswith("A "))
    assert row_a.split()[3:] == ["10%", "30%", "60%", "0%"]
    assert "top: softirq NET_RX 60%; runnable 'probe' 30%" in text
    assert "A -> D: slow steps 20.0 -> 4.0 ms/run; softirq 12.0 -> 1.0, runnable 6.0 -> 0.0" in text


def test_headline_without_a_tracer_says_so() -> None:
    runs = [{"config": "A", "slow_steps": {"error": "bpftrace is not installed"}}]
    lines = report.slow_cause_lines({"A": {"slow_causes": report.slow_causes(runs)}})
    assert lines[-1] == "Slow steps by cause: not traced (bpftrace is not installed)"
