"""Do no harm: did a placement decision make an agent slower? (pure)

agentlatd must never leave an agent slower than it found it. Every decision
that can hurt an agent other than by pinning it -- making its home CPU
exclusive (other tasks, maybe ones it waits on, pushed to the completion
CPUs), placing a chain member -- is judged: windows of the agent's latency
before the decision against windows after it. When the decision made it
clearly worse, it is undone, logged, counted, and never retried for that agent.

What is measured per window (agents/guard.py closes one every WINDOW_S):
  steps      the agent's own step latencies (client step reports): the p99 of
             the steps reported in the window, from the histogram's deltas
  run_delay  agents that report no steps: from proc/PID/task/TID/schedstat
             (run delay, timeslices; Documentation/scheduler/sched-stats.rst),
             per thread the mean wait for a CPU per timeslice in the window;
             the window's value is the worst thread's. A mean, not a p99: the
             kernel keeps no distribution -- a coarser signal, so it needs a
             larger change (RUN_DELAY rule) before it undoes anything.
A window with fewer than `min_samples` samples carries no value and is not
judged (an idle agent cannot be hurt by its placement).

judge(): `before` = the last windows before the decision, `after` = the first
ones after. Undo when the after windows' LOWEST value is above ratio x the
before windows' median and above it by at least min_abs_ns: every after
window worse (one bad window is noise on a shared host), and by a margin no
measurement noise of a few microseconds reaches. Keep when `after_windows`
windows with data are in and that does not hold; wait otherwise. A decision
with no before window (nothing to compare with) is kept, and says so.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agentlatd.stepstats import Histogram

STEPS = "steps"
RUN_DELAY = "run_delay"

WAIT = "wait"
KEEP = "keep"
UNDO = "undo"


@dataclass(frozen=True, slots=True)
class Window:
    """One window of an agent's latency."""

    source: str  # STEPS | RUN_DELAY
    value_ns: int | None  # p99 of the steps, or the worst mean run delay; None = no data
    samples: int  # steps, or timeslices


@dataclass(frozen=True, slots=True)
class Rule:
    ratio: float  # after > ratio x before ...
    min_abs_ns: int  # ... and after - before > this
    min_samples: int  # a window with fewer samples carries no value
    after_windows: int  # windows with data judged after the decision
    before_windows: int = 3  # at most this many windows before it are compared


RULES: Mapping[str, Rule] = {
    STEPS: Rule(ratio=1.5, min_abs_ns=100_000, min_samples=20, after_windows=2),
    RUN_DELAY: Rule(ratio=2.0, min_abs_ns=200_000, min_samples=20, after_windows=2),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # WAIT | KEEP | UNDO
    reason: str
    before_ns: int | None = None
    after_ns: int | None = None


def _valued(ws: Sequence[Window], source: str, rule: Rule) -> list[int]:
    return [w.value_ns for w in ws
            if w.source == source and w.value_ns is not None and w.samples >= rule.min_samples]


def judge(before: Sequence[Window], after: Sequence[Window],
          rules: Mapping[str, Rule] = RULES, max_after: int = 10) -> Verdict:
    """The verdict on one decision (module docstring). `max_after`: after that many
    windows without enough data the decision is kept (nothing shows harm)."""
    source = STEPS if any(w.source == STEPS for w in after) else RUN_DELAY
    rule = rules[source]
    a = _valued(after, source, rule)
    if len(a) < rule.after_windows:
        if len(after) >= max_after:
            return Verdict(KEEP, f"no {source} samples to judge it by in {len(after)} windows")
        return Verdict(WAIT, f"{len(a)}/{rule.after_windows} windows after it")
    a = a[:rule.after_windows]
    b = _valued(before, source, rule)[-rule.before_windows:]
    if not b:
        return Verdict(KEEP, f"no {source} window before it to compare with", None, min(a))
    base = int(statistics.median(b))
    worst_case_best = min(a)
    what = "step p99" if source == STEPS else "mean run delay"
    if worst_case_best > rule.ratio * base and worst_case_best - base > rule.min_abs_ns:
        return Verdict(UNDO, f"{what} {base / 1e3:.0f} us before, at least "
                             f"{worst_case_best / 1e3:.0f} us in each of {len(a)} windows after "
                             f"(> {rule.ratio}x and > +{rule.min_abs_ns / 1e3:.0f} us)",
                       base, worst_case_best)
    return Verdict(KEEP, f"{what} {base / 1e3:.0f} us before, {worst_case_best / 1e3:.0f} us "
                         "after", base, worst_case_best)


def steps_window(prev: Mapping[int, int], now: Histogram) -> Window:
    """The window of the steps reported since histogram counts `prev`."""
    delta = {b: c - prev.get(b, 0) for b, c in now.counts.items() if c > prev.get(b, 0)}
    h = Histogram(delta, sum(delta.values()))
    return Window(STEPS, h.percentile(0.99), h.count)


def run_delay_window(prev: Mapping[int, tuple[int, int]],
                     now: Mapping[int, tuple[int, int]]) -> Window:
    """The window from per-thread (run_delay_ns, timeslices) at its start and end."""
    worst: int | None = None
    slices = 0
    for tid, (wait, n) in now.items():
        p = prev.get(tid)
        if p is None or n < p[1] or wait < p[0]:
            continue  # a new thread (or a counter reset): from the next window on
        dn = n - p[1]
        slices += dn
        if dn:
            mean = (wait - p[0]) // dn
            worst = mean if worst is None else max(worst, mean)
    return Window(RUN_DELAY, worst, slices)
