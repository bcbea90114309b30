"""What the chain keeper adds to one agent's view, typed (metrics.py reads it).

The JSON row of `agentlatd agents` (ChainKeeper.row) carries the same facts with
more detail for people; metrics take this frozen value instead of reading that
dict back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChainRow:
    """One agent's completion chain and the guard's refusals."""

    member_states: tuple[str, ...] = ()  # the state of each chain member serving the agent
    refused: tuple[str, ...] = ()  # decisions the do-no-harm guard undid, never retried


NO_CHAIN = ChainRow()
