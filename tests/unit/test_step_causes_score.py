"""agentlatd/tools/bench/causes.py's score and table (pure): phases cut from one trace,
the denominator (own running and timer wait out; runnable behind other tenants out
of the checked share), and the block completion a loop worker makes in task context."""

from __future__ import annotations

from agentlatd.steps import attribute as at
from agentlatd.steps.attribute import Span, Switch, Wakeup
from agentlatd.steps.ring import StepRecord
from agentlatd.tools.bench import causes
from agentlatd.tools.trace import step_events as events

A = 100  # the agent's tid (= pid)
HOG, TENANT = 555, 777
MS = 1_000_000


def test_score_splits_phases_and_checks_against_the_injected_cause() -> None:
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "probe"),
        # phase "cpu-hog" (10-20 ms): preempted by the hog 3 ms, then by a tenant 1 ms
        Switch(11 * MS, 1, A, at.TASK_REPORT_MAX, HOG, "probe", "probe"),
        Switch(14 * MS, 1, HOG, 0, TENANT, "probe", "qemu-system-x86"),
        Switch(15 * MS, 1, TENANT, 0, A, "qemu-system-x86", "probe"),
        # phase "slow-tool" (20-30 ms): asleep in recv 5 ms, woken by NET_RX on CPU 0
        Switch(21 * MS, 1, A, 1, 0, "probe", "swapper/1"),
        Wakeup(26 * MS, 0, A, 1, 9, "probe", "softirq", at.NET_RX),
        Switch(26 * MS, 1, 0, 0, A, "swapper/1", "probe"),
    ]
    recs = [StepRecord(0, 0, A, 10 * MS, 16 * MS), StepRecord(1, 1, A, 16 * MS + 1, 16 * MS + 200_000),
            StepRecord(2, 2, A, 20 * MS, 27 * MS)]
    phases = [causes.Phase("cpu-hog", 10 * MS, 20 * MS, (HOG,)), causes.Phase("slow-tool", 20 * MS, 30 * MS)]
    hog, tool = causes.score(ev, recs, A, phases, 1 * MS, {A})
    assert (hog.steps, hog.slow, hog.total_ns) == (2, 1, 6 * MS)
    assert hog.by_cause == {at.RUNNING: 2 * MS, at.RUNNABLE: 4 * MS}
    assert hog.delay_ns == 4 * MS and hog.foreign_ns == 1 * MS
    assert hog.share(at.RUNNABLE) == 1.0
    assert hog.checked_share() == 1.0  # 3 ms behind the hog of the 3 ms not behind the tenant
    assert tool.by_cause == {at.RUNNING: 2 * MS, at.BLOCKED_NET: 5 * MS}
    assert tool.checked_share() == 1.0
    table = causes.render("c", [hog, tool], 1 * MS)
    assert "cpu-hog" in table and "100.0ok" in table and "b:net" in table


def test_score_checked_share_counts_what_is_not_the_cause() -> None:
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "probe"),
        Switch(1 * MS, 1, A, 1, 0, "probe", "swapper/1"),
        Wakeup(3 * MS, 1, A, 1, 0, "", "hrtimer"),  # its own timer: out of the denominator
        Switch(3 * MS, 1, 0, 0, A, "swapper/1", "probe"),
        Switch(4 * MS, 1, A, 1, 0, "probe", "swapper/1"),
        Wakeup(5 * MS, 1, A, 1, 42, "kworker/u8:1"),  # a task woke it: not the flood
        Switch(5 * MS, 1, 0, 0, A, "swapper/1", "probe"),
    ]
    [row] = causes.score(ev, [StepRecord(0, 0, A, 0, 6 * MS)], A, [causes.Phase("netrx-flood", 0, 10 * MS)],
                         1 * MS)
    assert row.delay_ns == 1 * MS and row.checked_share() == 0.0
    assert "0.0!!" in causes.render("c", [row], 1 * MS)


def test_wakeup_after_a_block_completion_in_the_wakers_task_context() -> None:
    """A loop device completes in its worker (task context): the events program prints
    the device with the worker's wakeup of the reader, which is then blocked:block."""
    prog = events.program([A], 1.0)
    assert "@blk_t[tid] = args->dev" in prog and "delete(@blk_t[args->prev_pid])" in prog
    tr = events.parse([f"W 3000000 0 {A} 1 42 0 -1 {7 << 20 | 2} 1500000 kworker/u8:1\n"])
    [w] = tr.events
    assert isinstance(w, Wakeup) and w.ctx == "task" and w.blk_dev == 7 << 20 | 2
    ev: list[at.Event] = [Switch(0, 1, 0, 0, A, "swapper/1", "probe"),
                          Switch(1 * MS, 1, A, 1, 0, "probe", "swapper/1"), w,
                          Switch(3 * MS, 1, 0, 0, A, "swapper/1", "probe")]
    a = at.attribute(at.index(ev), at.Step(A, 0, 3 * MS + MS // 2))
    assert a.by_cause()[at.BLOCKED_BLOCK] == 2 * MS
    assert "block completion on dev 7:2" in a.verdict()


def test_timer_wakeup_missed_by_the_tracer_splits_the_sleep_at_its_expiry() -> None:
    """The kernel skips a BPF program firing inside another (bpf_prog_active): on a CPU
    flooded with softirqs the hrtimer's sched_waking is lost, and the whole sleep plus
    the time runnable behind ksoftirqd after the timer fired was one "woken by an
    unseen waker" part (10-23 % of the flood case's delay). The sleep's timer expiry,
    read at sys_enter_clock_nanosleep, splits it."""
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "probe"),
        Span("syscall", 1 * MS, 2 * MS + 500_000, tid=A, name="clock_nanosleep", until=1 * MS + 100_000),
        Switch(1 * MS, 1, A, 1, 24, "probe", "ksoftirqd/1"),
        Switch(2 * MS + 400_000, 1, 24, 1, A, "ksoftirqd/1", "probe"),  # no wakeup seen
    ]
    a = at.attribute(at.index(ev), at.Step(A, 0, 3 * MS))
    by = a.by_cause()
    assert by == {at.RUNNING: 1 * MS + 600_000, at.BLOCKED_TIMER: 100_000, at.SOFTIRQ: 1 * MS + 300_000}
    assert sum(by.values()) == 3 * MS
    prog = events.program([A], 1.0)
    assert "uptr(args->rqtp)" in prog and "@g_x[tid]" in prog
    [g] = events.parse(["G 1000000 2500000 100 10 1100000\n"]).events
    assert isinstance(g, Span) and g.name == "clock_nanosleep" and g.until == 1_100_000


def test_writeback_block_softirq_on_the_agents_cpu_counts_as_the_injected_cause() -> None:
    """The writes' completions run as BLOCK softirqs on the agent's CPU (the loop
    worker completes where it runs, and it runs there while the agent sleeps): block
    completion work, the writeback's, scored as such, apart from the packet softirqs
    that stay what the NET_RX flood is checked against."""
    dev = 7 << 20
    ev: list[at.Event] = [
        Switch(0, 1, 0, 0, A, "swapper/1", "probe"),
        Span("softirq", 1 * MS, 2 * MS, cpu=1, id=at.BLOCK_VEC),  # while it runs
        Span("syscall", 3 * MS, 7 * MS, tid=A, name="pread64"),
        Switch(3 * MS, 1, A, 1, 0, "probe", "swapper/1"),
        Wakeup(7 * MS, 1, A, 1, 42, "kworker/u8:1", blk_dev=dev, blk_ns=3 * MS),
        Switch(7 * MS, 1, 0, 0, A, "swapper/1", "probe"),
        Span("softirq", 8 * MS, 8 * MS + 500_000, cpu=1, id=at.NET_RX),
    ]
    [wb] = causes.score(ev, [StepRecord(0, 0, A, 0, 9 * MS)], A, [causes.Phase("writeback", 0, 10 * MS)],
                        1 * MS)
    assert wb.by_cause[causes.SOFTIRQ_BLOCK] == 1 * MS and wb.by_cause[at.SOFTIRQ] == 500_000
    assert wb.by_cause[at.BLOCKED_BLOCK] == 4 * MS
    assert wb.delay_ns == 5 * MS + 500_000
    assert wb.checked_share() == 5 * MS / (5 * MS + 500_000)
    table = causes.render("c", [wb], 1 * MS)
    assert "si:BLOCK" in table and "90.9ok" in table
    [flood] = causes.score(ev, [StepRecord(0, 0, A, 0, 9 * MS)], A,
                           [causes.Phase("netrx-flood", 0, 10 * MS)], 1 * MS)
    assert flood.checked_share() == 500_000 / (5 * MS + 500_000)  # BLOCK is not a packet's


def test_python_agent_preadv_is_a_gate() -> None:
    """os.preadv (the Python agent's disk read) is preadv(2), not pread64: its blocked
    time had no gate (blocked:block "in" nothing) until the tracer traced it."""
    assert {"preadv", "preadv2", "readv"} <= set(events.GATES)
    prog = events.program([A], 1.0)
    assert "tracepoint:syscalls:sys_enter_preadv /@agent[tid] || @hop[tid]/" in prog
    k = events.GATES.index("preadv") + 1
    [g] = events.parse([f"G 1000000 2500000 100 {k} 0\n"]).events
    assert isinstance(g, Span) and g.name == "preadv"


def _round_trip(t: int, rtt: int, cpu_a: int = 1) -> list[at.Event]:
    """One step's tool round trip at `t`: asleep in recvfrom `rtt` ns, woken by the
    reply's NET_RX on CPU 0, back on CPU A right away."""
    return [Span("syscall", t, t + rtt, tid=A, name="recvfrom"),
            Switch(t, cpu_a, A, 1, 0, "probe", "swapper/1"),
            Wakeup(t + rtt, 0, A, cpu_a, 9, "tool", "softirq", at.NET_RX),
            Switch(t + rtt, cpu_a, 0, 0, A, "swapper/1", "probe")]


def test_flood_slow_steps_own_tool_round_trip_is_not_in_the_delay() -> None:
    """Every step waits ~60 us in recv for its tool's reply (blocked:net). A slow step
    of the flood phase has that round trip too: it was in the flood's denominator,
    not attributed to the flood, so the checked share fell short (84.6 % C, 58.8 %
    Python). Each slow step is measured from the "none" phase's typical step: its
    blocked:net beyond the typical round trip is delay, the typical part is not."""
    US = 1_000
    ev: list[at.Event] = [Switch(0, 1, 0, 0, A, "swapper/1", "probe")]
    recs: list[StepRecord] = []
    # "none" (0-10 ms): five steps of 200 us, each a 60 us round trip
    for k in range(5):
        t = k * 1 * MS
        ev += _round_trip(t + 50 * US, 60 * US)
        recs.append(StepRecord(k, k, A, t, t + 200 * US))
    # "netrx-flood" (10-20 ms): one slow step, 1 ms of NET_RX on CPU A while it ran,
    # and a 100 us round trip (40 us of it beyond the typical)
    ev += [Span("softirq", 11 * MS, 12 * MS, cpu=1, id=at.NET_RX), *_round_trip(12 * MS, 100 * US)]
    recs.append(StepRecord(5, 5, A, 10 * MS + 900 * US, 12 * MS + 200 * US))
    phases = [causes.Phase("none", 0, 10 * MS), causes.Phase("netrx-flood", 10 * MS, 20 * MS)]
    none, flood = causes.score(ev, recs, A, phases, 1 * MS, {A})
    assert none.slow == 0 and none.typical[at.BLOCKED_NET] == 60 * US
    assert flood.by_cause[at.BLOCKED_NET] == 100 * US  # the raw split keeps all of it
    assert flood.excess == {at.SOFTIRQ: 1 * MS, at.BLOCKED_NET: 40 * US}
    assert flood.delay_ns == 1 * MS + 40 * US
    assert flood.checked_share() == 1 * MS / (1 * MS + 40 * US)
    doc = flood.to_json()
    assert doc["typical_step_ns"][at.BLOCKED_NET] == 60 * US and doc["excess_ns"][at.SOFTIRQ] == 1 * MS


def test_typical_step_is_the_median_and_excess_never_negative() -> None:
    splits = [{at.BLOCKED_NET: 50}, {at.BLOCKED_NET: 70, at.SOFTIRQ: 5}, {at.BLOCKED_NET: 60}]
    assert causes.typical(splits) == {at.BLOCKED_NET: 60}  # softirq: in a minority of steps
    assert causes.excess({at.BLOCKED_NET: 40, at.SOFTIRQ: 9, at.RUNNING: 500}, {at.BLOCKED_NET: 60}) == {
        at.SOFTIRQ: 9}  # running is the step's own work: never delay
    assert causes.typical([]) == {}
