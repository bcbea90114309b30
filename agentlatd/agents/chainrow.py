"""What the chain keeper adds to one agent's view, typed (metrics.py reads it).

The JSON row of `agentlatd agents` (ChainKeeper.row) carries the same facts with
more detail for people; metrics take this frozen value instead of reading that
dict back.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MemberState(StrEnum):
    """Where a chain member's placement stands (the "state" of a member in `agentlatd
    agents`, the metrics' agent_chain_members label)."""

    PENDING = "pending"  # found, not placed yet
    PLACED = "placed"  # on its agents' home CPUs
    PARTIAL = "partial"  # some of its threads could not be moved
    UNMOVABLE = "unmovable"  # no agent it serves may move it
    FAILED = "failed"  # the write failed: left where it was


@dataclass(frozen=True, slots=True)
class ChainRow:
    """One agent's completion chain and the guard's refusals."""

    member_states: tuple[MemberState, ...] = ()  # the state of each chain member serving the agent
    refused: tuple[str, ...] = ()  # decisions the do-no-harm guard undid, never retried


NO_CHAIN = ChainRow()
