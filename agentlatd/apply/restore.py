"""Restore journaled originals: every entry (rollback, recovery) or chosen ones.

Newest entry first; an entry whose original is back (or has nothing left to
restore: gone, unchanged, kernel-managed, its device replaced) leaves the
journal, a failed one stays for the next attempt. A device entry is never
restored onto another device that took its name (apply/identity.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet

from agentlatd.apply.identity import DeviceId
from agentlatd.apply.journal import FLAG_INHERITED, FLAG_MANAGED, Entry, Journal
from agentlatd.apply.knobio import KnobIO
from agentlatd.apply.knobs import Knob
from agentlatd.apply.reports import (
    CLAMPED,
    DONE,
    FAILED,
    GONE,
    MANAGED,
    REPLACED,
    RESTORED,
    UNCHANGED,
    KnobResult,
    RollbackReport,
    Status,
    sentence,
)
from agentlatd.errors import AgentlatdError, KernelError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.sysfs.root import Root


class Restorer:
    def __init__(self, io: KnobIO) -> None:
        self._io = io

    @property
    def root(self) -> Root:
        return self._io.root

    def restore_all(self, j: Journal, *, damaged: str = "", kept_as: str = "",
                    note: str = "") -> RollbackReport:
        """Restore every entry of `j`; `note` goes first in the report's notes."""
        results: list[KnobResult] = []
        done: list[Entry] = []
        held = j.keys()  # live, and the journal does not change until the loop ends
        ids: dict[str, DeviceId | None] = {}
        for e in reversed(j.entries):
            r = self.restore_one(e, held, ids)
            results.append(r)
            if r.status in DONE:
                done.append(e)
        j.remove_entries(done)
        keep = j.entries
        removed = False
        if keep:
            j.save()  # the failed ones stay journaled for the next attempt
        else:
            j.delete()
            removed = True
        notes: tuple[str, ...] = (note,) if note else ()
        if j.migrated_from:
            notes += (f"{j.path} was written in format {j.migrated_from}, without device "
                      "identities: its device originals were restored by device name",)
        if keep:
            notes += (f"{len(keep)} original(s) could not be restored and stay in {j.path}",)
        return RollbackReport(tuple(results), j.path, removed, damaged, kept_as, notes)

    def restore_one(self, e: Entry, held: AbstractSet[tuple[str, str]] = frozenset(),
                    ids: dict[str, DeviceId | None] | None = None) -> KnobResult:
        """Restore one entry; `held` is every (knob, target) of its journal, `ids`
        the device identities read so far in this restore."""
        def res(status: Status, message: str, before: str = "", after: str = "",
                errclass: ErrClass | None = None) -> KnobResult:
            return KnobResult(e.knob, e.target, status, before, e.original, after,
                              errclass, message)

        if e.has(FLAG_MANAGED) and e.written is None:
            return res(MANAGED, "kernel-managed IRQ: agentlatd never changed it")
        knob = self._io.knob(e.knob)
        if knob is None:
            return res(FAILED, f"no knob named {e.knob!r} in this build; entry kept",
                       errclass=ErrClass.INVALID)
        if knob.live_only and not self.root.is_host:
            return res(FAILED, f"{e.knob} acts on the live kernel only; entry kept",
                       errclass=ErrClass.UNSUPPORTED)
        other = self._io.replaced(knob, e, {} if ids is None else ids)
        if other is not None:
            # never write one device's original onto another that took its name
            assert e.device is not None
            return res(REPLACED, f"device replaced, original not restored: journaled for "
                       f"{e.device.describe()}, now {other.describe()}")
        try:
            current = knob.read(self.root, e.target)
        except KernelError as err:
            if err.errclass is ErrClass.GONE:
                return res(GONE, f"{sentence(err)}: nothing left to restore", errclass=err.errclass)
            return res(FAILED, sentence(err), errclass=err.errclass)
        except (ValueError, AgentlatdError) as err:
            return res(FAILED, f"cannot read: {err}", errclass=ErrClass.INVALID)
        current = knob.original_of(current, e.original)  # the journaled fields only
        if e.has(FLAG_INHERITED):
            return self._restore_inherited(e, knob, current, held)
        if knob.equal(current, e.original):
            # the object set its original back itself; what agentlatd's write
            # spread to (threads and processes it started meanwhile) may not have
            try:
                note = knob.restore_spread(self.root, e.target, e.original, written=e.written,
                                           journaled=held)
            except (KernelError, ValueError, AgentlatdError):
                note = ""
            return res(UNCHANGED, "already at its original value" + (f"; {note}" if note else ""),
                       current, current)
        try:
            note = knob.restore(self.root, e.target, e.original, written=e.written,
                                journaled=held)
        except KernelError as err:
            if err.errclass is ErrClass.GONE:
                return res(GONE, f"{sentence(err)}: nothing left to restore", current,
                           errclass=err.errclass)
            return res(FAILED, sentence(err), current, errclass=err.errclass)
        except (ValueError, AgentlatdError) as err:
            return res(FAILED, str(err), current, errclass=ErrClass.INVALID)
        self._io.wrote()
        try:
            after = knob.read(self.root, e.target)
        except KernelError as err:
            if err.errclass is ErrClass.GONE:
                # written, then gone (a thread of an exiting process): nothing is
                # left to restore either way, and an entry kept here outlived its
                # agent until the stop's rollback
                return res(GONE, f"written; {sentence(err)} before it was read back: nothing "
                           f"left to restore", current, errclass=err.errclass)
            return res(FAILED, f"written; reading it back failed: {sentence(err)}", current,
                       errclass=ErrClass.IO)
        except ValueError as err:
            return res(FAILED, f"written; reading it back failed: {err}", current,
                       errclass=ErrClass.IO)
        after = knob.original_of(after, e.original)
        if knob.equal(after, e.original):
            return res(RESTORED, f"restored; {note}" if note else "restored", current, after)
        return res(CLAMPED, f"wrote {e.original!r}; the kernel shows {after!r}", current, after)

    def _restore_inherited(self, e: Entry, knob: Knob, current: str,
                           held: AbstractSet[tuple[str, str]]) -> KnobResult:
        """An entry agentlatd never wrote (FLAG_INHERITED: a process an agent
        forked): the original goes only where agentlatd's value still is; a
        value the process set itself since is its own choice, and kept."""
        def res(status: Status, message: str, after: str = "",
                errclass: ErrClass | None = None) -> KnobResult:
            return KnobResult(e.knob, e.target, status, current, e.original, after,
                              errclass, message)

        try:
            n = knob.restore_inherited(self.root, e.target, e.original, written=e.written or "",
                                       journaled=held)
        except KernelError as err:
            if err.errclass is ErrClass.GONE:
                return res(GONE, f"{sentence(err)}: nothing left to restore",
                           errclass=err.errclass)
            return res(FAILED, sentence(err), errclass=err.errclass)
        except (ValueError, AgentlatdError) as err:
            return res(FAILED, str(err), errclass=ErrClass.INVALID)
        if not n:
            return res(UNCHANGED, f"inherited {e.written!r} from an agent and set a value of "
                       "its own since: kept", current)
        self._io.wrote()
        try:  # the main thread may be one that kept a value of its own
            after = knob.original_of(knob.read(self.root, e.target), e.original)
        except (KernelError, ValueError, AgentlatdError):
            after = ""
        return res(RESTORED, f"restored on {n} thread(s) that inherited {e.written!r} from "
                   "an agent", after)

    def restore_keys(self, j: Journal, keys: Iterable[tuple[str, str]]) -> tuple[KnobResult, ...]:
        """Restore the journaled originals of these (knob, target) instances only.

        For changes that end before the run does (an agent unregisters, a home
        CPU stops being exclusive). Newest entry first, as rollback() does; an
        entry whose original is back (or has nothing left to restore: gone,
        unchanged, kernel-managed) leaves the journal, a failed one stays for a
        later restore() or rollback(). Keys not journaled are ignored. The
        journal is saved once, crash-safe, or removed when it is empty.
        """
        # O(keys), not O(journal): an agent's unregister restores its own few
        # entries while every other agent's stay journaled
        chosen = j.ordered(e for k in set(keys) if (e := j.find(*k)) is not None)
        if not chosen:
            return ()
        results: list[KnobResult] = []
        done: list[Entry] = []
        held = j.keys()  # live, and the journal does not change until the loop ends
        ids: dict[str, DeviceId | None] = {}
        for e in reversed(chosen):
            r = self.restore_one(e, held, ids)
            results.append(r)
            if r.status in DONE:
                done.append(e)
        if done:
            j.remove_entries(done)
            self._persist(j)
        return tuple(results)

    def forget_keys(self, j: Journal, keys: Iterable[tuple[str, str]]) -> int:
        """Drop these (knob, target) entries without writing anything; the number dropped.

        For objects that are gone (a thread that exited has nothing to restore,
        and its tid may be reused by an unrelated thread that must not get the
        original). Keys not journaled are ignored; one crash-safe save.
        """
        chosen = [e for k in set(keys) if (e := j.find(*k)) is not None]
        if chosen:
            j.remove_entries(chosen)
            self._persist(j)
        return len(chosen)

    @staticmethod
    def _persist(j: Journal) -> None:
        if j.entries:
            j.save()
        else:
            j.delete()

