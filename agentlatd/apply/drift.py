"""Drift: a journaled knob whose value is no longer what agentlatd wrote.

Another writer changed it. policy.daemon.drift = "yield" reports it and stops
managing it (flag "yielded"; rollback still restores the original, as
etc/agentlatd.toml documents); "reassert" writes agentlatd's value back. A
device entry whose device was replaced leaves the journal.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentlatd.apply.identity import DeviceId
from agentlatd.apply.journal import FLAG_INHERITED, FLAG_MANAGED, FLAG_YIELDED, Entry, Journal
from agentlatd.apply.knobio import KnobIO
from agentlatd.apply.reports import Drift, DriftAction
from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root


class DriftWatch:
    def __init__(self, io: KnobIO) -> None:
        self._io = io

    @property
    def root(self) -> Root:
        return self._io.root

    def unyield(self, j: Journal, keys: Iterable[tuple[str, str]]) -> int:
        """Manage these (knob, target) entries again: a yield that was not another
        writer's doing (the kernel's or a driver's own rewrite on CPU hotplug,
        daemon.py). The next apply re-plans them. Returns how many."""
        want = set(keys)
        n = 0
        for e in j.entries:
            if e.key in want and e.has(FLAG_YIELDED):
                e.flags = [f for f in e.flags if f != FLAG_YIELDED]
                n += 1
        if n:
            j.save()
        return n

    def check(self, j: Journal, mode: str) -> list[Drift]:
        """Knobs another writer changed after agentlatd set them; yield or reassert per policy."""
        out: list[Drift] = []
        dirty = False
        ids: dict[str, DeviceId | None] = {}
        replaced: list[Entry] = []
        for e in j.entries:
            if (e.written is None or e.has(FLAG_MANAGED) or e.has(FLAG_YIELDED)
                    or e.has(FLAG_INHERITED)):  # a forked process's own choice, not drift
                continue
            knob = self._io.knob(e.knob)
            if knob is None:
                continue
            other = self._io.replaced(knob, e, ids)
            if other is not None:
                assert e.device is not None
                replaced.append(e)
                out.append(Drift(e.knob, e.target, e.written, "", DriftAction.REPLACED,
                                 f"device replaced, original not restored: journaled for "
                                 f"{e.device.describe()}, now {other.describe()}"))
                continue
            try:
                current = knob.read(self.root, e.target)
            except (KernelError, ValueError) as err:
                out.append(Drift(e.knob, e.target, e.written, "", DriftAction.UNREADABLE, str(err)))
                continue
            if knob.equal(current, e.written):
                continue
            if mode == "yield" and not knob.reassert:
                e.set_flag(FLAG_YIELDED)
                dirty = True
                out.append(Drift(e.knob, e.target, e.written, current, DriftAction.YIELDED,
                                 "changed by another writer; agentlatd stops managing it "
                                 "(rollback still restores the original)"))
                continue
            try:
                knob.write(self.root, e.target, e.written)
                self._io.wrote()
                # drift is defined on read(), so is its repair (verify() would also
                # demand an IRQ's effective affinity, which moves at its next interrupt)
                shown = knob.read(self.root, e.target)
                ok = knob.equal(shown, e.written)
            except (KernelError, ValueError) as err:
                out.append(Drift(e.knob, e.target, e.written, current, DriftAction.FAILED,
                                 f"reassert failed: {err}"))
                continue
            out.append(Drift(e.knob, e.target, e.written, current,
                             DriftAction.REASSERTED if ok else DriftAction.FAILED,
                             "written back" if ok else f"written back; the kernel shows {shown!r}"))
        if replaced:
            j.remove_entries(replaced)
            dirty = True
        if dirty:
            if j.entries:
                j.save()
            else:
                j.delete()
        return out


