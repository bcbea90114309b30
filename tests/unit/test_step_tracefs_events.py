"""agentlatd/tools/trace/step_tracefs.py: ftrace's text (formats as printed by this 6.18
kernel's trace_pipe: kernel/trace/trace_output.c, include/trace/events/{sched,irq,
block}.h, kernel/trace/trace_syscalls.c) -> the events attribute.py joins, the same
verdicts as from bpftrace's lines."""

from __future__ import annotations

from agentlatd.steps import attribute as at
from agentlatd.steps.attribute import Span, Switch, Wakeup
from agentlatd.tools.trace import step_events as events
from agentlatd.tools.trace import step_tracefs as tracefs_events

A = 4242  # the agent's tid


def _t(us: int) -> str:
    """A timestamp as ftrace prints it (sec.usec), from microseconds after 1000 s."""
    return f"{1000 + us // 1_000_000}.{us % 1_000_000:06d}"


def _ns(us: int) -> int:
    return (1000 * 1_000_000 + us) * 1000


# a 4 KiB O_DIRECT read of a loop device: the agent sleeps in pread64, the loop
# worker completes the request in task context and wakes it; then a recv woken by
# NET_RX on CPU 0, an IRQ and a softirq on its CPU while it runs
LINES = [
    "B 1000000000000\n",
    "A 31\n",
    f"  probe-{A} [001] ..... {_t(100)}: sys_pread64(fd: 3, buf: 7f00, count: 1000, pos: 0)\n",
    f"  probe-{A} [001] ..... {_t(105)}: block_rq_issue: 7,0 R 4096 () 2048 + 8 none,0,0 [probe]\n",
    f"  probe-{A} [001] d..2. {_t(110)}: sched_switch: prev_comm=probe prev_pid={A} prev_prio=110 "
    "prev_state=D ==> next_comm=swapper/1 next_pid=0 next_prio=120\n",
    f"  kworker/u8:2-77 [000] ..... {_t(900)}: block_rq_complete: 7,0 R () 2048 + 8 none,0,0 [0]\n",
    f"  kworker/u8:2-77 [000] d..2. {_t(905)}: sched_waking: comm=probe pid={A} prio=110 target_cpu=001\n",
    # the switch in from swapper/1 is not recorded (the module doc): its syscall exit shows it
    f"  probe-{A} [001] ..... {_t(930)}: sys_pread64 -> 0x1000\n",
    f"  probe-{A} [001] ..... {_t(931)}: sys_exit: NR 17 = 4096\n",
    f"  probe-{A} [001] ..... {_t(1000)}: sys_recvfrom(fd: 4, ubuf: 7f00, size: 800, flags: 0)\n",
    f"  probe-{A} [001] d..2. {_t(1001)}: sched_switch: prev_comm=probe prev_pid={A} prev_prio=110 "
    "prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120\n",
    f"  <idle>-0 [000] ..s1. {_t(1500)}: softirq_entry: vec=3 [action=NET_RX]\n",
    f"  <idle>-0 [000] d.s3. {_t(1510)}: sched_waking: comm=probe pid={A} prio=110 target_cpu=001\n",
    f"  <idle>-0 [000] ..s1. {_t(1520)}: softirq_exit: vec=3 [action=NET_RX]\n",
    f"  <idle>-0 [001] d..2. {_t(1530)}: sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 "
    f"prev_state=R ==> next_comm=probe next_pid={A} next_prio=110\n",
    f"  probe-{A} [001] ..... {_t(1535)}: sys_recvfrom -> 0x40\n",
    f"  probe-{A} [001] d.h1. {_t(1600)}: irq_handler_entry: irq=36 name=virtio1-req.0\n",
    f"  probe-{A} [001] d.h1. {_t(1620)}: irq_handler_exit: irq=36 ret=handled\n",
    f"  probe-{A} [001] ..s1. {_t(1620)}: softirq_entry: vec=4 [action=BLOCK]\n",
    f"  probe-{A} [001] ..s1. {_t(1700)}: softirq_exit: vec=4 [action=BLOCK]\n",
    f"  probe-{A} [001] d..2. {_t(1800)}: sched_switch: prev_comm=probe prev_pid={A} prev_prio=110 "
    "prev_state=R+ ==> next_comm=stress ng next_pid=555 next_prio=120\n",
    f"  stress ng-555 [001] d..2. {_t(2800)}: sched_switch: prev_comm=stress ng prev_pid=555 "
    f"prev_prio=120 prev_state=R ==> next_comm=probe next_pid={A} next_prio=110\n",
    "Lost 3 events\n",
]


def test_tracefs_lines_become_the_events_bpftrace_prints() -> None:
    tr = tracefs_events.parse(LINES, [A])
    assert tr.start_ns == 1_000_000_000_000 and tr.lost == 3 and tr.attached == 31 and tr.unparsed == 0
    assert tr.synth_switches == 1
    ev = tr.events
    blk = next(e for e in ev if isinstance(e, Wakeup) and e.ctx == "task")
    assert (blk.blk_dev, blk.blk_ns, blk.waker_tid, blk.waker_comm) == (7 << 20, _ns(900) - _ns(105), 77,
                                                                        "kworker/u8:2")
    net = next(e for e in ev if isinstance(e, Wakeup) and e.ctx == "softirq")
    assert net.ctx_id == at.NET_RX and net.cpu == 0 and net.target_cpu == 1 and net.blk_dev == 0
    synth = next(e for e in ev if isinstance(e, Switch) and e.next_tid == A and e.prev_comm == "swapper/1"
                 and e.t == _ns(930))
    assert synth.cpu == 1
    gates = [(e.name, e.t0, e.t1) for e in ev if isinstance(e, Span) and e.kind == "syscall"]
    assert gates == [("pread64", _ns(100), _ns(930)), ("recvfrom", _ns(1000), _ns(1535))]
    hog = [e for e in ev if isinstance(e, Switch) and e.prev_tid == A and e.next_tid == 555]
    assert hog[0].prev_state == at.TASK_REPORT_MAX and hog[0].next_comm == "stress ng"
    assert Span("irq", _ns(1600), _ns(1620), cpu=1, id=36) in ev
    assert Span("softirq", _ns(1620), _ns(1700), cpu=1, id=at.BLOCK_VEC) in ev


def test_tracefs_trace_gives_the_verdicts() -> None:
    tr = tracefs_events.parse(LINES, [A])
    ix = at.index(tr.events)
    read = at.attribute(ix, at.Step(A, _ns(50), _ns(990), 1))
    assert read.top() == at.Part(at.BLOCKED_BLOCK, _ns(905) - _ns(110),
                                 f"block completion on dev 7:0 (issue->complete {(900 - 105):.0f} us)", -1,
                                 "pread64")
    # woken at 905, running from the made-up switch in at 930: runnable 25 us, not 85
    assert read.by_cause()[at.RUNNABLE] == 25_000
    rest = at.attribute(ix, at.Step(A, _ns(990), _ns(2900), 2))
    by = rest.by_cause()
    assert by[at.BLOCKED_NET] == _ns(1510) - _ns(1001)
    assert by[at.IRQ] == 20_000 and by[at.SOFTIRQ] == 80_000
    assert by[at.RUNNABLE] == 20_000 + 1_000_000  # woken -> switched in, then behind the hog
    assert "pid 555 'stress ng'" in at.attribute(ix, at.Step(A, _ns(1790), _ns(2900), 3)).verdict()


def test_malformed_lines_are_counted_not_fatal() -> None:
    tr = tracefs_events.parse([f"probe-{A} [001] ..... {_t(1)}: sched_switch: garbage\n", "junk\n",
                               "B x\n"], [A])
    assert tr.unparsed == 3 and tr.events == []


def test_switches_filtered_to_the_agents_cpus() -> None:
    assert tracefs_events.cpu_filter({1, 3}, 4) == "CPU == 1 || CPU == 3"
    assert tracefs_events.cpu_filter({0, 1}, 2) == ""  # every CPU: no filter
    assert tracefs_events.cpu_filter(set(), 8) == ""


def test_both_backends_share_gates_and_trace_shape() -> None:
    assert isinstance(tracefs_events.parse([], [A]), events.Trace)
    st = tracefs_events.switch_state
    assert (st("R"), st("R+"), st("S"), st("D"), st("D|W")) == (0, at.TASK_REPORT_MAX, 1, 1, 1)


T = 4300  # the tool server's thread, on CPU 0

# The agent asks the tool server (its thread on CPU 0) and sleeps in recvfrom; the
# tool waits 2 ms on CPU 0's runqueue behind a hog, then replies and wakes the
# agent. The child found the tool as a hop on an earlier step ("H"), so the tool's
# wakeups are in the stream (the kernel filter holds its pid).
CHAIN = [
    "B 1000000000000\n",
    f"H {T} 1\n",
    f"  probe-{A} [001] ..... {_t(1000)}: sys_recvfrom(fd: 4, ubuf: 7f00, size: 800, flags: 0)\n",
    f"  probe-{A} [001] d..2. {_t(1000)}: sched_waking: comm=probe pid={T} prio=120 target_cpu=000\n",
    f"  probe-{A} [001] d..2. {_t(1001)}: sched_switch: prev_comm=probe prev_pid={A} prev_prio=110 "
    "prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120\n",
    f"  stress-555 [000] d..2. {_t(3000)}: sched_switch: prev_comm=stress prev_pid=555 prev_prio=120 "
    f"prev_state=R+ ==> next_comm=probe next_pid={T} next_prio=120\n",
    f"  probe-{T} [000] d..2. {_t(3050)}: sched_waking: comm=probe pid={A} prio=110 target_cpu=001\n",
    f"  <idle>-0 [001] d..2. {_t(3060)}: sched_switch: prev_comm=swapper/1 prev_pid=0 prev_prio=120 "
    f"prev_state=R ==> next_comm=probe next_pid={A} next_prio=110\n",
    f"  probe-{A} [001] ..... {_t(3065)}: sys_recvfrom -> 0x40\n",
    f"  probe-{T} [000] d..2. {_t(3100)}: sched_switch: prev_comm=probe prev_pid={T} prev_prio=120 "
    "prev_state=S ==> next_comm=stress next_pid=555 next_prio=120\n",
]


def test_tracefs_follows_the_tool_servers_wake_chain() -> None:
    """A reply late because the tool server waited behind a hog on its CPU is the hog's
    delay (runnable on CPU 0 behind it), as bpftrace says, not blocked:net."""
    tr = tracefs_events.parse(CHAIN, [A])
    assert tr.unparsed == 0
    assert any(isinstance(e, Wakeup) and e.tid == T and e.waker_tid == A for e in tr.events)
    a = at.attribute(at.index(tr.events), at.Step(A, _ns(900), _ns(3100), 1))
    by = a.by_cause()
    assert by[at.RUNNABLE] >= 2_000_000 - 1_000 and by.get(at.BLOCKED_NET, 0) < 100_000
    assert "pid 555 'stress'" in a.verdict()


def _waking(waker: str, waker_tid: int, flags: str, woken: int, us: int = 10) -> str:
    return (f"  {waker}-{waker_tid} [000] {flags} {_t(us)}: sched_waking: comm=x pid={woken} prio=120 "
            "target_cpu=001\n")


def test_hops_follow_the_bpftrace_programs_rule() -> None:
    """step_events.py's sched_waking rule: a task (or a softirq it ran) waking the agent
    is hop 1; hop 1's waker from a softirq only when that is ksoftirqd; never a hardirq;
    HOPS deep; each hop once."""
    h = tracefs_events.Hops(frozenset({A}))
    text = "".join([
        _waking("probe", T, "d..2.", A),          # the tool's reply: hop 1
        _waking("probe", T, "d..2.", A),          # seen already
        _waking("<idle>", 0, "d.h2.", A),         # the idle task in a hardirq: no
        _waking("kworker/0:1", 66, "d.h2.", A),   # a hardirq in whichever task: no
        _waking("probe", A, "d..2.", T),          # the agent itself: no
        _waking("stress", 555, "d.s2.", T),       # a softirq in a task it interrupted: no
        _waking("ksoftirqd/1", 24, "d.s2.", T),   # ksoftirqd's softirq: hop 2
        _waking("kworker/1:0", 77, "d..2.", 24),  # past HOPS: no
        "  garbage sched_waking line\n",
    ])
    assert h.feed(text) == [(T, 1), (24, 2)]
    assert h.feed(_waking("probe", T, "d..2.", A)) == []
    assert tracefs_events.Hops(frozenset({A})).feed(_waking("sink", 99, "..s1.", A)) == [(99, 1)]


def test_hops_are_bounded() -> None:
    h = tracefs_events.Hops(frozenset({A}))
    text = "".join(_waking("w", 10_000 + i, "d..2.", A) for i in range(tracefs_events.MAX_HOPS + 5))
    assert len(h.feed(text)) == tracefs_events.MAX_HOPS
    assert h.feed(_waking("w", 99_999, "d..2.", A)) == []
