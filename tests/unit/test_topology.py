"""CPU topology from sysfs: sample/cpu.py + model/topology.py, on tmp trees and every fixture."""

from __future__ import annotations

import os
import pathlib

import pytest

from agentlatd.cpuset import CpuSet
from agentlatd.model.topology import UNKNOWN, build_topology
from agentlatd.sample.cpu import parse_cpulist, read_cpus
from agentlatd.sysfs.root import Root

REPO = pathlib.Path(__file__).resolve().parents[2]
MACHINES = REPO / "tests" / "fixtures" / "machines"
CPU = "sys/devices/system/cpu"


def trees() -> list[pathlib.Path]:
    if not MACHINES.is_dir():
        return []
    return sorted(p for p in MACHINES.iterdir() if (p / "proc").is_dir())


def write(base: pathlib.Path, files: dict[str, str]) -> Root:
    for rel, text in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return Root(str(base))


def cpu_files(cpu: int, core: int, pkg: int, sibs: str, *, caches: dict[int, tuple[int, str, str]]
              | None = None, online: str | None = None) -> dict[str, str]:
    d = f"{CPU}/cpu{cpu}"
    out = {f"{d}/topology/core_id": f"{core}\n", f"{d}/topology/physical_package_id": f"{pkg}\n",
           f"{d}/topology/thread_siblings_list": f"{sibs}\n"}
    for idx, (level, typ, shared) in (caches or {}).items():
        out[f"{d}/cache/index{idx}/level"] = f"{level}\n"
        out[f"{d}/cache/index{idx}/type"] = f"{typ}\n"
        out[f"{d}/cache/index{idx}/shared_cpu_list"] = f"{shared}\n"
    if online is not None:
        out[f"{d}/online"] = online
    return out


def topo_of(root: Root):  # type: ignore[no-untyped-def]
    return build_topology(read_cpus(root))


# ---------------------------------------------------------------------------
# parsers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "want"), [
    ("", CpuSet()), ("\n", CpuSet()), ("(null)\n", CpuSet()), ("0-3,8\n", CpuSet({0, 1, 2, 3, 8})),
    ("junk", None),
])
def test_parse_cpulist(text: str, want: CpuSet | None) -> None:
    assert parse_cpulist(text) == want


# ---------------------------------------------------------------------------
# tmp trees
# ---------------------------------------------------------------------------
def test_absent_files_mean_empty_and_cpu0_without_online_file_is_online(tmp_path: pathlib.Path) -> None:
    files = {f"{CPU}/possible": "0-3\n", f"{CPU}/present": "0-3\n"}
    for c in range(4):
        files |= cpu_files(c, c, 0, str(c), online=None if c == 0 else "1\n")
    # no global online, no isolated, no nohz_full, no node dir, no cache dirs
    t = topo_of(write(tmp_path, files))
    assert t.online == CpuSet({0, 1, 2, 3})
    assert t.isolated == CpuSet() and t.nohz_full == CpuSet()
    assert dict(t.nodes) == {0: CpuSet({0, 1, 2, 3})}  # no NUMA info = node 0
    assert all(c.node == 0 for c in t.cpus)
    # no cache info = one LLC per package
    assert {c.llc for c in t.cpus} == {0}
    assert all(c.llc_cpus == CpuSet({0, 1, 2, 3}) for c in t.cpus)


def test_nohz_full_null_and_isolated_list(tmp_path: pathlib.Path) -> None:
    files = {f"{CPU}/possible": "0-1\n", f"{CPU}/online": "0-1\n", f"{CPU}/nohz_full": "(null)\n",
             f"{CPU}/isolated": "1\n"}
    files |= cpu_files(0, 0, 0, "0") | cpu_files(1, 1, 0, "1")
    t = topo_of(write(tmp_path, files))
    assert t.nohz_full == CpuSet() and t.isolated == CpuSet({1})


def test_llc_is_the_highest_unified_cache_not_the_instruction_cache(tmp_path: pathlib.Path) -> None:
    files = {f"{CPU}/possible": "0-3\n", f"{CPU}/online": "0-3\n"}
    for c in range(4):
        cluster = "0-1" if c < 2 else "2-3"
        files |= cpu_files(c, c, 0, str(c), caches={
            0: (1, "Data", str(c)), 1: (1, "Instruction", str(c)),
            2: (2, "Unified", cluster), 3: (3, "Instruction", "0-3")})  # odd, but not an LLC
    t = topo_of(write(tmp_path, files))
    assert [c.llc for c in t.cpus] == [0, 0, 2, 2]
    assert t.cpu(3).llc_cpus == CpuSet({2, 3})


def test_offline_cpu_without_topology_gets_a_node_and_is_its_own_sibling(tmp_path: pathlib.Path) -> None:
    # x86: cpu3 offline -> no topology/ or cache/, and node cpulists drop it
    files = {f"{CPU}/possible": "0-3\n", f"{CPU}/online": "0-2\n",
             f"{CPU}/cpu3/online": "0\n",
             "sys/devices/system/node/node0/cpulist": "0-1\n",
             "sys/devices/system/node/node1/cpulist": "2\n"}
    files |= cpu_files(0, 0, 0, "0") | cpu_files(1, 1, 0, "1") | cpu_files(2, 0, 1, "2")
    t = topo_of(write(tmp_path, files))
    c3 = t.cpu(3)
    assert not c3.online
    assert c3.smt_siblings == CpuSet({3})
    assert c3.core == UNKNOWN and c3.package == UNKNOWN
    assert c3.node == 0  # the lowest node: nothing says better
    assert t.cpu(2).node == 1
    assert sorted(t.nodes) == [0, 1]
    assert sum(len(v) for v in t.nodes.values()) == 4  # each possible CPU on exactly one node


def test_global_online_list_wins_over_per_cpu_files(tmp_path: pathlib.Path) -> None:
    files = {f"{CPU}/possible": "0-1\n", f"{CPU}/online": "0\n"}
    files |= cpu_files(0, 0, 0, "0") | cpu_files(1, 1, 0, "1", online="1\n")
    t = topo_of(write(tmp_path, files))
    assert t.online == CpuSet({0})
    assert not t.cpu(1).online


# ---------------------------------------------------------------------------
# every fixture
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_topology_invariants(tree: pathlib.Path) -> None:
    root = Root(str(tree))
    t = topo_of(root)
    assert t.possible, tree
    assert [c.cpu for c in t.cpus] == sorted(t.possible)
    assert t.online <= t.possible
    assert t.online == CpuSet.parse_list(root.read_value(f"{CPU}/online"))
    # each possible CPU on exactly one node
    seen: list[int] = []
    for cpus in t.nodes.values():
        seen += list(cpus)
    assert sorted(seen) == sorted(t.possible)
    for c in t.cpus:
        assert c.cpu in c.smt_siblings and c.cpu in c.llc_cpus
        assert c.llc == min(c.llc_cpus)
        assert c.cpu in t.nodes[c.node]
        if c.online:
            assert c.core >= 0 and c.package >= 0
            # SMT siblings agree with each other among online CPUs
            for s in c.smt_siblings & t.online:
                assert t.cpu(s).smt_siblings & t.online == c.smt_siblings & t.online


@pytest.mark.parametrize("tree", trees(), ids=lambda p: p.name)
def test_same_tree_same_topology(tree: pathlib.Path) -> None:
    assert topo_of(Root(str(tree))) == topo_of(Root(str(tree)))


def _fixture(name: str) -> Root:
    p = MACHINES / name
    if not (p / "proc").is_dir():
        pytest.skip(f"fixture {name} not in this checkout")
    return Root(str(p))


def test_server_two_sockets_intel_smt_numbering() -> None:
    t = topo_of(_fixture("server-2s64t"))
    assert len(t.possible) == 64
    assert t.nodes[0] == CpuSet.parse_list("0-15,32-47")
    assert t.nodes[1] == CpuSet.parse_list("16-31,48-63")
    assert t.cpu(0).smt_siblings == CpuSet({0, 32})
    assert t.cpu(33).smt_siblings == CpuSet({1, 33})
    assert {c.llc for c in t.cpus} == {0, 16}
    assert t.cpu(48).llc_cpus == t.nodes[1]
    assert {c.package for c in t.cpus} == {0, 1}
    assert t.nohz_full == CpuSet()  # "(null)"
    assert t.cpu(0).online  # no cpu0/online file


def test_arm64_clusters_are_llc_domains() -> None:
    t = topo_of(_fixture("arm64-gicv3"))
    assert [c.llc for c in t.cpus] == [0, 0, 0, 0, 4, 4, 4, 4]
    assert all(c.smt_siblings == CpuSet({c.cpu}) for c in t.cpus)


def test_cloud_vm_offline_cpu() -> None:
    t = topo_of(_fixture("cloud-vm-small"))
    assert t.online == CpuSet({0, 1, 2})
    assert not t.cpu(3).online
    assert t.cpu(0).smt_siblings == CpuSet({0, 1})
    assert t.cpu(3).node == 0


def test_smt_off_leaves_online_cpus_without_online_siblings() -> None:
    t = topo_of(_fixture("gve-smt-offline"))
    assert t.online == CpuSet({0, 1, 2, 3})
    for c in t.cpus:
        if c.online:
            assert c.smt_siblings & t.online == CpuSet({c.cpu})


def test_this_host_fixture() -> None:
    t = topo_of(_fixture("this-host"))
    assert t.possible == CpuSet({0, 1}) and t.online == CpuSet({0, 1})
    assert dict(t.nodes) == {0: CpuSet({0, 1})}
    assert [c.llc for c in t.cpus] == [0, 0]


def test_live_host_topology_reads() -> None:
    t = topo_of(Root("/"))
    assert t.online
    assert len(t.online) == len(os.sched_getaffinity(0)) or t.online >= CpuSet(os.sched_getaffinity(0))
