"""build_machine(sample) -> Machine: the Machine of one read of the kernel's files.

Pure: sample/machine.py read_machine(root) does the reading (which files, and
the managed markers); this module only assembles. Deterministic: the same
sample gives the same Machine (IRQs by number, devices by name).
"""

from __future__ import annotations

from agentlatd.cpuset import CpuSet
from agentlatd.model.devices import IrqLine, IrqOwner, assign, build_devices
from agentlatd.model.machine import Irq, Machine
from agentlatd.model.topology import build_topology
from agentlatd.sample.machine import MANAGED_FLAG, MachineSample


def build_machine(sample: MachineSample) -> Machine:
    """The Machine of what read_machine() read."""
    ints = sample.interrupts
    rows = ints.numbered()
    topology = build_topology(sample.cpus)
    nets, nvmes, blocks = sample.nets, sample.nvmes, sample.blocks
    proc = sample.proc_irqs
    lines: list[IrqLine] = []
    for n in sorted(rows):
        marker = ""
        readonly = n in sample.readonly
        if sample.debugfs_managed is not None and n in sample.debugfs_managed:
            marker = f"debugfs irq/irqs/{n} shows {MANAGED_FLAG}"
        elif n in sample.recorded_readonly and not readonly:
            # the tree lost the mode (git, cp without -p): the manifest kept it
            marker = f"the capture recorded proc/irq/{n}/smp_affinity as read-only"
        lines.append(IrqLine(irq=n, actions=rows[n].actions, smp_affinity=proc[n].smp_affinity,
                             readonly=readonly, marker=marker))
    owners = assign(lines, nets, nvmes, blocks)
    napi = sample.napi_threads

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
        kernel_release=sample.kernel_release,
    )
