"""Agents in containers and pods: cgroup files, kubelet checkpoint, container
identity and placement inside a cpuset (pure parts and recorded trees)."""

from __future__ import annotations

import json
import pathlib

import pytest

from agentlatd.agents import containers, pidns
from agentlatd.cpuset import CpuSet
from agentlatd.model.container import identify
from agentlatd.model.layout import CpuLayout
from agentlatd.plan.agents import choose_home_within, victim_affinity
from agentlatd.policy import HeatPolicy
from agentlatd.sample import cgroup, kubelet
from agentlatd.sysfs.root import Root

UID = "0b7632a2-a56e-4278-987a-22de18008dbe"
CID = "0bc5eac79e3ae7a0c2651f14722aa10fa333eb2325c2ca97da33aa284cda81b0"


# -- proc/PID/cgroup and mountinfo ---------------------------------------------------
def test_parse_proc_cgroup_v1_and_v2_lines() -> None:
    text = ("12:cpuset:/kubepods/burstable/pod" + UID + "/" + CID + "\n"
            "4:memory:/x\n1:name=systemd:/system.slice\n0::/system.slice/agent.service\n"
            "garbage\n")
    lines = cgroup.parse_proc_cgroup(text)
    assert lines[0] == cgroup.CgroupLine(12, ("cpuset",), "/kubepods/burstable/pod" + UID
                                         + "/" + CID)
    assert lines[-1] == cgroup.CgroupLine(0, (), "/system.slice/agent.service")
    assert len(lines) == 4


def test_parse_mountinfo_finds_v2_and_v1_cpuset() -> None:
    # lines as this host and a systemd v2 host print them (proc.rst 3.5)
    text = ("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
            "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
            "29 22 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n")
    h = cgroup.hierarchies(cgroup.parse_mountinfo_cgroups(text))
    assert h.v1_cpuset is not None and h.v1_cpuset.mount_point == "sys/fs/cgroup/cpuset"
    assert h.v2 is not None and h.v2.mount_point == "sys/fs/cgroup/unified"


def _tree(tmp: pathlib.Path, files: dict[str, str]) -> Root:
    for rel, text in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return Root(str(tmp))


def test_v2_cpuset_walks_up_to_the_nearest_cgroup_with_the_controller(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path, {
        "proc/self/mountinfo": "29 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        "proc/42/cgroup": "0::/agents.slice/a.service\n",
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu\n",
        "sys/fs/cgroup/cpuset.cpus.effective": "0-7\n",
        "sys/fs/cgroup/agents.slice/cpuset.cpus.effective": "2-3\n",
        "sys/fs/cgroup/agents.slice/a.service/cgroup.procs": "42\n",
    })
    pc = cgroup.read_cpuset(root, 42)
    assert pc == cgroup.ProcCpuset(2, "/agents.slice/a.service", CpuSet({2, 3}))


def test_v1_cpuset_prefers_effective_cpus(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path, {
        "proc/self/mountinfo": "34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n",
        "proc/7/cgroup": "3:cpuset:/box\n0::/\n",
        "sys/fs/cgroup/cpuset/box/cpuset.cpus": "1-3\n",
        "sys/fs/cgroup/cpuset/box/cpuset.effective_cpus": "1\n",
    })
    pc = cgroup.read_cpuset(root, 7)
    assert pc is not None and pc.version == 1 and pc.cpus == CpuSet({1})


def test_exclusive_cgroups_v2_partitions_and_v1_cpu_exclusive(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path, {
        "proc/self/mountinfo": ("29 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
                                "34 31 0:31 / /cpuset1 rw - cgroup cgroup rw,cpuset\n"),
        # the root cgroup has no partition file; a valid one, an invalid one, a member
        "sys/fs/cgroup/cpuset.cpus.effective": "0-7\n",
        "sys/fs/cgroup/rt.slice/cpuset.cpus.partition": "isolated\n",
        "sys/fs/cgroup/rt.slice/cpuset.cpus.effective": "6-7\n",
        "sys/fs/cgroup/bad.slice/cpuset.cpus.partition": "root invalid (Cpu list in "
                                                         "cpuset.cpus not exclusive)\n",
        "sys/fs/cgroup/bad.slice/cpuset.cpus.effective": "5\n",
        "sys/fs/cgroup/m.slice/cpuset.cpus.partition": "member\n",
        "sys/fs/cgroup/m.slice/cpuset.cpus.effective": "0-4\n",
        # v1: the top cpuset always reads cpu_exclusive 1 and is not a holder
        "cpuset1/cpuset.cpu_exclusive": "1\n",
        "cpuset1/cpuset.cpus": "0-7\n",
        "cpuset1/rt/cpuset.cpu_exclusive": "1\n",
        "cpuset1/rt/cpuset.cpus": "4\n",
        "cpuset1/shared/cpuset.cpu_exclusive": "0\n",
        "cpuset1/shared/cpuset.cpus": "0-3\n",
    })
    ex = cgroup.exclusive_cgroups(root, cgroup.read_hierarchies(root))
    assert [(e.path, e.cpus.to_list(), e.kind) for e in ex] == [
        ("/rt", "4", "cpu_exclusive"), ("/rt.slice", "6-7", "partition isolated")]


# -- kubelet cpu_manager_state --------------------------------------------------------
def test_kubelet_checkpoint_v2_and_v1() -> None:
    # kubernetes pkg/kubelet/cm/cpumanager/state/checkpoint.go (CPUManagerCheckpoint{,V1})
    v2 = json.dumps({"policyName": "static", "defaultCpuSet": "0-1,5-7",
                     "entries": {UID: {"app": "2-3", "sidecar": "4"}}, "checksum": 1234})
    st = kubelet.parse_cpu_manager_state(v2)
    assert st.policy == "static" and st.default == CpuSet.parse_list("0-1,5-7")
    assert st.exclusive == CpuSet({2, 3, 4})
    assert [(a.pod_uid, a.container) for a in st.assignments] == [(UID, "app"), (UID, "sidecar")]
    v1 = json.dumps({"policyName": "static", "defaultCpuSet": "0-1",
                     "entries": {CID: "2-3"}, "checksum": 1})
    st1 = kubelet.parse_cpu_manager_state(v1)
    assert st1.assignments[0].pod_uid == "" and st1.assignments[0].container == CID
    none = kubelet.parse_cpu_manager_state('{"policyName":"none","defaultCpuSet":"","checksum":1}')
    assert none.assignments == () and not none.exclusive


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"policyName":"static","entries":[]}',
                                  '{"policyName":"static","entries":{"x":"9-2"}}',
                                  '{"policyName":"static","entries":{"x":{"c":5}}}'])
def test_kubelet_checkpoint_garbage_is_an_error_not_a_crash(text: str) -> None:
    with pytest.raises(kubelet.StateError):
        kubelet.parse_cpu_manager_state(text)


# -- container identity ---------------------------------------------------------------
@pytest.mark.parametrize(("path", "pod", "cid", "runtime"), [
    # kubelet systemd driver + containerd (UID dashes escaped to '_')
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
     + UID.replace("-", "_") + ".slice/cri-containerd-" + CID + ".scope", UID, CID,
     "containerd"),
    # Guaranteed pod, CRI-O
    ("/kubepods.slice/kubepods-pod" + UID.replace("-", "_") + ".slice/crio-" + CID + ".scope",
     UID, CID, "cri-o"),
    # CRI-O's conmon is not the container
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
     + UID.replace("-", "_") + ".slice/crio-conmon-" + CID + ".scope", UID, "", ""),
    # kubelet cgroupfs driver
    ("/kubepods/besteffort/pod" + UID + "/" + CID, UID, CID, ""),
    # Docker, systemd and cgroupfs drivers; Podman
    ("/system.slice/docker-" + CID + ".scope", "", CID, "docker"),
    ("/docker/" + CID, "", CID, "docker"),
    ("/machine.slice/libpod-" + CID + ".scope", "", CID, "podman"),
    # a plain service
    ("/system.slice/agent.service", "", "", ""),
    ("/", "", "", ""),
])
def test_identify_container_from_real_cgroup_paths(path: str, pod: str, cid: str,
                                                   runtime: str) -> None:
    got = identify(path)
    assert (got.pod_uid, got.container_id, got.runtime) == (pod, cid, runtime)
    assert got.short_id == cid[:12]


# -- holders ----------------------------------------------------------------------
def test_holders_own_their_members_only() -> None:
    inside = identify("/rt.slice/agent.service")
    outside = identify("/system.slice/x.service")
    pod = identify("/kubepods/pod" + UID + "/" + CID)
    hs = (containers.Holder(CpuSet({6, 7}), "cgroup partition isolated", cgroup="/rt.slice"),
          containers.Holder(CpuSet({2, 3}), "kubelet", pod_uid=UID, container="app"))
    assert containers.reserved_for(hs, inside) == CpuSet({2, 3})
    assert containers.reserved_for(hs, outside) == CpuSet({2, 3, 6, 7})
    assert containers.reserved_for(hs, pod) == CpuSet({6, 7})
    # "/rt.slicex" is not below "/rt.slice"
    assert containers.reserved_for(hs, identify("/rt.slicex/a")) == CpuSet({2, 3, 6, 7})


# -- placement inside a cpuset ------------------------------------------------------------
POL = HeatPolicy()
LAYOUT = CpuLayout(home=CpuSet({2, 3, 4, 5}), completion=CpuSet({0, 1}),
                   quiet_order=(2, 3, 4, 5), online=CpuSet(range(8)))


def test_home_cpu_inside_the_cpuset() -> None:
    ch = choose_home_within(LAYOUT, {}, {}, POL, allowed=CpuSet({4, 5, 6}))
    assert ch.cpu == 4 and not ch.fallback and ch.note == ""


def test_regression_home_cpu_outside_container_cpuset_gave_einval() -> None:
    # before: choose_home ignored the cpuset and picked CPU 2, where the
    # container may not run (sched_setaffinity EINVAL on cgroup v1)
    ch = choose_home_within(LAYOUT, {0: 0.9, 1: 0.1, 6: 0.5, 7: 0.0}, {}, POL,
                            allowed=CpuSet({0, 1}))
    assert ch.fallback and ch.cpu == 1  # the quieter of the two CPUs it may use
    assert "no home CPU" in ch.note and "CPU 1" in ch.note


def test_regression_home_cpu_given_away_from_a_kubelet_exclusive_pod() -> None:
    # before: a home CPU the kubelet assigned exclusively to a Guaranteed pod
    # was handed to another agent
    ch = choose_home_within(LAYOUT, {}, {}, POL, allowed=None, reserved=CpuSet({2, 3}))
    assert ch.cpu == 4
    ch = choose_home_within(LAYOUT, {}, {}, POL, allowed=None, reserved=CpuSet({2, 3, 4, 5}))
    assert ch.cpu is None and "held exclusively" in ch.note
    ch = choose_home_within(LAYOUT, {}, {}, POL, allowed=CpuSet({2, 6}), reserved=CpuSet({2}))
    assert ch.fallback and ch.cpu == 6 and "held exclusively" in ch.note
    ch = choose_home_within(LAYOUT, {}, {}, POL, allowed=CpuSet({2}), reserved=CpuSet({2}))
    assert ch.cpu is None and "left where it is" in ch.note


def test_regression_tasks_of_an_exclusive_pod_were_victims() -> None:
    # the kubelet assigned CPUs 2-3 to a Guaranteed pod started after an agent
    # got exclusive home CPU 3 (the kubelet knows nothing of agentlatd): before,
    # the pod's tasks were "victims" moved to CPU 2 until the agent moved away;
    # they stay where the kubelet put them
    assert victim_affinity(CpuSet({2, 3}), CpuSet({3})) == CpuSet({2})
    assert victim_affinity(CpuSet({2, 3}), CpuSet({3}), CpuSet({2, 3})) is None
    # a task that can run elsewhere too is still moved off the home CPU
    assert victim_affinity(CpuSet({0, 3}), CpuSet({3}), CpuSet({2, 3})) == CpuSet({0})


# -- PID namespaces ---------------------------------------------------------------------
def test_parse_nspid() -> None:
    assert pidns.parse_nspid("Name:\tx\nNSpid:\t4242\t7\t1\nPid:\t4242\n") == (4242, 7, 1)
    assert pidns.parse_nspid("Name:\tx\n") == ()
