"""The role of a CPU in the partition (plan/partition.py decides it; plan and
status print it; metrics label by it)."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """What a CPU is for. The values are what `plan --json` and metrics carry.

    Members are listed in the order people read them (`agentlatd plan` groups
    CPU roles in this order).
    """

    COMPLETION = "completion"  # absorbs device IRQs and softirqs
    HOME = "home"  # a quiet CPU an agent is pinned to
    OTHER = "other"  # neither: SMT sibling of a completion CPU, isolated, not named
    OFFLINE = "offline"  # takes no IRQs and runs no tasks
