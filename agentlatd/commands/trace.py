"""`agentlatd trace`: where an agent step's latency goes (design note sections 9 and 10).

Traces for --duration seconds: IRQ handler time per IRQ and CPU; softirq
runtime per vector and CPU, on home vs completion CPUs, with ksoftirqd's
share; wakeup-to-run per agent thread; time blocked in epoll_wait /
io_uring_enter (and blocking recvfrom) per agent thread; block completion to
run where the completion wakes the thread directly. Prints the note's section
10 table with the measured numbers.

Agents: --pid P, --agent ID (looked up in a running daemon), else every agent
the daemon has registered, else the whole host (wakeups and gates summed over
all threads). CPU roles: the running daemon's, else the planner's with the
default policy (agentlatd plan).

Methods, best first: bpftrace (tracepoints, aggregated in the kernel), the
tracefs event files (a private trace instance), schedstat only (the per-thread
run delay the kernel always keeps). Without root, or without BPF and tracefs,
it says so and falls back to schedstat.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from agentlatd import jsonout
from agentlatd import policy as policy_mod
from agentlatd.client import ClientError, Connection, Unavailable
from agentlatd.cpuset import CpuSet
from agentlatd.errors import AgentlatdError, KernelError
from agentlatd.sample import schedstat
from agentlatd.sample.interrupts import parse_interrupts, read_interrupts
from agentlatd.sysfs.root import Root
from agentlatd.tick import plan_tick, sample_once
from agentlatd.tools.trace import bpftrace, tracefs
from agentlatd.tools.trace import report as trace_report
from agentlatd.tools.trace import slow_steps as slow
from agentlatd.wire import Op

HELP = "attribute agent step latency to IRQs, softirqs, wakeups and wait gates"
EXAMPLES = (
    "agentlatd trace --duration 5",
    "agentlatd trace --agent planner --duration 10",
    "agentlatd trace --pid 4242 --json",
    "agentlatd trace --method tracefs --duration 3",
    "agentlatd trace --pid 4242 --slow-steps --duration 10",
    "agentlatd trace --agent planner --slow-steps --threshold 2ms --json",
    "agentlatd trace --pid 4242 --slow-steps --top 20",
    "agentlatd trace --pid 4242 --slow-steps --method tracefs",
)
METHODS = ("auto", "bpftrace", "tracefs", "schedstat")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=5.0, metavar="S",
                   help="seconds to trace (default 5)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--agent", metavar="ID", help="a registered agent (asks the running daemon)")
    who.add_argument("--pid", type=int, metavar="P", help="a process (all its threads)")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="bpftrace, tracefs or schedstat (default: the best available)")
    p.add_argument("--socket", metavar="PATH",
                   help="daemon socket (default: $AGENTLATD_SOCKET or the policy's)")
    p.add_argument("--root", default="/", metavar="DIR", help="filesystem root holding proc/ and sys/")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--slow-steps", action="store_true",
                   help="per slow step, why: running, runnable behind whom, IRQ/softirq on its CPU, "
                        "blocked in which gate and woken by what (bpftrace, else tracefs: "
                        "--method; agents need --pid or --agent)")
    lim = p.add_mutually_exclusive_group()
    lim.add_argument("--threshold", metavar="T",
                     help="with --slow-steps: steps at least this long (500us, 2ms; default: "
                          "each agent's p99 over the window)")
    lim.add_argument("--top", type=int, metavar="N", help="with --slow-steps: the N slowest steps")


def _daemon(socket: str | None, op: Op) -> Any:
    """A running daemon's answer to `op`, or None when none answers."""
    try:
        with Connection(socket, timeout=2.0) as c:
            return c.request(op)
    except (Unavailable, ClientError, OSError, ValueError):
        return None


def cpu_roles(root: Root, socket: str | None) -> tuple[CpuSet, CpuSet, str]:
    """(home, completion, where they came from)."""
    st = _daemon(socket, Op.STATUS)
    if isinstance(st, dict) and st.get("home_cpus") is not None:
        try:
            return (CpuSet.parse_list(str(st.get("home_cpus") or "")),
                    CpuSet.parse_list(str(st.get("completion_cpus") or "")), "running daemon")
        except ValueError:
            pass
    pol = policy_mod.default()
    snap = sample_once(root, pol)
    tp = plan_tick(snap, pol)
    if tp.plan is None:
        return CpuSet(), CpuSet(), f"roles unknown: {'; '.join((*snap.errors, tp.error))}"
    return tp.plan.home_cpus, tp.plan.completion_cpus, "planner, default policy"


def _threads_of(root: Root, pid: int, agent_id: str = "") -> dict[int, trace_report.Thread]:
    out: dict[int, trace_report.Thread] = {}
    for name in root.listdir(f"proc/{pid}/task"):
        if name.isdigit():
            comm = root.read_optional(f"proc/{pid}/task/{name}/comm")
            out[int(name)] = trace_report.Thread(int(name), pid, comm, agent_id)
    return out


Threads = dict[int, trace_report.Thread]


def targets(args: argparse.Namespace, root: Root) -> tuple[Threads, dict[int, str], str]:
    """(threads, pid -> agent id, description)."""
    if args.pid is not None:
        found = _threads_of(root, args.pid)
        if not found:
            raise AgentlatdError(f"no process {args.pid} (or its threads are not readable).")
        return found, {args.pid: ""}, f"pid {args.pid}"
    agents = _daemon(args.socket, Op.AGENTS)
    if args.agent is not None:
        if agents is None:
            raise AgentlatdError(f"--agent {args.agent}: no agentlatd daemon answers; use --pid.")
        pids = {int(a["pid"]): str(a["agent_id"]) for a in agents if a.get("agent_id") == args.agent}
        if not pids:
            raise AgentlatdError(f"no registered agent {args.agent!r} (agentlatd agents lists them).")
    elif agents:
        pids = {int(a["pid"]): str(a["agent_id"]) for a in agents}
    else:
        return {}, {}, "whole host"
    th: dict[int, trace_report.Thread] = {}
    for pid, aid in pids.items():
        th.update(_threads_of(root, pid, aid))
    return th, pids, ", ".join(f"{a or '?'} ({p})" for p, a in pids.items())


def _irq_names(root: Root) -> dict[int, str]:
    try:
        return {k: (r.desc or r.chip) for k, r in parse_interrupts(read_interrupts(root)).numbered().items()}
    except KernelError:
        return {}


def _sample(root: Root, pids: dict[int, str]) -> dict[int, schedstat.SchedStat]:
    out: dict[int, schedstat.SchedStat] = {}
    for pid in pids:
        out.update(schedstat.sample_threads(root, pid))
    return out


@contextlib.contextmanager
def progress(what: str, duration: float) -> Iterator[None]:
    """Say on stderr what is traced, then how far along, while a trace of up to an hour
    runs (stdout keeps only the report): every tenth of the duration, 1 to 60 s apart."""
    def say(msg: str) -> None:
        print(f"agentlatd trace: {msg}", file=sys.stderr, flush=True)

    say(f"tracing {what} for {duration:g} s")
    every = max(1.0, min(60.0, duration / 10))
    done = threading.Event()
    t0 = time.monotonic()

    def tick() -> None:
        while not done.wait(every):
            elapsed = time.monotonic() - t0
            if elapsed < duration:
                say(f"{elapsed:.0f} of {duration:g} s ({elapsed / duration:.0%})")

    t = threading.Thread(target=tick, name="trace-progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def _trace(args: argparse.Namespace, root: Root, tids: list[int],
           reasons: list[str]) -> tuple[bpftrace.Maps | None, str]:
    """Trace for args.duration with the best method asked for: (maps, method)."""
    if args.method in ("auto", "bpftrace"):
        try:
            with tempfile.TemporaryDirectory(prefix="agentlatd-trace-") as wd:
                return bpftrace.run(root, tids, args.duration, wd), "bpftrace"
        except bpftrace.Unavailable as e:
            reasons.append(f"bpftrace: {e}")
    if args.method in ("auto", "tracefs"):
        try:
            return tracefs.run(root, tids, args.duration), "tracefs"
        except bpftrace.Unavailable as e:
            reasons.append(f"tracefs: {e}")
    return None, "schedstat"


def run(args: argparse.Namespace) -> int:
    if not 0.1 <= args.duration <= 3600:
        raise AgentlatdError("--duration must be between 0.1 and 3600 seconds.")
    root = Root(args.root)
    threads, pids, who = targets(args, root)
    if args.slow_steps:
        return _slow_steps(args, root, threads, pids)
    home, completion, roles_src = cpu_roles(root, args.socket)
    before = _sample(root, pids)
    maps: bpftrace.Maps | None = None
    method = "schedstat"
    reasons: list[str] = []
    notes: list[str] = [f"traced: {who}"]
    if not root.is_host and args.method != "schedstat":
        reasons.append("--root is not the live host: nothing to trace")
    elif args.method != "schedstat":
        with progress(f"{who} with {args.method}", args.duration):
            maps, method = _trace(args, root, sorted(threads), reasons)
    if maps is None:
        if not pids:
            msg = "; ".join(reasons) or "schedstat needs --pid or --agent"
            raise AgentlatdError(f"tracing is unavailable ({msg}), and schedstat needs agents to "
                                 "watch: give --pid or --agent.")
        with progress(f"{who} with schedstat", args.duration):
            time.sleep(args.duration)
    after = _sample(root, pids)
    inp = trace_report.TraceInput(
        method=method, duration_s=args.duration, maps=maps, home=home, completion=completion,
        roles_source=roles_src, threads=threads, run_delay=schedstat.delta(before, after),
        irq_names=_irq_names(root) if maps is not None else {},
        unavailable="; ".join(reasons) if maps is None else "", notes=notes)
    if maps is None and reasons and args.method == "auto":
        print(f"agentlatd trace: tracing unavailable: {'; '.join(reasons)}", file=sys.stderr)
    doc = trace_report.build(inp)
    if args.json:
        sys.stdout.write(jsonout.dumps(doc, indent=1) + "\n")
    else:
        sys.stdout.write(trace_report.render(doc))
    return 0


def _slow_steps(args: argparse.Namespace, root: Root, threads: Threads, pids: dict[int, str]) -> int:
    if not pids:
        raise AgentlatdError("--slow-steps needs agents: give --pid or --agent (or run a daemon "
                             "with registered agents).")
    if args.method not in slow.BACKENDS:
        raise AgentlatdError("--slow-steps needs per-event tracing: --method auto, bpftrace or tracefs.")
    if not root.is_host:
        raise AgentlatdError("--slow-steps traces the live host: --root must be /.")
    if args.top is not None and args.top < 1:
        raise AgentlatdError("--top must be at least 1.")
    thr = slow.parse_duration(args.threshold) if args.threshold is not None else None
    by_pid: dict[int, list[int]] = {}
    for t in threads.values():
        by_pid.setdefault(t.pid, []).append(t.tid)
    try:
        doc = slow.trace_slow_steps(root, by_pid, args.duration, thr, args.top, args.method)
    except bpftrace.Unavailable as e:
        raise AgentlatdError(f"--slow-steps: per-event tracing is unavailable: {e}") from None
    if args.json:
        sys.stdout.write(jsonout.dumps(doc, indent=1) + "\n")
    else:
        sys.stdout.write(slow.render(doc))
    return 0
