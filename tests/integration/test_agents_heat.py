"""A home CPU turns hot: its agents move to a cooler home CPU, with hysteresis.

This host has 2 CPUs, so the policy makes both of them home CPUs (cpus.home =
"0-1", no completion CPU), and heat is injected through a heat source
(Daemon(heat_source=...), installed by tests/support/launch.py --heat-file)
instead of flooding a CPU with real NET_RX softirqs.
"""

from __future__ import annotations

import json
import pathlib
import time

from agentshelpers import (
    Agent,
    all_on,
    daemon,
    needs_2cpus,
    needs_root,
    policy_text,
    thread_affinities,
    wait_ticks,
    wait_until,
    workdir,
)

pytestmark = [needs_root, needs_2cpus]


def set_heat(path: pathlib.Path, heat: dict[int, float]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(k): v for k, v in heat.items()}))
    tmp.replace(path)


def test_hot_home_cpu_moves_every_thread_with_hysteresis() -> None:
    with workdir() as d:
        heat = d / "heat.json"
        set_heat(heat, {0: 0.0, 1: 0.0})
        pol = policy_text(completion="", home="0-1", hot=0.5, cool=0.2, hot_ticks=2,
                          min_move_interval=0.0)
        with daemon(d, pol, heat_file=heat) as dm, \
                Agent(dm.socket, "planner", nthreads=3) as ag:
            x = ag.ready["home_cpu"]
            assert x in (0, 1)
            y = 1 - x
            assert all_on(ag.pid, str(x))
            assert dm.status()["home_cpus"] == "0-1"

            # x hot for hot_ticks ticks -> the agent moves to y (heat 0 < cool)
            set_heat(heat, {x: 0.9, y: 0.0})
            wait_until(lambda: all_on(ag.pid, str(y)), 10.0, what="moved off the hot CPU")
            row = dm.agents()[0]
            assert row["home_cpu"] == y
            mv = row["last_move"]
            assert mv["from_cpu"] == x and mv["to_cpu"] == y
            assert "hot" in mv["reason"] and f"CPU {y}" in mv["reason"]
            assert f"moved from CPU {x} to CPU {y}" in dm.log

            # hysteresis: y turns hot, but x is only warm (between cool and hot):
            # x is not chosen again, the agent stays on y
            set_heat(heat, {x: 0.3, y: 0.9})
            wait_until(lambda: dm.status()["hot_cpus"] == [y], 5.0, what="y counted hot")
            # three more ticks of each loop, counted (a sleep could end before the daemon
            # ticked on a loaded machine, and the stay-put check would then prove nothing)
            wait_ticks(dm.status, 3)
            assert all_on(ag.pid, str(y)), thread_affinities(ag.pid)
            assert any("below heat.cool" in n for n in dm.status()["notes"])

            # x cools below heat.cool: now it is chosen again
            set_heat(heat, {x: 0.1, y: 0.9})
            wait_until(lambda: all_on(ag.pid, str(x)), 10.0, what="moved back once x cooled")

            # a new thread after the moves is on the current home CPU too
            tid = ag.cmd("rogue")["tid"]
            wait_until(lambda: thread_affinities(ag.pid).get(tid) == str(x), 5.0,
                       what="new thread on the new home CPU")


def test_min_move_interval_keeps_a_just_moved_agent_put() -> None:
    with workdir() as d:
        heat = d / "heat.json"
        set_heat(heat, {0: 0.0, 1: 0.0})
        pol = policy_text(completion="", home="0-1", hot_ticks=1, min_move_interval=2.0)
        with daemon(d, pol, heat_file=heat) as dm, \
                Agent(dm.socket, "planner", nthreads=1) as ag:
            x = ag.ready["home_cpu"]
            y = 1 - x
            time.sleep(2.1)  # registration counts as a placement: let it age
            set_heat(heat, {x: 0.9, y: 0.0})
            wait_until(lambda: all_on(ag.pid, str(y)), 5.0, what="first move")
            moved_at = time.monotonic()
            set_heat(heat, {x: 0.0, y: 0.9})
            wait_until(lambda: all_on(ag.pid, str(x)), 6.0, what="second move")
            assert time.monotonic() - moved_at >= 1.5, "moved again before min_move_interval"
            assert dm.status()["moves"] == 2


def test_agents_spread_over_home_cpus() -> None:
    with workdir() as d:
        pol = policy_text(completion="", home="0-1")
        # equal injected heat: with the host's measured heat, a busy shared machine could
        # make CPU 1 hot and both agents would rightly avoid it (the spread is the subject)
        heat = d / "heat.json"
        set_heat(heat, {0: 0.0, 1: 0.0})
        with daemon(d, pol, heat_file=heat) as dm, Agent(dm.socket, "a", nthreads=1) as a, \
                Agent(dm.socket, "b", nthreads=1) as b:
            assert {a.ready["home_cpu"], b.ready["home_cpu"]} == {0, 1}
            assert len(dm.agents()) == 2
