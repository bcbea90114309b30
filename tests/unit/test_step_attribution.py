"""agentlatd/steps/attribute.py on synthetic event sequences: one per cause the issue names."""

from __future__ import annotations

from agentlatd.steps import attribute as at
from agentlatd.steps.attribute import Migrate, Span, Step, Switch, Wakeup

A = 100  # the agent's tid
US = 1_000
MS = 1_000_000


def _att(events: list[at.Event], step: Step) -> at.StepAttribution:
    a = at.attribute(at.index(events), step)
    assert sum(p.ns for p in a.parts) == step.duration_ns  # the parts add up
    return a


def test_runnable_behind_a_hog() -> None:
    ev: list[at.Event] = [
        Switch(0, 0, 1, 1, A, "swapper/0", "agent"),
        Switch(1 * MS, 0, A, at.TASK_REPORT_MAX, 1234, "agent", "stress"),  # preempted: "R+"
        Switch(5 * MS + 400 * US, 0, 1234, 0, A, "stress", "agent"),
    ]
    a = _att(ev, Step(A, 500 * US, 5 * MS + 900 * US, 48213))
    assert a.by_cause() == {at.RUNNING: 1 * MS, at.RUNNABLE: 4 * MS + 400 * US}
    assert a.verdict() == "step 48213: 5.40 ms, 4.40 ms runnable on CPU 0 behind pid 1234 'stress'"


def test_softirq_on_its_cpu_while_running_and_in_ksoftirqd() -> None:
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "agent"),
        Span("softirq", 1 * MS, 2 * MS, cpu=1, id=at.NET_RX),
        Span("irq", 1 * MS + 100 * US, 1 * MS + 200 * US, cpu=1, id=36, name="eth0-rx"),
        Switch(3 * MS, 1, A, 0, 17, "agent", "ksoftirqd/1"),
        Switch(4 * MS, 1, 17, 1, A, "ksoftirqd/1", "agent"),
        Span("softirq", 6 * MS, 7 * MS, cpu=0, id=at.NET_RX),  # another CPU: not its
    ]
    a = _att(ev, Step(A, 0, 5 * MS))
    by = a.by_cause()
    assert by[at.SOFTIRQ] == 900 * US + 1 * MS and by[at.IRQ] == 100 * US
    assert by[at.RUNNING] == 3 * MS
    assert at.Part(at.SOFTIRQ, 1 * MS, "softirqs in ksoftirqd/1", 1) in a.parts
    assert at.Part(at.SOFTIRQ, 900 * US, "NET_RX", 1) in a.parts


def test_blocked_in_read_woken_by_block_completion() -> None:
    dev = (7 << 20) | 3
    ev: list[at.Event] = [
        Switch(0, 0, 0, 0, A, "swapper/0", "agent"),
        Span("syscall", 1 * MS, 9 * MS + 50 * US, tid=A, name="pread64"),
        Switch(1 * MS + 10 * US, 0, A, 2, 0, "agent", "swapper/0"),
        Wakeup(9 * MS, 0, A, 0, ctx="hardirq", ctx_id=40, blk_dev=dev, blk_ns=7 * MS),
        Switch(9 * MS + 20 * US, 0, 0, 0, A, "swapper/0", "agent"),
    ]
    a = _att(ev, Step(A, 0, 10 * MS, 7))
    p = a.top()
    assert p is not None and p.cause == at.BLOCKED_BLOCK and p.gate == "pread64"
    assert p.ns == 9 * MS - (1 * MS + 10 * US)
    assert "dev 7:3" in a.verdict() and "issue->complete 7000 us" in a.verdict()


def test_blocked_in_recv_woken_by_net_rx_is_the_tools_time() -> None:
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "agent"),
        Span("syscall", 100 * US, 20 * MS, tid=A, name="recvfrom"),
        Switch(110 * US, 1, A, 1, 0, "agent", "swapper/1"),
        Wakeup(20 * MS - 30 * US, 0, A, 1, ctx="softirq", ctx_id=at.NET_RX),
        Migrate(20 * MS - 30 * US, A, 0, 1),
        Switch(20 * MS - 10 * US, 1, 0, 0, A, "swapper/1", "agent"),
    ]
    a = _att(ev, Step(A, 0, 21 * MS))
    p = a.top()
    assert p is not None and (p.cause, p.gate, p.who) == (at.BLOCKED_NET, "recvfrom", "NET_RX on CPU 0")
    assert a.by_cause()[at.BLOCKED_NET] > 0.9 * a.step.duration_ns
    assert a.migrations == 1


def test_timer_and_task_wakers() -> None:
    ev: list[at.Event] = [
        Switch(0, 0, 0, 0, A, "", "agent"),
        Switch(1 * MS, 0, A, 1, 0, "agent", ""),
        Wakeup(2 * MS, 0, A, 0, ctx="hrtimer"),
        Switch(2 * MS, 0, 0, 0, A, "", "agent"),
        Switch(3 * MS, 0, A, 1, 0, "agent", ""),
        Wakeup(4 * MS, 1, A, 0, waker_tid=55, waker_comm="tool"),
        Switch(4 * MS, 0, 0, 0, A, "", "agent"),
    ]
    by = _att(ev, Step(A, 0, 5 * MS)).by_cause()
    assert by == {at.RUNNING: 3 * MS, at.BLOCKED_TIMER: 1 * MS, at.BLOCKED_TASK: 1 * MS}


def test_no_events_is_unknown_not_a_guess() -> None:
    a = _att([], Step(A, 0, 5 * MS))
    assert a.by_cause() == {at.UNKNOWN: 5 * MS}


def test_cycles_for_threads_without_markers() -> None:
    ev: list[at.Event] = [Switch(t * MS, 0, A, 1, 0, "agent", "") for t in (1, 3, 7)]
    steps = at.cycles(at.index(ev), [A])
    assert [(s.start_ns, s.end_ns, s.cycle) for s in steps] == [(1 * MS, 3 * MS, True),
                                                                (3 * MS, 7 * MS, True)]


def test_summary_shares_and_culprits() -> None:
    hog = [Switch(0, 0, 0, 0, A, "", "agent"), Switch(0, 0, A, 0, 9, "agent", "stress"),
           Switch(4 * MS, 0, 9, 0, A, "stress", "agent")]
    a1 = _att(hog, Step(A, 0, 5 * MS))
    s = at.summarize([a1])
    assert s["by_cause"] == {at.RUNNING: {"ns": 1 * MS, "share": 0.2},
                             at.RUNNABLE: {"ns": 4 * MS, "share": 0.8}}
    assert s["culprits"] == [{"cause": at.RUNNABLE, "who": "pid 9 'stress'", "ns": 4 * MS, "share": 0.8}]
    assert at.threshold_p99(list(range(1, 101))) == 99


def test_netrx_flood_on_its_cpu_while_it_waits_in_recv_is_the_floods() -> None:
    """Asleep in recvfrom for the tool's reply, its request queued on its own CPU's
    backlog behind a flood's packets: the NET_RX runs on that CPU during the sleep
    were the wait's "blocked:net, woken by NET_RX" (the tool's round trip) until the
    sleep was split at them. The NET_RX on another CPU, and the other vectors, are not
    what it waited behind."""
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "agent"),
        Span("syscall", 1 * MS, 4 * MS, tid=A, name="recvfrom"),
        Switch(1 * MS, 1, A, 1, 17, "agent", "ksoftirqd/1"),
        Span("softirq", 1 * MS, 2 * MS, cpu=1, id=at.NET_RX),  # in ksoftirqd
        Span("irq", 1 * MS + 100 * US, 1 * MS + 200 * US, cpu=1, id=36),  # nested: not NET_RX's
        Span("softirq", 2 * MS, 2 * MS + 300 * US, cpu=1, id=9),  # RCU
        Span("softirq", 2 * MS, 3 * MS, cpu=0, id=at.NET_RX),  # the tool's CPU
        Wakeup(3 * MS + 500 * US, 0, A, 1, 9, "tool", "softirq", at.NET_RX),
        Switch(3 * MS + 500 * US, 1, 17, 1, A, "ksoftirqd/1", "agent"),
    ]
    a = _att(ev, Step(A, 0, 4 * MS))
    by = a.by_cause()
    assert by[at.SOFTIRQ] == 900 * US
    assert by[at.BLOCKED_NET] == 3 * MS + 500 * US - 1 * MS - 900 * US
    assert [p.who for p in a.parts if p.cause == at.SOFTIRQ] == ["NET_RX"]


def test_netrx_on_its_cpu_while_asleep_with_an_unseen_waker_in_poll() -> None:
    """The Python agent waits in poll; under a flood its wakeup may go unseen (the
    kernel skips a BPF program nested in another): still a packet wait, so the NET_RX
    runs on its CPU in it count as softirq, the rest stays blocked:other."""
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "python"),
        Span("syscall", 1 * MS, 3 * MS, tid=A, name="poll"),
        Switch(1 * MS, 1, A, 1, 0, "python", "swapper/1"),
        Span("softirq", 1 * MS + 200 * US, 1 * MS + 700 * US, cpu=1, id=at.NET_RX),
        Switch(3 * MS, 1, 0, 0, A, "swapper/1", "python"),  # no wakeup seen
    ]
    a = _att(ev, Step(A, 0, 3 * MS))
    assert a.by_cause() == {at.RUNNING: 1 * MS, at.SOFTIRQ: 500 * US, at.BLOCKED_OTHER: 1 * MS + 500 * US}


def test_a_disk_wait_keeps_the_netrx_on_its_cpu_out() -> None:
    """Asleep in pread64, woken by a block completion: not a packet wait, so NET_RX on
    its CPU meanwhile is not what it waited behind."""
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "agent"),
        Span("syscall", 1 * MS, 3 * MS, tid=A, name="pread64"),
        Switch(1 * MS, 1, A, 1, 0, "agent", "swapper/1"),
        Span("softirq", 1 * MS + 200 * US, 1 * MS + 700 * US, cpu=1, id=at.NET_RX),
        Wakeup(3 * MS, 1, A, 1, 42, "kworker/u8:1", blk_dev=7 << 20, blk_ns=2 * MS),
        Switch(3 * MS, 1, 0, 0, A, "swapper/1", "agent"),
    ]
    a = _att(ev, Step(A, 0, 3 * MS + 500 * US))
    assert a.by_cause() == {at.RUNNING: 1 * MS + 500 * US, at.BLOCKED_BLOCK: 2 * MS}


T = 9  # the tool server's thread


def _reply_late(tool_wait: list[at.Event]) -> list[at.Event]:
    """The agent (CPU 1) sends its request at 100 us (its NET_RX wakes the tool T on CPU
    0, in the agent's own context), sleeps in recvfrom at 150 us; T, on CPU 0, is
    woken then and, after `tool_wait`, runs from 4 ms, sends the reply at 4.05 ms: its
    NET_RX, in T's context, wakes the agent."""
    return [
        Switch(0, 1, 0, 0, A, "swapper/1", "agent"),
        Switch(0, 0, 0, 0, 77, "swapper/0", "flood"),
        Span("softirq", 110 * US, 120 * US, cpu=1, id=at.NET_RX),
        Wakeup(115 * US, 1, T, 0, A, "agent", "softirq", at.NET_RX),
        Span("syscall", 140 * US, 4100 * US, tid=A, name="recvfrom"),
        Switch(150 * US, 1, A, 1, 0, "agent", "swapper/1"),
        *tool_wait,
        Switch(4 * MS, 0, 77, 0, T, "flood", "tool"),
        Span("softirq", 4040 * US, 4060 * US, cpu=0, id=at.NET_RX),
        Wakeup(4050 * US, 0, A, 1, T, "tool", "softirq", at.NET_RX),
        Switch(4060 * US, 1, 0, 0, A, "swapper/1", "agent"),
        Switch(4080 * US, 0, T, 1, 77, "tool", "flood"),
    ]


def test_reply_late_from_the_tool_servers_cpu_follows_the_wake_chain() -> None:
    """The tool server was woken by the request at once but waited on its own CPU
    (behind the flood's sender, then the NET_RX softirqs there) before it could send
    the reply: the agent's recv wait was all "blocked:net, woken by NET_RX" (the tool's
    round trip) until the wakeup was followed back to what the tool's thread did."""
    ev = _reply_late([Span("softirq", 1 * MS, 3 * MS, cpu=0, id=at.NET_RX)])
    a = _att(ev, Step(A, 0, 4100 * US))
    by = a.by_cause()
    on0 = [(p.cause, p.who, p.ns) for p in a.parts if p.cpu == 0]
    assert on0 == [(at.SOFTIRQ, "NET_RX", 2 * MS),  # on the tool's CPU while it waited
                   (at.RUNNABLE, "pid 77 'flood'", 4 * MS - 150 * US - 2 * MS),  # behind the sender
                   (at.SOFTIRQ, "NET_RX", 10 * US),  # its reply's own
                   (at.BLOCKED_NET, f"pid {T} 'tool' running", 40 * US)]  # its own work
    assert by[at.BLOCKED_NET] == 40 * US


def test_slow_tool_asleep_is_the_tools_own_time() -> None:
    """The tool slept 3 ms in clock_nanosleep (its think time) before replying: the
    chain keeps that blocked:net (not the host's fault)."""
    ev = _reply_late([
        Switch(200 * US, 0, 77, 0, T, "flood", "tool"),
        Span("syscall", 250 * US, 3900 * US, tid=T, name="clock_nanosleep"),
        Switch(300 * US, 0, T, 1, 77, "tool", "flood"),
        Wakeup(3900 * US, 0, T, 0, 77, "flood", "hrtimer"),
    ])
    a = _att(ev, Step(A, 0, 4100 * US))
    asleep = sum(p.ns for p in a.parts if p.cause == at.BLOCKED_NET and "asleep in clock_nanosleep" in p.who)
    assert asleep == 3900 * US - 300 * US
    assert a.by_cause()[at.BLOCKED_NET] > 3 * MS


def test_a_waker_not_woken_in_the_step_is_no_chain_link() -> None:
    """The reply's NET_RX ran at an interrupt's exit in a busy loop that never slept:
    the busy loop did not send it, so the wait stays the tool's round trip."""
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "agent"),
        Span("syscall", 140 * US, 2 * MS, tid=A, name="recvfrom"),
        Switch(150 * US, 1, A, 1, 0, "agent", "swapper/1"),
        Switch(0, 0, 0, 0, 55, "swapper/0", "spin"),
        Wakeup(2 * MS, 0, A, 1, 55, "spin", "softirq", at.NET_RX),
        Switch(2 * MS, 1, 0, 0, A, "swapper/1", "agent"),
    ]
    a = _att(ev, Step(A, 0, 2100 * US))
    assert a.by_cause()[at.BLOCKED_NET] == 2 * MS - 150 * US
    assert [p.who for p in a.parts if p.cause == at.BLOCKED_NET] == ["NET_RX on CPU 0"]
