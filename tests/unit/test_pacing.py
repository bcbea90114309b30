"""sysfs/pacing.py: background reads give way while the main loop serves, within bounds."""

from __future__ import annotations

import threading
import time

from agentlatd.sysfs.pacing import Pacer


def _in_thread(fn: object) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)  # type: ignore[arg-type]
    t.start()
    return t


def test_a_paced_thread_waits_while_the_main_loop_serves_and_goes_on_when_it_waits() -> None:
    p = Pacer(wait_s=30.0, budget_s=30.0)
    p.serving()
    started, passed = threading.Event(), threading.Event()
    at: list[float] = []

    def bg() -> None:
        p.paced()
        started.set()
        p.give_way()
        at.append(time.monotonic())
        passed.set()

    t = _in_thread(bg)
    assert started.wait(5)
    time.sleep(0.05)  # the main loop serves a while
    released = time.monotonic()
    p.waiting()
    assert passed.wait(5)
    assert at[0] >= released  # it went on when the main loop waited, not before
    t.join(5)


def test_threads_not_paced_and_an_idle_main_loop_never_wait() -> None:
    p = Pacer(wait_s=30.0, budget_s=30.0)
    p.serving()
    t0 = time.monotonic()
    for _ in range(100):
        p.give_way()  # this thread is not paced
    done = threading.Event()

    def bg() -> None:
        p.paced()
        p.waiting()
        for _ in range(100):
            p.give_way()
        done.set()

    _in_thread(bg)
    assert done.wait(5)
    assert time.monotonic() - t0 < 5.0


def test_a_main_loop_that_never_waits_costs_a_paced_thread_at_most_its_budget() -> None:
    """A request flood keeps the main loop serving: each read waits wait_s, and the
    waits of one second add up to budget_s at most; the rest go unpaced."""
    p = Pacer(wait_s=0.05, budget_s=0.05)
    p.serving()
    took: list[float] = []

    def bg() -> None:
        p.paced()
        t0 = time.monotonic()
        for _ in range(50):  # 2.5 s of waits without the budget
            p.give_way()
        took.append(time.monotonic() - t0)

    _in_thread(bg).join(10)
    assert took and 0.04 <= took[0] < 1.5, took
