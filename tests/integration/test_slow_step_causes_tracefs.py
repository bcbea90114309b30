"""The known-cause check with bpftrace forced off: the same injected causes, the
same attribution (agentlatd/steps/attribute.py), fed by the tracefs backend
(agentlatd/tools/trace/step_tracefs.py). Runs where bpftrace is not installed too.
Root and gcc needed; everything made is removed."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from agentlatd.steps import attribute as at
from agentlatd.tools.bench import causes

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, loop devices and tracing need root"),
              pytest.mark.skipif(shutil.which("gcc") is None, reason="the probe is built with gcc"),
              pytest.mark.netns]


@pytest.fixture(scope="module")
def tracefs_run() -> dict[str, Any]:
    return causes.run(("c",), ("none", "cpu-hog", "writeback", "slow-tool"), phase_s=1.5,
                      backends=("tracefs",))


# Not in the default run: with the wake chain followed the tracefs trace is 560-590k events
# a run on this 2-core host and scoring takes ~2 of its ~3.6 minutes, and the C agent's
# flood case (not checked here) gave 56.8-91.7 % in four runs (docs/evaluation.md). The hop
# follow itself is checked in the default run by test_step_tracefs_hops.py.
# Run it with `pytest -m slow`.
@pytest.mark.slow
def test_tracefs_backend_blames_the_injected_causes(tracefs_run: dict[str, Any]) -> None:
    assert tracefs_run["teardown_failed"] == []
    [run] = tracefs_run["runs"]
    print(run["table"])
    assert run["backend"] == "tracefs" and run["lost_events"] == 0 and run["ring_missed"] == 0, run
    rows = {r.case: r for r in run["_rows"]}
    for case in ("cpu-hog", "writeback", "slow-tool"):
        r = rows[case]
        # at least 10 slow steps a phase: a quiet host's hog phase gave 15 over 1 ms in
        # 1.5 s (wakeup preemption keeps most short), and longer phases make the scoring
        # outrun the test's 300 s limit
        assert r.steps >= 200 and r.slow >= 10, r
        share = r.checked_share()
        assert share is not None and share >= 0.9, (case, r.to_json())
    assert any(c["cause"] == at.BLOCKED_BLOCK and "dev 7:" in c["who"] for c in rows["writeback"].culprits)
