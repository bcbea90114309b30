"""Which container and pod a process belongs to, from its cgroup path (pure).

The cgroup path (proc/PID/cgroup) is the only identity the kernel gives; the
runtimes and the kubelet write theirs into it:

  kubelet, systemd driver   /kubepods.slice/kubepods-burstable.slice/
                            kubepods-burstable-pod<UID, '-' -> '_'>.slice/...
                            (Guaranteed pods: kubepods-pod<UID>.slice directly)
                            kubernetes pkg/kubelet/cm/cgroup_manager_linux.go
                            CgroupName.ToSystemd(), escapeSystemdCgroupName()
  kubelet, cgroupfs driver  /kubepods/burstable/pod<UID>/<container id>
                            (same file, CgroupName.ToCgroupfs())
  containerd (CRI)          cri-containerd-<64 hex>.scope under the pod slice
                            (cgroupsPath "<slice>:cri-containerd:<id>", which
                            runc's systemd driver turns into "<prefix>-<id>.scope")
  CRI-O                     crio-<64 hex>.scope (its conmon: crio-conmon-<id>.scope)
  Docker                    docker-<64 hex>.scope (systemd), /docker/<64 hex> (cgroupfs)
  Podman                    libpod-<64 hex>.scope, libpod-conmon-<id>.scope
Seen in the field, e.g. OpenShift's e2e tests ("kubepods-burstable-pod0b7632a2_
a56e_4278_987a_22de18008dbe.slice/crio-conmon-0bc5...scope") and containerd
paths in elastic/beats' add_kubernetes_metadata docs ("cri-containerd-<id>.scope").

Metric labels carry the pod UID and the first 12 hex digits of the container
id (docker ps' short id): both bounded by the number of agents with series of
their own (metrics.max_agents), never by the number of containers on the node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD_RE = re.compile(r"(?:^|[-/])pod(" + _UID + r")(?:\.slice)?(?:/|$)")
_SCOPE_RE = re.compile(r"^(docker|cri-containerd|crio|libpod)-(conmon-)?([0-9a-f]{64})\.scope$")
_BARE_RE = re.compile(r"^[0-9a-f]{64}$")
_RUNTIME = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o",
            "libpod": "podman"}
SHORT_ID = 12


@dataclass(frozen=True, slots=True)
class ContainerId:
    """A process's cgroup and what its path says about the container/pod."""

    cgroup: str = ""
    pod_uid: str = ""  # with dashes, as `kubectl get pod -o jsonpath={.metadata.uid}`
    container_id: str = ""  # 64 hex digits
    runtime: str = ""  # docker | containerd | cri-o | podman | "" (cgroupfs driver: unknown)

    @property
    def short_id(self) -> str:
        return self.container_id[:SHORT_ID]

    def to_json(self) -> dict[str, Any]:
        return {"cgroup": self.cgroup, "pod_uid": self.pod_uid or None,
                "container_id": self.container_id or None, "runtime": self.runtime or None}


def identify(cgroup: str) -> ContainerId:
    """The container identity in cgroup path `cgroup` (fields "" when the path has none)."""
    pod = ""
    m = _POD_RE.search(cgroup)
    if m:
        pod = m.group(1).replace("_", "-")
    cid = runtime = ""
    for part in reversed([p for p in cgroup.split("/") if p]):
        s = _SCOPE_RE.match(part)
        if s:
            if s.group(2):  # a runtime monitor (conmon), not the container itself
                break
            cid, runtime = s.group(3), _RUNTIME[s.group(1)]
            break
        if _BARE_RE.match(part):
            cid = part
            parent = cgroup.rstrip("/").rsplit("/", 2)
            if len(parent) == 3 and parent[1] == "docker":
                runtime = "docker"
            break
        if part.endswith(".slice") or part.startswith("pod"):
            break
    return ContainerId(cgroup, pod, cid, runtime)
