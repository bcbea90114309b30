"""The slowest-steps view's pure parts: the split of a step's time by cause
(agentlatd/steps/slowview.py), the per-agent book, and the task-file parsers
(agentlatd/sample/taskstat.py) on the kernel's formats."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from agentlatd import stepstats as stats
from agentlatd.sample import schedstat, taskstat
from agentlatd.sample.tasks import ProcId
from agentlatd.sample.taskstat import TaskSample
from agentlatd.steps import slowview as sv
from agentlatd.steps.ring import StepRecord
from agentlatd.steps.slowsteps import targets_of
from agentlatd.sysfs.root import Root

MS = 1_000_000


def _causes(s: sv.SlowStep) -> dict[str, int]:
    return {str(c): ns for c, ns in s.causes}


def test_window_equal_to_the_step_splits_exactly() -> None:
    rec = StepRecord(7, 48213, 100, 10 * MS, 15 * MS)
    a = TaskSample(10 * MS, 50 * MS, 20 * MS, 1, 3)
    b = TaskSample(15 * MS, 51 * MS, 23 * MS, 1, 4)
    s = sv.attribute(rec, a, b, 5 * MS, {1: 0}, {1: MS // 2})
    assert _causes(s) == {"runnable": 3 * MS, "irq": MS // 2, "on_cpu": MS, "blocked": MS // 2}
    assert s.main_cause is sv.Cause.RUNNABLE and s.migrations == 1 and s.cpu == 1
    assert s.window_ns == 5 * MS and sum(_causes(s).values()) == s.duration_ns


def test_longer_window_spreads_run_delay_and_never_exceeds_the_step() -> None:
    """A 100 ms window with 40 ms of run delay: a 5 ms step gets its even share (2 ms);
    the causes never add up to more than the step, whatever the counters say."""
    rec = StepRecord(1, 1, 5, 200 * MS, 205 * MS)
    a = TaskSample(150 * MS, 0, 0, 0, None)
    b = TaskSample(250 * MS, 90 * MS, 40 * MS, 0, None)
    s = sv.attribute(rec, a, b, 50 * MS, {}, {})
    c = _causes(s)
    assert c["runnable"] == 2 * MS and c["on_cpu"] == 3 * MS and c["irq"] == 0
    assert sum(c.values()) == 5 * MS and s.migrations is None
    # counters that went backwards (never from one thread) give nothing, not negatives
    s = sv.attribute(rec, b, TaskSample(260 * MS, 0, 0, 0, None), 5 * MS, {}, {})
    assert _causes(s) == {"runnable": 0, "irq": 0, "on_cpu": 0, "blocked": 5 * MS}


def test_book_keeps_the_last_n_and_sums_time_by_cause() -> None:
    book = sv.AgentBook(keep=2)
    assert book.threshold_ns(None) is None and book.threshold_ns(3 * MS) == 3 * MS
    book.add_steps([MS] * 99 + [10 * MS])
    assert book.threshold_ns(None) is not None
    for i in range(3):
        rec = StepRecord(i, i, 1, 0, (i + 1) * MS)
        book.add_slow(sv.attribute(rec, TaskSample(0, 0, 0, 0, None),
                                   TaskSample((i + 1) * MS, 0, (i + 1) * MS, 0, None),
                                   (i + 1) * MS, {}, {}))
        book.slow_count += 1
    row = sv.summarize("a", 1, book, 2 * MS, True)
    assert [s.seq for s in row.slowest] == [2, 1]  # the last two, slowest first
    assert dict(row.time_by_cause)[sv.Cause.RUNNABLE] == 6 * MS  # all three counted
    j = row.to_json()
    assert j["share_by_cause"]["runnable"] == 1.0 and j["slow_steps"] == 3


# proc_sched_show_task() (kernel/sched/debug.c, v6.8) prints "%-45s:%21Ld" rows
SCHED = """cat (4242, #threads: 1)
-------------------------------------------------------------------
se.exec_start                                :      17036232.474738
se.vruntime                                  :          9.283911
se.sum_exec_runtime                          :          0.917349
se.nr_migrations                             :                    3
nr_switches                                  :                    2
"""


def test_task_file_parsers() -> None:
    assert taskstat.parse_nr_migrations(SCHED) == 3
    assert taskstat.parse_nr_migrations("nr_switches : 2\n") is None
    assert schedstat.parse_schedstat("45834307 93942255 34\n") == schedstat.SchedStat(
        45834307, 93942255, 34)
    assert schedstat.parse_schedstat("1 2\n") is None
    # comm may hold ") " (proc(5)): fields are counted after the last ')'
    stat = "42 (a) b) S " + " ".join(["0"] * 35) + " 7 0 0\n"
    assert schedstat.parse_stat_cpu(stat) == 7
    irq = taskstat.parse_cpu_irq_ns("cpu  1 2 3 4 5 6 7 0 0 0\ncpu0 1 2 3 4 5 6 7 0 0 0\n"
                                    "cpu1 1 2 3 4 5 1 2 0 0 0\n")
    assert irq == {0: 13 * taskstat.TICK_NS, 1: 3 * taskstat.TICK_NS}


def test_probe_reads_this_thread_again_and_again() -> None:
    """One open per file, pread at offset 0 renders anew: run time grows between reads."""
    p = taskstat.TaskProbe(Root("/"), os.getpid(), threading.get_native_id())
    try:
        s1 = p.sample(1)
        x = 0
        for i in range(200_000):
            x += i
        s2 = p.sample(2)
        assert s1 is not None and s2 is not None and s2.run_ns > s1.run_ns
        assert s2.cpu is not None and s2.cpu in os.sched_getaffinity(0)
    finally:
        p.close()


def test_targets_p99_from_the_reports_cached_until_the_histogram_grows() -> None:
    @dataclass
    class A:
        agent_id: str
        proc: ProcId
        deadline_ns: int | None = None
        hist: stats.Histogram = field(default_factory=stats.Histogram.empty)

    a, b = A("a", ProcId(1, 10)), A("b", ProcId(2, 20), deadline_ns=5 * MS)
    a.hist.add_many([MS] * 200)
    cache: dict[object, tuple[int, int | None]] = {}
    t = targets_of([a, b], cache)
    assert [(x.pid, x.starttime, x.agent_id, x.deadline_ns) for x in t] == [
        (1, 10, "a", None), (2, 20, "b", 5 * MS)]
    p99 = t[0].p99_ns
    assert p99 is not None and 0.9 * MS <= p99 <= 1.1 * MS and t[1].p99_ns is None
    a.hist.add_many([50 * MS] * 100)  # grown: computed again
    assert targets_of([a, b], cache)[0].p99_ns > 40 * MS  # type: ignore[operator]
    assert targets_of([b], cache) and set(cache) == {b.proc}  # a left: evicted
