"""Step latency statistics: a log-linear histogram and its percentiles (pure).

Clients (agentlatd.client) time each step locally with time.perf_counter_ns()
and send summaries: a sparse histogram {bucket: count} in this module's bucket
scheme (docs/protocol.md, "Step reports"), or raw samples. The daemon merges
them per agent and answers p50/p99/p999 for `agentlatd agents`.

Bucket scheme (HdrHistogram's idea with 5 sub-bucket bits): values below 64 ns
get a bucket each; above, each power of two is split into 32 linear buckets, so
a bucket spans at most 1/32 of its value and a percentile read from the bucket
midpoint is within ~1.6% of the true sample. Values are clamped to MAX_NS
(2^40 ns, ~18 minutes). 1153 buckets in all, kept sparse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SUB_BITS = 5
SUB = 1 << SUB_BITS  # 32 linear sub-buckets per power of two
MAX_NS = 1 << 40


def bucket_of(v: int) -> int:
    """Bucket index of a latency `v` in ns (negative counts as 0, huge as MAX_NS)."""
    if v < 2 * SUB:
        return v if v > 0 else 0
    if v > MAX_NS:
        v = MAX_NS
    e = v.bit_length() - SUB_BITS - 1
    return (e + 1) * SUB + (v >> e) - SUB


MAX_BUCKET = bucket_of(MAX_NS)  # 1152: the highest bucket index


def bucket_bounds(b: int) -> tuple[int, int]:
    """The lowest and highest value (ns) that fall into bucket `b`."""
    if b < 2 * SUB:
        return b, b
    e = b // SUB - 1
    m = b % SUB + SUB
    return m << e, ((m + 1) << e) - 1


def bucket_value(b: int) -> int:
    """The value a bucket stands for in percentiles: its midpoint."""
    lo, hi = bucket_bounds(b)
    return (lo + hi) // 2


@dataclass(slots=True)
class Histogram:
    """Counts per bucket, plus exact count, sum and max."""

    counts: dict[int, int]
    count: int = 0
    sum_ns: int = 0
    max_ns: int = 0

    @classmethod
    def empty(cls) -> Histogram:
        return cls({})

    def add(self, v: int) -> None:
        b = bucket_of(v)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.count += 1
        self.sum_ns += max(v, 0)
        if v > self.max_ns:
            self.max_ns = v

    def add_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.add(v)

    def merge_counts(self, counts: Mapping[int, int], *, sum_ns: int = 0, max_ns: int = 0) -> None:
        """Fold a client's sparse histogram in (already validated)."""
        n = 0
        for b, c in counts.items():
            if c:
                self.counts[b] = self.counts.get(b, 0) + c
                n += c
        self.count += n
        self.sum_ns += sum_ns
        if max_ns > self.max_ns:
            self.max_ns = max_ns

    def percentile(self, q: float) -> int | None:
        """The q-quantile (0 < q <= 1) in ns, from bucket midpoints; None when empty."""
        if self.count == 0:
            return None
        # rank of the sample at quantile q (nearest-rank definition)
        rank = max(1, -(-int(q * self.count * 1_000_000) // 1_000_000))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(bucket_value(b), self.max_ns) if self.max_ns else bucket_value(b)
        return self.max_ns  # pragma: no cover - counts sum to count

    def summary(self) -> dict[str, int | None]:
        return {"steps": self.count, "p50_ns": self.percentile(0.50),
                "p99_ns": self.percentile(0.99), "p999_ns": self.percentile(0.999),
                "max_ns": self.max_ns if self.count else None,
                "mean_ns": self.sum_ns // self.count if self.count else None}


def sparse(values: Iterable[int]) -> dict[int, int]:
    """Raw samples -> {bucket: count} (the client does this off the step path)."""
    out: dict[int, int] = {}
    for v in values:
        b = bucket_of(v)
        out[b] = out.get(b, 0) + 1
    return out
