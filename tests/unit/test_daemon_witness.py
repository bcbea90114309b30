"""The daemon's engine proves its agents' identity with their pidfds.

Its task knobs are bound to the daemon's AgentPidfds (agents/pidfdgate.py),
and that witness to the thread that runs the loop (run() binds it): the
other knobs are the registry's own. What the proof saves on real processes:
tests/integration/test_agents_identity.py.
"""

from __future__ import annotations

import pathlib
import threading

from test_tick import copy_tree

from agentlatd import knobset
from agentlatd import policy as policy_mod
from agentlatd.agents.knobs import TaskKnob
from agentlatd.daemon import Daemon
from agentlatd.kernel.knobnames import KnobName


def test_the_daemons_task_knobs_take_its_agents_pidfds_as_proof(tmp_path: pathlib.Path) -> None:
    tree = copy_tree(tmp_path)
    d = Daemon(policy_mod.default(), root=str(tree), state_dir=str(tmp_path / "state"),
               socket_path=str(tmp_path / "sock"), tune_devices=False)
    try:
        for name in (KnobName.TASK_AFFINITY, KnobName.TASK_NICE, KnobName.TASK_IOPRIO):
            k = d.engine.knob(name)
            assert isinstance(k, TaskKnob) and k.witness is d.witness
            # the registry's own instance, used where no daemon holds pidfds
            # (rollback, a fresh process after a crash), has none
            reg = knobset.REGISTRY[name]
            assert isinstance(reg, TaskKnob) and reg.witness is None
        assert d.engine.knob(KnobName.NET_RPS_CPUS) is knobset.REGISTRY[KnobName.NET_RPS_CPUS]
        # bound to the registry's lookup in the thread that built it; run()
        # binds it again in the thread that runs the loop
        seen: list[bool] = []
        t = threading.Thread(target=lambda: seen.append(d.witness.vouches(1, 0)))
        t.start()
        t.join(10)
        assert seen == [False]
    finally:
        d.engine.close()
