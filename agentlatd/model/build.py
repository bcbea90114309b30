"""build_machine(root) -> Machine: the read side of one tick, assembled.

Kernel files, each read through Root by its sampler:
  proc/interrupts                 sample/interrupts.py  the numbered IRQ rows
  proc/irq/N/*                    sample/irq.py         affinity, hint, node
  sys/devices/system/{cpu,node}   sample/cpu.py         -> model/topology.py
  sys/class/net, sys/class/nvme,  sample/net.py, nvme.py, block.py -> model/devices.py
  sys/block
  proc/sys/kernel/osrelease       the kernel release
  proc/PID/{stat,status}          sample/napi_threads.py: napi/<dev>-<id>
                                  kthreads, read only when a NIC has
                                  threaded = 1 (else there are none)
Explicit managed markers (optional): sys/kernel/debug/irq/irqs/N
(IRQD_AFFINITY_MANAGED, when debugfs is mounted) and, for a recorded tree,
the "readonly" list of its capture.json (git does not keep the 0444 mode that
6.12+ gives a managed IRQ's smp_affinity; agentlatd/capture.py records it).

Deterministic: the same tree gives the same Machine (IRQs by number, devices
by name). Nothing here writes.
"""

from __future__ import annotations

import json

from agentlatd.cpuset import CpuSet
from agentlatd.errors import KernelError
from agentlatd.model.devices import IrqLine, IrqOwner, assign, build_devices
from agentlatd.model.machine import Irq, Machine
from agentlatd.model.topology import build_topology
from agentlatd.sample.block import read_blocks
from agentlatd.sample.cpu import read_cpus
from agentlatd.sample.interrupts import parse_interrupts, read_interrupts
from agentlatd.sample.irq import ProcIrq, read_proc_irq
from agentlatd.sample.napi_threads import read_napi_threads
from agentlatd.sample.net import read_netdevs
from agentlatd.sample.nvme import read_nvmes
from agentlatd.sysfs.root import Root

DEBUGFS_IRQS = "sys/kernel/debug/irq/irqs"
MANIFEST = "capture.json"  # agentlatd.capture.MANIFEST (not imported: capture uses os)
_MANAGED_FLAG = "IRQD_AFFINITY_MANAGED"


def _readonly(root: Root, irq: int) -> bool:
    mode = root.mode(f"proc/irq/{irq}/smp_affinity")
    return mode is not None and not mode & 0o222


def _manifest_readonly(root: Root) -> frozenset[int]:
    """IRQs whose smp_affinity a capture recorded as read-only (recorded trees only)."""
    if root.is_host or not root.exists(MANIFEST):
        return frozenset()
    try:
        doc = json.loads(root.read_text(MANIFEST))
    except (KernelError, ValueError):
        return frozenset()
    out: set[int] = set()
    ro = doc.get("readonly") if isinstance(doc, dict) else None
    for p in ro if isinstance(ro, list) else ():
        parts = str(p).split("/")
        if len(parts) == 4 and parts[:2] == ["proc", "irq"] and parts[3] == "smp_affinity" \
                and parts[2].isdigit():
            out.add(int(parts[2]))
    return frozenset(out)


def _debugfs_managed(root: Root, irq: int) -> bool:
    try:
        return _MANAGED_FLAG in root.read_text(f"{DEBUGFS_IRQS}/{irq}")
    except KernelError:
        return False


def build_machine(root: Root) -> Machine:
    """The host (or recorded tree) under `root` as a Machine."""
    ints = parse_interrupts(read_interrupts(root))
    rows = ints.numbered()
    topology = build_topology(read_cpus(root))
    nets = read_netdevs(root)
    nvmes = read_nvmes(root)
    blocks = read_blocks(root)

    proc: dict[int, ProcIrq] = {n: read_proc_irq(root, n) for n in sorted(rows)}
    recorded_ro = _manifest_readonly(root)
    debugfs = root.isdir(DEBUGFS_IRQS)
    lines: list[IrqLine] = []
    for n in sorted(rows):
        marker = ""
        readonly = _readonly(root, n)
        if debugfs and _debugfs_managed(root, n):
            marker = f"debugfs irq/irqs/{n} shows {_MANAGED_FLAG}"
        elif n in recorded_ro and not readonly:
            # the tree lost the mode (git, cp without -p): the manifest kept it
            marker = f"the capture recorded proc/irq/{n}/smp_affinity as read-only"
        lines.append(IrqLine(irq=n, actions=rows[n].actions, smp_affinity=proc[n].smp_affinity,
                             readonly=readonly, marker=marker))
    owners = assign(lines, nets, nvmes, blocks)
    # one proc/PID/stat read per process: only worth it when kthreads can exist
    napi = read_napi_threads(root) if any(n.threaded == 1 for n in nets) else ()

    irqs: list[Irq] = []
    for n in sorted(rows):
        row = rows[n]
        p = proc[n]
        o = owners.get(n, IrqOwner(None, None, False, ""))
        irqs.append(Irq(
            irq=n,
            name=row.desc,
            chip=row.chip,
            hwirq=row.hwirq,
            trigger=row.trigger,
            device=o.device,
            queue=o.queue,
            total=row.total,
            per_cpu=ints.per_cpu(row),
            smp_affinity=p.smp_affinity if p.smp_affinity is not None else CpuSet(),
            effective_affinity=p.effective_affinity,
            affinity_hint=p.affinity_hint,
            node=p.node,
            managed=o.managed,
            managed_reason=o.managed_reason,
        ))
    return Machine(
        topology=topology,
        irqs=tuple(irqs),
        devices=build_devices(nets, nvmes, blocks, owners, napi),
        kernel_release=root.read_optional("proc/sys/kernel/osrelease"),
    )
