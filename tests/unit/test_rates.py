"""model/rates: rates, heat and discontinuities from two hand-built snapshots."""

from __future__ import annotations

import ast
import math
import pathlib
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentlatd import policy
from agentlatd.model.rates import HEAT_SOFTIRQS, compute_rates
from agentlatd.policy import HeatPolicy
from agentlatd.sample.counters import SOURCE_SYS, CounterSnapshot, IrqCounts
from agentlatd.sample.softirqs import Softirqs
from agentlatd.sample.stat import CpuTimes, Stat

REPO = pathlib.Path(__file__).resolve().parents[2]
HP = HeatPolicy()
VECS = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER", "RCU")


def times(user: int = 0, system: int = 0, idle: int = 0, irq: int = 0, softirq: int = 0, steal: int = 0,
          iowait: int = 0) -> CpuTimes:
    return CpuTimes(user, 0, system, idle, iowait, irq, softirq, steal, 0, 0)


def snap(
    t: float,
    irqs: Mapping[int, list[int]] | None = None,
    soft: Mapping[str, list[int]] | None = None,
    cpu_times: Mapping[int, CpuTimes] | None = None,
    cpus: tuple[int, ...] = (0, 1),
    irq_cpus: tuple[int, ...] | None = None,
    soft_cpus: tuple[int, ...] | None = None,
    **kw: object,
) -> CounterSnapshot:
    soft_cpus = cpus if soft_cpus is None else soft_cpus
    counts = {v: tuple((soft or {}).get(v, [0] * len(soft_cpus))) for v in VECS}
    stat = Stat(all_cpus=None, cpus=dict(cpu_times or {c: times() for c in cpus}), intr_total=None, intr=(),
                softirq_total=None, softirq=())
    return CounterSnapshot(
        t=t, stat=stat, softirqs=Softirqs(cpus=soft_cpus, counts=counts),
        irq_cpus=cpus if irq_cpus is None else irq_cpus,
        irqs={k: IrqCounts(",".join(map(str, v)).encode()) for k, v in (irqs or {}).items()},
        source=SOURCE_SYS, **kw)  # type: ignore[arg-type]


def kinds(r: object) -> list[str]:
    return [d.kind for d in r.discontinuities]  # type: ignore[attr-defined]


def test_rates_and_heat_exactly() -> None:
    prev = snap(10.0, irqs={45: [100, 0], 46: [0, 50], 47: [7, 7]},
                soft={"NET_RX": [10, 0], "BLOCK": [0, 0], "TASKLET": [0, 0], "TIMER": [5, 5]},
                cpu_times={0: times(100, 50, 800, 0, 0, 0), 1: times(100, 50, 800, 10, 20, 5)})
    cur = snap(12.0, irqs={45: [20100, 0], 46: [0, 50], 47: [7, 7]},
               soft={"NET_RX": [6010, 0], "BLOCK": [0, 400], "TASKLET": [0, 200], "TIMER": [505, 5]},
               cpu_times={0: times(140, 60, 880, 10, 10, 0), 1: times(110, 50, 970, 20, 40, 15)})
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == []
    assert r.interval_s == 2.0
    assert r.irq_rate[45] == {0: 10000.0}
    assert r.irq_rate[46] == {} and r.irq_rate[47] == {}  # did not fire: present, empty
    assert r.irq_per_cpu == {0: 10000.0, 1: 0.0}
    assert r.softirq_rate["NET_RX"] == {0: 3000.0, 1: 0.0}
    assert r.softirq_rate["TIMER"] == {0: 250.0, 1: 0.0}
    assert r.softirq_rate["BLOCK"] == {0: 0.0, 1: 200.0}
    # cpu0: d = user 40 + system 10 + idle 80 + irq 10 + softirq 10 = 150 ticks
    assert r.irq_time_share[0] == pytest.approx(20 / 150)
    assert r.steal_share[0] == 0.0
    # cpu1: d = 10 + 0 + 170 + 10 + 20 + 10 = 220
    assert r.irq_time_share[1] == pytest.approx(30 / 220)
    assert r.steal_share[1] == pytest.approx(10 / 220)
    # heat = 1*irq/10000 + 1*(NET_RX+NET_TX+BLOCK+IRQ_POLL+TASKLET)/10000 + 10*share
    assert r.heat[0] == pytest.approx(10000 / 1e4 + 3000 / 1e4 + 10 * 20 / 150)
    assert r.heat[1] == pytest.approx(0 + (200 + 100) / 1e4 + 10 * 30 / 220)


def test_heat_is_what_the_shipped_policy_documents() -> None:
    hp = policy.default().heat
    doc = (REPO / "etc" / "agentlatd.toml").read_text()
    section = doc[doc.index("[heat]"): doc.index("irq_scale =")]
    for vec in HEAT_SOFTIRQS:  # every vector the formula sums is named in the shipped doc
        assert vec in section
    prev = snap(0.0, soft={v: [0, 0] for v in VECS}, cpu_times={0: times(idle=0), 1: times(idle=0)})
    cur = snap(1.0, soft={v: [1000, 0] for v in VECS}, cpu_times={0: times(idle=100), 1: times(idle=100)})
    r = compute_rates(prev, cur, hp)
    per_vec = hp.softirq_weight * 1000 / hp.softirq_scale
    assert r.heat[0] == pytest.approx(len(HEAT_SOFTIRQS) * per_vec)  # TIMER, SCHED, RCU... do not count
    assert r.heat[1] == 0.0


def test_heat_weights_come_from_the_policy() -> None:
    hp = HeatPolicy(irq_scale=100.0, irq_weight=2.0, softirq_weight=0.0, time_weight=0.0)
    prev = snap(0.0, irqs={9: [0, 0]}, cpu_times={0: times(), 1: times()})
    cur = snap(1.0, irqs={9: [50, 0]}, soft={"NET_RX": [999, 0]},
               cpu_times={0: times(idle=90, irq=10), 1: times(idle=100)})
    r = compute_rates(prev, cur, hp)
    assert r.heat == {0: pytest.approx(2.0 * 50 / 100), 1: 0.0}


def test_old_softirq_name_counts_as_irq_poll() -> None:
    prev = snap(0.0, cpu_times={0: times(), 1: times()})
    prev.softirqs.counts["BLOCK_IOPOLL"] = (0, 0)  # type: ignore[index]
    cur = snap(1.0, cpu_times={0: times(idle=100), 1: times(idle=100)})
    cur.softirqs.counts["BLOCK_IOPOLL"] = (500, 0)  # type: ignore[index]
    r = compute_rates(prev, cur, HP)
    assert r.heat[0] == pytest.approx(500 / 1e4)


def test_irq_counter_reset_is_omitted_not_negative() -> None:
    prev = snap(0.0, irqs={45: [100, 100], 46: [0, 10]})
    cur = snap(1.0, irqs={45: [5, 150], 46: [0, 30]}, cpu_times={0: times(idle=100), 1: times(idle=100)})
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == ["counter_reset"]
    assert "45" in r.discontinuities[0].detail
    assert 45 not in r.irq_rate  # the whole IRQ: its +50 on cpu1 is not trusted either
    assert r.irq_rate[46] == {1: 20.0}
    assert r.irq_per_cpu == {0: 0.0, 1: 20.0}


def test_unparseable_irq_count_is_a_discontinuity() -> None:
    prev = snap(0.0, irqs={45: [100, 100]})
    cur = snap(1.0, irqs={45: [100, 100]}, cpu_times={0: times(idle=100), 1: times(idle=100)})
    cur.irqs[45] = IrqCounts(b"1x0,100")  # type: ignore[index]
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == ["counter_reset"] and 45 not in r.irq_rate


def test_softirq_reset_on_one_cpu() -> None:
    prev = snap(0.0, soft={"NET_RX": [100, 100]})
    cur = snap(1.0, soft={"NET_RX": [50, 300]}, cpu_times={0: times(idle=100), 1: times(idle=100)})
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == ["counter_reset"]
    assert r.softirq_rate["NET_RX"] == {1: 200.0}
    assert 0 not in r.heat and r.heat[1] == pytest.approx(200 / 1e4)


def test_stat_reset_and_idle_stepping_back() -> None:
    prev = snap(0.0, cpu_times={0: times(user=100, idle=500), 1: times(user=100, idle=500, iowait=9)})
    # cpu0: user went down -> reset; cpu1: idle and iowait stepped back a tick -> not a reset
    cur = snap(1.0, cpu_times={0: times(user=50, idle=600), 1: times(user=150, idle=499, iowait=8, irq=50)})
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == ["counter_reset"]
    assert "/proc/stat CPU 0" in r.discontinuities[0].detail
    assert 0 not in r.irq_time_share and 0 not in r.heat
    assert r.irq_time_share[1] == pytest.approx(50 / 100)


def test_no_tick_elapsed_is_a_clock_discontinuity() -> None:
    prev = snap(0.0)
    cur = snap(0.001)
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == ["clock"]
    assert r.irq_time_share == {} and r.heat == {}
    assert r.irq_per_cpu == {0: 0.0, 1: 0.0}


@pytest.mark.parametrize("dt", [0.0, -1.0, math.nan, math.inf])
def test_non_positive_interval_gives_no_rates(dt: float) -> None:
    prev = snap(5.0, irqs={1: [1, 1]})
    cur = snap(5.0 + dt, irqs={1: [9, 9]})
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == ["clock"]
    assert r.irq_per_cpu == {} and r.irq_rate == {} and r.softirq_rate == {} and r.heat == {}


def test_cpu_hotplug_in_stat() -> None:
    prev = snap(0.0, cpu_times={0: times(), 1: times(), 2: times()}, cpus=(0, 1, 2))
    cur = snap(1.0, cpu_times={0: times(idle=100), 1: times(idle=100), 3: times(idle=100)}, cpus=(0, 1, 2))
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == ["cpu_hotplug"]
    assert "CPU 2 gone" in r.discontinuities[0].detail and "CPU 3 new" in r.discontinuities[0].detail
    assert set(r.irq_time_share) == {0, 1}
    assert set(r.heat) == {0, 1}


def test_irq_columns_change_are_realigned_by_cpu() -> None:
    # /proc/interrupts columns are online CPUs: CPU1 went offline between the ticks
    prev = snap(0.0, irqs={45: [10, 20, 30], 46: [1, 1, 1]}, cpus=(0, 1, 2))
    cur = snap(1.0, irqs={45: [15, 30], 46: [1, 4]}, cpus=(0, 1, 2), irq_cpus=(0, 2),
               cpu_times={0: times(idle=100), 1: times(idle=100), 2: times(idle=100)})
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == ["cpu_hotplug"]
    assert r.irq_rate[45] == {0: 5.0} and r.irq_rate[46] == {2: 3.0}
    assert r.irq_per_cpu == {0: 5.0, 2: 3.0}
    assert set(r.heat) == {0, 2}


def test_softirq_columns_change_are_realigned_by_cpu() -> None:
    prev = snap(0.0, soft={"NET_RX": [1, 2, 3]}, cpus=(0, 1, 2))
    cur = snap(1.0, soft={"NET_RX": [11, 23]}, cpus=(0, 1, 2), soft_cpus=(0, 2),
               cpu_times={0: times(idle=100), 1: times(idle=100), 2: times(idle=100)})
    r = compute_rates(prev, cur, HP)
    assert "cpu_hotplug" in kinds(r)
    assert r.softirq_rate["NET_RX"] == {0: 10.0, 2: 20.0}


def test_changed_irq_set() -> None:
    prev = snap(0.0, irqs={45: [1, 1], 46: [1, 1]})
    cur = snap(1.0, irqs={46: [2, 1], 47: [5, 5]}, cpu_times={0: times(idle=100), 1: times(idle=100)})
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == ["irq_set_changed"]
    d = r.discontinuities[0].detail
    assert "IRQ 45 gone" in d and "IRQ 47 new" in d
    assert set(r.irq_rate) == {46}
    assert r.irq_per_cpu == {0: 1.0, 1: 0.0}


def test_fresh_hint_is_trusted_only_for_its_base() -> None:
    prev = snap(0.0, irqs={45: [1, 1], 46: [1, 1]})
    # 46 changed but the reader's hint says only 45 was read: with base_t = prev.t the
    # hint is the reader's promise; with another base it is ignored
    cur_ok = snap(1.0, irqs={45: [3, 1]}, fresh=frozenset({45}), base_t=0.0,
                  cpu_times={0: times(idle=100), 1: times(idle=100)})
    cur_ok.irqs[46] = prev.irqs[46]  # type: ignore[index]  # as the reader does: the same object
    assert compute_rates(prev, cur_ok, HP).irq_rate == {45: {0: 2.0}, 46: {}}
    cur_other = snap(1.0, irqs={45: [3, 1], 46: [1, 9]}, fresh=frozenset({45}), base_t=-7.0,
                     cpu_times={0: times(idle=100), 1: times(idle=100)})
    assert compute_rates(prev, cur_other, HP).irq_rate == {45: {0: 2.0}, 46: {1: 8.0}}


def test_old_kernel_without_irq_times_has_no_share_and_no_heat() -> None:
    prev = snap(0.0, cpu_times={0: CpuTimes(1, 2, 3, 4), 1: CpuTimes(1, 2, 3, 4)})
    cur = snap(1.0, cpu_times={0: CpuTimes(11, 2, 3, 104), 1: CpuTimes(11, 2, 3, 104)})
    r = compute_rates(prev, cur, HP)
    assert kinds(r) == []
    assert r.irq_time_share == {} and r.steal_share == {} and r.heat == {}


_counts = st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 50), st.tuples(_counts, _counts), max_size=6),
       st.dictionaries(st.sampled_from(VECS), st.tuples(_counts, _counts), max_size=4),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=16, max_size=16),
       st.floats(-1, 5, allow_nan=False))
def test_rates_are_never_negative(
    irqs: dict[int, tuple[list[int], list[int]]],
    soft: dict[str, tuple[list[int], list[int]]],
    tv: list[tuple[int, int]],
    dt: float,
) -> None:
    p_t = {c: CpuTimes(*(a for a, _ in tv[c * 8:(c + 1) * 8])) for c in (0, 1)}
    c_t = {c: CpuTimes(*(b for _, b in tv[c * 8:(c + 1) * 8])) for c in (0, 1)}
    prev = snap(100.0, irqs={k: a for k, (a, _) in irqs.items()}, soft={k: a for k, (a, _) in soft.items()},
                cpu_times=p_t)
    cur = snap(100.0 + dt, irqs={k: b for k, (_, b) in irqs.items()},
               soft={k: b for k, (_, b) in soft.items()}, cpu_times=c_t)
    r = compute_rates(prev, cur, HP)
    values = [*r.irq_per_cpu.values(), *(v for m in r.irq_rate.values() for v in m.values()),
              *(v for m in r.softirq_rate.values() for v in m.values()), *r.irq_time_share.values(),
              *r.steal_share.values(), *r.heat.values()]
    assert all(v >= 0 and math.isfinite(v) for v in values)
    assert all(0 <= v <= 1 for v in (*r.irq_time_share.values(), *r.steal_share.values()))
    if not dt > 0:
        assert kinds(r) == ["clock"]


def test_model_stays_pure() -> None:
    """model/rates.py does no IO: no os, io, socket or open (style.md)."""
    tree = ast.parse((REPO / "agentlatd" / "model" / "rates.py").read_text())
    banned = {"os", "io", "socket", "subprocess", "pathlib", "shutil"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & banned
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in banned
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "open"
