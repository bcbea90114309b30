"""The tick that sees a CPU hotplug manages again what the tick before it yielded (the
kernel's and drivers' own re-spread, not another writer), however long that tick took."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from agentlatd import policy as policy_mod
from agentlatd.apply.engine import Drift, DriftAction, Engine
from agentlatd.sysfs.root import Root
from agentlatd.tick import TickInput
from agentlatd.tuner import Tuner


@dataclass
class Entry:
    knob: str


@dataclass
class DriftingEngine:
    """The three calls Tuner._drift makes, recorded (the engine's own drift and unyield
    are tested against real files in tests/apply)."""

    drift: list[Drift] = field(default_factory=list)
    unyielded: list[tuple[str, str]] = field(default_factory=list)
    modes: list[str | None] = field(default_factory=list)

    def entries(self) -> list[Entry]:
        return [Entry("irq.affinity")]

    def check_drift(self, mode: str | None = None) -> list[Drift]:
        self.modes.append(mode)
        out, self.drift = self.drift, []
        return out

    def unyield(self, keys: Iterable[tuple[str, str]]) -> int:
        self.unyielded += list(keys)
        return len(self.unyielded)


def test_hotplug_after_a_slow_tick_unyields_the_kernels_respread() -> None:
    eng = DriftingEngine([Drift("irq.affinity", "38", "0", "3", DriftAction.YIELDED)])
    pol = policy_mod.default()
    tuner = Tuner(Root("/nonexistent"), cast(Engine, eng), TickInput(pol))
    interval = 0.2
    # tick 2 (after the start tick): the driver's re-spread is seen as drift and yielded
    tuner.seq = 1
    assert [d.target for d in tuner._drift(False, 100.0, interval, "yield")] == ["38"]
    # tick 3, 2.5 s later (a rescan and an apply under TCG): the counters show the hotplug
    tuner.seq = 2
    assert tuner._drift(True, 102.5, interval, "yield") == ()
    assert eng.unyielded == [("irq.affinity", "38")]


def test_respread_while_the_hotplug_runs_is_written_back_not_yielded() -> None:
    eng = DriftingEngine([Drift("irq.affinity", "38", "0-1", "1", DriftAction.REASSERTED)])
    pol = policy_mod.default()
    tuner = Tuner(Root("/nonexistent"), cast(Engine, eng), TickInput(pol))
    tuner.seq = 3
    assert tuner._drift(False, 110.0, 0.2, "yield", running=True) == ()
    assert eng.modes == ["reassert"]  # whatever daemon.drift says
    assert tuner.yields == []
