"""var/lib/kubelet/cpu_manager_state: CPUs the kubelet's static CPU manager
hands exclusively to containers of Guaranteed pods.

Format (kubernetes pkg/kubelet/cm/cpumanager/state/checkpoint.go,
CPUManagerCheckpoint / CPUManagerCheckpointV1), JSON:
  v2  {"policyName":"static","defaultCpuSet":"0-1,5-7",
       "entries":{"<pod UID>":{"<container name>":"2-4"}},"checksum":1234}
  v1  {"policyName":"static","defaultCpuSet":"0-1","entries":{"<container id>":"2-4"},
       "checksum":1234}
policyName "none" has no entries. Every CPU named in an entry is exclusive to
that container: the kubelet removed it from defaultCpuSet, and with
reservedSystemCPUs/strict-cpu-reservation nothing else is scheduled there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root

PATH = "var/lib/kubelet/cpu_manager_state"
MAX_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Assignment:
    pod_uid: str  # "" in the v1 format (keyed by container id)
    container: str  # container name (v2) or container id (v1)
    cpus: CpuSet


@dataclass(frozen=True, slots=True)
class CpuManagerState:
    policy: str
    default: CpuSet
    assignments: tuple[Assignment, ...]

    @property
    def exclusive(self) -> CpuSet:
        out = CpuSet()
        for a in self.assignments:
            out |= a.cpus
        return out


class StateError(ValueError):
    pass


def _cpus(v: object, where: str) -> CpuSet:
    if not isinstance(v, str):
        raise StateError(f"{where}: a CPU list string expected, got {type(v).__name__}")
    try:
        return CpuSet.parse_list(v)
    except CpuSetError as e:
        raise StateError(f"{where}: {e}") from e


def parse_cpu_manager_state(text: str) -> CpuManagerState:
    """The checkpoint's JSON -> its assignments; StateError when it is not one."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise StateError(f"not JSON: {e}") from e
    if not isinstance(d, dict) or not isinstance(d.get("policyName"), str):
        raise StateError("no policyName: not a CPU manager checkpoint")
    entries = d.get("entries")
    if entries is None:
        entries = {}
    if not isinstance(entries, dict):
        raise StateError("entries is not an object")
    out: list[Assignment] = []
    for key, v in sorted(entries.items()):
        if isinstance(v, dict):  # v2: pod UID -> container name -> cpus
            for name, cpus in sorted(v.items()):
                out.append(Assignment(str(key), str(name), _cpus(cpus, f"entries.{key}.{name}")))
        else:  # v1: container id -> cpus
            out.append(Assignment("", str(key), _cpus(v, f"entries.{key}")))
    default = d.get("defaultCpuSet", "")
    return CpuManagerState(d["policyName"], _cpus(default, "defaultCpuSet") if default
                           else CpuSet(), tuple(a for a in out if a.cpus))


def read_cpu_manager_state(root: Root) -> CpuManagerState | None:
    """The node's checkpoint; None when there is none (no kubelet) or it is unreadable."""
    if not root.exists(PATH):
        return None
    try:
        text = root.read_text(PATH)
        if len(text) > MAX_BYTES:
            return None
        return parse_cpu_manager_state(text)
    except (KernelError, StateError):
        return None
