"""Large real hosts (tests/fixtures/machines/epyc-2s256t-nvme, arm64-kunpeng-128c):
devices on both sockets, and each NIC's completions kept on its own NUMA node."""

from __future__ import annotations

import pathlib

import pytest

from agentlatd import policy
from agentlatd.cpuset import CpuSet
from agentlatd.model.machine import Machine
from agentlatd.plan.build import make_plan
from agentlatd.plan.changes import Plan
from agentlatd.sysfs.root import Root
from agentlatd.tick import scan_machine

MACHINES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "machines"
LARGE = ("epyc-2s256t-nvme", "arm64-kunpeng-128c")
# queue IRQs per NIC in each tree (the README of each says where the count comes from)
QUEUES = {"epyc-2s256t-nvme": 63, "arm64-kunpeng-128c": 64}
# the policy a 25-200G NIC wants on such a host: an eighth of each node absorbs completions
SHARE = "[cpus]\ncompletion_share = 0.125\n"


@pytest.fixture(scope="module", params=LARGE)
def named_host(request: pytest.FixtureRequest) -> tuple[str, Machine]:
    return request.param, scan_machine(Root(str(MACHINES / request.param)))


@pytest.fixture(scope="module")
def host(named_host: tuple[str, Machine]) -> Machine:
    return named_host[1]


def node_cpus(m: Machine) -> dict[int, CpuSet]:
    out: dict[int, set[int]] = {}
    for c in m.topology.cpus:
        out.setdefault(c.node, set()).add(c.cpu)
    return {n: CpuSet(v) for n, v in out.items()}


def landing(m: Machine, plan: Plan) -> dict[int, CpuSet]:
    """IRQ -> where the plan leaves it: the planned cpulist, else its affinity now."""
    want = {int(c.target_text): CpuSet.parse_list(c.desired) for c in plan.changes
            if c.knob == "irq.affinity"}
    return {i.irq: want.get(i.irq, i.smp_affinity) for i in m.irqs}


@pytest.mark.parametrize("text", ["", SHARE], ids=["default", "share-0.125"])
def test_each_nics_completions_stay_on_its_own_node(named_host: tuple[str, Machine], text: str) -> None:
    name, host = named_host
    plan = make_plan(host, policy.loads(text, "t.toml") if text else policy.default())
    nodes = node_cpus(host)
    at = landing(host, plan)
    nics = [d for d in host.devices if d.kind == "net" and d.irqs]
    assert len({d.numa_node for d in nics}) == 2, "the fixture has NICs on both sockets"
    for d in nics:
        assert d.numa_node is not None
        own = nodes[d.numa_node] & plan.completion_cpus
        assert own, f"node {d.numa_node} of {d.name} has no completion CPU"
        queues = [i for i in host.irqs if i.device == d.name and i.queue and i.queue != "other"]
        assert len(queues) == QUEUES[name], (d.name, len(queues))
        for i in (i for i in host.irqs if i.device == d.name):
            assert at[i.irq] <= own, (d.name, i.irq, i.name, at[i.irq], own)
        # one queue per completion CPU of the node while there are enough of them
        used = [min(at[i.irq]) for i in queues]
        assert len(set(used)) == min(len(queues), len(own)), used


def test_partition_per_node_follows_the_devices(host: Machine) -> None:
    plan = make_plan(host, policy.loads(SHARE, "t.toml"))
    nodes = node_cpus(host)
    with_devices = {d.numa_node for d in host.devices if d.kind in ("net", "nvme") and d.irqs}
    for n, cpus in nodes.items():
        comp = cpus & plan.completion_cpus
        if n in with_devices:
            # ceil(0.125 * the node's CPUs), whole cores
            assert len(comp) == -(-len(cpus) // 8), (n, comp)
            assert cpus - comp <= plan.home_cpus
        else:
            assert not comp, f"node {n} holds no device but got completion CPUs {comp}"
            assert cpus <= plan.home_cpus


def test_nvme_admin_queues_stay_on_their_controllers_node() -> None:
    m = scan_machine(Root(str(MACHINES / "epyc-2s256t-nvme")))
    plan = make_plan(m, policy.default())
    nodes = node_cpus(m)
    at = landing(m, plan)
    ctrls = [d for d in m.devices if d.kind == "nvme"]
    assert sorted({d.numa_node for d in ctrls}) == [0, 1] and len(ctrls) == 20
    for d in ctrls:
        assert d.numa_node is not None
        admin = [i for i in m.irqs if i.device == d.name and i.queue == "admin"]
        assert len(admin) == 1
        assert at[admin[0].irq] <= nodes[d.numa_node] & plan.completion_cpus
        # the kernel-managed I/O queues are never planned
        managed = {i.irq for i in m.irqs if i.device == d.name and i.managed}
        assert len(managed) == 8
        assert not managed & {int(c.target_text) for c in plan.changes if c.knob == "irq.affinity"}


def test_kunpeng_queues_hinted_onto_another_node_are_brought_home() -> None:
    """cpumask_local_spread() before 6.3 hints TxRx vectors 32-63 onto another node's CPUs
    (the tree records that); the plan must move each of them onto its NIC's own node."""
    m = scan_machine(Root(str(MACHINES / "arm64-kunpeng-128c")))
    plan = make_plan(m, policy.default())
    nodes = node_cpus(m)
    at = landing(m, plan)
    for d in (d for d in m.devices if d.kind == "net" and d.irqs):
        assert d.numa_node is not None
        own = nodes[d.numa_node]
        queues = [i for i in m.irqs if i.device == d.name and i.queue and i.queue != "other"]
        away = [i for i in queues if not i.smp_affinity <= own]
        assert len(away) == 32, (d.name, [i.irq for i in away])
        for i in away:
            assert at[i.irq] <= own & plan.completion_cpus, (d.name, i.irq, at[i.irq])


# wayca-scheduler README.en.md @ d93f31e4 (wayca-irqdump): irq, total, hwirq, trigger, name as
# printed on a Kunpeng 920; the tree must keep these rows as published
WAYCA_HNS3_ROWS = ((199, 27283644, "65536001", "Edge", "hns3-0000:7d:00.0-TxRx-0"),
                   (589, 0, "99090433", "Edge", "hns3-0000:bd:00.0-TxRx-0"))


def test_kunpeng_tree_keeps_the_published_hns3_rows() -> None:
    m = scan_machine(Root(str(MACHINES / "arm64-kunpeng-128c")))
    by_irq = {i.irq: i for i in m.irqs}
    for irq, total, hwirq, trigger, name in WAYCA_HNS3_ROWS:
        got = by_irq[irq]
        want = (total, hwirq, trigger, name, "ITS-MSI")
        assert (got.total, got.hwirq, got.trigger, got.name, got.chip) == want
    # 64 TxRx vectors per function (the 65-IRQ gap between 7d:00.1-TxRx-0 and 7d:00.2-TxRx-0
    # in the same listing), the misc vector at MSI-X index 0 just before TxRx-0
    for first, bdf, dev in ((199, "0000:7d:00.0", "enp125s0f0"), (589, "0000:bd:00.0", "enp189s0f0")):
        assert by_irq[first - 1].name == f"hclge-misc-{bdf}"
        txrx = sorted(i.irq for i in m.irqs if i.device == dev and i.name.startswith(f"hns3-{bdf}-TxRx-"))
        assert txrx == list(range(first, first + 64))
