"""read_machine(root) -> MachineSample: every kernel file a Machine is built from, read once.

Kernel files, each read through Root by its sampler:
  proc/interrupts                 sample/interrupts.py  the numbered IRQ rows
  proc/irq/N/*                    sample/irq.py         affinity, hint, node, the
                                                        mode of smp_affinity
  sys/devices/system/{cpu,node}   sample/cpu.py
  sys/class/net, sys/class/nvme,  sample/net.py, nvme.py, block.py
  sys/block
  proc/sys/kernel/osrelease       the kernel release
  proc/PID/{stat,status}          sample/napi_threads.py: napi/<dev>-<id>
                                  kthreads, read only when a NIC has
                                  threaded = 1 (else there are none)
Explicit managed markers (optional): sys/kernel/debug/irq/irqs/N
(IRQD_AFFINITY_MANAGED, when debugfs is mounted) and, for a recorded tree,
the "readonly" list of its capture.json (git does not keep the 0444 mode that
6.12+ gives a managed IRQ's smp_affinity; agentlatd/capture.py records it).

model/build.py turns the sample into a Machine without reading anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from agentlatd.errors import KernelError
from agentlatd.sample.block import BlockSample, read_blocks
from agentlatd.sample.cpu import CpuSample, read_cpus
from agentlatd.sample.interrupts import Interrupts, parse_interrupts, read_interrupts
from agentlatd.sample.irq import ProcIrq, read_proc_irq
from agentlatd.sample.napi_threads import NapiThreadSample, read_napi_threads
from agentlatd.sample.net import NetDevSample, read_netdevs
from agentlatd.sample.nvme import NvmeSample, read_nvmes
from agentlatd.sysfs.root import Root

DEBUGFS_IRQS = "sys/kernel/debug/irq/irqs"
MANIFEST = "capture.json"  # agentlatd.capture.MANIFEST (capture is above this layer)
MANAGED_FLAG = "IRQD_AFFINITY_MANAGED"


@dataclass(frozen=True, slots=True)
class MachineSample:
    interrupts: Interrupts
    cpus: CpuSample
    nets: tuple[NetDevSample, ...]
    nvmes: tuple[NvmeSample, ...]
    blocks: tuple[BlockSample, ...]
    proc_irqs: Mapping[int, ProcIrq]  # numbered IRQ -> its proc/irq/N files
    readonly: frozenset[int]  # IRQs whose smp_affinity has no write bit
    recorded_readonly: frozenset[int]  # ... as a capture's manifest recorded it
    debugfs_managed: frozenset[int] | None  # IRQD_AFFINITY_MANAGED; None: no debugfs
    napi_threads: tuple[NapiThreadSample, ...]
    kernel_release: str


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
        return MANAGED_FLAG in root.read_text(f"{DEBUGFS_IRQS}/{irq}")
    except KernelError:
        return False


def read_machine(root: Root) -> MachineSample:
    """The host (or recorded tree) under `root`, read."""
    ints = parse_interrupts(read_interrupts(root))
    rows = sorted(ints.numbered())
    nets = read_netdevs(root)
    debugfs = root.isdir(DEBUGFS_IRQS)
    return MachineSample(
        interrupts=ints,
        cpus=read_cpus(root),
        nets=nets,
        nvmes=read_nvmes(root),
        blocks=read_blocks(root),
        proc_irqs={n: read_proc_irq(root, n) for n in rows},
        readonly=frozenset(n for n in rows if _readonly(root, n)),
        recorded_readonly=_manifest_readonly(root),
        debugfs_managed=(frozenset(n for n in rows if _debugfs_managed(root, n))
                         if debugfs else None),
        # one proc/PID/stat read per process: only worth it when kthreads can exist
        napi_threads=read_napi_threads(root) if any(n.threaded == 1 for n in nets) else (),
        kernel_release=root.read_optional("proc/sys/kernel/osrelease"),
    )
