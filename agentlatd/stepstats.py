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

Two more views of the same counts, both kept as steps arrive (O(1) per merged
bucket, so reading them costs nothing per step):
  export  the Prometheus histogram (agentlatd_agent_step_seconds_bucket): 31
          upper bounds from 10 us to 10 s on the R5 preferred-number series
          (1, 1.6, 2.5, 4, 6.3 per decade: log-spaced, ratio ~1.58), plus +Inf.
          A fine bucket counts under the first bound its midpoint does not
          exceed; a fine bucket is at most 1/32 of its value wide, so a step
          within ~3% of a bound may land on its other side.
  Recent  windowed percentiles for `agentlatd agents` (last minute, last ten
          minutes): fine-bucket counts in 10-s and 60-s slots, the lifetime
          histogram being useless to see a slowdown that started a minute ago.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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


def _r5_bounds() -> tuple[float, ...]:
    """10 us .. 10 s, R5 preferred numbers (ISO 3): 1, 1.6, 2.5, 4, 6.3 per decade."""
    out = [float(f"{m}e{e}") for e in range(-5, 1) for m in ("1", "1.6", "2.5", "4", "6.3")]
    return (*out, 10.0)


EXPORT_BOUNDS_S: tuple[float, ...] = _r5_bounds()  # upper bounds in seconds, +Inf implied
EXPORT_N = len(EXPORT_BOUNDS_S) + 1  # with the +Inf bucket


def _export_index_of(b: int) -> int:
    mid_s = bucket_value(b) / 1e9
    for i, le in enumerate(EXPORT_BOUNDS_S):
        if mid_s <= le:
            return i
    return len(EXPORT_BOUNDS_S)


EXPORT_INDEX: tuple[int, ...] = tuple(_export_index_of(b) for b in range(MAX_BUCKET + 1))


def _zeros() -> list[int]:
    return [0] * EXPORT_N


@dataclass(slots=True)
class Histogram:
    """Counts per bucket, plus exact count, sum and max, and the same counts in
    the exported buckets (export[i]: steps in bucket i, NOT cumulative)."""

    counts: dict[int, int]
    count: int = 0
    sum_ns: int = 0
    max_ns: int = 0
    export: list[int] = field(default_factory=_zeros)

    @classmethod
    def empty(cls) -> Histogram:
        return cls({})

    def add(self, v: int) -> None:
        b = bucket_of(v)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.export[EXPORT_INDEX[b]] += 1
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
        export = self.export
        for b, c in counts.items():
            if c:
                self.counts[b] = self.counts.get(b, 0) + c
                export[EXPORT_INDEX[b]] += c
                n += c
        self.count += n
        self.sum_ns += sum_ns
        if max_ns > self.max_ns:
            self.max_ns = max_ns

    def percentile(self, q: float) -> int | None:
        """The q-quantile (0 < q <= 1) in ns, from bucket midpoints; None when empty."""
        return percentile(self.counts, self.count, q, self.max_ns)

    def summary(self) -> dict[str, int | None]:
        return {"steps": self.count, "p50_ns": self.percentile(0.50),
                "p99_ns": self.percentile(0.99), "p999_ns": self.percentile(0.999),
                "max_ns": self.max_ns if self.count else None,
                "mean_ns": self.sum_ns // self.count if self.count else None}


def percentile(counts: Mapping[int, int], count: int, q: float, max_ns: int = 0) -> int | None:
    """The q-quantile (nearest rank) of sparse fine-bucket counts summing to
    `count`, from bucket midpoints (capped at max_ns when known); None when empty."""
    if count <= 0:
        return None
    rank = max(1, -(-int(q * count * 1_000_000) // 1_000_000))
    seen = 0
    for b in sorted(counts):
        seen += counts[b]
        if seen >= rank:
            return min(bucket_value(b), max_ns) if max_ns else bucket_value(b)
    return max_ns or None  # pragma: no cover - counts sum to count


SLOT_S = 10  # short slots: the last minute is 6 of them plus the current one
MINUTE_S = 60  # long slots: the last ten minutes are 10 of them plus the current one
WINDOWS = (("1m", 60), ("10m", 600))


@dataclass(slots=True)
class Recent:
    """Fine-bucket counts of the last minutes, for windowed percentiles.

    A window of W seconds is the current (partial) slot plus the W/slot whole
    slots before it: the "1m" window covers the last 60-70 s, "10m" the last
    600-660 s. At most 7 + 11 sparse slots per agent; a slot is dropped as
    soon as it leaves its window, so an idle agent holds none.
    """

    short: deque[tuple[int, dict[int, int]]] = field(default_factory=deque)
    long: deque[tuple[int, dict[int, int]]] = field(default_factory=deque)

    @staticmethod
    def _slot(q: deque[tuple[int, dict[int, int]]], n: int, keep: int) -> dict[int, int]:
        while q and q[0][0] <= n - keep:
            q.popleft()
        if not q or q[-1][0] != n:
            q.append((n, {}))
        return q[-1][1]

    def merge_counts(self, counts: Mapping[int, int], now: float) -> None:
        """Add a step report's {bucket: count} at monotonic time `now`."""
        s = self._slot(self.short, int(now // SLOT_S), 60 // SLOT_S + 1)
        m = self._slot(self.long, int(now // MINUTE_S), 600 // MINUTE_S + 1)
        for b, c in counts.items():
            if c:
                s[b] = s.get(b, 0) + c
                m[b] = m.get(b, 0) + c

    def window(self, seconds: int, now: float) -> dict[int, int]:
        """Merged counts of the window of `seconds` (60 or 600) ending now."""
        if seconds <= 60:
            q, slot_s = self.short, SLOT_S
        else:
            q, slot_s = self.long, MINUTE_S
        first = int(now // slot_s) - seconds // slot_s
        out: dict[int, int] = {}
        for n, counts in q:
            if n >= first:
                for b, c in counts.items():
                    out[b] = out.get(b, 0) + c
        return out

    def summary(self, now: float) -> dict[str, dict[str, int | None]]:
        """{"1m": {steps, p50_ns, p99_ns, p999_ns}, "10m": {...}}."""
        out: dict[str, dict[str, int | None]] = {}
        for name, seconds in WINDOWS:
            w = self.window(seconds, now)
            n = sum(w.values())
            out[name] = {"steps": n, "p50_ns": percentile(w, n, 0.50),
                         "p99_ns": percentile(w, n, 0.99), "p999_ns": percentile(w, n, 0.999)}
        return out


def sparse(values: Iterable[int]) -> dict[int, int]:
    """Raw samples -> {bucket: count} (the client does this off the step path)."""
    out: dict[int, int] = {}
    for v in values:
        b = bucket_of(v)
        out[b] = out.get(b, 0) + 1
    return out
