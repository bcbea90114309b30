"""The pure parts of the agent side: placement, hot tracking, step statistics, the
protocol decoder, proc/PID/stat parsing, ioprio formats. No daemon, no writes."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlatd import stepstats as stats
from agentlatd.agents.autoreg import matches
from agentlatd.api import protocol
from agentlatd.api.protocol import ProtocolError, Register, Step
from agentlatd.cpuset import CpuSet
from agentlatd.model.layout import CpuLayout
from agentlatd.plan.agents import HotTracker, Placed, choose_home, plan_moves, victim_affinity
from agentlatd.policy import AutoRegisterRule, HeatPolicy
from agentlatd.sample import tasks

POL = HeatPolicy(hot=0.5, cool=0.2, hot_ticks=3, min_move_interval=10.0)


def layout_2s_smt() -> CpuLayout:
    """2 nodes x 2 cores x 2 threads: cpus 0-3 node 0, 4-7 node 1; siblings (0,1) (2,3)...
    completion CPUs 0 and 4; home = the rest."""
    sib = {c: CpuSet({c - c % 2, c - c % 2 + 1}) for c in range(8)}
    return CpuLayout(home=CpuSet({1, 2, 3, 5, 6, 7}), completion=CpuSet({0, 4}),
                     quiet_order=(3, 2, 7, 6, 1, 5), siblings=sib,
                     node_of={c: c // 4 for c in range(8)}, online=CpuSet(range(8)))


# -- choose_home ----------------------------------------------------------------
def test_home_cpu_avoids_smt_siblings_of_completion_cpus() -> None:
    lay = layout_2s_smt()
    assert lay.candidates() == CpuSet({2, 3, 6, 7})
    assert choose_home(lay, {}, {}, POL) == 3  # the plan's quietest first


def test_home_cpu_least_hot_then_least_loaded() -> None:
    lay = layout_2s_smt()
    heat = {2: 0.0, 3: 0.3, 6: 0.1, 7: 0.0}
    # cool band first (< 0.2): 2, 6, 7; fewest agents: 7 has one
    assert choose_home(lay, heat, {2: 1, 6: 1}, POL) == 7
    assert choose_home(lay, heat, {7: 1, 2: 1, 6: 1}, POL) in (2, 6, 7)
    # a hot CPU is taken only when every candidate is hot
    assert choose_home(lay, {2: 0.9, 3: 0.9, 6: 0.9, 7: 0.8}, {}, POL) == 7
    assert choose_home(lay, {c: 0.0 for c in range(8)}, {}, POL, hot=frozenset({3})) == 2


def test_home_cpu_on_the_devices_numa_node() -> None:
    lay = layout_2s_smt()
    assert choose_home(lay, {}, {}, POL, node=1) == 7
    assert choose_home(lay, {}, {}, POL, node=0) == 3
    assert choose_home(lay, {}, {}, POL, node=5) == 3  # unknown node: anywhere


def test_no_home_cpus_no_home() -> None:
    assert choose_home(CpuLayout(CpuSet(), CpuSet({0})), {}, {}, POL) is None
    # only siblings of completion CPUs left: they are used rather than nothing
    lay = CpuLayout(CpuSet({1}), CpuSet({0}), siblings={0: CpuSet({0, 1}), 1: CpuSet({0, 1})})
    assert choose_home(lay, {}, {}, POL) == 1


def test_spread_many_agents() -> None:
    lay = layout_2s_smt()
    load: dict[int, int] = {}
    for _ in range(40):
        c = choose_home(lay, {}, load, POL)
        assert c is not None
        load[c] = load.get(c, 0) + 1
    assert load == {2: 10, 3: 10, 6: 10, 7: 10}


# -- hot tracking and moves ------------------------------------------------------
def test_hot_after_k_consecutive_ticks_only() -> None:
    t = HotTracker()
    for h in (0.6, 0.7, 0.1, 0.6, 0.6):
        t.update({1: h}, POL)
    assert t.hot(POL) == frozenset()
    t.update({1: 0.6}, POL)
    assert t.hot(POL) == {1}
    t.update({1: 0.49}, POL)
    assert t.hot(POL) == frozenset()


def test_moves_to_a_cool_cpu_with_hysteresis_and_min_interval() -> None:
    lay = layout_2s_smt()
    a = Placed("a", 3, last_move=0.0)
    heat = {2: 0.3, 3: 0.9, 6: 0.25, 7: 0.1}
    moves, notes = plan_moves([a], lay, heat, frozenset({3}), POL, now=100.0)
    assert [(m.key, m.from_cpu, m.to_cpu) for m in moves] == [("a", 3, 7)]
    assert "hot" in moves[0].reason and "CPU 7" in moves[0].reason
    # 2 and 6 are warm (cool <= heat < hot): never chosen
    heat[7] = 0.21
    moves, notes = plan_moves([a], lay, heat, frozenset({3}), POL, now=100.0)
    assert moves == [] and "below heat.cool" in notes[0]
    # moved 5 s ago: stays whatever the heat
    moves, _ = plan_moves([Placed("a", 3, last_move=95.0)], lay, {7: 0.0, 3: 0.9},
                          frozenset({3}), POL, now=100.0)
    assert moves == []
    # not hot (yet): no move
    moves, _ = plan_moves([a], lay, {3: 0.9, 7: 0.0}, frozenset(), POL, now=100.0)
    assert moves == []


def test_moves_spread_the_agents_of_a_hot_cpu() -> None:
    lay = layout_2s_smt()
    agents = [Placed(f"a{i}", 3, 0.0) for i in range(4)]
    moves, _ = plan_moves(agents, lay, {2: 0.0, 3: 0.9, 6: 0.0, 7: 0.0}, frozenset({3}), POL,
                          now=100.0)
    assert sorted(m.to_cpu for m in moves) == [2, 2, 6, 7] or \
        sorted(m.to_cpu for m in moves) in ([2, 6, 6, 7], [2, 6, 7, 7])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from([0.0, 95.0])), max_size=40),
       st.frozensets(st.integers(0, 7)),
       st.dictionaries(st.integers(0, 7), st.floats(0.0, 1.0), max_size=8))
def test_moves_planned_from_the_movable_agents_and_a_load_are_the_same(
        homes: list[tuple[int, float]], hot: frozenset[int], heat: dict[int, float]) -> None:
    """The daemon lists only agents on hot or no-longer-home CPUs (the others are
    never moved) and passes every placed agent's count as `load`: the moves and
    notes are those of the whole list."""
    lay = layout_2s_smt()
    agents = [Placed(f"a{i:02d}", cpu, last) for i, (cpu, last) in enumerate(homes)]
    load: dict[int, int] = {}
    for a in agents:
        load[a.home_cpu] = load.get(a.home_cpu, 0) + 1
    movable = [a for a in agents if a.home_cpu not in lay.home or a.home_cpu in hot]
    assert plan_moves(movable, lay, heat, hot, POL, 100.0, load) == \
        plan_moves(agents, lay, heat, hot, POL, 100.0)


def test_a_cpu_leaving_the_home_set_is_left_at_once() -> None:
    lay = layout_2s_smt()
    moves, _ = plan_moves([Placed("a", 0, last_move=99.0)], lay, {}, frozenset(), POL,
                          now=100.0)
    assert len(moves) == 1 and moves[0].from_cpu == 0 and "no longer a home CPU" in \
        moves[0].reason


def test_victim_affinity() -> None:
    assert victim_affinity(CpuSet({0, 1, 2, 3}), CpuSet({3})) == CpuSet({0, 1, 2})
    assert victim_affinity(CpuSet({0, 1}), CpuSet({3})) is None
    assert victim_affinity(CpuSet({3}), CpuSet({3})) is None  # pinned there on purpose


# -- stats -------------------------------------------------------------------------
@given(st.integers(min_value=0, max_value=stats.MAX_NS))
def test_bucket_holds_its_value(v: int) -> None:
    lo, hi = stats.bucket_bounds(stats.bucket_of(v))
    assert lo <= v <= hi
    assert hi - lo <= max(1, v // 32)


def test_buckets_tile_the_range() -> None:
    for b in range(stats.MAX_BUCKET):
        assert stats.bucket_bounds(b)[1] + 1 == stats.bucket_bounds(b + 1)[0]


@settings(max_examples=50)
@given(st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=2000))
def test_percentiles_within_two_percent(xs: list[int]) -> None:
    h = stats.Histogram.empty()
    h.add_many(xs)
    s = sorted(xs)
    for q in (0.5, 0.99, 0.999):
        exact = s[max(0, -(-int(q * len(s) * 1_000_000) // 1_000_000) - 1)]
        got = h.percentile(q)
        assert got is not None and abs(got - exact) <= max(1, exact * 0.02), (q, got, exact)


def test_merge_of_sparse_equals_adding() -> None:
    rnd = random.Random(7)
    xs = [rnd.randrange(10**7) for _ in range(5000)]
    a = stats.Histogram.empty()
    a.add_many(xs)
    b = stats.Histogram.empty()
    b.merge_counts(stats.sparse(xs), sum_ns=sum(xs), max_ns=max(xs))
    assert a.summary() == b.summary()


# -- protocol ------------------------------------------------------------------------
def dec(obj: object) -> protocol.Envelope:
    return protocol.decode(json.dumps(obj).encode())


def test_register_decodes_with_defaults() -> None:
    env = dec({"v": 1, "op": "register", "id": "r1", "agent_id": "planner"})
    assert env.req_id == "r1" and env.op == "register"
    assert env.req == Register("planner", None, "interactive")


def test_step_report_forms() -> None:
    env = dec({"op": "step", "count": 3, "samples_ns": [100, 2000, 30000]})
    assert isinstance(env.req, Step) and env.req.count == 3 and env.req.max_ns == 30000
    h = stats.sparse([100, 200, 200])
    env = dec({"op": "step", "count": 3, "hist": {str(k): v for k, v in h.items()},
               "sum_ns": 500, "max_ns": 200})
    assert isinstance(env.req, Step) and env.req.sum_ns == 500 and dict(env.req.hist) == h


@pytest.mark.parametrize("obj, code", [
    ({"op": "register", "agent_id": "x", "pid": 0}, "bad_request"),
    ({"op": "register", "agent_id": "x", "pid": tasks.PID_MAX}, "bad_request"),
    ({"op": "register", "agent_id": "\x00x"}, "bad_request"),
    ({"op": "register", "agent_id": "x", "devices": ["a"] * 17}, "bad_request"),
    ({"op": "register", "agent_id": "x", "deadline_ns": -1}, "bad_request"),
    ({"op": "step", "count": 2, "samples_ns": [1]}, "bad_request"),
    ({"op": "step", "samples_ns": list(range(protocol.MAX_SAMPLES + 1))}, "bad_request"),
    ({"op": "step", "hist": {"1.5": 1}}, "bad_request"),
    ({"op": "x"}, "unknown_op"),
    ({"v": "1", "op": "ping"}, "unsupported_version"),
    ({"op": "ping", "id": {"a": 1}}, "bad_request"),
])
def test_protocol_errors(obj: object, code: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        dec(obj)
    assert ei.value.code == code
    assert ei.value.message[-1].isalnum() or ei.value.message[-1] in ")'"


def test_id_is_echoed_on_errors() -> None:
    with pytest.raises(ProtocolError) as ei:
        dec({"op": "register", "id": 42})
    assert ei.value.req_id == 42
    line = protocol.error(42, "bad_request", "field 'agent_id' is required")
    assert json.loads(line) == {"v": 1, "id": 42, "ok": False,
                                "error": {"code": "bad_request",
                                          "message": "field 'agent_id' is required"}}


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_decoder_never_raises_anything_but_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.decode(data)


# -- proc/PID/stat, ioprio, targets ----------------------------------------------------
def test_parse_pid_stat_with_hostile_comm() -> None:
    line = ("4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 "
            "987654 1000 100 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0")
    st_ = tasks.parse_pid_stat(line)
    assert st_.comm == "a) b (c)" and st_.ppid == 1 and st_.starttime == 987654
    assert st_.num_threads == 3 and st_.nice == 0 and st_.processor == 1
    assert not st_.kthread


def test_parse_own_stat_matches_the_kernel() -> None:
    st_ = tasks.parse_pid_stat(pathlib.Path(f"/proc/{os.getpid()}/stat").read_text())
    assert st_.pid == os.getpid() and st_.ppid == os.getppid()
    kt = tasks.parse_pid_stat(pathlib.Path("/proc/2/stat").read_text())
    assert kt.kthread and kt.comm == "kthreadd"


@pytest.mark.parametrize("v, text", [
    (0, "none"), (2 << 13 | 7, "be7"), (2 << 13 | 0, "be0"), (3 << 13, "idle"),
    (1 << 13 | 4, "rt4"), (2 << 13 | 2 << 3 | 7, "be7/h2"),
])
def test_ioprio_round_trip(v: int, text: str) -> None:
    assert tasks.format_ioprio(v) == text
    assert tasks.parse_ioprio(text) == v


def test_ioprio_syscalls_on_a_child() -> None:
    p = subprocess.Popen(["sleep", "10"])
    try:
        tasks.set_ioprio(p.pid, "be7")
        assert tasks.get_ioprio(p.pid) == "be7"
        out = subprocess.run(["ionice", "-p", str(p.pid)], capture_output=True, text=True)
        assert "best-effort: prio 7" in out.stdout
    finally:
        p.kill()
        p.wait()


@pytest.mark.parametrize("bad", ["", "1:2", "0:1:1", "1:2:0", "a:b:c", "1:2:3:4",
                                 "../1:2:3", "99999999999:1:1", "1 :2:3"])
def test_bad_task_targets(bad: str) -> None:
    with pytest.raises(ValueError):
        tasks.ThreadId.parse(bad)


def test_auto_register_rule_matching() -> None:
    r = AutoRegisterRule(comm="agent-*", cgroup="/system.slice/*")
    assert matches(r, "agent-7", "/usr/bin/python3", "/system.slice/a.service")
    assert not matches(r, "agent-7", "", "/user.slice/x")
    assert not matches(r, "other", "", "/system.slice/a.service")
    assert not matches(AutoRegisterRule(), "anything", "/bin/x", "/")  # no field: nothing
    assert matches(AutoRegisterRule(exe="/opt/agents/*"), "x", "/opt/agents/bin/run", "")
    assert not matches(AutoRegisterRule(exe="/opt/agents/*"), "x", "", "")
