"""Why was this step slow: a step's wall time split by cause, from a list of kernel events (pure).

Input: the step (thread, start, end: agentlatd/steps/ring.py, or a cycle
for a process without markers) and the kernel events the tracer recorded
(agentlatd/tools/trace/step_events.py: sched_switch, sched_waking with the waker's
context, migrations, hardirq and softirq spans, the thread's gate syscalls).
Output: a StepAttribution whose parts add up to the step's wall time:

  running          on a CPU, minus the hardirqs/softirqs that interrupted it
  runnable         waiting on a runqueue, per task that ran there instead
                   (ksoftirqd counts as softirq, not as a task)
  irq / softirq    handlers that ran on its CPU while it ran or waited to run
  blocked          asleep, per gate (the syscall it slept in) and per waker:
                   a task, an IRQ, a softirq (NET_RX: a packet), an hrtimer,
                   or a block request completion (device, issue->complete);
                   asleep waiting for a packet, the NET_RX softirq runs on the
                   CPU it slept on count as softirq (its packet queued behind them)
  unknown          the tracer saw nothing (before the first event on the thread)

No IO here: the same events give the same answer, which is what the unit
tests feed it (synthetic sequences) and `agentlatd trace --slow-steps` runs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agentlatd.sample.softirqs import SOFTIRQ_NAMES

# causes (the summary's categories; the confusion table's columns)
RUNNING, RUNNABLE, IRQ, SOFTIRQ, BLOCKED_BLOCK, BLOCKED_NET, BLOCKED_TIMER, BLOCKED_TASK, \
    BLOCKED_IRQ, BLOCKED_OTHER, UNKNOWN = (
        "running", "runnable", "irq", "softirq", "blocked:block", "blocked:net", "blocked:timer",
        "blocked:task", "blocked:irq", "blocked:other", "unknown")
CAUSES = (RUNNING, RUNNABLE, IRQ, SOFTIRQ, BLOCKED_BLOCK, BLOCKED_NET, BLOCKED_TIMER, BLOCKED_TASK,
          BLOCKED_IRQ, BLOCKED_OTHER, UNKNOWN)
NET_RX, NET_TX, BLOCK_VEC, HRTIMER_VEC, TIMER_VEC = 3, 2, 4, 8, 1


@dataclass(frozen=True, slots=True)
class Switch:
    t: int
    cpu: int
    prev_tid: int
    prev_state: int  # the tracepoint's value: see runnable()
    next_tid: int
    prev_comm: str = ""
    next_comm: str = ""


@dataclass(frozen=True, slots=True)
class Wakeup:
    """sched_waking of `tid`, fired on `cpu` by the waker's context."""

    t: int
    cpu: int
    tid: int
    target_cpu: int
    waker_tid: int = 0
    waker_comm: str = ""
    ctx: str = "task"  # "task" | "hardirq" | "softirq" | "hrtimer"
    ctx_id: int = -1  # the IRQ number or the softirq vector
    blk_dev: int = 0  # a block completion in the same context: dev_t (kernel's MKDEV 20/12 split)
    blk_ns: int = 0  # its issue -> complete time


@dataclass(frozen=True, slots=True)
class Migrate:
    t: int
    tid: int
    orig_cpu: int
    dest_cpu: int


@dataclass(frozen=True, slots=True)
class Span:
    """A hardirq handler (kind "irq", id = IRQ number) or a softirq run (kind "softirq",
    id = vector) on `cpu`, or a gate syscall of `tid` (kind "syscall", name = its name)."""

    kind: str
    t0: int
    t1: int
    cpu: int = -1
    id: int = -1
    tid: int = 0
    name: str = ""
    until: int = 0  # a timer sleep syscall: when its timer expires (0: not known)


Event = Switch | Wakeup | Migrate | Span

TASK_REPORT_MAX = 0x100  # include/linux/sched.h since 4.14: sched_switch's prev_state when preempted


def runnable(prev_state: int) -> bool:
    """sched_switch left the task runnable: preempted (TASK_REPORT_MAX, printed "R+") or
    switched out while TASK_RUNNING (0, "R"); any other state bit (S, D, ...) is a block."""
    return prev_state in (0, TASK_REPORT_MAX)


@dataclass(frozen=True, slots=True)
class Step:
    tid: int
    start_ns: int
    end_ns: int
    step: int = 0
    pid: int = 0
    cycle: bool = False  # from wakeup-to-block cycles, not step markers

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class Part:
    cause: str  # one of CAUSES
    ns: int
    who: str = ""  # the culprit: "pid 1234 'stress'", "NET_RX", "irq 36 virtio1", "dev 7:0"
    cpu: int = -1
    gate: str = ""  # the syscall it was blocked in


@dataclass(frozen=True, slots=True)
class StepAttribution:
    step: Step
    parts: tuple[Part, ...]
    migrations: int
    cpus: tuple[int, ...]

    def by_cause(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.parts:
            out[p.cause] = out.get(p.cause, 0) + p.ns
        return out

    def top(self) -> Part | None:
        """The largest (cause, culprit) part."""
        merged: dict[tuple[str, str, int, str], int] = {}
        for p in self.parts:
            k = (p.cause, p.who, p.cpu, p.gate)
            merged[k] = merged.get(k, 0) + p.ns
        if not merged:
            return None
        (cause, who, cpu, gate), ns = max(merged.items(), key=lambda kv: kv[1])
        return Part(cause, ns, who, cpu, gate)

    def verdict(self) -> str:
        s = self.step
        head = f"{'cycle' if s.cycle else 'step'} {s.step}: {_ms(s.duration_ns)}"
        p = self.top()
        if p is None:
            return head + ", no events"
        return f"{head}, {_ms(p.ns)} {describe(p)}" + (
            f"; {self.migrations} migration(s)" if self.migrations else "")


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f} ms" if ns < 10_000_000 else f"{ns / 1e6:.1f} ms"


def describe(p: Part) -> str:
    cpu = f" on CPU {p.cpu}" if p.cpu >= 0 else ""
    if p.cause == RUNNING:
        return f"running{cpu}"
    if p.cause == RUNNABLE:
        return f"runnable{cpu} behind {p.who or 'an unseen task'}"
    if p.cause in (IRQ, SOFTIRQ):
        return f"in {p.who}{cpu} ({'hardirq' if p.cause == IRQ else 'softirq'})"
    if p.cause.startswith("blocked"):
        gate = f" in {p.gate}" if p.gate else ""
        return f"blocked{gate}, woken by {p.who or 'an unseen waker'}"
    return "not seen by the tracer"


def vec_name(vec: int) -> str:
    return SOFTIRQ_NAMES[vec] if 0 <= vec < len(SOFTIRQ_NAMES) else f"softirq {vec}"


def _who(tid: int, comm: str) -> str:
    return f"pid {tid} '{comm}'" if comm else f"pid {tid}"


# -- the per-CPU and per-thread indexes ---------------------------------------

@dataclass(slots=True)
class Index:
    """Events sorted for the joins: per CPU its switches and IRQ/softirq spans, per
    thread its own switches, wakeups, migrations and syscalls."""

    cpu_switch_t: dict[int, list[int]] = field(default_factory=dict)
    cpu_switch: dict[int, list[Switch]] = field(default_factory=dict)
    cpu_spans: dict[int, list[Span]] = field(default_factory=dict)
    cpu_spans_t0: dict[int, list[int]] = field(default_factory=dict)
    cpu_span_max: dict[int, int] = field(default_factory=dict)  # the longest span there
    thread: dict[int, list[Event]] = field(default_factory=dict)
    thread_t: dict[int, list[int]] = field(default_factory=dict)
    syscalls: dict[int, list[Span]] = field(default_factory=dict)
    syscalls_t0: dict[int, list[int]] = field(default_factory=dict)
    syscall_max: dict[int, int] = field(default_factory=dict)  # the thread's longest syscall


def index(events: Iterable[Event]) -> Index:
    ix = Index()

    def add_thread(tid: int, ev: Event) -> None:
        ix.thread.setdefault(tid, []).append(ev)

    for ev in events:
        if isinstance(ev, Switch):
            ix.cpu_switch.setdefault(ev.cpu, []).append(ev)
            add_thread(ev.prev_tid, ev)
            if ev.next_tid != ev.prev_tid:
                add_thread(ev.next_tid, ev)
        elif isinstance(ev, (Wakeup, Migrate)):
            add_thread(ev.tid, ev)
        elif ev.kind == "syscall":
            ix.syscalls.setdefault(ev.tid, []).append(ev)
        else:
            ix.cpu_spans.setdefault(ev.cpu, []).append(ev)
    for sws in ix.cpu_switch.values():
        sws.sort(key=lambda e: e.t)
    for cpu, sws in ix.cpu_switch.items():
        ix.cpu_switch_t[cpu] = [e.t for e in sws]
    for cpu, spans in ix.cpu_spans.items():
        spans.sort(key=lambda e: e.t0)
        ix.cpu_spans_t0[cpu] = [e.t0 for e in spans]
        ix.cpu_span_max[cpu] = max(e.t1 - e.t0 for e in spans)
    for tid, evs in ix.thread.items():
        evs.sort(key=_t)
        ix.thread_t[tid] = [_t(e) for e in evs]
    for tid, sc in ix.syscalls.items():
        sc.sort(key=lambda e: e.t0)
        ix.syscalls_t0[tid] = [e.t0 for e in sc]
        ix.syscall_max[tid] = max(e.t1 - e.t0 for e in sc)
    return ix


def _t(e: Event) -> int:
    return e.t0 if isinstance(e, Span) else e.t


# -- attribution --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Seg:
    t0: int
    t1: int
    state: str  # "run" | "wait" | "sleep" | "unknown"
    cpu: int
    wake: Wakeup | None = None


def _segments(ix: Index, step: Step, hop: bool = False) -> tuple[list[_Seg], int, set[int]]:
    """The thread's states over the step, from its own events. `hop`: a waker's thread
    over the agent's sleep (_chain), which need not be running at its start: woken
    and not yet switched in, it is runnable."""
    evs = ix.thread.get(step.tid, [])
    ts = ix.thread_t.get(step.tid, [])
    tid = step.tid
    # the state at the step's start: from the last event at or before it; a step
    # starts in the thread itself (it read the clock), so it is running then
    i = bisect.bisect_right(ts, step.start_ns)
    state, cpu = "unknown", -1
    pending: Wakeup | None = None
    for e in reversed(evs[:i]):
        if isinstance(e, Switch):
            state, cpu = ("run", e.cpu) if e.next_tid == tid else (
                ("wait", e.cpu) if runnable(e.prev_state) else ("sleep", e.cpu))
            break
        if hop and isinstance(e, Wakeup):
            state, cpu, pending = "wait", e.target_cpu, e
            break
    if state == "unknown":
        # no switch seen before: it was on a CPU; which one, the next event says
        for e in evs[i:]:
            if isinstance(e, Switch):
                cpu = e.cpu
                break
        state = "run" if cpu >= 0 else "unknown"
    segs: list[_Seg] = []
    migrations = 0
    cpus: set[int] = {cpu} if cpu >= 0 else set()
    t = step.start_ns
    for e in evs[i:]:
        et = _t(e)
        if et >= step.end_ns:
            break
        if isinstance(e, Switch):
            if e.prev_tid == tid and state == "run":
                segs.append(_Seg(t, et, "run", cpu))
                t = et
                state = "wait" if runnable(e.prev_state) else "sleep"
                cpu = e.cpu
                pending = None
            elif e.next_tid == tid and state != "run":
                segs.append(_Seg(t, et, state, cpu, pending))
                t, state, cpu = et, "run", e.cpu
                cpus.add(cpu)
        elif isinstance(e, Wakeup):
            if state == "sleep":
                segs.append(_Seg(t, et, "sleep", cpu, e))
                t, state, cpu = et, "wait", e.target_cpu
                pending = e
        elif isinstance(e, Migrate):
            migrations += 1
            if state == "wait":
                segs.append(_Seg(t, et, "wait", cpu, pending))
                t, cpu = et, e.dest_cpu
            cpus.add(e.dest_cpu)
    if t < step.end_ns:
        segs.append(_Seg(t, step.end_ns, state, cpu, pending))
    return segs, migrations, cpus


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def _interrupts(ix: Index, cpu: int, t0: int, t1: int) -> list[Part]:
    """The hardirq and softirq time on `cpu` within [t0, t1) (nested hardirqs are taken
    out of the softirq they interrupted)."""
    # the spans that may overlap: none starts before t0 - the longest span (a bisect,
    # not a scan: a step's joins stay O(log n) in a flood's hundreds of thousands of spans)
    allspans = ix.cpu_spans.get(cpu, [])
    lo = bisect.bisect_left(ix.cpu_spans_t0.get(cpu, []), t0 - ix.cpu_span_max.get(cpu, 0))
    hi = bisect.bisect_left(ix.cpu_spans_t0.get(cpu, []), t1)
    spans = allspans[lo:hi]
    out: list[Part] = []
    hard: list[Span] = []
    for s in spans:
        if s.t0 >= t1:
            break
        if s.t1 <= t0:
            continue
        if s.kind == "irq":
            hard.append(s)
    for s in spans:
        if s.t0 >= t1:
            break
        ov = _overlap(t0, t1, s.t0, s.t1)
        if ov <= 0:
            continue
        if s.kind == "irq":
            out.append(Part(IRQ, ov, f"irq {s.id}" + (f" {s.name}" if s.name else ""), cpu))
        elif s.kind == "softirq":
            nested = sum(_overlap(max(t0, s.t0), min(t1, s.t1), h.t0, h.t1) for h in hard)
            if ov - nested > 0:
                out.append(Part(SOFTIRQ, ov - nested, vec_name(s.id), cpu))
    return out


def _occupants(ix: Index, cpu: int, t0: int, t1: int) -> list[tuple[int, int, int, str]]:
    """(t0, t1, tid, comm) of the tasks on `cpu` within [t0, t1), from its switches."""
    sws = ix.cpu_switch.get(cpu, [])
    ts = ix.cpu_switch_t.get(cpu, [])
    i = bisect.bisect_right(ts, t0)
    cur_tid, cur_comm = (-1, "")
    # who was there at t0: the next switch's prev, where there is one: a hop's CPU is
    # traced only from the hop's wakeup on (step_events.py), so the switch before t0
    # may be long stale; the switches after it are all there
    if i < len(sws):
        cur_tid, cur_comm = sws[i].prev_tid, sws[i].prev_comm
    elif i > 0:
        cur_tid, cur_comm = sws[i - 1].next_tid, sws[i - 1].next_comm
    out: list[tuple[int, int, int, str]] = []
    t = t0
    for s in sws[i:]:
        if s.t >= t1:
            break
        if s.t > t:
            out.append((t, s.t, cur_tid, cur_comm))
        t, cur_tid, cur_comm = s.t, s.next_tid, s.next_comm
    if t < t1:
        out.append((t, t1, cur_tid, cur_comm))
    return out


def _gate(ix: Index, tid: int, t0: int, t1: int) -> str:
    """The syscall the thread slept in over [t0, t1)."""
    best, best_ov = "", 0
    # none that starts before t0 - the thread's longest syscall can overlap (a bisect, as
    # in _interrupts: a step's gate lookups stay O(log n) in a long trace's syscalls)
    t0s = ix.syscalls_t0.get(tid, [])
    lo = bisect.bisect_left(t0s, t0 - ix.syscall_max.get(tid, 0))
    for s in ix.syscalls.get(tid, [])[lo:bisect.bisect_left(t0s, t1)]:
        if s.t0 >= t1:
            break
        ov = _overlap(t0, t1, s.t0, s.t1)
        if ov > best_ov:
            best, best_ov = s.name, ov
    return best


def _waker(w: Wakeup | None) -> tuple[str, str]:
    if w is None:
        return BLOCKED_OTHER, ""
    if w.blk_dev:
        return BLOCKED_BLOCK, (f"block completion on dev {w.blk_dev >> 20}:{w.blk_dev & 0xFFFFF}"
                               + (f" (issue->complete {w.blk_ns / 1e3:.0f} us)" if w.blk_ns else ""))
    if w.ctx == "hrtimer":
        return BLOCKED_TIMER, "an hrtimer"
    if w.ctx == "softirq":
        if w.ctx_id == NET_RX:
            return BLOCKED_NET, f"NET_RX on CPU {w.cpu}"
        if w.ctx_id in (TIMER_VEC, HRTIMER_VEC):
            return BLOCKED_TIMER, f"{vec_name(w.ctx_id)} on CPU {w.cpu}"
        return BLOCKED_OTHER, f"{vec_name(w.ctx_id)} on CPU {w.cpu}"
    if w.ctx == "hardirq":
        return BLOCKED_IRQ, f"irq {w.ctx_id} on CPU {w.cpu}"
    return BLOCKED_TASK, _who(w.waker_tid, w.waker_comm)


def attribute(ix: Index, step: Step) -> StepAttribution:
    """Split `step`'s wall time by cause (the parts add up to its duration)."""
    segs, migrations, cpus = _segments(ix, step)
    parts: list[Part] = []
    for sg in segs:
        d = sg.t1 - sg.t0
        if d <= 0:
            continue
        if sg.state == "unknown" or sg.cpu < 0:
            parts.append(Part(UNKNOWN, d))
            continue
        if sg.state == "sleep":
            exp = _timer_expiry(ix, step.tid, sg.t0, sg.t1) if sg.wake is None else 0
            if exp:
                # its wakeup was not seen, but its timer expired at `exp`: asleep until
                # then, runnable (on the CPU it slept on) after
                parts.append(Part(BLOCKED_TIMER, exp - sg.t0, "its timer (wakeup not seen)", -1,
                                  _gate(ix, step.tid, sg.t0, exp)))
                parts += _cpu_parts(ix, step, _Seg(exp, sg.t1, "wait", sg.cpu))
                continue
            cause, who = _waker(sg.wake)
            gate = _gate(ix, step.tid, sg.t0, sg.t1)
            if sg.wake is not None and cause in (BLOCKED_NET, BLOCKED_TASK):
                hop = _chain(ix, sg.wake, sg.t0, step.start_ns, cause, gate, HOPS, {step.tid})
                if hop is not None:
                    parts += hop
                    continue
            if cause == BLOCKED_NET or (sg.wake is None and gate in NET_GATES):
                # waiting for a packet: the NET_RX work on the CPU it slept on came first
                rx = _net_rx(ix, sg.cpu, sg.t0, sg.t1)
                parts += rx
                d -= sum(p.ns for p in rx)
            if d > 0:
                parts.append(Part(cause, d, who, -1, gate))
            continue
        parts += _cpu_parts(ix, step, sg)
    return StepAttribution(step, tuple(parts), migrations, tuple(sorted(cpus)))


# How far back a wakeup is followed: the thread that woke the agent (the tool server
# that sent the reply), and the one that woke that thread. Past this, a waker's sleep
# is the waker's own time.
HOPS = 2


def _woken_in(ix: Index, tid: int, t0: int, t1: int) -> bool:
    """Whether `tid` was woken within [t0, t1): asleep, then made runnable, during it."""
    ts = ix.thread_t.get(tid, [])
    evs = ix.thread.get(tid, [])
    return any(isinstance(e, Wakeup) for e in evs[bisect.bisect_left(ts, t0):bisect.bisect_left(ts, t1)])


def _followable(ix: Index, w: Wakeup, since: int, seen: set[int]) -> bool:
    """A wakeup whose waker is a link of the completion chain: a task (or a softirq
    it ran on its way out of a system call: a reply sent over a veth or loopback is
    delivered in the sender's own context) that itself was asleep and got woken
    during the step (since `since`: a tool server is woken by the request, which the
    agent sends before it sleeps). A task the softirq merely interrupted (a busy
    loop, the idle task) was not woken in that time, and a block completion is the
    device's."""
    return (w.ctx in ("task", "softirq") and w.waker_tid > 0 and w.waker_tid not in seen
            and not w.blk_dev and _woken_in(ix, w.waker_tid, since, w.t))


def _chain(ix: Index, w: Wakeup, t0: int, since: int, cause: str, gate: str, hops: int,
           seen: set[int]) -> list[Part] | None:
    """The sleep [t0, w.t) of a thread woken by `w`, split by what its waker did
    meanwhile (None when the waker is no chain link: _followable). The waker's own
    work and its own sleeps are `cause` (for a reply: the tool's round trip, not the
    host's fault); while it waited on a runqueue, the task that ran instead, and the
    IRQs and softirqs on its CPU, delayed the reply: runnable and softirq, on the
    waker's CPU. Its sleeps are followed back the same way, `hops` deep."""
    if hops <= 0 or not _followable(ix, w, since, seen):
        return None
    hop = w.waker_tid
    seen = {*seen, hop}
    me = _who(hop, w.waker_comm)
    in_softirqd = w.waker_comm.startswith("ksoftirqd")
    segs, _, _ = _segments(ix, Step(hop, t0, w.t), hop=True)
    parts: list[Part] = []
    for sg in segs:
        d = sg.t1 - sg.t0
        if d <= 0:
            continue
        if sg.state in ("run", "wait") and sg.cpu >= 0:
            for p in _cpu_parts(ix, Step(hop, sg.t0, sg.t1), sg):
                if p.cause == RUNNING:
                    # the waker's own work: for ksoftirqd, the softirqs it runs
                    p = (Part(SOFTIRQ, p.ns, f"softirqs in {w.waker_comm}", p.cpu) if in_softirqd
                         else Part(cause, p.ns, f"{me} running", p.cpu, gate))
                parts.append(p)
            continue
        if sg.state == "sleep":
            if sg.wake is not None:
                sub = _chain(ix, sg.wake, sg.t0, since, cause, gate, hops - 1, seen)
                if sub is not None:
                    parts += sub
                    continue
            # asleep: its own time, less the NET_RX work on the CPU that delivered the
            # packet that woke it (or, after its reply, the one that woke the agent)
            # while it slept: the packet was queued behind it
            hcause, _ = _waker(sg.wake)
            rx_cpu = sg.wake.cpu if sg.wake is not None else w.cpu
            if hcause == BLOCKED_NET or sg.wake is None:
                rx = _net_rx(ix, rx_cpu, sg.t0, sg.t1)
                parts += rx
                d -= sum(p.ns for p in rx)
            if d > 0:
                hgate = _gate(ix, hop, sg.t0, sg.t1)
                parts.append(Part(cause, d, f"{me} asleep" + (f" in {hgate}" if hgate else ""), -1, gate))
            continue
        parts.append(Part(cause, d, f"{me} (not seen)", -1, gate))
    return parts


TIMER_GATES = ("clock_nanosleep", "nanosleep")
# the gates a thread waits for a packet in (a wake by NET_RX ends them)
NET_GATES = ("recvfrom", "recvmsg", "poll", "ppoll", "select", "pselect6", "epoll_wait",
             "epoll_pwait", "epoll_pwait2")


def _net_rx(ix: Index, cpu: int, t0: int, t1: int) -> list[Part]:
    """The NET_RX softirq time on `cpu` within [t0, t1), as SOFTIRQ parts: what a thread
    asleep there waiting for a packet waited behind. A packet sent over a veth or
    loopback is queued on the sender's CPU's backlog (netif_rx -> enqueue_to_backlog on
    smp_processor_id() without RPS, net/core/dev.c), so the thread's request is
    delivered only once the NET_RX work queued there before it has run (there, or
    deferred to ksoftirqd, the softirq spans cover both); a reply steered to its CPU
    (RPS/RFS, a NIC queue's IRQ) waits the same way. Work queued after its packet
    delays it no more; the tracer cannot tell which came first, so this counts all
    of it: an upper bound, small when nothing floods the CPU (a slow tool's 5 ms
    sleep has its one request's softirq in it)."""
    return [p for p in _interrupts(ix, cpu, t0, t1) if p.cause == SOFTIRQ and p.who == vec_name(NET_RX)]


def _timer_expiry(ix: Index, tid: int, t0: int, t1: int) -> int:
    """When the timer of the timer sleep the thread was in over [t0, t1) expired, if
    that lies inside (0 otherwise)."""
    for s in ix.syscalls.get(tid, []):
        if s.t0 >= t1:
            break
        if s.name in TIMER_GATES and s.until and _overlap(t0, t1, s.t0, s.t1) and t0 < s.until < t1:
            return s.until
    return 0


def _cpu_parts(ix: Index, step: Step, sg: _Seg) -> list[Part]:
    """A running or runnable segment: the interrupts on its CPU, then running, or who
    ran instead."""
    parts: list[Part] = []
    d = sg.t1 - sg.t0
    ints = _interrupts(ix, sg.cpu, sg.t0, sg.t1)
    parts += ints
    left = d - sum(p.ns for p in ints)
    if sg.state == "run":
        if left > 0:
            parts.append(Part(RUNNING, left, "", sg.cpu))
        return parts
    # runnable: who ran instead, each occupant's share less the interrupts in it
    occ = _occupants(ix, sg.cpu, sg.t0, sg.t1)
    for o0, o1, otid, ocomm in occ:
        od = o1 - o0 - sum(p.ns for p in _interrupts(ix, sg.cpu, o0, o1))
        if od <= 0:
            continue
        if ocomm.startswith("ksoftirqd"):
            parts.append(Part(SOFTIRQ, od, f"softirqs in {ocomm}", sg.cpu))
        elif otid == step.tid or otid < 0:
            parts.append(Part(RUNNABLE, od, "", sg.cpu))
        else:
            parts.append(Part(RUNNABLE, od, _who(otid, ocomm), sg.cpu))
    return parts


def cycles(ix: Index, tids: Iterable[int], pid_of: dict[int, int] | None = None) -> list[Step]:
    """Steps for threads without markers: from one block (switch out in S/D) to the next."""
    out: list[Step] = []
    for tid in tids:
        last = None
        n = 0
        for e in ix.thread.get(tid, []):
            if isinstance(e, Switch) and e.prev_tid == tid and not runnable(e.prev_state):
                if last is not None:
                    out.append(Step(tid, last, e.t, n, (pid_of or {}).get(tid, 0), cycle=True))
                    n += 1
                last = e.t
    return out


# -- the summary ---------------------------------------------------------------

def threshold_p99(durations: Sequence[int]) -> int:
    """The nearest-rank p99 of the durations (0 when none)."""
    if not durations:
        return 0
    s = sorted(durations)
    return s[min(len(s) - 1, max(0, -(-99 * len(s) // 100) - 1))]


def summarize(atts: Sequence[StepAttribution], top: int = 5) -> dict[str, object]:
    """Share of slow-step time by cause, and the top culprits (tasks, IRQs, softirqs, devices)."""
    total = sum(a.step.duration_ns for a in atts)
    by: dict[str, int] = {}
    culprits: dict[tuple[str, str], int] = {}
    for a in atts:
        for p in a.parts:
            by[p.cause] = by.get(p.cause, 0) + p.ns
            if p.who and p.cause != RUNNING:
                culprits[(p.cause, p.who)] = culprits.get((p.cause, p.who), 0) + p.ns
    return {
        "steps": len(atts), "total_ns": total,
        "by_cause": {c: {"ns": by[c], "share": round(by[c] / total, 4) if total else 0.0}
                     for c in CAUSES if by.get(c)},
        "culprits": [{"cause": c, "who": w, "ns": ns,
                      "share": round(ns / total, 4) if total else 0.0}
                     for (c, w), ns in sorted(culprits.items(), key=lambda kv: -kv[1])[:top]],
    }


def to_json(a: StepAttribution) -> dict[str, object]:
    s = a.step
    return {"step": s.step, "tid": s.tid, "pid": s.pid, "cycle": s.cycle, "start_ns": s.start_ns,
            "end_ns": s.end_ns, "duration_ns": s.duration_ns, "verdict": a.verdict(),
            "migrations": a.migrations, "cpus": list(a.cpus), "by_cause": a.by_cause(),
            "parts": [{"cause": p.cause, "ns": p.ns, "who": p.who, "cpu": p.cpu, "gate": p.gate}
                      for p in a.parts]}
