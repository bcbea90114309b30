"""Trace results -> tables: per IRQ, per softirq vector, per agent thread, and the
design note's section 10 latency budget filled with measured numbers (pure).

Input is the maps of bpftrace.py or tracefs.py (identical shapes), the CPU
roles (home / completion, from a running daemon or the planner), the names of
the traced threads and IRQs, and the schedstat run delay. Output is a
JSON-able dict (`--json`) and its text rendering (80 columns).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentlatd.cpuset import CpuSet
from agentlatd.sample.schedstat import RunDelay
from agentlatd.sample.softirqs import SOFTIRQ_NAMES
from agentlatd.tools.trace.bpftrace import GATE_KINDS, Maps
from agentlatd.tools.trace.hist import Summary, merge, summarize_buckets

# design note section 10, "Expected Latency Budget" (typical uncontended, tail under pressure)
NOTE_BUDGET: dict[str, tuple[str, str, str]] = {
    "irq": ("IRQ entry / handler", "~1-10 us", "10-50+ us"),
    "net_rx": ("NAPI / softirq (NET_RX)", "~5-50 us", "100-500+ us"),
    "block": ("blk-mq completion (BLOCK)", "~5-30 us", "100+ us"),
    "blk_to_run": ("block completion -> run", "", ""),
    "wake": ("wakeup-to-run", "~20-200 us", "500+ us"),
    "gate": ("epoll / io_uring return", "~5-50 us", "100+ us"),
    "recv": ("blocking socket recv", "", ""),
}
NET_RX, BLOCK = 3, 4


@dataclass(frozen=True, slots=True)
class Thread:
    tid: int
    pid: int
    comm: str
    agent_id: str = ""


@dataclass(slots=True)
class TraceInput:
    method: str  # "bpftrace" | "tracefs" | "schedstat"
    duration_s: float
    maps: Maps | None
    home: CpuSet
    completion: CpuSet
    roles_source: str
    threads: dict[int, Thread] = field(default_factory=dict)
    run_delay: list[RunDelay] = field(default_factory=list)
    irq_names: dict[int, str] = field(default_factory=dict)
    unavailable: str = ""  # why tracing did not run (schedstat only)
    notes: list[str] = field(default_factory=list)


def role_of(cpu: int, home: CpuSet, completion: CpuSet) -> str:
    if cpu in completion:
        return "completion"
    if cpu in home:
        return "home"
    return "other"


def _hists(m: Mapping[tuple[int, ...], int], nkeys: int) -> dict[tuple[int, ...], dict[int, int]]:
    """{(k1..kn): {bucket: count}} from a map keyed (k1..kn, bucket)."""
    out: dict[tuple[int, ...], dict[int, int]] = {}
    for key, c in m.items():
        if len(key) != nkeys + 1:
            continue
        h = out.setdefault(key[:nkeys], {})
        h[key[nkeys]] = h.get(key[nkeys], 0) + c
    return out


def _sj(s: Summary) -> dict[str, Any]:
    return s.to_json()


def _split(hists: Mapping[tuple[int, ...], dict[int, int]], cpu_index: int, inp: TraceInput,
           want: Any = None) -> dict[str, dict[int, int]]:
    """Merge histograms by CPU role (all, home, completion), keeping keys `want` accepts."""
    out: dict[str, dict[int, int]] = {"all": {}, "home": {}, "completion": {}, "other": {}}
    for key, h in hists.items():
        if want is not None and not want(key):
            continue
        role = role_of(key[cpu_index], inp.home, inp.completion)
        out["all"] = merge(out["all"], h)
        out[role] = merge(out[role], h)
    return out


def build(inp: TraceInput) -> dict[str, Any]:
    """The report as a JSON-able dict."""
    doc: dict[str, Any] = {
        "method": inp.method, "duration_s": inp.duration_s, "unavailable": inp.unavailable,
        "home_cpus": inp.home.to_list(), "completion_cpus": inp.completion.to_list(),
        "roles_source": inp.roles_source,
        "threads": [{"tid": t.tid, "pid": t.pid, "comm": t.comm, "agent_id": t.agent_id}
                    for t in sorted(inp.threads.values(), key=lambda t: t.tid)],
        "notes": list(inp.notes),
    }
    doc["run_delay"] = [{"tid": d.tid, "comm": inp.threads[d.tid].comm if d.tid in inp.threads else "",
                         "slices": d.slices, "wait_ns": d.wait_ns, "run_ns": d.run_ns,
                         "mean_wait_ns": round(d.mean_wait_ns, 1)} for d in inp.run_delay]
    m = inp.maps
    if m is None:
        doc["stages"] = []
        return doc
    doc["lost_events"] = m.lost
    # tracefs only: wakeups whose switch in the ring buffer did not record (trace/tracefs.py)
    doc["wakeups_untimed"] = sum(m.get("wake_untimed").values())

    def role(cpu: int) -> str:
        return role_of(cpu, inp.home, inp.completion)

    irq = _hists(m.get("irq"), 2)
    doc["irqs"] = sorted(({"irq": k[0], "name": inp.irq_names.get(k[0], ""), "cpu": k[1], "role": role(k[1]),
                           **_sj(summarize_buckets(h))} for k, h in irq.items()),
                         key=lambda r: (-r["count"], r["irq"], r["cpu"]))
    soft = _hists(m.get("softirq"), 2)
    tot = m.get("softirq_ns")
    ksd = m.get("ksoftirqd_ns")
    dur_ns = max(1.0, inp.duration_s * 1e9)
    doc["softirqs"] = sorted(({"vec": k[0], "name": _vec_name(k[0]),
                               "cpu": k[1], "role": role(k[1]), "total_ns": tot.get(k, 0),
                               "cpu_share": round(tot.get(k, 0) / dur_ns, 4),
                               "ksoftirqd_ns": ksd.get(k, 0),
                               "ksoftirqd_share": round(ksd.get(k, 0) / tot[k], 3) if tot.get(k) else 0.0,
                               **_sj(summarize_buckets(h))} for k, h in soft.items()),
                             key=lambda r: (r["vec"], r["cpu"]))
    wake = _hists(m.get("wake"), 2)
    doc["wakeups"] = [{"tid": k[0], "comm": _comm(inp, k[0]), "cpu": k[1], "role": role(k[1]),
                       **_sj(summarize_buckets(h))} for k, h in sorted(wake.items())]
    gate = _hists(m.get("gate"), 2)
    doc["gates"] = [{"kind": GATE_KINDS.get(k[0], str(k[0])), "tid": k[1], "comm": _comm(inp, k[1]),
                     **_sj(summarize_buckets(h))} for k, h in sorted(gate.items())]
    blk = _hists(m.get("blk"), 2)
    doc["block_to_run"] = [{"tid": k[0], "comm": _comm(inp, k[0]), "cpu": k[1], "role": role(k[1]),
                            **_sj(summarize_buckets(h))} for k, h in sorted(blk.items())]

    # section 10, measured. Gates carry no CPU in their key: no home/completion split.
    rows: list[tuple[str, dict[str, dict[int, int]]]] = [
        ("irq", _split(irq, 1, inp)),
        ("net_rx", _split(soft, 1, inp, lambda k: k[0] == NET_RX)),
        ("block", _split(soft, 1, inp, lambda k: k[0] == BLOCK)),
        ("blk_to_run", _split(blk, 1, inp)),
        ("wake", _split(wake, 1, inp)),
        ("gate", {"all": merge(*(h for k, h in gate.items() if k[0] in (1, 2)))}),
        ("recv", {"all": merge(*(h for k, h in gate.items() if k[0] == 3))}),
    ]
    stages = []
    for key, parts in rows:
        title, typ, tail = NOTE_BUDGET[key]
        entry: dict[str, Any] = {"stage": key, "title": title, "note_typical": typ, "note_tail": tail,
                                 "all": _sj(summarize_buckets(parts.get("all", {})))}
        for r in ("home", "completion"):
            if r in parts:
                entry[r] = _sj(summarize_buckets(parts[r]))
        stages.append(entry)
    doc["stages"] = stages
    return doc


def _vec_name(vec: int) -> str:
    return SOFTIRQ_NAMES[vec] if 0 <= vec < len(SOFTIRQ_NAMES) else str(vec)


def _comm(inp: TraceInput, tid: int) -> str:
    if tid == 0:
        return "(all threads)"
    t = inp.threads.get(tid)
    return t.comm if t else ""


def _us(ns: float) -> str:
    if ns <= 0:
        return "-"
    us = ns / 1e3
    return f"{us:.1f}" if us < 100 else f"{us:.0f}"


def render(doc: dict[str, Any], *, top: int = 12) -> str:
    """Text for a person, 80 columns."""
    out: list[str] = []
    out.append(f"agentlatd trace: {doc['method']}, {doc['duration_s']:g} s")
    out.append(f"home CPUs {doc['home_cpus'] or '-'}, completion CPUs {doc['completion_cpus'] or '-'} "
               f"({doc['roles_source'][:40]})")
    if doc.get("unavailable"):
        out += textwrap.wrap(f"tracing unavailable: {doc['unavailable']}", 80, subsequent_indent="  ")
        out.append("showing the per-thread run delay from schedstat only.")
    if doc.get("lost_events"):
        out.append(f"warning: {doc['lost_events']} events lost; percentiles undercount the busiest CPUs")
    if doc.get("wakeups_untimed"):
        out.append(f"note: {doc['wakeups_untimed']} wakeup(s) not timed: the tracer saw the thread run "
                   "but not when it was switched in")
    if doc.get("stages"):
        out.append("")
        out.append("Latency budget (design note section 10), measured, us")
        out.append(f"{'stage':<27}{'p50':>6}{'p99':>7}{'p999':>7}  {'home n/p99':>13}  {'compl n/p99':>13}")
        for s in doc["stages"]:
            a = s["all"]
            if not a["count"]:
                out.append(f"{s['title']:<27}{'(no events)':>20}")
                continue
            cols = []
            for r in ("home", "completion"):
                x = s.get(r)
                cols.append(f"{x['count']}/{_us(x['p99'])}" if x and x["count"] else "-")
            out.append(f"{s['title']:<27}{_us(a['p50']):>6}{_us(a['p99']):>7}{_us(a['p999']):>7}"
                       f"  {cols[0]:>13}  {cols[1]:>13}")
        out.append("note's budget: IRQ ~1-10/10-50+; NET_RX ~5-50/100-500+; blk-mq ~5-30/100+;")
        out.append("  wakeup ~20-200/500+; epoll/io_uring ~5-50/100+ (typical/tail, us)")
    if doc.get("irqs"):
        out.append("")
        out.append(f"IRQ handlers (top {top} by count), us")
        out.append(f"{'irq':>4} {'name':<20}{'cpu':>4} {'role':<11}{'count':>8}"
                   f"{'p50':>7}{'p99':>7}{'p999':>7}")
        for r in doc["irqs"][:top]:
            out.append(f"{r['irq']:>4} {r['name'][:19]:<20}{r['cpu']:>4} {r['role']:<11}{r['count']:>8}"
                       f"{_us(r['p50']):>7}{_us(r['p99']):>7}{_us(r['p999']):>7}")
    if doc.get("softirqs"):
        out.append("")
        out.append("Softirqs per vector and CPU: runs, CPU share, ksoftirqd share, us")
        out.append(f"{'vector':<8}{'cpu':>4} {'role':<11}{'runs':>7}{'cpu%':>6}{'ksd%':>6}"
                   f"{'p50':>7}{'p99':>7}{'p999':>7}")
        for r in doc["softirqs"]:
            out.append(f"{r['name']:<8}{r['cpu']:>4} {r['role']:<11}{r['count']:>7}"
                       f"{r['cpu_share'] * 100:>6.1f}{r['ksoftirqd_share'] * 100:>6.0f}"
                       f"{_us(r['p50']):>7}{_us(r['p99']):>7}{_us(r['p999']):>7}")
    for key, title in (("wakeups", "Wakeup-to-run per thread and CPU it ran on"),
                       ("block_to_run", "Block completion to run per thread")):
        if doc.get(key):
            out.append("")
            out.append(f"{title}, us")
            out.append(f"{'tid':>8} {'comm':<16}{'cpu':>4} {'role':<11}{'count':>7}{'p50':>7}{'p99':>7}"
                       f"{'p999':>7}")
            for r in doc[key][:top * 2]:
                out.append(f"{r['tid']:>8} {r['comm'][:15]:<16}{r['cpu']:>4} {r['role']:<11}{r['count']:>7}"
                           f"{_us(r['p50']):>7}{_us(r['p99']):>7}{_us(r['p999']):>7}")
    if doc.get("gates"):
        out.append("")
        out.append("Gate time (blocked in the syscall) per thread, us")
        out.append(f"{'kind':<9}{'tid':>8} {'comm':<16}{'count':>7}{'p50':>8}{'p99':>8}{'p999':>8}")
        for r in doc["gates"][:top * 2]:
            out.append(f"{r['kind']:<9}{r['tid']:>8} {r['comm'][:15]:<16}{r['count']:>7}"
                       f"{_us(r['p50']):>8}{_us(r['p99']):>8}{_us(r['p999']):>8}")
    if doc.get("run_delay"):
        out.append("")
        out.append("Run delay per thread (schedstat: time runnable but not running)")
        out.append(f"{'tid':>8} {'comm':<16}{'slices':>8}{'wait ms':>10}{'mean wait us':>14}")
        for r in doc["run_delay"]:
            out.append(f"{r['tid']:>8} {r['comm'][:15]:<16}{r['slices']:>8}{r['wait_ns'] / 1e6:>10.2f}"
                       f"{r['mean_wait_ns'] / 1e3:>14.1f}")
    for n in doc.get("notes", []):
        out += textwrap.wrap(f"note: {n}", 80, subsequent_indent="  ")
    return "\n".join(out) + "\n"
