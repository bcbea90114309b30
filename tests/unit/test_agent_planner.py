"""The agent planner (agentlatd/plan/agents.py), in-process: pure functions, injected
clocks and heat, no root, no sleeps."""

from __future__ import annotations

from agentlatd.cpuset import CpuSet
from agentlatd.model.layout import NO_HOME_CPU, CpuLayout
from agentlatd.plan.agents import (
    AgentPlace,
    HotTracker,
    Placed,
    class_wants,
    plan_moves,
    pm_qos_wanted,
    victim_affinity,
)
from agentlatd.policy import ClassPolicy, HeatPolicy

POL = HeatPolicy()
INTERACTIVE = ClassPolicy(budget_us=200, pin=True, exclusive="exclusive")
BACKGROUND = ClassPolicy(to_completion=True, nice=10, ioprio="be7")
LAYOUT = CpuLayout(home=CpuSet({2, 3}), completion=CpuSet({0, 1}), quiet_order=(3, 2),
                   online=CpuSet({0, 1, 2, 3}))


NOTHING = CpuSet()


def place(home: int | None = None, *, fallback: bool = False, allowed: CpuSet | None = None,
          reserved: CpuSet = NOTHING, note: str = "") -> AgentPlace:
    return AgentPlace(home, fallback, note, allowed, reserved, None)


def test_new_agent_gets_the_quietest_home_cpu_and_the_next_one_spreads() -> None:
    first = class_wants(INTERACTIVE, place(), LAYOUT, {}, {}, POL, frozenset())
    assert (first.home, first.cpus, first.rehomed) == (3, CpuSet({3}), True)
    assert first.exclusive and first.moved_why == ""
    second = class_wants(INTERACTIVE, place(), LAYOUT, {}, {3: 1}, POL, frozenset())
    assert second.home == 2


def test_a_hot_cpu_is_avoided_while_another_is_not() -> None:
    w = class_wants(INTERACTIVE, place(), LAYOUT, {3: 0.9, 2: 0.0}, {}, POL, frozenset({3}))
    assert w.home == 2


def test_a_valid_home_is_kept_whatever_the_load() -> None:
    w = class_wants(INTERACTIVE, place(3), LAYOUT, {}, {3: 5}, POL, frozenset())
    assert (w.home, w.rehomed, w.moved_why) == (3, False, "")


def test_a_home_that_left_the_home_set_is_replaced_and_says_why() -> None:
    layout = CpuLayout(home=CpuSet({2}), completion=CpuSet({0, 1}), quiet_order=(2,))
    w = class_wants(INTERACTIVE, place(3), layout, {}, {3: 1}, POL, frozenset())
    assert w.home == 2 and w.rehomed
    assert w.moved_why == "CPU 3 is no longer a home CPU"


def test_a_home_held_by_another_workload_is_left() -> None:
    w = class_wants(INTERACTIVE, place(3, reserved=CpuSet({3})), LAYOUT, {}, {3: 1}, POL,
                    frozenset())
    assert w.home == 2
    assert "outside its cpuset or held by another workload" in w.moved_why


def test_a_cpuset_without_home_cpus_gives_a_fallback_that_is_revisited() -> None:
    cpuset = CpuSet({1})
    w = class_wants(INTERACTIVE, place(allowed=cpuset), LAYOUT, {}, {}, POL, frozenset())
    assert w.fallback and w.home == 1 and not w.exclusive
    # still no home CPU in its cpuset: kept as it is
    again = class_wants(INTERACTIVE, place(1, fallback=True, allowed=cpuset, note=w.note),
                        LAYOUT, {}, {1: 1}, POL, frozenset())
    assert (again.home, again.rehomed, again.fallback) == (1, False, True)
    # its cpuset grew to a home CPU: placed there at once
    grown = class_wants(INTERACTIVE, place(1, fallback=True, allowed=CpuSet({1, 2})),
                        LAYOUT, {}, {1: 1}, POL, frozenset())
    assert (grown.home, grown.fallback, grown.exclusive) == (2, False, True)


def test_no_home_cpu_leaves_the_agent_unpinned_with_the_degraded_note() -> None:
    layout = CpuLayout(home=CpuSet(), completion=CpuSet({0, 1}), online=CpuSet({0, 1}))
    w = class_wants(INTERACTIVE, place(), layout, {}, {}, POL, frozenset())
    assert (w.home, w.cpus, w.exclusive, w.pm_qos) == (None, None, False, None)
    assert w.note == NO_HOME_CPU


def test_background_goes_to_the_completion_cpus_with_its_nice_and_ioprio() -> None:
    w = class_wants(BACKGROUND, place(3), LAYOUT, {}, {3: 1}, POL, frozenset())
    assert (w.home, w.cpus, w.nice, w.ioprio) == (None, CpuSet({0, 1}), 10, "be7")
    none = CpuLayout(home=CpuSet({2, 3}), completion=CpuSet())
    w = class_wants(BACKGROUND, place(), none, {}, {}, POL, frozenset())
    assert w.cpus is None and "no completion CPU" in w.note


def test_pm_qos_only_while_pinned_on_a_home_cpu() -> None:
    cls = ClassPolicy(pin=True, pm_qos_resume_latency_us=20)
    assert class_wants(cls, place(), LAYOUT, {}, {}, POL, frozenset()).pm_qos == 20
    assert pm_qos_wanted([(2, 50), (2, 20), (3, 100)]) == {2: "20", 3: "100"}


def test_hot_for_hot_ticks_then_moves_with_hysteresis_and_min_interval() -> None:
    tracker = HotTracker()
    heat = {2: 0.0, 3: 0.9}
    for _ in range(POL.hot_ticks - 1):
        tracker.update(heat, POL)
    assert tracker.hot(POL) == frozenset()  # not yet: hot_ticks consecutive ticks
    tracker.update(heat, POL)
    hot = tracker.hot(POL)
    assert hot == frozenset({3})
    agent = Placed("a", 3, last_move=100.0)
    # moved 5 s ago, min_move_interval 10 s: stays, whatever the heat
    moves, _ = plan_moves([agent], LAYOUT, heat, hot, POL, now=105.0)
    assert moves == []
    moves, _ = plan_moves([agent], LAYOUT, heat, hot, POL, now=111.0)
    assert [(m.from_cpu, m.to_cpu) for m in moves] == [(3, 2)]
    # the other CPU cooled below `hot` but not below `cool`: not a target (hysteresis)
    warm = {2: 0.3, 3: 0.9}
    moves, notes = plan_moves([agent], LAYOUT, warm, hot, POL, now=111.0)
    assert moves == [] and "below heat.cool" in notes[0]


def test_victims_lose_the_exclusive_cpus_and_pinned_tasks_stay() -> None:
    assert victim_affinity(CpuSet({0, 1, 2, 3}), CpuSet({3})) == CpuSet({0, 1, 2})
    assert victim_affinity(CpuSet({3}), CpuSet({3})) is None  # pinned there on purpose
    assert victim_affinity(CpuSet({0, 1}), CpuSet({3})) is None  # not on it at all
