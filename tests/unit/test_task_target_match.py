"""Which journal entries belong to a process (agents/threads.py belongs, proc_of):
the typed parse of kernel/targets.py decides, the prefix test only skips."""

from __future__ import annotations

from agentlatd.agents.threads import belongs, proc_of, thread_of
from agentlatd.sample.tasks import ProcId, ThreadId


def test_a_thread_of_the_process_belongs_and_reads_back_typed() -> None:
    p = ProcId(1234, 98765)
    t = ThreadId(1234, 98765, 1240).target
    assert belongs(t, p)
    assert proc_of(t) == p
    assert thread_of(t) == ThreadId(1234, 98765, 1240)


def test_same_pid_other_starttime_or_longer_pid_does_not_belong() -> None:
    p = ProcId(12, 5)
    assert not belongs(ThreadId(12, 50, 12).target, p)  # "12:50:12" starts with "12:5"
    assert not belongs(ThreadId(123, 5, 123).target, p)
    assert not belongs(ThreadId(12, 6, 12).target, p)


def test_a_target_that_names_no_thread_belongs_to_no_process() -> None:
    # a prefix match alone is not enough: the rest must be a thread id
    assert not belongs("12:5:", ProcId(12, 5))
    assert not belongs("12:5:x", ProcId(12, 5))
    assert proc_of("eth0/rx-0") is None and thread_of("45") is None
