"""Agents in containers and pods: the CPUs an agent may use, and the CPUs other
workloads hold exclusively.

An agent's home CPU must lie inside its cgroup's effective cpuset
(sample/cgroup.py): sched_setaffinity() outside it fails with EINVAL (cgroup
v1, kernel/cgroup/cpuset.c cpuset_can_attach/sched_setaffinity's
cpuset_cpus_allowed() intersection) or is silently narrowed. CPUs that
another workload holds exclusively are neither a home for any other agent nor
a source of exclusivity "victims":
  - cgroup partitions (v2 cpuset.cpus.partition root/isolated) and v1
    exclusive cpusets (cpuset.cpu_exclusive = 1), held by that cgroup and
    everything below it;
  - the kubelet's static CPU manager assignments (sample/kubelet.py), held by
    that pod (v2 checkpoint) or that container id (v1 checkpoint).
An agent inside such a holder may of course use the holder's CPUs.

The host is rescanned at most every RESCAN_S seconds (cgroup trees of busy
Kubernetes nodes have thousands of directories) and at every registration.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentlatd.cpuset import CpuSet
from agentlatd.errors import KernelError
from agentlatd.model.container import ContainerId, identify
from agentlatd.sample import cgroup, kubelet
from agentlatd.sysfs.root import Root

RESCAN_S = 5.0
MAX_CACHED = 4096  # cgroups whose cpuset is remembered between rescans


@dataclass(frozen=True, slots=True)
class Holder:
    """CPUs held exclusively by one workload."""

    cpus: CpuSet
    source: str  # "cgroup partition root" | "cgroup cpu_exclusive" | "kubelet"
    cgroup: str = ""  # holder's cgroup (cgroup holders)
    pod_uid: str = ""  # kubelet v2 checkpoint
    container: str = ""  # kubelet: container name (v2) or container id (v1)

    def owns(self, who: ContainerId) -> bool:
        """Whether the process identified by `who` is (inside) this holder."""
        if self.cgroup:
            return bool(who.cgroup) and cgroup.under(who.cgroup, self.cgroup)
        if self.pod_uid:
            return self.pod_uid == who.pod_uid
        return bool(who.container_id) and self.container == who.container_id

    def describe(self) -> str:
        if self.cgroup:
            return f"{self.source} {self.cgroup}"
        if self.pod_uid:
            return f"kubelet CPU manager: pod {self.pod_uid} container {self.container}"
        return f"kubelet CPU manager: container {self.container}"


def holders_of(excl: tuple[cgroup.ExclusiveCgroup, ...],
               state: kubelet.CpuManagerState | None) -> tuple[Holder, ...]:
    out = [Holder(e.cpus, f"cgroup {e.kind}", cgroup=e.path) for e in excl]
    if state is not None:
        out += [Holder(a.cpus, "kubelet", pod_uid=a.pod_uid, container=a.container)
                for a in state.assignments]
    return tuple(out)


_NO_CPUS = CpuSet()


def reserved_for(holders: tuple[Holder, ...], who: ContainerId | None) -> CpuSet:
    """CPUs held by workloads other than `who` (None: by anyone)."""
    out = _NO_CPUS
    for h in holders:
        if who is None or not h.owns(who):
            out |= h.cpus
    return out


@dataclass(frozen=True, slots=True)
class AgentCgroup:
    """Where an agent lives: its container identity and the CPUs its cpuset allows."""

    ident: ContainerId
    allowed: CpuSet | None  # None: unknown (no cpuset hierarchy readable)
    version: int  # cgroup version the cpuset came from (0: none)


class Scanner:
    """Reads cgroup hierarchies and the kubelet checkpoint through one Root."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.h = cgroup.read_hierarchies(root)
        self.holders: tuple[Holder, ...] = ()
        self.scanned_at: float | None = None
        self._by_cgroup: dict[str, AgentCgroup] = {}  # proc/PID/cgroup text -> its cpuset

    def agent(self, pid: int) -> AgentCgroup | None:
        """The agent's cgroup and cpuset; None when the process is gone.

        The cpuset of a cgroup is read once per rescan (every RESCAN_S, and at
        each tick's forced rescan): agents of one pod or service share it, and
        a registration then costs one read of proc/PID/cgroup, not a walk of
        the hierarchy. A cpuset changed meanwhile is seen at the next rescan,
        as it is for the agents registered already."""
        try:
            text = self.root.read_text(f"proc/{pid}/cgroup", "process")
        except KernelError:
            return None
        ac = self._by_cgroup.get(text)
        if ac is None:
            pc = cgroup.cpuset_of(self.root, cgroup.parse_proc_cgroup(text), self.h)
            ac = AgentCgroup(identify(pc.path), pc.cpus, pc.version)
            if len(self._by_cgroup) >= MAX_CACHED:
                self._by_cgroup.clear()
            self._by_cgroup[text] = ac
        return ac

    def rescan(self, now: float, *, force: bool = False) -> bool:
        """Refresh the exclusive holders; True when they changed."""
        if not force and self.scanned_at is not None and now - self.scanned_at < RESCAN_S:
            return False
        self.scanned_at = now
        self._by_cgroup.clear()
        new = holders_of(cgroup.exclusive_cgroups(self.root, self.h),
                         kubelet.read_cpu_manager_state(self.root))
        changed = new != self.holders
        self.holders = new
        return changed
