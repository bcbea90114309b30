"""Which devices agentlatd may touch: [devices] include / exclude / drivers.

Kernel names: sys/class/net/<dev> (NICs), sys/class/nvme/<ctrl> (NVMe
controllers), sys/block/<dev> (block devices). Pure: works on the Machine.

Rules (etc/agentlatd.toml [devices]):
  include  non-empty = exactly the devices whose name matches one of these globs
  exclude  never touched (matched after include)
  drivers  non-empty = only devices bound to one of these drivers
Virtual devices (veth, ifb, bridges, loop: no IRQs of their own) are only
touched when devices.include names them: on a host they belong to other
software (containers, tc, VPNs), and their receive processing runs where the
sender ran, so a host-wide default has no business steering them.
A block device follows its NVMe controller: it is in scope exactly when the
controller is, whatever its own name (include = ["nvme0"] covers nvme0n1).
Matching is case-sensitive (device names are), fnmatchcase semantics.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from agentlatd.model.machine import Device, Machine
from agentlatd.policy import DevicesPolicy


@dataclass(frozen=True, slots=True)
class Selection:
    devices: tuple[Device, ...]  # in scope, sorted by name
    skipped: tuple[tuple[str, str], ...]  # (device name, why it is out of scope), sorted
    unmatched: tuple[str, ...] = ()  # devices.include globs that name no device here

    @property
    def names(self) -> frozenset[str]:
        return frozenset(d.name for d in self.devices)

    def controller_of(self, block: str) -> Device | None:
        """The in-scope NVMe controller owning block device `block`."""
        for d in self.devices:
            if block in d.block_devices:
                return d
        return None


def _match(name: str, globs: tuple[str, ...]) -> str | None:
    for g in globs:
        if fnmatchcase(name, g):
            return g
    return None


def _own_verdict(d: Device, pol: DevicesPolicy) -> str | None:
    """None when `d` is in scope by its own name and driver, else why not."""
    if pol.include and _match(d.name, pol.include) is None:
        return "not named by devices.include"
    if d.virtual and not pol.include:
        return "virtual, no IRQs of its own (only touched when devices.include names it)"
    g = _match(d.name, pol.exclude)
    if g is not None:
        return f"excluded by devices.exclude {g!r}"
    if pol.drivers and (d.driver or "") not in pol.drivers:
        return f"driver {d.driver or 'none'} not in devices.drivers"
    return None


def select_devices(machine: Machine, pol: DevicesPolicy) -> Selection:
    owner: dict[str, Device] = {}
    for d in machine.devices:
        for b in d.block_devices:
            owner.setdefault(b, d)
    verdict: dict[str, str | None] = {}
    for d in machine.devices:
        if d.kind == "block" and d.name in owner:
            continue
        verdict[d.name] = _own_verdict(d, pol)
    for d in machine.devices:
        if d.kind == "block" and d.name in owner:
            ctrl = owner[d.name]
            v = verdict.get(ctrl.name)
            verdict[d.name] = None if v is None else f"its controller {ctrl.name} is out of scope"
    keep = tuple(sorted((d for d in machine.devices if verdict[d.name] is None),
                        key=lambda d: d.name))
    skipped = tuple(sorted((n, v) for n, v in verdict.items() if v is not None))
    unmatched = tuple(g for g in pol.include
                      if not any(fnmatchcase(d.name, g) for d in machine.devices))
    return Selection(keep, skipped, unmatched)
