"""Windowed step percentiles (stepstats.py Recent) and the exported buckets.

A lifetime histogram hides a slowdown: after ten hours of fast steps, a
minute of every step 20x slower does not move the lifetime p99; the last-minute
window shows it whole, and `agentlatd agents` prints both.
"""

from __future__ import annotations

from agentlatd import stepstats as stats
from agentlatd.commands.agents import render


def test_a_slowdown_shows_in_the_last_minute_not_in_the_lifetime_p99() -> None:
    life = stats.Histogram.empty()
    recent = stats.Recent()
    fast, slow = 100_000, 2_000_000  # 100 us, then 20x slower
    for minute in range(600):  # ten hours, 1000 steps a minute
        counts = stats.sparse([fast] * 1000)
        life.merge_counts(counts)
        recent.merge_counts(counts, minute * 60.0)
    for s in range(6):  # one minute of slow steps
        counts = stats.sparse([slow] * 170)
        life.merge_counts(counts)
        recent.merge_counts(counts, 36000.0 + s * 10)
    now = 36055.0
    w = recent.summary(now)
    lifetime_p99 = life.percentile(0.99)
    assert lifetime_p99 is not None and lifetime_p99 < 1.05 * fast
    assert w["1m"]["steps"] == 1020
    p99_1m = w["1m"]["p99_ns"]
    assert p99_1m is not None and abs(p99_1m - slow) < 0.04 * slow
    # ten minutes: 9-10 fast minutes and the slow one
    assert w["10m"]["steps"] in (10 * 1000 + 1020, 9 * 1000 + 1020)
    p50_10m = w["10m"]["p50_ns"]
    assert p50_10m is not None and abs(p50_10m - fast) < 0.04 * fast


def test_windows_forget_what_left_them_and_idle_agents_hold_no_slots() -> None:
    r = stats.Recent()
    r.merge_counts(stats.sparse([5_000]), 0.0)
    assert r.summary(30.0)["1m"]["steps"] == 1
    assert r.summary(75.0)["1m"]["steps"] == 0  # left the minute
    assert r.summary(75.0)["10m"]["steps"] == 1
    assert r.summary(700.0)["10m"]["steps"] == 0
    r.merge_counts(stats.sparse([5_000]), 10_000.0)
    assert len(r.short) == 1 and len(r.long) == 1  # old slots dropped on the next merge


def test_exported_buckets_follow_the_fine_buckets() -> None:
    h = stats.Histogram.empty()
    h.add_many([9_000, 11_000, 950_000, 20 * 10**9])
    assert stats.EXPORT_BOUNDS_S[0] == 1e-5 and stats.EXPORT_BOUNDS_S[-1] == 10.0
    assert len(stats.EXPORT_BOUNDS_S) == 31 and stats.EXPORT_N == 32
    assert h.export[0] == 1  # 9 us <= 10 us
    assert h.export[1] == 1  # 11 us <= 16 us
    assert h.export[stats.EXPORT_BOUNDS_S.index(1e-3)] == 1
    assert h.export[-1] == 1  # over 10 s: +Inf
    g = stats.Histogram.empty()
    g.merge_counts(stats.sparse([9_000, 11_000, 950_000, 20 * 10**9]))
    assert g.export == h.export


def test_agents_text_shows_windows_beside_lifetime_in_80_columns() -> None:
    row = {"agent_id": "planner", "pid": 1234, "latency_class": "interactive", "home_cpu": 3,
           "threads": 4, "threads_pinned": 4, "cpus": "3", "steps": 123456, "p50_ns": 45_000,
           "p99_ns": 900_000, "p999_ns": 3_000_000,
           "recent": {"1m": {"steps": 6000, "p50_ns": 45_000, "p99_ns": 18_000_000,
                             "p999_ns": 25_000_000},
                      "10m": {"steps": 0, "p50_ns": None, "p99_ns": None, "p999_ns": None}}}
    text = render([row])
    assert "1m 45us/18ms/25ms (6000)" in text and "10m no steps" in text
    assert all(len(line) <= 80 for line in text.splitlines())
