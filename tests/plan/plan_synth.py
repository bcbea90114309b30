"""Synthetic Machines for plan tests: topologies and devices built in code.

Numbering follows the two enumerations seen in the field:
  "intel":    threads of one core are N and N + cores_total (server-2s64t)
  "adjacent": threads of one core are next to each other (KVM, many arm64)
"""

from __future__ import annotations

from collections.abc import Iterable

from agentlatd.cpuset import CpuSet
from agentlatd.model.machine import Cpu, Device, Irq, Machine, NetQueue, Topology


def topology(*, sockets: int = 1, cores: int = 2, threads: int = 1,
             nodes_per_socket: int = 1, enumeration: str = "intel",
             offline: Iterable[int] = (), isolated: Iterable[int] = (),
             nohz_full: Iterable[int] = ()) -> Topology:
    ncores = sockets * cores
    layout: dict[int, tuple[int, int, int]] = {}  # cpu -> (socket, core, thread)
    for s in range(sockets):
        for c in range(cores):
            for t in range(threads):
                intel = enumeration == "intel"
                cpu = t * ncores + s * cores + c if intel else (s * cores + c) * threads + t
                layout[cpu] = (s, c, t)
    off = set(offline)
    cpus: list[Cpu] = []
    for cpu in sorted(layout):
        s, c, _ = layout[cpu]
        node = s * nodes_per_socket + (c * nodes_per_socket) // cores
        sibs = CpuSet(o for o, (s2, c2, _) in layout.items() if (s2, c2) == (s, c))
        llc = CpuSet(o for o, (s2, _, _) in layout.items() if s2 == s)
        cpus.append(Cpu(cpu=cpu, online=cpu not in off, core=c, package=s, node=node,
                        llc=min(llc), smt_siblings=sibs, llc_cpus=llc))
    nodes: dict[int, set[int]] = {}
    for c in cpus:
        nodes.setdefault(c.node, set()).add(c.cpu)
    possible = CpuSet(layout)
    return Topology(possible=possible, present=possible, online=possible - off,
                    isolated=CpuSet(isolated), nohz_full=CpuSet(nohz_full),
                    cpus=tuple(cpus), nodes={n: CpuSet(v) for n, v in sorted(nodes.items())})


def irq(n: int, name: str, device: str | None, queue: str | None, affinity: CpuSet, *,
        managed: bool = False, per_cpu: dict[int, int] | None = None) -> Irq:
    pc = per_cpu or {}
    return Irq(irq=n, name=name, chip="IR-PCI-MSIX", hwirq=str(n), trigger="edge",
               device=device, queue=queue, total=sum(pc.values()), per_cpu=pc,
               smp_affinity=affinity, effective_affinity=CpuSet({min(affinity)}) if affinity
               else None, affinity_hint=None, node=None, managed=managed,
               managed_reason="nvme I/O queue, per-CPU layout" if managed else "")


def nic(name: str, node: int | None, first_irq: int, nqueues: int, everywhere: CpuSet, *,
        driver: str = "mlx5_core", other_irqs: int = 1, rps: CpuSet | None = None,
        flow_cnt: int | None = 0, xps: bool = True, threaded: int | None = 0,
        managed: bool = False) -> tuple[Device, list[Irq]]:
    """A multi-queue NIC: `other_irqs` non-queue IRQs, then one combined IRQ per queue."""
    irqs: list[Irq] = []
    n = first_irq
    for i in range(other_irqs):
        irqs.append(irq(n, f"{name}-async{i}", name, None, everywhere))
        n += 1
    for q in range(nqueues):
        irqs.append(irq(n, f"{name}-TxRx-{q}", name, f"txrx-{q}", everywhere, managed=managed))
        n += 1
    queues = [NetQueue(f"rx-{q}", rps if rps is not None else CpuSet(), flow_cnt, None)
              for q in range(nqueues)]
    queues += [NetQueue(f"tx-{q}", None, None, CpuSet() if xps else None) for q in range(nqueues)]
    dev = Device(name=name, kind="net", driver=driver, pci=f"0000:{first_irq:02x}:00.0",
                 numa_node=node, irqs=tuple(i.irq for i in irqs),
                 queues=tuple(q.name for q in queues), ifindex=first_irq,
                 net_queues=tuple(queues), threaded=threaded, napi_defer_hard_irqs=0,
                 gro_flush_timeout=0)
    return dev, irqs


def veth(name: str, *, threaded: int | None = None) -> Device:
    qs = (NetQueue("rx-0", CpuSet(), 0, None), NetQueue("tx-0", None, None, None))
    return Device(name=name, kind="net", driver="veth", pci=None, numa_node=None, irqs=(),
                  queues=("rx-0", "tx-0"), virtual=True, net_queues=qs, threaded=threaded,
                  napi_defer_hard_irqs=0, gro_flush_timeout=0)


def nvme(name: str, node: int | None, first_irq: int, topo: Topology, *,
         per_cpu_counts: dict[int, int] | None = None,
         rq_affinity: int | None = 1) -> tuple[list[Device], list[Irq]]:
    """An NVMe controller: admin queue q0 (normal IRQ) + one managed I/O queue per possible CPU."""
    everywhere = topo.possible
    irqs = [irq(first_irq, f"{name}q0", name, "admin", everywhere)]
    counts = per_cpu_counts or {}
    for k, cpu in enumerate(sorted(topo.possible), start=1):
        irqs.append(irq(first_irq + k, f"{name}q{k}", name, f"q{k}", CpuSet({cpu}), managed=True,
                        per_cpu={cpu: counts.get(cpu, 0)}))
    ns = f"{name}n1"
    ctrl = Device(name=name, kind="nvme", driver="nvme", pci=f"0000:{first_irq:02x}:00.0",
                  numa_node=node, irqs=tuple(i.irq for i in irqs),
                  queues=tuple(i.queue or "" for i in irqs), block_devices=(ns,))
    blk = Device(name=ns, kind="block", driver=None, pci=None, numa_node=node, irqs=(),
                 queues=(), rq_affinity=rq_affinity)
    return [ctrl, blk], irqs


def machine(topo: Topology, devices: Iterable[Device] = (), irqs: Iterable[Irq] = ()) -> Machine:
    return Machine(topology=topo, irqs=tuple(sorted(irqs, key=lambda i: i.irq)),
                   devices=tuple(sorted(devices, key=lambda d: d.name)))


def server() -> Machine:
    """2 sockets x 16 cores x SMT2 (intel numbering), a 16-queue NIC and an NVMe on node 0."""
    topo = topology(sockets=2, cores=16, threads=2)
    eth, eirqs = nic("ens1f0", 0, 75, 16, topo.possible)
    nv, nirqs = nvme("nvme0", 0, 100, topo)
    return machine(topo, [eth, *nv], eirqs + nirqs)
