"""sys/class/nvme/nvmeX: NVMe controllers, their PCI function and namespaces.

Kernel docs: Documentation/ABI/testing/sysfs-class-nvme (and
drivers/nvme/host/core.c nvme_dev_attrs: transport, state, model, address,
queue_count), Documentation/ABI/testing/sysfs-bus-pci (msi_irqs/, numa_node).

  nvmeX                symlink to .../<pci fn>/nvme/nvmeX (PCIe) or
                       devices/virtual/nvme-fabrics/... (fabrics)
  nvmeX/device         the PCI function ("../.."); its msi_irqs/ lists the
                       admin and I/O queue vectors (nvmeXq0, nvmeXqN)
  nvmeX/nvmeXnY        a namespace: the block device nvmeXnY (sys/block)
  nvmeX/nvmeXcCnY      with native multipath the hidden per-path disk
                       (sys/block/nvmeXcCnY: request-based, mq/N, queue/
                       rq_affinity); the visible disk is the multipath head
                       nvme<subsys>nY (devices/virtual/nvme-subsystem/...),
                       bio-based: no mq/, and on 6.12 no queue/rq_affinity.
                       Both are namespaces of the controller here.

The blk-mq hardware contexts (sys/block/nvmeXnY/mq/N/cpu_list) are the same
tag set for every namespace of a controller: sample/block.py reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentlatd.errors import KernelError
from agentlatd.sample.net import ParentDevice, read_parent
from agentlatd.sysfs.root import Root

NVME_DIR = "sys/class/nvme"
_NS = re.compile(r"^nvme\d+n\d+$")
_MPATH_NS = re.compile(r"^nvme(\d+)c\d+n(\d+)$")


@dataclass(frozen=True, slots=True)
class NvmeSample:
    name: str  # "nvme0"
    path: str  # real kernel path of the controller
    parent: ParentDevice | None
    transport: str | None  # "pcie", "tcp", "rdma", "fc", "loop"
    namespaces: tuple[str, ...]  # block device names in sys/block ("nvme0n1", "nvme0c0n1")


def _opt(root: Root, rel: str) -> str | None:
    try:
        return root.read_value(rel)
    except KernelError:
        return None


def _ns_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def read_nvme(root: Root, name: str) -> NvmeSample:
    base = f"{NVME_DIR}/{name}"
    real = root.realpath(base)
    disks = set(root.listdir("sys/block"))
    ns: set[str] = set()
    for entry in root.listdir(base):
        if _NS.match(entry) and entry in disks:
            ns.add(entry)
            continue
        m = _MPATH_NS.match(entry)
        if m is None:
            continue
        # the path disk is the request-based queue (mq/, queue/rq_affinity);
        # the multipath head nvme<subsys>nY is bio-based: on 6.12 it has no
        # mq/ and no queue/rq_affinity (found by the VM tier, QEMU sets CMIC)
        if entry in disks:
            ns.add(entry)
        if f"nvme{m.group(1)}n{m.group(2)}" in disks:
            ns.add(f"nvme{m.group(1)}n{m.group(2)}")
    # a disk whose real path lies below the controller (the usual PCIe layout)
    for d in disks:
        if _NS.match(d) and root.realpath(f"sys/block/{d}").startswith(real + "/"):
            ns.add(d)
    return NvmeSample(
        name=name,
        path=real,
        parent=read_parent(root, f"{base}/device"),
        transport=_opt(root, f"{base}/transport"),
        namespaces=tuple(sorted(ns, key=_ns_key)),
    )


def read_nvmes(root: Root) -> tuple[NvmeSample, ...]:
    """Every controller of sys/class/nvme, by name."""
    return tuple(read_nvme(root, n) for n in sorted(root.listdir(NVME_DIR), key=_ns_key))
