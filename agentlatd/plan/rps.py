"""sys/class/net/<dev>/queues/{rx-N/rps_cpus, rx-N/rps_flow_cnt, tx-N/xps_cpus}.

Kernel doc: Documentation/networking/scaling.rst (RPS, RFS, XPS);
Documentation/ABI/testing/sysfs-class-net-queues.

Knobs:
  "net.rps_cpus"     target "<dev>/rx-<n>", desired hex mask (nr_cpu_ids wide):
                     the completion CPUs of the NIC's node, so receive
                     processing leaves the CPU the IRQ hit for completion CPUs
                     only, never a home CPU;
  "net.rps_flow_cnt" target "<dev>/rx-<n>": per-queue RFS flow table;
  "net.xps_cpus"     target "<dev>/tx-<n>": tx queue of rank i -> completion
                     CPU i mod n. Home CPUs are in no queue's map, so a send
                     from a home CPU falls back to the hash (netdev_pick_tx),
                     and tx completions follow the queue's IRQ.
Queues whose file the kernel does not show (None in the model) are skipped.

Agent links (model/agent_links.py): a NIC receiving only registered pinned
agents' traffic, under tuning.agent_link_max_pps, gets rps_cpus = those
agents' home CPUs instead (tuning.agent_links = "home"), unless RFS runs
(tuning.rps_flow_cnt > 0), which steers each flow to its reader itself.
"""

from __future__ import annotations

import dataclasses

from agentlatd.cpuset import CpuSet
from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import QueueTarget
from agentlatd.model.agent_links import NONE, AgentLinks
from agentlatd.model.machine import Device, NetQueue
from agentlatd.plan.changes import Change
from agentlatd.plan.common import node_phrase, ordinals, queue_number
from agentlatd.plan.partition import Partition
from agentlatd.policy import TuningPolicy


def _queues(d: Device, prefix: str) -> list[NetQueue]:
    qs = [q for q in d.net_queues if q.name.startswith(prefix)]
    return sorted(qs, key=lambda q: (queue_number(q.name) or 0, q.name))


def local_links(links: AgentLinks, devices: tuple[Device, ...], part: Partition,
                tuning: TuningPolicy) -> AgentLinks:
    """The agent links the plan treats as such: NICs in scope, "home" policy, no
    RFS, home CPUs only."""
    if tuning.agent_links != "home" or tuning.rps_flow_cnt > 0 or not tuning.rps or not part.steering:
        return NONE
    nics = {d.name for d in devices if d.kind == "net"}
    local = {}
    for name, link in links.local.items():
        cpus = link.home_cpus & part.home
        if name in nics and cpus:
            local[name] = dataclasses.replace(link, home_cpus=cpus)
    return AgentLinks(local, {k: v for k, v in links.busy.items() if k in nics})


def plan_rps(devices: tuple[Device, ...], part: Partition, tuning: TuningPolicy,
             nr_cpus: int, links: AgentLinks = NONE) -> list[Change]:
    out: list[Change] = []
    if not part.steering:
        return out
    for d in devices:
        if d.kind != "net":
            continue
        link = links.local.get(d.name)
        if link is not None:
            cpus = link.home_cpus
            rate = f"{link.rx_pps:.0f} packets/s" if link.rx_pps is not None else "rate unknown"
            why = (f"{d.name} carries only the traffic of pinned agent(s) {', '.join(link.agents)} "
                   f"({rate} <= tuning.agent_link_max_pps): receive processing (RPS) on their "
                   f"home CPU(s) {cpus}, where they wait, not queued behind bulk traffic on a "
                   "completion CPU")
        else:
            cpus = part.completion_for(d.numa_node)
            where = node_phrase(d.numa_node, cpus, d.numa_node in part.by_node)
            why = f"{d.name} receive processing (RPS) on the {where}, never on a home CPU"
        for q in _queues(d, "rx-"):
            target = QueueTarget.of_sysfs(d.name, q.name)
            if tuning.rps and q.rps_cpus is not None and q.rps_cpus != cpus:
                out.append(Change(
                    KnobName.NET_RPS_CPUS, target, q.rps_cpus.to_mask(nr_cpus), cpus.to_mask(nr_cpus), why))
            if (tuning.rps and tuning.rps_flow_cnt > 0 and q.rps_flow_cnt is not None
                    and q.rps_flow_cnt != tuning.rps_flow_cnt):
                out.append(Change(
                    KnobName.NET_RPS_FLOW_CNT, target, str(q.rps_flow_cnt), str(tuning.rps_flow_cnt),
                    f"{d.name} RFS flow table of {tuning.rps_flow_cnt} entries per rx queue "
                    "(tuning.rps_flow_cnt): a flow's packets are processed on one CPU"))
    return out


def plan_xps(devices: tuple[Device, ...], part: Partition, tuning: TuningPolicy,
             nr_cpus: int) -> list[Change]:
    out: list[Change] = []
    if not (part.steering and tuning.xps):
        return out
    for d in devices:
        if d.kind != "net":
            continue
        cpus = part.completion_for(d.numa_node)
        order = part.spread_order(cpus)
        where = node_phrase(d.numa_node, cpus, d.numa_node in part.by_node)
        txq = _queues(d, "tx-")
        rank = ordinals(queue_number(q.name) or 0 for q in txq)
        for q in txq:
            if q.xps_cpus is None:
                continue
            want = CpuSet({order[rank[queue_number(q.name) or 0] % len(order)]})
            if q.xps_cpus == want:
                continue
            target = QueueTarget.of_sysfs(d.name, q.name)
            out.append(Change(
                KnobName.NET_XPS_CPUS, target, q.xps_cpus.to_mask(nr_cpus), want.to_mask(nr_cpus),
                f"{d.name} transmit queue of completion CPU {want} (XPS; {where}, "
                "one queue per CPU)"))
    return out


def rfs_planned(devices: tuple[Device, ...], tuning: TuningPolicy) -> bool:
    """True when some rx queue of a NIC in scope will run RFS (rps_flow_cnt > 0)."""
    return tuning.rps and tuning.rps_flow_cnt > 0 and any(
        q.rps_flow_cnt is not None
        for d in devices if d.kind == "net" for q in d.net_queues if q.name.startswith("rx-"))
