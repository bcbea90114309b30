"""Latency histograms and percentiles (pure).

Two sources: raw samples (the bench's per-step nanoseconds) and bucketed
counts (bpftrace maps keyed by a bucket's lower bound, see bpftrace.py).
Percentiles use the nearest-rank definition (the smallest value with at
least q of the samples at or below it), so p999 of 1000 samples is the
largest one and no value is invented between two samples.

Bucket scheme for the in-kernel maps (BUCKETS): two significant digits,
decimal, so a person reads the bounds directly:
    [0, 10 us)      100 ns steps
    [10, 100 us)    1 us steps
    [100 us, 1 ms)  10 us steps
    [1, 10 ms)      100 us steps
    [10 ms, 1 s)    1 ms steps; 1 s and above in one bucket
A percentile from buckets is the bucket's lower bound plus half its width:
within 5% of the sample above 10 us, within 50 ns below.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

QUANTILES = (0.50, 0.99, 0.999)

# (upper bound ns, step ns) in order; values >= the last bound share one bucket
BUCKETS: tuple[tuple[int, int], ...] = (
    (10_000, 100),
    (100_000, 1_000),
    (1_000_000, 10_000),
    (10_000_000, 100_000),
    (1_000_000_000, 1_000_000),
)
TOP = BUCKETS[-1][0]


def bucket_lower(v: int) -> int:
    """Lower bound of the bucket holding `v` ns (the same rule the BPF program uses)."""
    if v < 0:
        return 0
    for bound, step in BUCKETS:
        if v < bound:
            return v // step * step
    return TOP


def bucket_width(lower: int) -> int:
    prev = 0
    for bound, step in BUCKETS:
        if prev <= lower < bound:
            return step
        prev = bound
    return 0


def percentile(sorted_vals: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of ascending `sorted_vals` (0 when empty)."""
    n = len(sorted_vals)
    if n == 0:
        return 0
    rank = max(1, math.ceil(q * n))
    return sorted_vals[min(n, rank) - 1]


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    p50: int
    p99: int
    p999: int
    max: int
    mean: float

    def to_json(self) -> dict[str, int | float]:
        return {"count": self.count, "p50": self.p50, "p99": self.p99, "p999": self.p999,
                "max": self.max, "mean": round(self.mean, 1)}


EMPTY = Summary(0, 0, 0, 0, 0, 0.0)


def summarize(values: Iterable[int]) -> Summary:
    s = sorted(values)
    if not s:
        return EMPTY
    return Summary(len(s), percentile(s, 0.50), percentile(s, 0.99), percentile(s, 0.999),
                   s[-1], sum(s) / len(s))


def bucket_percentile(counts: Mapping[int, int], q: float) -> int:
    """Percentile from {bucket lower bound: count}; midpoint of the bucket it falls in."""
    total = sum(c for c in counts.values() if c > 0)
    if total == 0:
        return 0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for lower in sorted(counts):
        c = counts[lower]
        if c <= 0:
            continue
        seen += c
        if seen >= rank:
            return lower + bucket_width(lower) // 2
    return max(counts)


def summarize_buckets(counts: Mapping[int, int]) -> Summary:
    total = sum(c for c in counts.values() if c > 0)
    if total == 0:
        return EMPTY
    mean = sum((lo + bucket_width(lo) / 2) * c for lo, c in counts.items() if c > 0) / total
    top = max(lo for lo, c in counts.items() if c > 0)
    return Summary(total, bucket_percentile(counts, 0.50), bucket_percentile(counts, 0.99),
                   bucket_percentile(counts, 0.999), top + bucket_width(top), mean)


def merge(*hists: Mapping[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for k, c in h.items():
            out[k] = out.get(k, 0) + c
    return out


def cdf_points(sorted_vals: Sequence[int], points: int = 400) -> list[tuple[int, float]]:
    """A down-sampled empirical CDF [(value, fraction <= value)], dense in the tail.

    Fractions are spaced evenly in log(1 - q) so p99..p99.99 get as many
    points as p0..p90; the largest sample is always the last point.
    """
    n = len(sorted_vals)
    if n == 0:
        return []
    out: list[tuple[int, float]] = []
    last_rank = 0
    lo = math.log10(1.0 / n)
    for i in range(points):
        tail = 10 ** (lo * i / max(1, points - 1))  # 1 .. 1/n
        q = 1.0 - tail
        rank = min(n, max(1, math.ceil(q * n)))
        if rank > last_rank:
            out.append((sorted_vals[rank - 1], rank / n))
            last_rank = rank
    if last_rank < n:
        out.append((sorted_vals[-1], 1.0))
    return out
