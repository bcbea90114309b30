"""sys/class/net/X: every network interface, physical and virtual, with its queues.

Kernel docs: Documentation/ABI/testing/sysfs-class-net (ifindex, threaded,
napi_defer_hard_irqs, gro_flush_timeout), Documentation/ABI/testing/
sysfs-class-net-queues (queues/rx-N/rps_cpus, rps_flow_cnt, tx-N/xps_cpus),
Documentation/networking/scaling.rst, Documentation/ABI/testing/sysfs-bus-pci
(numa_node, msi_irqs/).

  X                       symlink into sys/devices/...; a virtual interface
                          (lo, veth, bridge, ifb) lives under devices/virtual
  X/device                the parent device: a PCI function
                          (.../0000:3b:00.0), or a bus device below one
                          (virtio: .../0000:00:03.0/virtio2; the MSI-X list is
                          then on the PCI function, ONE DIRECTORY ABOVE
                          `device/`), or a non-PCI device (netdevsim)
  X/device/driver         symlink; its basename is the driver ("mlx5_core",
                          "virtio_net")
  <pci fn>/msi_irqs/N     one entry per MSI/MSI-X vector (the IRQ number)
  <pci fn>/irq            the legacy INTx line (used when there is no MSI)
  <pci fn>/numa_node      -1 = no NUMA affinity known
  X/threaded ...          absent before 5.12 (threaded), 6.x (napi knobs);
                          absent or unreadable = None

read_netdevs(root) reads; parse_* take text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root

NET_DIR = "sys/class/net"
# a PCI function's directory name: domain:bus:device.function
PCI_ADDR = re.compile(r"^[0-9a-fA-F]{4,}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_QUEUE = re.compile(r"^(rx|tx)-(\d+)$")


@dataclass(frozen=True, slots=True)
class QueueSample:
    name: str  # "rx-0" / "tx-3"
    rps_cpus: CpuSet | None
    rps_flow_cnt: int | None
    xps_cpus: CpuSet | None


@dataclass(frozen=True, slots=True)
class ParentDevice:
    """What a class device (netdev, nvme controller, disk) hangs off."""

    path: str  # real kernel path of the parent device ("" when none: virtual)
    bus_id: str  # its directory name ("0000:3b:00.0", "virtio2", "netdevsim1")
    driver: str | None  # basename of parent/driver
    pci: str | None  # the PCI function at or above the parent
    pci_path: str | None
    numa_node: int | None  # -1 in sysfs -> None
    msi_irqs: tuple[int, ...]  # the PCI function's msi_irqs/ entries
    intx_irq: int | None  # the PCI function's legacy `irq` (0 = none -> None)


@dataclass(frozen=True, slots=True)
class NetDevSample:
    name: str
    path: str  # real kernel path of sys/class/net/X
    ifindex: int | None
    virtual: bool  # no parent device (devices/virtual/net/...)
    parent: ParentDevice | None
    queues: tuple[QueueSample, ...]  # rx-* then tx-*, by number
    threaded: int | None
    napi_defer_hard_irqs: int | None
    gro_flush_timeout: int | None


# -- parsers ---------------------------------------------------------------
def parse_int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_numa_node(text: str) -> int | None:
    """numa_node: "-1" (no affinity known) -> None."""
    n = parse_int(text)
    return n if n is not None and n >= 0 else None


def parse_mask(text: str) -> CpuSet | None:
    """rps_cpus / xps_cpus: a hex mask ("00000000,00000001")."""
    try:
        return CpuSet.parse_mask(text)
    except CpuSetError:
        return None


def queue_key(name: str) -> tuple[int, int, str]:
    """rx before tx, then by number: "rx-2" < "rx-10" < "tx-0"."""
    m = _QUEUE.match(name)
    if m is None:
        return (2, 0, name)
    return (0 if m.group(1) == "rx" else 1, int(m.group(2)), name)


# -- readers ---------------------------------------------------------------
def _opt(root: Root, rel: str) -> str | None:
    try:
        return root.read_value(rel)
    except KernelError:
        return None


def _opt_int(root: Root, rel: str) -> int | None:
    t = _opt(root, rel)
    return None if t is None else parse_int(t)


def _numbers(names: list[str]) -> tuple[int, ...]:
    return tuple(sorted(int(n) for n in names if n.isdigit()))


def pci_function(path: str) -> str | None:
    """The deepest PCI function directory at or above kernel path `path`."""
    parts = path.split("/")
    for i in range(len(parts), 0, -1):
        if PCI_ADDR.match(parts[i - 1]):
            return "/".join(parts[:i])
    return None


def read_parent(root: Root, dev_link: str) -> ParentDevice | None:
    """The device behind symlink `dev_link` (".../X/device"); None when there is none."""
    if not root.exists(dev_link):
        return None
    real = root.realpath(dev_link)
    bus_id = real.rsplit("/", 1)[-1]
    drv_link = root.readlink(f"{real}/driver")
    driver = drv_link.rstrip("/").rsplit("/", 1)[-1] if drv_link else None
    pci_path = pci_function(real)
    pci = pci_path.rsplit("/", 1)[-1] if pci_path else None
    node_text = _opt(root, f"{real}/numa_node")
    if node_text is None and pci_path is not None:
        node_text = _opt(root, f"{pci_path}/numa_node")
    msi: tuple[int, ...] = ()
    intx: int | None = None
    if pci_path is not None:
        msi = _numbers(root.listdir(f"{pci_path}/msi_irqs"))
        i = _opt_int(root, f"{pci_path}/irq")
        intx = i if i else None
    return ParentDevice(
        path=real, bus_id=bus_id, driver=driver, pci=pci, pci_path=pci_path,
        numa_node=None if node_text is None else parse_numa_node(node_text),
        msi_irqs=msi, intx_irq=intx,
    )


def read_queue(root: Root, base: str, name: str) -> QueueSample:
    d = f"{base}/queues/{name}"
    rps = _opt(root, f"{d}/rps_cpus")
    xps = _opt(root, f"{d}/xps_cpus")
    return QueueSample(
        name=name,
        rps_cpus=None if rps is None else parse_mask(rps),
        rps_flow_cnt=_opt_int(root, f"{d}/rps_flow_cnt"),
        xps_cpus=None if xps is None else parse_mask(xps),
    )


def read_netdev(root: Root, name: str) -> NetDevSample:
    base = f"{NET_DIR}/{name}"
    real = root.realpath(base)
    parent = read_parent(root, f"{base}/device")
    queues = [q for q in root.listdir(f"{base}/queues") if _QUEUE.match(q)]
    return NetDevSample(
        name=name,
        path=real,
        ifindex=_opt_int(root, f"{base}/ifindex"),
        virtual=parent is None,
        parent=parent,
        queues=tuple(read_queue(root, base, q) for q in sorted(queues, key=queue_key)),
        threaded=_opt_int(root, f"{base}/threaded"),
        napi_defer_hard_irqs=_opt_int(root, f"{base}/napi_defer_hard_irqs"),
        gro_flush_timeout=_opt_int(root, f"{base}/gro_flush_timeout"),
    )


def read_netdevs(root: Root) -> tuple[NetDevSample, ...]:
    """Every interface of sys/class/net, by name."""
    out: list[NetDevSample] = []
    for name in root.listdir(NET_DIR):
        if not root.isdir(f"{NET_DIR}/{name}"):
            continue  # bonding_masters is a file in sys/class/net
        out.append(read_netdev(root, name))
    return tuple(out)
