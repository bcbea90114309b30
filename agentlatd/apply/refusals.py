"""Refusal memory: a knob the kernel refused for good is not tried again every tick.

A change refused as unsupported, invalid or not permitted repeats as long as
the device, driver and value stay the same (kernel/errnos.py), so the engine
holds it back, with the same value, until forget() (the daemon calls it at each
machine rescan: a driver, link or kernel changed). Without it every tick
repeats the failing write and its journal round trip.
"""

from __future__ import annotations

import dataclasses

from agentlatd.apply.knobio import KnobIO
from agentlatd.apply.reports import KnobResult
from agentlatd.kernel.errnos import ErrClass
from agentlatd.plan.changes import Change

# Failures that repeat as long as the device, driver and value stay the same (errnos.py).
_HOLD_BACK = frozenset({ErrClass.UNSUPPORTED, ErrClass.INVALID, ErrClass.DENIED})
_HELD = " (not tried again until the next machine rescan)"


class Refusals:
    def __init__(self, io: KnobIO) -> None:
        self._io = io
        # (knob, target) -> (the value refused, the result)
        self._refused: dict[tuple[str, str], tuple[str, KnobResult]] = {}

    def hold(self, c: Change, r: KnobResult | None) -> None:
        """Remember `r` when it refuses `c` for good."""
        # device and kernel knobs only: a process knob (live_only: task.*) names threads
        # that come and go between ticks, and the agent applier retries them itself
        knob = self._io.knob(c.knob)
        if r is not None and r.errclass in _HOLD_BACK and knob is not None and not knob.live_only:
            self._refused[c.key] = (c.desired, r)

    def recall(self, c: Change) -> KnobResult | None:
        """The result to report for `c` instead of trying it (None: try it)."""
        held = self._refused.get(c.key)
        if held is None or held[0] != c.desired:
            return None
        r = held[1]
        return dataclasses.replace(
            r, reason=c.reason, message=r.message.removesuffix(_HELD) + _HELD)

    def held(self) -> dict[tuple[str, str], KnobResult]:
        """The knobs held back until the next forget(), with why."""
        return {k: r for k, (_, r) in self._refused.items()}

    def forget(self) -> None:
        self._refused.clear()
