"""sys/block/X: whole disks, their request-queue completion affinity and blk-mq contexts.

Kernel docs: Documentation/block/queue-sysfs.rst (queue/rq_affinity: 0 = complete
on the IRQ's CPU, 1 = on the submitting CPU's group, 2 = on the submitting CPU
itself), Documentation/ABI/stable/sysfs-block and block/blk-mq-sysfs.c
(mq/N/cpu_list: the CPUs a hardware context serves, printed by
blk_mq_hw_sysfs_cpus_show() as "0, 32": comma AND space, no ranges).

  X            symlink into sys/devices/...: devices/virtual/block/loop0 for
               virtual disks, .../nvme/nvme0/nvme0n1 for NVMe namespaces,
               .../0000:00:02.0/virtio1/block/vda for virtio-blk
  X/device     the parent: the nvme controller, the virtio device, ...
  X/mq/N/      one directory per blk-mq hardware context (absent for bio-based
               drivers such as zram)

read_blocks(root) reads; parse_hctx_cpus takes text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.sample.net import ParentDevice, read_parent
from agentlatd.sysfs.root import Root

BLOCK_DIR = "sys/block"


@dataclass(frozen=True, slots=True)
class BlockSample:
    name: str
    path: str  # real kernel path
    virtual: bool  # under devices/virtual (loop, zram, dm-*)
    parent: ParentDevice | None
    rq_affinity: int | None
    hctx: Mapping[str, CpuSet]  # hardware context ("0", "1", ...) -> cpu_list


def parse_hctx_cpus(text: str) -> CpuSet | None:
    """mq/N/cpu_list: "0, 32" -> {0, 32}; a plain cpulist ("0-3") is accepted too."""
    try:
        return CpuSet.parse_list(text.replace(" ", "").strip(","))
    except CpuSetError:
        return None


def _hctx_key(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (1 << 30, name)


def _opt(root: Root, rel: str) -> str | None:
    try:
        return root.read_value(rel)
    except KernelError:
        return None


def read_hctx(root: Root, disk: str) -> dict[str, CpuSet]:
    out: dict[str, CpuSet] = {}
    for h in sorted(root.listdir(f"{BLOCK_DIR}/{disk}/mq"), key=_hctx_key):
        text = _opt(root, f"{BLOCK_DIR}/{disk}/mq/{h}/cpu_list")
        cpus = None if text is None else parse_hctx_cpus(text)
        if cpus is not None:
            out[h] = cpus
    return out


def read_block(root: Root, name: str) -> BlockSample:
    base = f"{BLOCK_DIR}/{name}"
    real = root.realpath(base)
    rq = _opt(root, f"{base}/queue/rq_affinity")
    return BlockSample(
        name=name,
        path=real,
        virtual="/devices/virtual/" in f"/{real}",
        parent=read_parent(root, f"{base}/device"),
        rq_affinity=int(rq) if rq is not None and rq.isdigit() else None,
        hctx=read_hctx(root, name),
    )


def read_blocks(root: Root) -> tuple[BlockSample, ...]:
    """Every disk of sys/block, by name."""
    return tuple(read_block(root, n) for n in root.listdir(BLOCK_DIR))
