"""Small pure helpers shared by the plan modules: ordering and queue numbers."""

from __future__ import annotations

import re
from collections.abc import Iterable

from agentlatd.cpuset import CpuSet

_DIGITS = re.compile(r"(\d+)")
_TAIL = re.compile(r"(\d+)$")


def natural_key(s: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders "eth2/rx-10" after "eth2/rx-9" and "45" after "9"."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _DIGITS.split(s) if p)


def queue_number(label: str | None) -> int | None:
    """The trailing number of a queue label: "rx-3" -> 3, "q12" -> 12, "admin" -> None."""
    if not label:
        return None
    m = _TAIL.search(label)
    return int(m.group(1)) if m else None


def ordinals(numbers: Iterable[int]) -> dict[int, int]:
    """Rank of each distinct number: {1, 2, 5} -> {1: 0, 2: 1, 5: 2}.

    Queues are spread by rank, not by raw number, so that drivers counting
    from 1 (nvme0q1..) or with gaps still start on the first completion CPU.
    """
    return {n: i for i, n in enumerate(sorted(set(numbers)))}


def nr_cpu_ids(possible: Iterable[int]) -> int:
    """Width of the kernel's CPU masks: highest possible CPU + 1 (nr_cpu_ids)."""
    cpus = list(possible)
    return (max(cpus) + 1) if cpus else 1


def node_phrase(node: int | None, cpus: CpuSet, by_node_has: bool) -> str:
    """ "completion CPUs 0,32 of node 0" / "completion CPUs 0,32 (all nodes)"."""
    word = "CPU" if len(cpus) == 1 else "CPUs"
    if node is not None and by_node_has:
        return f"completion {word} {cpus} of node {node}"
    return f"completion {word} {cpus}"
