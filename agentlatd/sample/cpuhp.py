"""sys/devices/system/cpu/cpuN/hotplug/{state,target}: is a CPU hotplug still running?

kernel/cpu.c (sysfs interface since Linux 4.6, "cpu/hotplug: Add sysfs state
interface") prints each CPU's hotplug state machine: `state` is the step the CPU is
at, `target` the step it is going to (both integers, enum cpuhp_state). They differ
for as long as the bring-up or tear-down callbacks run, and a write to cpuN/online
returns only once they are equal again.

Why the tick asks: drivers re-spread their queues in those callbacks (virtio_net's
virtnet_cpu_online and virtnet_cpu_down_prep run at CPUHP_AP_ONLINE_DYN, rewriting
every queue's IRQ affinity and XPS map). On bring-up they run AFTER the CPU is in
cpu_online_mask, so after /proc/interrupts and /proc/stat show its column: a tick can
see the new column and, ticks later under a slow hypervisor, the driver's rewrite. That
rewrite is the kernel's own, not another writer's, and must not be judged as drift.

The files are absent on kernels before 4.6, with CONFIG_HOTPLUG_CPU=n and in recorded
trees: then nothing is known to be running (None).
"""

from __future__ import annotations

from collections.abc import Iterable

from agentlatd.errors import KernelError
from agentlatd.sample.cpu import CPU_DIR
from agentlatd.sysfs.root import Root


def cpus_in_transition(root: Root, cpus: Iterable[int] | None = None) -> frozenset[int] | None:
    """The CPUs of `cpus` (None: every cpuN directory) whose hotplug state has not
    reached its target. None when no CPU asked about has the files."""
    if cpus is None:
        names = [n for n in root.listdir(CPU_DIR) if n.startswith("cpu") and n[3:].isdigit()]
        cpus = sorted(int(n[3:]) for n in names)
    busy: set[int] = set()
    known = False
    for cpu in cpus:
        base = f"{CPU_DIR}/cpu{cpu}/hotplug"
        try:
            state, target = root.read_value(f"{base}/state"), root.read_value(f"{base}/target")
        except KernelError:
            continue  # no such CPU any more, or no hotplug files
        known = True
        if state != target:
            busy.add(cpu)
    return frozenset(busy) if known else None
