"""Which network device a journaled original belongs to.

sys/class/net/D/ifindex, sys/class/net/D/device (symlink to the parent bus
device), sys/class/net/D/addr_assign_type and address
(Documentation/ABI/testing/sysfs-class-net), /proc/self/ns/net (namespaces(7)).

A device name is not an identity: `ip link del veth0; ip link add veth0 ...`
gives a new device the old name, and an original journaled for the old one
written onto the new one overwrites what its administrator chose. The
identity of a device is its name with its ifindex (a new device gets a new
index: dev_new_index() allocates cyclically, net/core/dev.c), its network
namespace (the inode of the namespace file: the same name and index in two
namespaces are two devices), the inode of its sysfs directory (a kernfs node
id, allocated cyclically per device object, fs/kernfs/dir.c: it tells apart a
new device that got the old index, as one moved in from another namespace
can), and where the kernel shows them the parent's
bus path ("0000:03:00.0": a NIC re-probed into another slot is another
device) and the permanent hardware address (addr_assign_type 0 =
NET_ADDR_PERM; a random or set address says nothing about the hardware).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import Any

from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root

_NS = re.compile(r"net:\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class DeviceId:
    """A network device as the journal names it; equal only for the same device."""

    name: str
    ifindex: int
    netns: int = 0  # inode of the device's network namespace; 0 on a recorded tree
    bus: str = ""  # the parent's bus id ("0000:03:00.0"); "" for virtual devices
    addr: str = ""  # permanent hardware address; "" when the kernel shows none
    node: int = 0  # inode of the device's sysfs directory

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ifindex": self.ifindex, "netns": self.netns,
                "bus": self.bus, "addr": self.addr, "node": self.node}

    @classmethod
    def from_json(cls, obj: Any) -> DeviceId:
        """ValueError naming the field when `obj` is not a device identity."""
        if not isinstance(obj, dict):
            raise ValueError(f"device identity: expected an object, got {type(obj).__name__}")
        name, ifindex, netns = obj.get("name"), obj.get("ifindex"), obj.get("netns", 0)
        node = obj.get("node", 0)
        bus, addr = obj.get("bus", ""), obj.get("addr", "")
        if not isinstance(name, str) or not name:
            raise ValueError("device identity: 'name' missing or not a string")
        for k, v in (("ifindex", ifindex), ("netns", netns), ("node", node)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"device identity: {k!r} is not a non-negative integer")
        if not isinstance(bus, str) or not isinstance(addr, str):
            raise ValueError("device identity: 'bus' and 'addr' must be strings")
        assert isinstance(ifindex, int) and isinstance(netns, int) and isinstance(node, int)
        return cls(name, ifindex, netns, bus, addr, node)

    def describe(self) -> str:
        out = f"{self.name} (ifindex {self.ifindex}"
        if self.bus:
            out += f", bus {self.bus}"
        if self.addr:
            out += f", address {self.addr}"
        return out + ")"

    def differs(self, other: DeviceId) -> str:
        """What tells `other` apart from this device ("" when it is the same)."""
        diffs = [f"{k} {a or '-'} -> {b or '-'}" for k, a, b in (
            ("ifindex", self.ifindex, other.ifindex), ("netns", self.netns, other.netns),
            ("bus", self.bus, other.bus), ("address", self.addr, other.addr),
            ("sysfs inode", self.node, other.node)) if a != b]
        return ", ".join(str(d) for d in diffs)


def netns_inode(root: Root) -> int:
    """The inode of the caller's network namespace on the live host; 0 on a recorded tree."""
    if not root.is_host:
        return 0
    m = _NS.fullmatch(root.readlink("proc/self/ns/net"))
    return int(m[1]) if m else 0


def read_device_id(root: Root, name: str, netns: int | None = None) -> DeviceId:
    """The identity of device `name` now; KernelError (ErrClass.GONE) when it is gone."""
    base = f"sys/class/net/{name}"
    try:
        ifindex = int(root.read_value(f"{base}/ifindex", "sysfs"))
    except ValueError as e:
        raise KernelError("read", root.path(f"{base}/ifindex"), errno.EINVAL, "sysfs",
                          str(e)) from None
    try:
        node = os.stat(root.path(base)).st_ino
    except OSError:
        node = 0
    bus = ""
    link = root.readlink(f"{base}/device")
    if link:
        bus = os.path.basename(link.rstrip("/"))
    addr = ""
    if root.read_optional(f"{base}/addr_assign_type") == "0":
        addr = root.read_optional(f"{base}/address")
    return DeviceId(name, ifindex, netns_inode(root) if netns is None else netns, bus, addr,
                    node)
