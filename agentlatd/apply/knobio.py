"""The engine's one way to a knob: look it up by name, count kernel writes, name devices.

Every collaborator of the Engine (apply/batch.py, restore.py, drift.py,
recovery.py) shares one KnobIO, so the write points of engine.py's docstring
are counted once per Engine whichever of them writes: write_hook(0) once a
batch's journal is saved while no kernel write has been made yet, write_hook(n)
right after the nth successful kernel write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agentlatd.apply.identity import DeviceId, netns_inode, read_device_id
from agentlatd.apply.journal import Entry
from agentlatd.apply.knobs import Knob
from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root


class KnobIO:
    def __init__(self, root: Root, knobs: Mapping[str, Knob],
                 write_hook: Callable[[int], None] | None = None) -> None:
        self.root = root
        self._knobs = knobs
        self._writes = 0
        self._write_hook = write_hook  # engine.py's write points

    def saved_first(self) -> None:
        """A batch's journal is saved: write point 0 when nothing was written yet."""
        if self._write_hook is not None and self._writes == 0:
            self._write_hook(0)

    def wrote(self) -> None:
        self._writes += 1
        if self._write_hook is not None:
            self._write_hook(self._writes)

    def knob(self, name: str) -> Knob | None:
        return self._knobs.get(name)

    def device_id(self, knob: Knob, target: str,
                   cache: dict[str, DeviceId | None]) -> DeviceId | None:
        """The identity of the device `target` names now (None: not a device knob,
        or the device cannot be read: then the knob's own read says why)."""
        if knob.live_only and not self.root.is_host:
            return None
        name = knob.device(target)
        if name is None:
            return None
        if name not in cache:
            if "" not in cache:
                cache[""] = DeviceId("", netns_inode(self.root))  # the netns, once
            ns = cache[""]
            assert ns is not None
            try:
                cache[name] = read_device_id(self.root, name, ns.ifindex)
            except KernelError:
                cache[name] = None
        return cache[name]

    def replaced(self, knob: Knob, e: Entry,
                  cache: dict[str, DeviceId | None]) -> DeviceId | None:
        """The device now named like e's, when it is not the device e was journaled for."""
        if e.device is None:
            return None
        now = self.device_id(knob, e.target, cache)
        return now if now is not None and now != e.device else None
