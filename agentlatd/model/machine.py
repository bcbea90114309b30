"""The host model: what the plan stage sees. Pure data, built by model.build.

This is the contract between the read side (sample/ + model/) and the policy
side (plan/, daemon placement). Everything is frozen; CPU sets are CpuSet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agentlatd.cpuset import CpuSet


@dataclass(frozen=True, slots=True)
class Cpu:
    """One possible CPU and where it sits (sys/devices/system/cpu/cpuN/topology, cache)."""

    cpu: int
    online: bool
    core: int  # topology/core_id (unique only within a package)
    package: int  # topology/physical_package_id
    node: int  # NUMA node (0 when the host has no NUMA info)
    llc: int  # id of the last-level cache domain: lowest CPU of cache/indexN/shared_cpu_list
    smt_siblings: CpuSet  # topology/thread_siblings_list, including the CPU itself
    llc_cpus: CpuSet  # shared_cpu_list of the highest-level cache


@dataclass(frozen=True, slots=True)
class Topology:
    possible: CpuSet
    present: CpuSet
    online: CpuSet
    isolated: CpuSet  # sys/devices/system/cpu/isolated (absent = empty)
    nohz_full: CpuSet  # sys/devices/system/cpu/nohz_full (absent = empty)
    cpus: tuple[Cpu, ...]  # one per possible CPU, sorted by number
    nodes: Mapping[int, CpuSet]  # node -> its CPUs (possible)

    def cpu(self, n: int) -> Cpu:
        for c in self.cpus:
            if c.cpu == n:
                return c
        raise KeyError(n)


@dataclass(frozen=True, slots=True)
class Irq:
    """One numbered IRQ line of /proc/interrupts joined with /proc/irq/N/*."""

    irq: int
    name: str  # the action name(s) as printed ("nvme0q1", "i8042, serio")
    chip: str  # chip column ("IR-PCI-MSI", "PCI-MSIX-0000:00:03.0", "GICv3")
    hwirq: str
    trigger: str  # "edge" / "Level" / ""
    device: str | None  # owning device name ("eth0", "nvme0") when known
    queue: str | None  # queue label within the device ("rx-3", "tx-3", "txrx-3", "q3", "admin")
    total: int  # sum over CPUs
    per_cpu: Mapping[int, int]  # cpu -> count (columns of /proc/interrupts)
    smp_affinity: CpuSet
    effective_affinity: CpuSet | None  # None when the kernel has no such file
    affinity_hint: CpuSet | None
    node: int | None  # /proc/irq/N/node (-1 -> None)
    managed: bool  # kernel-managed affinity: a write fails with EIO (EPERM on 6.12+)
    managed_reason: str  # why we believe it (e.g. "nvme I/O queue, per-CPU layout")


@dataclass(frozen=True, slots=True)
class NetQueue:
    name: str  # "rx-0" / "tx-3" (sys/class/net/X/queues/)
    rps_cpus: CpuSet | None
    rps_flow_cnt: int | None
    xps_cpus: CpuSet | None


@dataclass(frozen=True, slots=True)
class NapiThread:
    """A threaded-NAPI kthread napi/<dev>-<napi_id> of a NIC (sample/napi_threads.py)."""

    pid: int
    starttime: int  # with pid: the process identity (proc/PID/stat field 22)
    napi_id: int | None  # None when comm was cut at 15 characters
    cpus: CpuSet | None  # its affinity (Cpus_allowed_list; None: unreadable)


@dataclass(frozen=True, slots=True)
class Device:
    """A NIC, an NVMe controller or a block device."""

    name: str
    kind: str  # "net" | "nvme" | "block"
    driver: str | None
    pci: str | None  # "0000:3b:00.0"
    numa_node: int | None  # None when unknown (-1 in sysfs)
    irqs: tuple[int, ...]
    queues: tuple[str, ...]  # queue labels ("rx-0", "tx-0" / "q1".. / hctx "0")
    virtual: bool = False  # veth, bridge, lo...: no IRQs of its own
    ifindex: int | None = None
    net_queues: tuple[NetQueue, ...] = ()
    threaded: int | None = None  # sys/class/net/X/threaded (None: not readable)
    napi_defer_hard_irqs: int | None = None
    gro_flush_timeout: int | None = None
    hw_queue_cpus: Mapping[str, CpuSet] = field(default_factory=dict)  # blk-mq hctx -> cpu_list
    rq_affinity: int | None = None  # block: queue/rq_affinity
    block_devices: tuple[str, ...] = ()  # nvme: its namespaces ("nvme0n1", "nvme0c0n1")
    napi_threads: tuple[NapiThread, ...] = ()  # net with threaded = 1: its NAPI kthreads


@dataclass(frozen=True, slots=True)
class Machine:
    topology: Topology
    irqs: tuple[Irq, ...]
    devices: tuple[Device, ...]
    kernel_release: str = ""  # proc/sys/kernel/osrelease

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def irq(self, n: int) -> Irq:
        for i in self.irqs:
            if i.irq == n:
                return i
        raise KeyError(n)


@dataclass(frozen=True, slots=True)
class Discontinuity:
    """Why a rate could not be computed across two snapshots (never a negative rate)."""

    kind: str  # "counter_reset" | "cpu_hotplug" | "irq_set_changed" | "clock"
    detail: str


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second rates between two snapshots, and the per-CPU heat score."""

    interval_s: float
    irq_per_cpu: Mapping[int, float]  # cpu -> device interrupts/s (numbered IRQs)
    irq_rate: Mapping[int, Mapping[int, float]]  # irq -> cpu -> /s
    softirq_rate: Mapping[str, Mapping[int, float]]  # "NET_RX" -> cpu -> /s
    irq_time_share: Mapping[int, float]  # cpu -> share of time in hardirq+softirq (0..1)
    steal_share: Mapping[int, float]
    heat: Mapping[int, float]  # cpu -> score (see model/rates.py docstring)
    discontinuities: tuple[Discontinuity, ...] = ()
