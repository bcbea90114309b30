"""`bench --check`: a distinct exit status when a target is not met."""

from __future__ import annotations

from typing import Any

from agentlatd.commands.bench import check_status
from agentlatd.exitcodes import Exit


def doc(*met: bool) -> dict[str, Any]:
    names = ("p999_D_over_Q", "noise_D_vs_A")
    return {"summary": {"targets": {n: {"met": m} for n, m in zip(names, met, strict=False)}}}


def test_bench_check_exits_3_when_a_target_is_not_met() -> None:
    assert check_status(doc(True, True)) == Exit.OK == 0
    assert check_status(doc(True, False)) == Exit.TARGET_MISSED == 3
    assert check_status(doc()) == Exit.TARGET_MISSED  # nothing measured is not a pass
