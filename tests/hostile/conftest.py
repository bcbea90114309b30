"""Hostile input and faults: make the shared helpers importable.

The engine helpers (tests/apply/applyhelpers.py: fixture copies, FaultRoot,
netns with veths, the CLI) and the agent helpers (tests/integration/
agentshelpers.py: a real daemon on a temp socket with a policy that steers
nothing on the host) are reused, not copied.
"""

from __future__ import annotations

import pathlib
import sys

_TESTS = pathlib.Path(__file__).resolve().parents[1]
for _d in (_TESTS / "hostile", _TESTS / "apply", _TESTS / "integration"):
    if str(_d) not in sys.path:
        sys.path.insert(0, str(_d))
