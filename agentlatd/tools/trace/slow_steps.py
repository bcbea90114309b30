"""`agentlatd trace --slow-steps`: every slow step of the traced agents, with why.

Reads each agent's step ring (agentlatd/steps/ring.py) every 0.25 s while the
per-event tracer (agentlatd/tools/trace/step_events.py) runs, keeps the steps that lie
inside the trace window, picks the slow ones (above --threshold, else the
window's p99 per agent; or the --top N slowest), attributes each
(agentlatd/steps/attribute.py) and prints one verdict line per step and the
summary: share of slow-step time by cause, top culprits. Processes without a
ring are attributed by wakeup-to-block cycles, and the output says so.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Collection, Mapping
from typing import Any

from agentlatd.errors import AgentlatdError
from agentlatd.steps import attribute as at
from agentlatd.steps.ring import RingReader, StepRecord
from agentlatd.sysfs.root import Root
from agentlatd.tools.trace import step_events as events
from agentlatd.tools.trace import step_tracefs as tracefs_events
from agentlatd.tools.trace.bpftrace import Unavailable

UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def parse_duration(text: str) -> int:
    """"500us", "2ms", "1.5" (ms) -> ns."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ns|us|ms|s)?\s*", text)
    if m is None:
        raise AgentlatdError(f"--threshold {text!r}: give a time such as 500us, 2ms or 0.01s.")
    return int(float(m.group(1)) * UNITS[m.group(2) or "ms"])


def select(steps: list[at.Step], threshold_ns: int | None,
           top: int | None) -> tuple[list[at.Step], dict[int, int]]:
    """The slow steps and the threshold used per pid (the window's p99 when not given)."""
    if top is not None:
        return sorted(steps, key=lambda s: -s.duration_ns)[:top], {}
    by_pid: dict[int, list[at.Step]] = {}
    for s in steps:
        by_pid.setdefault(s.pid, []).append(s)
    out: list[at.Step] = []
    used: dict[int, int] = {}
    for pid, ss in by_pid.items():
        thr = threshold_ns if threshold_ns is not None else at.threshold_p99([s.duration_ns for s in ss])
        used[pid] = thr
        out += [s for s in ss if s.duration_ns >= thr and s.duration_ns > 0]
    out.sort(key=lambda s: s.start_ns)
    return out, used


def analyse(tr: events.Trace, records: Mapping[int, list[StepRecord]], tids_by_pid: Mapping[int, list[int]],
            threshold_ns: int | None, top: int | None) -> dict[str, Any]:
    """Pure: the trace and the ring records -> the --json document."""
    ix = at.index(tr.events)
    steps: list[at.Step] = []
    cycle_pids: list[int] = []
    for pid, tids in tids_by_pid.items():
        recs = records.get(pid)
        if recs is None:
            cycle_pids.append(pid)
            steps += at.cycles(ix, tids, {t: pid for t in tids})
            continue
        steps += [at.Step(r.tid, r.start_ns, r.end_ns, r.step, pid) for r in recs
                  if r.start_ns >= tr.start_ns and r.end_ns <= tr.end_ns]
    slow, used = select(steps, threshold_ns, top)
    atts = [at.attribute(ix, s) for s in slow]
    return {
        "steps_seen": len(steps), "slow_steps": len(atts),
        "threshold_ns": {str(p): t for p, t in used.items()},
        "threshold_source": "given" if threshold_ns is not None else (
            f"top {top}" if top is not None else "p99 of the window's steps, per agent"),
        "cycles_for": cycle_pids, "events": len(tr.events), "lost_events": tr.lost,
        "summary": at.summarize(atts),
        "steps": [at.to_json(a) for a in atts],
    }


BACKENDS = ("auto", "bpftrace", "tracefs")
Tracer = Callable[..., events.Trace]
TRACERS: dict[str, Tracer] = {"bpftrace": events.run, "tracefs": tracefs_events.run}


def traced(root: Root, tids: Collection[int], duration_s: float, workdir: str, tick: Callable[[], None],
           backend: str = "auto") -> tuple[events.Trace, str, str]:
    """Trace with `backend` ("auto": bpftrace, then tracefs where bpftrace is missing
    or fails); (the trace, the backend that ran, why bpftrace did not). Unavailable
    when none can."""
    if backend not in BACKENDS:
        raise Unavailable(f"no tracer backend {backend!r} (one of {', '.join(BACKENDS)})")
    why = ""
    if backend in ("auto", "bpftrace"):
        try:
            return events.run(root, tids, duration_s, workdir, tick), "bpftrace", ""
        except Unavailable as e:
            if backend == "bpftrace":
                raise
            why = str(e)
    try:
        return tracefs_events.run(root, tids, duration_s, workdir, tick), "tracefs", why
    except Unavailable as e:
        raise Unavailable(f"{why} tracefs: {e}" if why else str(e)) from None


def trace_slow_steps(root: Root, tids_by_pid: Mapping[int, list[int]], duration_s: float,
                     threshold_ns: int | None, top: int | None, backend: str = "auto") -> dict[str, Any]:
    readers = {pid: r for pid in tids_by_pid if (r := RingReader.open(root, pid, from_now=True))}
    records: dict[int, list[StepRecord]] = {pid: [] for pid in readers}

    def tick() -> None:
        for pid, r in readers.items():
            records[pid] += r.read()

    tids = sorted(t for ts in tids_by_pid.values() for t in ts)
    try:
        with tempfile.TemporaryDirectory(prefix="agentlatd-steps-") as wd:
            tr, method, why = traced(root, tids, duration_s, wd, tick, backend)
    finally:
        missed = {pid: r.missed for pid, r in readers.items()}
        for r in readers.values():
            r.close()
    doc = analyse(tr, records, tids_by_pid, threshold_ns, top)
    doc["ring_missed"] = {str(p): n for p, n in missed.items() if n}
    doc["method"] = method
    if why:
        doc["fallback_reason"] = why
    if tr.synth_switches:
        doc["synth_switches"] = tr.synth_switches
    return doc


def render(doc: Mapping[str, Any], limit: int = 40) -> str:
    out = []
    if doc.get("fallback_reason"):
        out.append(f"bpftrace unavailable ({doc['fallback_reason']}): traced with {doc['method']}"[:200])
    out += [f"slow steps: {doc['slow_steps']} of {doc['steps_seen']} "
           f"(threshold: {doc['threshold_source']}"
           + "".join(f"; pid {p}: {int(t) / 1e6:.2f} ms" for p, t in doc["threshold_ns"].items())
           + ")"]
    if doc.get("cycles_for"):
        out.append("no step markers for pid(s) " + ", ".join(map(str, doc["cycles_for"]))
                   + ": cycles (no step markers), from one block to the next")
    if doc.get("lost_events"):
        out.append(f"warning: the tracer lost {doc['lost_events']} events: attributions are partial")
    for s in doc["steps"][:limit]:
        out.append(f"  {s['verdict']}"[:200])
    if len(doc["steps"]) > limit:
        out.append(f"  ... {len(doc['steps']) - limit} more (--json has all)")
    summ = doc["summary"]
    if summ["total_ns"]:
        out.append("")
        out.append(f"Share of slow-step time by cause ({summ['total_ns'] / 1e6:.1f} ms in all)")
        for c, v in summ["by_cause"].items():
            out.append(f"  {c:<15}{v['share'] * 100:6.1f}%{v['ns'] / 1e6:10.2f} ms")
        if summ["culprits"]:
            out.append("Top culprits")
            for c in summ["culprits"]:
                out.append(f"  {c['share'] * 100:5.1f}%  {c['cause']:<15}{c['who']}"[:80])
    return "\n".join(out) + "\n"
