"""CPU partition: completion/home split on synthetic topologies (agentlatd.plan.partition)."""

from __future__ import annotations

import dataclasses

import plan_synth as synth
import pytest

from agentlatd.cpuset import CpuSet
from agentlatd.plan.partition import Partition, partition
from agentlatd.policy import CpusPolicy


def _split(topo: synth.Topology, devices: list[synth.Device], **kw: object) -> Partition:
    return partition(topo, devices, dataclasses.replace(CpusPolicy(), **kw))  # type: ignore[arg-type]


def _roles(p: Partition) -> dict[int, str]:
    return {r.cpu: r.role for r in p.roles}


def _reason(p: Partition, cpu: int) -> str:
    return next(r.reason for r in p.roles if r.cpu == cpu)


def _server_devices(topo: synth.Topology, node: int | None = 0) -> list[synth.Device]:
    eth, _ = synth.nic("ens1f0", node, 75, 16, topo.possible)
    nv, _ = synth.nvme("nvme0", node, 100, topo)
    return [eth, *nv]


S = CpuSet.parse_list


def test_server_takes_both_threads_of_the_lowest_core_on_the_device_node() -> None:
    topo = synth.topology(sockets=2, cores=16, threads=2)  # cpuN and cpuN+32 share a core
    p = _split(topo, _server_devices(topo))
    assert p.completion == S("0,32")
    assert p.home == S("1-31,33-63")
    assert p.by_node == {0: S("0,32")}
    assert "node 0" in _reason(p, 0) and "ens1f0, nvme0" in _reason(p, 0)
    assert "home CPU on node 1" in _reason(p, 63)
    assert [r.cpu for r in p.roles] == list(range(64))


def test_without_smt_isolation_one_thread_and_its_sibling_stays_home() -> None:
    topo = synth.topology(sockets=2, cores=16, threads=2)
    p = _split(topo, _server_devices(topo), smt_isolation=False)
    assert p.completion == S("0")
    assert 32 in p.home


def test_completion_per_node_takes_whole_cores() -> None:
    topo = synth.topology(sockets=2, cores=16, threads=2)
    assert _split(topo, _server_devices(topo), completion_per_node=2).completion == S("0,32")
    p = _split(topo, _server_devices(topo), completion_per_node=3)
    assert p.completion == S("0-1,32-33")
    assert not p.home & S("0-1,32-33")


def test_completion_share_counts_the_nodes_online_cpus() -> None:
    topo = synth.topology(sockets=2, cores=16, threads=2)
    # node 0 has 32 online CPUs: 0.125 -> 4 CPUs = 2 cores
    p = _split(topo, _server_devices(topo), completion_share=0.125)
    assert p.completion == S("0-1,32-33")
    # float noise must not round 3.0000000000000004 up to 4
    topo30 = synth.topology(cores=30)
    p = _split(topo30, _server_devices(topo30), completion_share=0.1)
    assert p.completion == S("0-2")


def test_a_node_keeps_a_home_cpu_when_the_share_asks_for_everything() -> None:
    topo = synth.topology(sockets=1, cores=4, threads=2)
    p = _split(topo, _server_devices(topo), completion_share=1.0)
    assert p.completion == S("0-2,4-6")
    assert p.home == S("3,7")
    assert any("instead of 8" in n for n in p.notes)


def test_devices_on_two_nodes_get_completion_cpus_on_each() -> None:
    topo = synth.topology(sockets=2, cores=4, threads=2)  # node0: 0-3,8-11 node1: 4-7,12-15
    eth0, _ = synth.nic("eth0", 0, 40, 4, topo.possible)
    eth1, _ = synth.nic("eth1", 1, 50, 4, topo.possible)
    p = _split(topo, [eth0, eth1])
    assert p.by_node == {0: S("0,8"), 1: S("4,12")}
    assert p.completion_for(1) == S("4,12")
    assert p.completion_for(None) == S("0,4,8,12")
    assert p.completion_for(7) == S("0,4,8,12")


def test_unknown_numa_node_falls_back_to_the_first_node() -> None:
    topo = synth.topology(sockets=2, cores=4)
    p = _split(topo, _server_devices(topo, node=None))
    assert p.completion == S("0")
    assert "no device in scope reports a NUMA node" in _reason(p, 0)
    p = _split(topo, [])
    assert p.completion == S("0")
    assert "no device is in scope" in _reason(p, 0)


def test_kernel_isolated_cpus_are_never_completion_nor_home() -> None:
    topo = synth.topology(cores=4, threads=2, isolated=[0, 4], nohz_full=[1])
    p = _split(topo, _server_devices(topo))
    # core 0 = {0,4} is isolated, core 1 = {1,5} has a nohz_full thread: core 2 first
    assert p.completion == S("2,6")
    assert p.home == S("3,5,7")  # 5 is usable: only its sibling 1 is nohz_full
    assert _roles(p)[0] == "other" and "isolated" in _reason(p, 0)
    assert _roles(p)[1] == "other" and "isolated" in _reason(p, 1)


def test_device_node_without_usable_cpus_goes_to_another_node() -> None:
    topo = synth.topology(sockets=2, cores=2, isolated=[2, 3])  # node 1 = 2,3 all isolated
    eth, _ = synth.nic("eth1", 1, 40, 2, topo.possible)
    p = _split(topo, [eth])
    assert p.completion == S("0")
    assert any("node 1, which has no usable CPU" in n for n in p.notes)


def test_single_cpu_host_shares_everything_and_steers_nothing() -> None:
    topo = synth.topology(cores=1)
    p = _split(topo, _server_devices(topo))
    assert p.completion == CpuSet() and p.home == S("0")
    assert not p.steering
    assert "only usable CPU" in _reason(p, 0)
    assert any("no IRQ, RPS or XPS steering" in n for n in p.notes)


def test_all_cpus_isolated_gives_no_home_and_says_so() -> None:
    topo = synth.topology(cores=2, isolated=[0, 1])
    p = _split(topo, [])
    assert p.completion == CpuSet() and p.home == CpuSet()
    assert any("No usable CPU" in n for n in p.notes)


def test_two_cpu_host_one_completion_one_home() -> None:
    topo = synth.topology(cores=2)
    p = _split(topo, _server_devices(topo))
    assert (p.completion, p.home) == (S("0"), S("1"))


def test_two_thread_host_keeps_the_sibling_as_home_and_says_why() -> None:
    topo = synth.topology(cores=1, threads=2, enumeration="adjacent")
    p = _split(topo, _server_devices(topo))
    assert (p.completion, p.home) == (S("0"), S("1"))
    assert "kept although an SMT sibling" in _reason(p, 1)
    assert any("besides the SMT siblings" in n for n in p.notes)


def test_cloud_vm_with_an_offline_cpu() -> None:
    topo = synth.topology(cores=2, threads=2, enumeration="adjacent", offline=[3])
    p = _split(topo, _server_devices(topo, node=None))
    assert p.completion == S("0-1")
    assert p.home == S("2")
    assert _roles(p)[3] == "offline"


def test_explicit_completion_drops_unknown_and_offline_cpus_with_a_note() -> None:
    topo = synth.topology(cores=4, offline=[3])
    p = _split(topo, [], completion="0,3,99")
    assert p.completion == S("0")
    assert any("99" in n and "does not have" in n for n in p.notes)
    assert any("offline CPUs 3" in n for n in p.notes)
    assert "named by cpus.completion" in _reason(p, 0)


def test_explicit_completion_with_no_online_cpu_falls_back_to_auto() -> None:
    topo = synth.topology(cores=4, offline=[3])
    p = _split(topo, _server_devices(topo), completion="3")
    assert p.completion == S("0")
    assert any("chosen automatically" in n for n in p.notes)


def test_explicit_home_is_respected_and_auto_completion_avoids_it() -> None:
    topo = synth.topology(cores=8)
    p = _split(topo, _server_devices(topo), home="0-3")
    assert p.home == S("0-3")
    assert p.completion == S("4")
    assert _roles(p)[5] == "other" and "not named by cpus.home" in _reason(p, 5)


def test_explicit_completion_covering_a_node_keeps_a_sibling_home() -> None:
    topo = synth.topology(cores=2, threads=2)  # cores {0,2} {1,3}
    p = _split(topo, [], completion="0-1")
    assert p.completion == S("0-1")
    assert p.home == S("2")
    assert any("keeps CPU 2" in n for n in p.notes)


def test_explicit_lists_may_name_isolated_cpus() -> None:
    topo = synth.topology(cores=4, isolated=[3])
    p = _split(topo, [], completion="3", home="0-2")
    assert p.completion == S("3") and p.home == S("0-2")
    assert any("isolated" in n for n in p.notes)


@pytest.mark.parametrize("smt", [True, False])
def test_partition_is_deterministic(smt: bool) -> None:
    topo = synth.topology(sockets=2, cores=8, threads=2)
    devs = _server_devices(topo)
    a = _split(topo, devs, smt_isolation=smt)
    b = _split(topo, list(reversed(devs)), smt_isolation=smt)
    assert a == b
