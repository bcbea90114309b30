"""Partition and plan invariants over generated topologies (hypothesis).

Random sockets / cores / SMT / NUMA nodes per socket / CPU enumeration /
offline and kernel-isolated CPUs / NICs and NVMe controllers on random nodes,
and random [cpus] policies.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import plan_synth as synth
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentlatd import policy
from agentlatd.cpuset import CpuSet
from agentlatd.errors import PolicyError
from agentlatd.model.machine import Device, Irq, Machine
from agentlatd.plan.build import make_plan
from agentlatd.plan.changes import Plan
from agentlatd.plan.partition import device_nodes

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def machines(draw: st.DrawFn) -> Machine:
    sockets = draw(st.integers(1, 3))
    cores = draw(st.integers(1, 6))
    threads = draw(st.integers(1, 2))
    nps = draw(st.integers(1, 2))
    enum = draw(st.sampled_from(["intel", "adjacent"]))
    n = sockets * cores * threads
    cpus = list(range(n))
    offline = draw(st.sets(st.sampled_from(cpus), max_size=n - 1))
    isolated = draw(st.sets(st.sampled_from(cpus), max_size=max(0, n - 1)))
    nohz = draw(st.sets(st.sampled_from(cpus), max_size=2))
    topo = synth.topology(sockets=sockets, cores=cores, threads=threads, nodes_per_socket=nps,
                          enumeration=enum, offline=offline, isolated=isolated, nohz_full=nohz)
    nodes = sorted(topo.nodes)
    devices: list[Device] = []
    irqs: list[Irq] = []
    next_irq = 30
    for i in range(draw(st.integers(0, 3))):
        node = draw(st.one_of(st.none(), st.sampled_from([*nodes, 99])))
        kind = draw(st.sampled_from(["nic", "nvme", "veth"]))
        if kind == "nic":
            d, di = synth.nic(f"eth{i}", node, next_irq, draw(st.integers(1, 8)),
                              topo.possible, managed=draw(st.booleans()))
            devices.append(d)
            irqs += di
        elif kind == "nvme":
            ds, di = synth.nvme(f"nvme{i}", node, next_irq, topo)
            devices += ds
            irqs += di
        else:
            devices.append(synth.veth(f"veth{i}"))
            di = []
        next_irq += len(di) + 1
    return synth.machine(topo, devices, irqs)


@st.composite
def policies(draw: st.DrawFn) -> policy.Policy:
    p = policy.default()
    # sometimes an explicit completion list, possibly naming offline,
    # isolated or nonexistent CPUs (up to 36 > the largest generated host)
    explicit = draw(st.one_of(st.just("auto"), st.sets(st.integers(0, 36), min_size=1,
                                                        max_size=6).map(
        lambda s: CpuSet(s).to_list())))
    cpus = dataclasses.replace(
        p.cpus,
        completion=explicit,
        completion_per_node=draw(st.integers(1, 5)),
        completion_share=draw(st.sampled_from([0.0, 0.1, 0.125, 0.5, 1.0])),
        smt_isolation=draw(st.booleans()))
    return dataclasses.replace(p, cpus=cpus)


def _info(m: Machine) -> tuple[CpuSet, dict[int, CpuSet], dict[int, int], dict[int, CpuSet]]:
    t = m.topology
    usable = t.online - t.isolated - t.nohz_full
    nodes: dict[int, set[int]] = {}
    for c in t.cpus:
        nodes.setdefault(c.node, set()).add(c.cpu)
    node_of = {c.cpu: c.node for c in t.cpus}
    sibs = {c.cpu: c.smt_siblings for c in t.cpus}
    return usable, {n: CpuSet(v) for n, v in nodes.items()}, node_of, sibs


def _plan_or_cpu_error(m: Machine, pol: policy.Policy, **kw: Any) -> Plan | None:
    """The plan; None when the policy names CPUs the machine cannot have, which
    must then be the PolicyError naming cpus.completion."""
    named = CpuSet() if pol.cpus.completion == "auto" else CpuSet.parse_list(pol.cpus.completion)
    if named - m.topology.possible:
        with pytest.raises(PolicyError) as ei:
            make_plan(m, pol, **kw)
        assert ei.value.key == "cpus.completion"
        return None
    return make_plan(m, pol, **kw)


@SETTINGS
@given(machines(), policies())
def test_partition_invariants(m: Machine, pol: policy.Policy) -> None:
    plan = _plan_or_cpu_error(m, pol)
    if plan is None:
        return
    comp, home = plan.completion_cpus, plan.home_cpus
    usable, nodes, node_of, sibs = _info(m)
    auto = pol.cpus.completion == "auto"
    named = CpuSet() if auto else CpuSet.parse_list(pol.cpus.completion)
    # no CPU is both; both are online; auto never picks kernel-isolated CPUs
    assert not comp & home
    assert comp <= m.topology.online and home <= usable
    if len(usable) <= 1:
        assert not comp and home == usable
    elif auto or not (named & m.topology.online):
        assert comp <= usable
    else:
        assert comp == named & m.topology.online
    # one role per possible CPU, matching the sets
    roles = {r.cpu: r.role for r in plan.roles}
    assert sorted(roles) == sorted(c.cpu for c in m.topology.cpus)
    assert {c for c, r in roles.items() if r == "completion"} == comp
    assert {c for c, r in roles.items() if r == "home"} == home
    assert all((r == "offline") == (c not in m.topology.online) for c, r in roles.items())
    if len(usable) <= 1:
        return
    sib_of_comp = CpuSet(s for c in comp for s in sibs[c]) - comp
    # home CPUs are not SMT siblings of completion CPUs, unless the node had no other
    if pol.cpus.smt_isolation:
        for c in home & sib_of_comp:
            node = nodes[node_of[c]]
            assert not (usable & node) - comp - sib_of_comp, (c, comp, home)
    assert comp, "a host with >= 2 usable CPUs always has a completion CPU"
    for cpus in nodes.values():
        # each node with >= 2 usable CPUs keeps a home CPU (unless the policy
        # names all of them as completion CPUs)
        if len(usable & cpus) >= 2 and (usable & cpus) - comp:
            assert home & cpus, (cpus, comp, home)
    if named & m.topology.online:
        return
    # auto: each node with devices (and usable CPUs) has a completion CPU
    for n in device_nodes(m.devices):
        if usable & nodes.get(n, CpuSet()):
            assert comp & nodes[n], (n, comp)


@SETTINGS
@given(machines(), policies(), st.booleans())
def test_plan_invariants(m: Machine, pol: policy.Policy, irqbalance: bool) -> None:
    plan = _plan_or_cpu_error(m, pol, irqbalance_running=irqbalance)
    if plan is None:
        return
    managed = {str(i.irq) for i in m.irqs if i.managed}
    irq_changes = [c for c in plan.changes if c.knob == "irq.affinity"]
    assert not managed & {c.target_text for c in irq_changes}
    for c in irq_changes:
        assert CpuSet.parse_list(c.desired) <= plan.completion_cpus
        assert c.current != c.desired
    for c in plan.changes:
        if c.knob in ("net.rps_cpus", "net.xps_cpus"):
            assert CpuSet.parse_mask(c.desired) <= plan.completion_cpus
        if c.knob == "net.coalesce":
            assert c.desired.startswith("rx-usecs=") and int(c.desired.split("=")[1]) > 0
    assert len({c.key for c in plan.changes}) == len(plan.changes)
    assert sorted(plan.quiet_home_order) == sorted(plan.home_cpus)
    # deterministic, whatever order the model lists things in
    again = make_plan(dataclasses.replace(m, irqs=tuple(reversed(m.irqs)),
                                          devices=tuple(reversed(m.devices))),
                      pol, irqbalance_running=irqbalance)
    assert again == plan
