"""Verified on known causes: inject one cause at a time into an agent loop and check
what `trace --slow-steps` blames (`python bench/causes.py`, the test
tests/integration/test_slow_step_causes.py).

The agent is the bench's C probe (agent mode, writing the step ring of
docs/protocol.md: the reference C writer) or the Python agent
(agentlatd/tools/bench/pyagent.py, writing the ring the Client writes): each
step a UDP request/reply over a veth to a tool server in another network
namespace, a 4 KiB O_DIRECT read of a loop device over a tmpfs file, a
100 us timer wait. The agent thread is pinned to CPU A (the last CPU), the
tool server and every helper process to CPU B (the first). One bpftrace
session (agentlatd/tools/trace/step_events.py) traces the whole run; the run is cut into
phases, one cause injected in each:

  none         nothing injected (what this shared machine adds by itself)
  cpu-hog      a busy loop pinned to CPU A          -> runnable (behind its pid)
  netrx-flood  a paced UDP flood from the flood namespace to a sink in the
               agent namespace, fR's rx-0 rps_cpus = CPU A: its NET_RX
               softirq runs on CPU A (sender and sink on CPU B) -> softirq
  writeback    buffered writes into the loop device, writeback started every
               4 MiB: the agent's reads queue behind them -> blocked:block,
               and the writes' completions on its CPU -> the BLOCK softirq
  slow-tool    the tool server sleeps 5 ms before each reply (SIGUSR1 to the
               probe) -> blocked:net (woken by NET_RX from the reply)

The score (pure: `score`) takes each phase's steps above the threshold (1 ms:
a baseline step is ~0.3 ms) and splits their time by cause
(agentlatd/steps/attribute.py). What a cause can explain is a slow step's
excess over the agent's typical step: the "none" phase (always run first)
gives, per cause, the median time a step spends there (its tool round trip
in blocked:net, a wakeup's runnable time, its CPU's usual softirqs), and each
slow step's time per cause less that median (not below zero) is its delay
there. The step's own work, its time running on a CPU and its own timer wait
(blocked:timer), is left out whole: both are in every step by construction
and nothing injected is a delay there. The injected cause's share of what
is left is the figure checked (>= 90 %), less the time runnable behind
other tenants' tasks (named, so attributed right, but nothing injected).

Everything made here is removed at the end: the namespaces (with their
veths and RPS settings), the loop device and its tmpfs file; every process
is bounded in time and killed in the finally block.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentlatd.steps import attribute as at
from agentlatd.steps.ring import RingReader, StepRecord
from agentlatd.sysfs.root import Root
from agentlatd.tools.bench import netns
from agentlatd.tools.bench.probe import ProbeProc, build_probe
from agentlatd.tools.trace import slow_steps as slow
from agentlatd.tools.trace import step_events as events
from agentlatd.tools.trace.bpftrace import Unavailable, check

CASES = ("none", "cpu-hog", "netrx-flood", "writeback", "slow-tool")
# The score splits the BLOCK softirq out of "softirq": it is block request completion
# (blk_done_softirq), the device's work, not a packet's. Writeback shows in a step
# both ways: the agent's read waits in the device's queue behind the writes
# (blocked:block), and the writes' completions run as BLOCK softirqs on the agent's
# CPU (the loop worker, an unbound kworker, runs there while the agent sleeps,
# and completes on its own CPU): 7-10 % of the writeback case's delay.
SOFTIRQ_BLOCK = "softirq:BLOCK"
KEYS = (*at.CAUSES[:at.CAUSES.index(at.SOFTIRQ) + 1], SOFTIRQ_BLOCK,
        *at.CAUSES[at.CAUSES.index(at.SOFTIRQ) + 1:])
EXPECTED: dict[str, tuple[str, ...]] = {
    "cpu-hog": (at.RUNNABLE,), "netrx-flood": (at.SOFTIRQ,),
    "writeback": (at.BLOCKED_BLOCK, SOFTIRQ_BLOCK), "slow-tool": (at.BLOCKED_NET,)}
OWN = (at.RUNNING, at.BLOCKED_TIMER)  # the step's own work, out of the denominator
# runnable behind a task outside the experiment (a key of the per-step split only:
# the table shows it within runnable and apart, as "(other tasks)")
FOREIGN = "runnable:other-tasks"
BASELINE = "none"  # the phase whose typical step the others are measured against
AGENTS = ("c", "python")
TOOL_PORT = 9101
FLOOD_PORT = 9102
RING = 1 << 16  # read every 0.25 s: 65536 records hold 4 s of the fastest steps
TIMER_NS = 100_000
SLOW_THINK_NS = 5_000_000
FLOOD_PPS = 400_000
WRITEBACK_MBPS = 400
LOOP_MB = 64
NICE = -10
TRACER_NICE = -20

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Phase:
    case: str
    t0: int  # CLOCK_MONOTONIC ns, as the ring and the tracer
    t1: int
    culprit_pids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Row:
    """One injected case's slow steps, by attributed cause."""

    case: str
    steps: int
    slow: int
    total_ns: int
    by_cause: Mapping[str, int]
    culprits: Sequence[Mapping[str, Any]] = ()
    # the slow steps' excess over the typical step, per cause (OWN left out; FOREIGN
    # apart from runnable): `excess`
    excess: Mapping[str, int] = field(default_factory=dict)
    typical: Mapping[str, int] = field(default_factory=dict)  # the typical step, per cause

    @property
    def foreign_ns(self) -> int:
        """Runnable behind tasks outside the experiment (its excess)."""
        return self.excess.get(FOREIGN, 0)

    @property
    def delay_ns(self) -> int:
        return sum(self.excess.values())

    @property
    def checked_ns(self) -> int:
        """The delay less the time runnable behind other tenants' tasks (named, so
        attributed right, but no injected cause): the checked share's denominator."""
        return self.delay_ns - self.foreign_ns

    def checked_share(self) -> float | None:
        want = EXPECTED.get(self.case)
        if want is None or self.checked_ns <= 0:
            return None
        return sum(self.excess.get(c, 0) for c in want) / self.checked_ns

    def share(self, cause: str) -> float:
        """`cause`'s share of the delay (runnable: behind any task, other tenants' too)."""
        ns = self.excess.get(cause, 0) + (self.foreign_ns if cause == at.RUNNABLE else 0)
        return ns / self.delay_ns if self.delay_ns > 0 else 0.0

    @property
    def expected_share(self) -> float | None:
        want = EXPECTED.get(self.case)
        return None if want is None else sum(self.share(c) for c in want)

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "steps": self.steps, "slow_steps": self.slow,
                "slow_ns": self.total_ns, "delay_ns": self.delay_ns,
                "expected": list(EXPECTED.get(self.case, ())),
                "expected_share": None if self.expected_share is None else round(self.expected_share, 4),
                "foreign_ns": self.foreign_ns, "checked_ns": self.checked_ns,
                "checked_share": None if (c := self.checked_share()) is None else round(c, 4),
                "by_cause_ns": dict(self.by_cause), "excess_ns": dict(self.excess),
                "typical_step_ns": dict(self.typical),
                "share_of_delay": {c: round(self.share(c), 4) for c in self.by_cause if c not in OWN},
                "culprits": list(self.culprits)}


def by_key(a: at.StepAttribution) -> dict[str, int]:
    """The step's time by cause, the BLOCK softirq apart (SOFTIRQ_BLOCK)."""
    out: dict[str, int] = {}
    for p in a.parts:
        k = SOFTIRQ_BLOCK if p.cause == at.SOFTIRQ and p.who == at.vec_name(at.BLOCK_VEC) else p.cause
        out[k] = out.get(k, 0) + p.ns
    return out


def _pid_of(who: str) -> int:
    """"pid 1234 'comm'" -> 1234 (0 for anything else)."""
    f = who.split(" ", 2)
    return int(f[1]) if len(f) > 1 and f[0] == "pid" and f[1].isdigit() else 0


def split(a: at.StepAttribution, ours: Collection[int]) -> dict[str, int]:
    """by_key, with the time runnable behind a named task not in `ours` apart (FOREIGN)."""
    out = by_key(a)
    foreign = sum(p.ns for p in a.parts if p.cause == at.RUNNABLE
                  and (q := _pid_of(p.who)) and q not in ours)
    if foreign:
        out[FOREIGN] = foreign
        out[at.RUNNABLE] -= foreign
        if not out[at.RUNNABLE]:
            del out[at.RUNNABLE]
    return out


def typical(splits: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """The typical step: per cause, the median (lower) of the steps' time there, a
    step without any counting 0. Only causes a majority of steps have survive."""
    out: dict[str, int] = {}
    for c in {c for s in splits for c in s}:
        v = sorted(s.get(c, 0) for s in splits)
        if m := v[(len(v) - 1) // 2]:
            out[c] = m
    return out


def excess(split_: Mapping[str, int], typ: Mapping[str, int]) -> dict[str, int]:
    """A step's time per cause beyond the typical step's (OWN left out, none below 0)."""
    return {c: ns - typ.get(c, 0) for c, ns in split_.items() if c not in OWN and ns > typ.get(c, 0)}


def score(evs: Sequence[at.Event], records: Sequence[StepRecord], pid: int,
          phases: Sequence[Phase], threshold_ns: int, ours: Collection[int] = ()) -> list[Row]:
    """Pure: the tracer's events and the agent's ring records -> one Row per phase.
    `ours`: the experiment's own pids (agent, tool); with each phase's culprits, the
    runnable time behind any other named task is counted as foreign. The BASELINE
    phase's steps, all of them, give the typical step each slow step's excess is
    measured from (none subtracted when there is no such phase)."""
    ix = at.index(evs)

    def steps_in(ph: Phase) -> list[at.Step]:
        return [at.Step(r.tid, r.start_ns, r.end_ns, r.step, pid) for r in records
                if r.start_ns >= ph.t0 and r.end_ns <= ph.t1]

    base = [ph for ph in phases if ph.case == BASELINE]
    typ = typical([split(at.attribute(ix, s), {*ours, *ph.culprit_pids})
                   for ph in base for s in steps_in(ph)])
    rows: list[Row] = []
    for ph in phases:
        steps = steps_in(ph)
        slow = [s for s in steps if s.duration_ns >= threshold_ns]
        atts = [at.attribute(ix, s) for s in slow]
        by: dict[str, int] = {}
        ex: dict[str, int] = {}
        mine = {*ours, *ph.culprit_pids}
        for a in atts:
            for c, ns in by_key(a).items():
                by[c] = by.get(c, 0) + ns
            for c, ns in excess(split(a, mine), typ).items():
                ex[c] = ex.get(c, 0) + ns
        summ = at.summarize(atts)
        culprits = summ["culprits"]
        assert isinstance(culprits, list)
        rows.append(Row(ph.case, len(steps), len(slow), sum(s.duration_ns for s in slow), by,
                        tuple(culprits), ex, typ))
    return rows


def render(agent: str, rows: Sequence[Row], threshold_ns: int) -> str:
    """The confusion table: rows injected cause, columns attributed cause, % of the delay."""
    cols = [c for c in KEYS if c not in OWN and any(r.share(c) for r in rows)]
    short = {c: c.replace("blocked:", "b:").replace("softirq:", "si:") for c in cols}
    out = [f"{agent} agent: slow steps (>= {threshold_ns / 1e6:g} ms), % of their delay "
           f"by attributed cause"]
    out.append(f"{'injected':<12}{'slow':>5}{'delay ms':>9}" + "".join(f"{short[c]:>9}" for c in cols)
               + f"{'(other':>8}{'checked':>8}")
    out.append(f"{'':<26}" + " " * 9 * len(cols) + f"{'tasks)':>8}{'':>8}")
    for r in rows:
        want = EXPECTED.get(r.case)
        chk = r.checked_share()
        ok = "" if chk is None else f"{chk * 100:>6.1f}{'ok' if chk >= 0.9 else '!!'}"
        out.append(f"{r.case:<12}{r.slow:>5}{r.delay_ns / 1e6:>9.1f}"
                   + "".join(f"{r.share(c) * 100:>8.1f}{'*' if c in (want or ()) else ' '}" for c in cols)
                   + f"{r.foreign_ns / r.delay_ns * 100 if r.delay_ns else 0:>7.1f} " + ok)
    out.append("* the injected cause; si:BLOCK: the BLOCK softirq (block completions), apart from")
    out.append("softirq; (other tasks): the part of runnable spent behind tasks outside the")
    out.append("experiment (this host's other tenants); checked: the injected cause's share of")
    out.append("the delay less that part (ok: >= 90 %); delay: per cause, the time beyond the")
    out.append("'none' phase's median step (running and the step's own timer wait left out)")
    return "\n".join(out) + "\n"


def ring_check(records: Sequence[StepRecord], out_path: str) -> dict[str, int]:
    """The C probe's ring against its own --out file (one line per step n: the
    step's t3 - t0 last): every record read must be step n, of that duration, by the
    agent thread. This is what proves the C writer follows docs/protocol.md."""
    with open(out_path) as f:
        totals = [int(line.split()[3]) for line in f if line.strip()]
    ok = bad = 0
    tids = {r.tid for r in records}
    for r in records:
        if r.step < len(totals) and totals[r.step] == r.duration_ns and r.seq == r.step:
            ok += 1
        else:
            bad += 1
    return {"records": len(records), "match": ok, "mismatch": bad, "steps_in_out": len(totals),
            "tids": len(tids)}


# -- the run (IO) -------------------------------------------------------------

@dataclass(slots=True)
class Lab:
    """What a causes run makes: namespaces, a loop device over a tmpfs file, the probe."""

    workdir: str
    probe: str = ""
    net: netns.BenchNet | None = None
    loop_file: str = ""
    loop_dev: str = ""
    cpu_a: int = 0
    cpu_b: int = 0
    procs: list[ProbeProc] = field(default_factory=list)

    def setup(self) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.cpu_a, self.cpu_b = cpus[-1], cpus[0]
        self.probe = build_probe(self.workdir)
        self.net = netns.new_net()
        netns.setup(self.net)
        # tmpfs: the loop device's backing store is memory, never the host's disk
        fd, self.loop_file = tempfile.mkstemp(prefix="agentlatd-causes-", suffix=".img", dir="/dev/shm")
        os.ftruncate(fd, LOOP_MB << 20)
        os.close(fd)
        self.loop_dev = subprocess.run(["losetup", "--find", "--show", self.loop_file], capture_output=True,
                                       text=True, check=True, timeout=30).stdout.strip()
        n = self.net
        netns.sysfs_write(n.ns_agent, [(netns.rps_path(n.dev_flood_rx), f"{1 << self.cpu_a:x}")])

    def start(self, argv: list[str], name: str, cpu: int | None, nice: int = NICE) -> ProbeProc:
        # nice NICE, the agent and the causes alike: the rest of a shared host (other
        # tests' VMs at nice 0) then delays the agent far less than what is injected
        p = ProbeProc(argv, name=name, nice=nice)
        self.procs.append(p)
        pid = p.start()
        if cpu is not None:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), {cpu})
        return p

    def teardown(self) -> list[str]:
        failed: list[str] = []
        for p in self.procs:
            p.kill()
        if self.loop_dev:
            r = subprocess.run(["losetup", "-d", self.loop_dev], capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                failed.append(f"losetup -d {self.loop_dev}: {r.stderr.strip()}")
        if self.loop_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.loop_file)
        if self.net is not None:
            failed += netns.teardown(self.net)
        return failed


def _realtime(tid: int) -> None:
    """SCHED_FIFO 1 for the tool server: on CPU B it shares the CPU with the tracer and
    whatever else runs on this host; a reply it is late to send would be blamed on the
    tool (blocked:net), in every case. Its work is 20 us per request, bounded."""
    os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))


def _agent(lab: Lab, kind: str, seconds: float) -> tuple[ProbeProc, ProbeProc, int]:
    """Start the agent (and for Python its tool server); (agent, tool, agent tid)."""
    assert lab.net is not None
    n = lab.net
    s = f"{seconds:.3f}"
    if kind == "c":
        ag = lab.start([lab.probe, "agent", "--tool-ns", n.ns_path(n.ns_tool), "--agent-ns",
                        n.ns_path(n.ns_agent), "--dst", n.tool_ip, "--bind", n.agent_ip, "--port",
                        str(TOOL_PORT), "--file", lab.loop_dev, "--steps", "100000000", "--seconds", s,
                        "--out", os.path.join(lab.workdir, "c-steps.txt"), "--think-ns", "20000",
                        "--timer-ns", str(TIMER_NS), "--ring", str(RING), "--reads", "0",
                        "--slow-think-ns", str(SLOW_THINK_NS)], "c-agent", None)
        # the agent loop is the main thread; the tool server thread goes to CPU B
        for tid in os.listdir(f"/proc/{ag.pid}/task"):
            os.sched_setaffinity(int(tid), {lab.cpu_a if int(tid) == ag.pid else lab.cpu_b})
            if int(tid) != ag.pid:
                _realtime(int(tid))
        return ag, ag, ag.pid
    tool = lab.start([lab.probe, "serve", "--tool-ns", n.ns_path(n.ns_tool), "--dst", n.tool_ip,
                      "--port", str(TOOL_PORT), "--think-ns", "20000", "--slow-think-ns",
                      str(SLOW_THINK_NS), "--seconds", s], "tool", lab.cpu_b)
    for tid in os.listdir(f"/proc/{tool.pid}/task"):
        _realtime(int(tid))
    ag = lab.start([*netns.ns_exec(n.ns_agent), sys.executable, "-m", "agentlatd.tools.bench.pyagent",
                    "--dst", n.tool_ip, "--port", str(TOOL_PORT), "--bind", n.agent_ip, "--file",
                    lab.loop_dev, "--seconds", s, "--timer-ns", str(TIMER_NS), "--ring", str(RING),
                    "--reads", "0",
                    "--out", os.path.join(lab.workdir, "py-steps.txt")], "py-agent", lab.cpu_a)
    return ag, tool, ag.pid


@contextlib.contextmanager
def _inject(lab: Lab, case: str, agent: ProbeProc, tool: ProbeProc,
            seconds: float) -> Iterator[tuple[int, ...]]:
    """Run one cause for the duration of the with block; yields the culprits' pids."""
    assert lab.net is not None
    n = lab.net
    s = f"{seconds + 2:.3f}"  # the processes' own bound, past the phase
    procs: list[ProbeProc] = []
    try:
        if case == "cpu-hog":
            procs.append(lab.start([lab.probe, "hog", "--seconds", s], "hog", lab.cpu_a))
        elif case == "netrx-flood":
            procs.append(lab.start([lab.probe, "sink", "--ns", n.ns_path(n.ns_agent), "--bind", n.sink_ip,
                                    "--port", str(FLOOD_PORT), "--seconds", s], "sink", lab.cpu_b))
            procs.append(lab.start([lab.probe, "flood", "--ns", n.ns_path(n.ns_flood), "--dst", n.sink_ip,
                                    "--port", str(FLOOD_PORT), "--pps", str(FLOOD_PPS),
                                    "--max-packets", str(int(FLOOD_PPS * (seconds + 2))),
                                    "--seconds", s], "flood", lab.cpu_b))
        elif case == "writeback":
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGUSR2)  # the agent's reads on
            procs.append(lab.start([lab.probe, "writeback", "--file", lab.loop_dev, "--mbps",
                                    str(WRITEBACK_MBPS), "--file-mb", str(LOOP_MB // 2), "--seconds", s],
                                   "writeback", lab.cpu_b))
        for p in procs:
            p.go()
        if case == "slow-tool":
            assert tool.proc is not None
            tool.proc.send_signal(signal.SIGUSR1)
        yield tuple(p.pid for p in procs)
    finally:
        if case == "slow-tool" and tool.proc is not None and tool.proc.poll() is None:
            tool.proc.send_signal(signal.SIGUSR1)
        if case == "writeback" and agent.proc is not None and agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGUSR2)
        for p in procs:
            p.stop()


def _wait_begin(path: str, timeout: float) -> None:  # the tracer's "B" line: bpftrace's or tracefs's
    """Until the tracer printed its BEGIN line (its probes are attached)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            if any(line.startswith("B ") for line in f):
                return
        time.sleep(0.05)
    raise Unavailable(f"the tracer did not attach within {timeout:.0f} s")


def _background(lab: Lab, n: int, seconds: float) -> list[ProbeProc]:
    """`n` busy loops at nice 0 on any CPU, bounded to `seconds`: the heavy load of a
    shared host (other tenants' runnable tasks), made on purpose. Their pids are
    outside the experiment, so the time the agent is runnable behind them is
    counted apart (FOREIGN), as another tenant's would be."""
    procs = [lab.start([lab.probe, "hog", "--seconds", f"{seconds:.3f}"], f"load-{i}", None, nice=0)
             for i in range(n)]
    for p in procs:
        p.go()
    return procs


def run_agent(lab: Lab, kind: str, cases: Sequence[str], phase_s: float, threshold_ns: int,
              log: Log, backend: str = "bpftrace", load: int = 0) -> dict[str, Any]:
    """One agent, one traced run through `cases`; the rows and the table. `load`: that
    many busy loops in the background through the phases (_background)."""
    settle = 0.3
    # the tracer's bound; it is stopped once the last phase is done (`done`): on a
    # loaded host starting a phase's processes takes seconds, not the 0.3 s planned
    trace_s = 3 * len(cases) * (phase_s + 2 * settle + 0.3) + 10.0
    done = threading.Event()
    ag, tool, tid = _agent(lab, kind, trace_s + 30)
    records: list[StepRecord] = []
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agentlatd-causes-") as wd:
        reader: RingReader | None = None

        def tick() -> None:
            if reader is not None:
                records.extend(reader.read())

        def trace() -> None:
            try:
                # the tracer at nice TRACER_NICE (this thread's nice is its child's): on a
                # heavily loaded host its reader, starved, fell seconds behind the
                # kernel's buffers, and what was still in them at its exit was lost
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRACER_NICE)
                result["trace"] = slow.TRACERS[backend](Root("/"), [tid], trace_s, wd, tick, stop=done)
            except BaseException as e:  # handed to the main thread
                result["error"] = e

        ag.go()
        if tool is not ag:
            tool.go()
        deadline = time.monotonic() + 10
        while reader is None and time.monotonic() < deadline:
            reader = RingReader.open(Root("/"), ag.pid)
            time.sleep(0.02)
        if reader is None:
            raise Unavailable(f"no step ring found in the {kind} agent (pid {ag.pid})")
        th = threading.Thread(target=trace, name="causes-trace", daemon=True)
        th.start()
        _wait_begin(os.path.join(wd, "events.txt"), 60)
        # the background load starts once the tracer is attached (bpftrace's compile
        # on a CPU shared with dozens of busy loops took over a minute)
        bg = _background(lab, load, len(cases) * (phase_s + 2 * settle + 0.3) + 5)
        phases: list[Phase] = []
        for case in cases:
            with _inject(lab, case, ag, tool, phase_s) as pids:
                time.sleep(settle)  # the cause reaches its steady state
                t0 = time.monotonic_ns()
                time.sleep(phase_s)
                t1 = time.monotonic_ns()
            phases.append(Phase(case, t0, t1, pids))
            log(f"{kind} agent: {case} done")
            time.sleep(settle)  # what the cause left behind drains
        for p in bg:
            p.stop()
        done.set()
        th.join(trace_s + 90)
        if "error" in result:
            raise result["error"]
        tr: events.Trace = result["trace"]
        reader.close()
    ag.stop()
    if tool is not ag:
        tool.stop()
    rows = score(tr.events, records, ag.pid, phases, threshold_ns, {ag.pid, tool.pid})
    ring = ring_check(records, os.path.join(lab.workdir, "c-steps.txt")) if kind == "c" else {}
    return {"agent": kind, "backend": backend, "pid": ag.pid, "events": len(tr.events),
            "lost_events": tr.lost, "synth_switches": tr.synth_switches,
            "ring_missed": reader.missed, "rows": [r.to_json() for r in rows],
            "phases": [{"case": p.case, "t0": p.t0, "t1": p.t1, "pids": list(p.culprit_pids)}
                       for p in phases],
            "ring_check": ring, "table": render(f"{kind} ({backend})", rows, threshold_ns), "_rows": rows}


def run(agents: Sequence[str] = AGENTS, cases: Sequence[str] = CASES, phase_s: float = 1.5,
        threshold_ns: int = 1_000_000, log: Log = lambda m: None,
        backends: Sequence[str] = ("bpftrace",), load: int = 0) -> dict[str, Any]:
    """Every agent through every case, traced by each backend in turn (bpftrace,
    tracefs: agentlatd/steps/slow.TRACERS); raises Unavailable when one cannot run."""
    if BASELINE not in cases:  # the score measures every case against it
        cases = (BASELINE, *cases)
    with _lab_running(backends) as (lab, failed):
        loadavg = [_loadavg()]
        out = {"threshold_ns": threshold_ns, "phase_s": phase_s, "cpu_agent": lab.cpu_a,
               "cpu_helpers": lab.cpu_b, "loop_dev": lab.loop_dev, "load": load, "loadavg": loadavg,
               "runs": [run_agent(lab, k, cases, phase_s, threshold_ns, log, b, load)
                        for b in backends for k in agents]}
        loadavg.append(_loadavg())
    out["teardown_failed"] = failed
    return out


def _loadavg() -> float:
    """The 1-minute load average (/proc/loadavg), for the report."""
    with open(Root("/").path("proc/loadavg")) as f:
        return float(f.read().split()[0])


@contextlib.contextmanager
def _lab_running(backends: Sequence[str] = ("bpftrace",)) -> Iterator[tuple[Lab, list[str]]]:
    """A set-up Lab, with this process and the tracer (its child) off the agent's CPU;
    on exit the affinity comes back and the lab is torn down, what failed to go
    away appended to the yielded list. Unavailable when bpftrace is asked for and
    cannot run, or tracefs without root."""
    for b in backends:
        if b not in slow.TRACERS:
            raise Unavailable(f"no tracer backend {b!r} (one of {', '.join(slow.TRACERS)})")
    reason = check(Root("/")) if "bpftrace" in backends else (
        "" if os.geteuid() == 0 else "tracing needs root (tracefs); run with sudo.")
    if reason:
        raise Unavailable(reason)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="agentlatd-causes-lab-") as wd:
        lab = Lab(wd)
        mine = os.sched_getaffinity(0)
        try:
            lab.setup()
            os.sched_setaffinity(0, {lab.cpu_b})
            yield lab, failed
        finally:
            os.sched_setaffinity(0, mine)
            failed += lab.teardown()


# -- what tracing costs the agent ----------------------------------------------

def _pct(durs: Sequence[int], q: float) -> int:
    if not durs:
        return 0
    s = sorted(durs)
    return s[min(len(s) - 1, max(0, -(-int(q * 1000) * len(s) // 100_000) - 1))]


def run_cost(window_s: float = 3.0, log: Log = lambda m: None,
             backends: Sequence[str] = ("bpftrace",)) -> dict[str, Any]:
    """The C agent's step p50/p99 untraced, then traced by each backend's slow-steps
    tracer, each followed by an untraced window again (A-B-A-C-A in one run, one agent
    process, nothing injected): what tracing costs the agent, side by side."""
    with _lab_running(backends) as (lab, failed):
        ag, _tool, tid = _agent(lab, "c", (2 * len(backends) + 1) * (window_s + 2) + 40)
        ag.go()
        reader = None
        deadline = time.monotonic() + 10
        while reader is None and time.monotonic() < deadline:
            reader = RingReader.open(Root("/"), ag.pid)
            time.sleep(0.02)
        if reader is None:
            raise Unavailable(f"no step ring found in the C agent (pid {ag.pid})")
        records: list[StepRecord] = []
        windows: list[tuple[str, int, int]] = []

        def untraced(name: str) -> None:
            t0 = time.monotonic_ns()
            end = time.monotonic() + window_s
            while time.monotonic() < end:
                records.extend(reader.read())
                time.sleep(0.25)
            windows.append((name, t0, time.monotonic_ns()))

        untraced("untraced")
        events_seen: dict[str, int] = {}
        for b in backends:
            with tempfile.TemporaryDirectory(prefix="agentlatd-causes-") as twd:
                result: dict[str, Any] = {}

                def trace(backend: str = b, wd: str = twd, res: dict[str, Any] = result) -> None:
                    try:
                        res["trace"] = slow.TRACERS[backend](Root("/"), [tid], window_s + 0.5, wd,
                                                             lambda: records.extend(reader.read()))
                    except BaseException as e:
                        res["error"] = e

                th = threading.Thread(target=trace, name="causes-cost-trace", daemon=True)
                th.start()
                _wait_begin(os.path.join(twd, "events.txt"), 60)
                t0 = time.monotonic_ns()
                time.sleep(window_s)
                windows.append((f"traced: {b}", t0, time.monotonic_ns()))
                th.join(window_s + 90)
                if "error" in result:
                    raise result["error"]
                events_seen[b] = len(result["trace"].events)
            log(f"traced window ({b}) done")
            untraced("untraced again")
        reader.close()
        ag.stop()
    out: dict[str, Any] = {"window_s": window_s, "teardown_failed": failed, "windows": [],
                           "events": events_seen}
    for name, t0, t1 in windows:
        d = [r.duration_ns for r in records if r.start_ns >= t0 and r.end_ns <= t1]
        out["windows"].append({"name": name, "steps": len(d), "p50_ns": _pct(d, 50), "p99_ns": _pct(d, 99),
                               "p999_ns": _pct(d, 99.9)})
    return out


def render_cost(doc: Mapping[str, Any]) -> str:
    out = [f"C agent step time, {doc['window_s']:g} s windows, one run (p50/p99/p99.9, us)"]
    for w in doc["windows"]:
        out.append(f"  {w['name']:<18}{w['steps']:>7} steps  {w['p50_ns'] / 1e3:8.1f}"
                   f"{w['p99_ns'] / 1e3:9.1f}{w['p999_ns'] / 1e3:9.1f}")
    return "\n".join(out) + "\n"
