"""`agentlatd agents`: the registered agents, as the daemon sees them.

Text: one line per agent (fits 80 columns) with its lifetime step
percentiles, under it the same percentiles over the last minute and the last
ten minutes (a slowdown that started a minute ago barely moves a lifetime
p99), then the last move and why, the processes it waits on (its chain) and
the decisions the do-no-harm guard undid. --json: {"schema_version": 1,
"agents": [...]}, each agent an object with at least agent_id, pid,
latency_class, home_cpu, threads, steps, p50_ns, p99_ns, p999_ns, recent
({"1m": {steps, p50_ns, p99_ns, p999_ns}, "10m": {...}}), last_move ({at,
from_cpu, to_cpu, reason} or null), chain, guard, refused; see
docs/protocol.md ("agents").

--slow: the daemon's always-on slowest-steps view (agentlatd/steps/
slowsteps.py): per agent with a step ring, the share of its slow steps' time
by cause (runnable: waiting for a CPU; irq: its CPU's interrupts; on_cpu: its
own work; blocked: asleep) and its slowest recent steps, each with the CPU it
ran on, its migrations and the sampling window the split comes from. --json:
{"schema_version": 1, "agents": [{agent_id, pid, ring, threshold_ns, steps,
slow_steps, unattributed, ring_missed, time_by_cause_ns, share_by_cause,
slowest: [{seq, step, tid, start_ns, end_ns, duration_ns, cpu, migrations,
window_ns, cause, causes_ns}]}]}. For the exact cause of each step (who ran
instead, which IRQ), `agentlatd trace --slow-steps`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from typing import Any

from agentlatd import jsonout
from agentlatd.client import ClientError, Connection, Unavailable
from agentlatd.wire import Op

HELP = "list registered agents: class, home CPU, threads, step latency, moves"
EXAMPLES = (
    "agentlatd agents",
    "agentlatd agents --json",
    "agentlatd agents --slow",
    "agentlatd agents --slow --json",
    "agentlatd agents --socket /tmp/al/agentlatd.sock",
)
WIDTH = 80


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH",
                   help="registration socket (default: $AGENTLATD_SOCKET, else the policy's)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--slow", action="store_true",
                   help="each agent's slowest recent steps and their time by cause")
    p.add_argument("--limit", type=int, default=5, metavar="N",
                   help="with --slow: slow steps shown per agent (default 5; --json has all)")


def fmt_ns(v: int | None) -> str:
    if v is None:
        return "-"
    if v < 10_000:
        return f"{v}ns"
    if v < 10_000_000:
        return f"{v / 1000:.0f}us"
    if v < 10_000_000_000:
        return f"{v / 1e6:.0f}ms"
    return f"{v / 1e9:.0f}s"


def render(rows: list[dict[str, Any]], now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not rows:
        return "No agents registered.\n"
    head = (f"{'AGENT':<16} {'PID':>7} {'CLASS':<11} {'CPU':>4} {'THR':>5} {'STEPS':>8} "
            f"{'P50':>6} {'P99':>6} {'P999':>6}")
    out = [head]
    for r in rows:
        cpu = r.get("home_cpu")
        cpus = str(cpu) if cpu is not None else ("-" if not r.get("cpus") else "c")
        thr = f"{r.get('threads_pinned', 0)}/{r.get('threads', 0)}" \
            if r.get("cpus") else str(r.get("threads", 0))
        aid = str(r.get("agent_id", ""))
        aid = aid if len(aid) <= 16 else aid[:15] + "~"
        out.append(f"{aid:<16} {r.get('pid', 0):>7} {r.get('latency_class', '')!s:<11} "
                   f"{cpus:>4} {thr:>5} {r.get('steps', 0):>8} {fmt_ns(r.get('p50_ns')):>6} "
                   f"{fmt_ns(r.get('p99_ns')):>6} {fmt_ns(r.get('p999_ns')):>6}")
        rec = r.get("recent")
        if isinstance(rec, dict) and r.get("steps"):
            parts = []
            for name in ("1m", "10m"):
                w = rec.get(name) or {}
                if w.get("steps"):
                    parts.append(f"{name} {fmt_ns(w.get('p50_ns'))}/{fmt_ns(w.get('p99_ns'))}/"
                                 f"{fmt_ns(w.get('p999_ns'))} ({w.get('steps')})")
                else:
                    parts.append(f"{name} no steps")
            out += textwrap.wrap("p50/p99/p999 " + ", ".join(parts), WIDTH,
                                 initial_indent="  ", subsequent_indent="    ")
        mv = r.get("last_move")
        if mv:
            ago = max(0.0, now - float(mv.get("at", now)))
            out += textwrap.wrap(f"moved {mv.get('from_cpu')} -> {mv.get('to_cpu')} "
                                 f"{ago:.0f}s ago: {mv.get('reason', '')}", WIDTH,
                                 initial_indent="  ", subsequent_indent="    ")
        ct = r.get("container")
        if isinstance(ct, dict) and (ct.get("pod_uid") or ct.get("container_id")):
            who = []
            if ct.get("pod_uid"):
                who.append(f"pod {ct['pod_uid']}")
            if ct.get("container_id"):
                who.append(f"container {str(ct['container_id'])[:12]}"
                           + (f" ({ct['runtime']})" if ct.get("runtime") else ""))
            out += textwrap.wrap(", ".join(who) + (f", cpuset {r['cpuset']}"
                                                   if r.get("cpuset") else ""), WIDTH,
                                 initial_indent="  ", subsequent_indent="    ")
        if r.get("placement") == "fallback":
            cpu_txt = f"CPU {r.get('home_cpu')} is not a home CPU (its cpuset holds none)"
            out += textwrap.wrap(cpu_txt, WIDTH, initial_indent="  ", subsequent_indent="    ")
        prob = r.get("problem")
        if prob:
            out += textwrap.wrap(f"{r.get('state', '')}: {prob}", WIDTH,
                                 initial_indent="  ", subsequent_indent="    ")
        for m in r.get("chain") or []:
            # a process the agent waits on (docs/protocol.md, "Chains")
            cpus_m = m.get("cpus") or "-"
            line = (f"chain: pid {m.get('pid')} ({m.get('comm', '')}) CPU {cpus_m} "
                    f"{m.get('state', '')}, {m.get('via', '')}")
            if m.get("problem"):
                line += f": {m['problem']}"
            out += textwrap.wrap(line, WIDTH, initial_indent="  ", subsequent_indent="    ")
        decisions = (r.get("guard") or {}).get("decisions") or {}
        for name in r.get("refused") or []:
            why = (decisions.get(name) or {}).get("reason", "")
            out += textwrap.wrap(f"undone, not retried: {name}" + (f": {why}" if why else ""),
                                 WIDTH, initial_indent="  ", subsequent_indent="    ")
    if any(r.get("cpus") and r.get("home_cpu") is None for r in rows):
        out.append("CPU \"c\" = the completion CPUs (background class)")
    return "\n".join(out) + "\n"


CAUSES = ("runnable", "irq", "on_cpu", "blocked")


def _pct(share: Any) -> str:
    return f"{float(share) * 100:.0f}%" if isinstance(share, int | float) else "-"


def render_slow(rows: list[dict[str, Any]], limit: int = 5) -> str:
    if not rows:
        return "No agents registered.\n"
    out = [f"{'AGENT':<16} {'PID':>7} {'STEPS':>8} {'SLOW':>6} {'OVER':>6} "
           f"{'RUNNABLE':>8} {'IRQ':>4} {'ON_CPU':>6} {'BLOCKED':>7}"]
    for r in rows:
        aid = str(r.get("agent_id", ""))
        aid = aid if len(aid) <= 16 else aid[:15] + "~"
        share = r.get("share_by_cause") or {}
        anyslow = bool(sum((r.get("time_by_cause_ns") or {}).values()))
        out.append(f"{aid:<16} {r.get('pid', 0):>7} {r.get('steps', 0):>8} "
                   f"{r.get('slow_steps', 0):>6} {fmt_ns(r.get('threshold_ns')):>6} "
                   + " ".join(f"{_pct(share.get(c)) if anyslow else '-':>{w}}"
                              for c, w in zip(CAUSES, (8, 4, 6, 7), strict=True)))
        if not r.get("ring"):
            out.append("  no step ring (not a Client, or step_ring=False): no per-step view")
            continue
        notes = []
        if r.get("unattributed"):
            notes.append(f"{r['unattributed']} slow step(s) before the view sampled the thread")
        if r.get("ring_missed"):
            notes.append(f"{r['ring_missed']} step(s) overwritten before read")
        if notes:
            out += textwrap.wrap("; ".join(notes), WIDTH, initial_indent="  ",
                                 subsequent_indent="    ")
        for st in (r.get("slowest") or [])[:limit]:
            causes = st.get("causes_ns") or {}
            parts = ", ".join(f"{fmt_ns(v)} {c}" for c, v in
                              sorted(causes.items(), key=lambda kv: -int(kv[1])) if v)
            mig = st.get("migrations")
            line = (f"step {st.get('step')}: {fmt_ns(st.get('duration_ns'))} on CPU "
                    f"{st.get('cpu', '-')}: {parts}"
                    + (f"; {mig} migration(s)" if mig else "")
                    + f" (window {fmt_ns(st.get('window_ns'))})")
            out += textwrap.wrap(line, WIDTH, initial_indent="  ", subsequent_indent="    ")
    out.append("OVER: the slow threshold (deadline, else p99); shares: of slow-step time")
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        with Connection(args.socket) as conn:
            rows = conn.request(Op.SLOW_STEPS if args.slow else Op.AGENTS)
    except Unavailable as e:
        print(f"agentlatd agents: {e.strerror}", file=sys.stderr)
        return 1
    except ClientError as e:
        print(f"agentlatd agents: {e.code}: {e.message}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(jsonout.dumps({"agents": rows}) + "\n")
    else:
        sys.stdout.write(render_slow(rows, args.limit) if args.slow else render(rows))
    return 0
