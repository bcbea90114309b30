"""The apply phase: journal each original, write, read back, verify.

For each Change: skip a superseded, unknown, managed, yielded, refused or
irqbalance-owned knob; read the current value and skip a no-op; journal the
original (with the device's identity) and save the journal, crash-safe, BEFORE
the first kernel write (style.md habit 6); write; read back (the kernel may
clamp or ignore: reported "clamped"); handle a failure by its ErrClass, never
by raw errno. One failing knob never stops the others. A failed save writes
nothing and leaves nothing behind, in memory either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentlatd.apply import irqbalance
from agentlatd.apply.identity import DeviceId
from agentlatd.apply.journal import FLAG_INHERITED, FLAG_MANAGED, FLAG_YIELDED, Entry, Journal
from agentlatd.apply.knobio import KnobIO
from agentlatd.apply.knobs import Knob
from agentlatd.apply.refusals import Refusals
from agentlatd.apply.reports import (
    CHANGED,
    CLAMPED,
    FAILED,
    MANAGED,
    PLANNED,
    SKIPPED,
    UNCHANGED,
    UNSUPPORTED,
    KnobResult,
    Status,
    sentence,
)
from agentlatd.errors import AgentlatdError, JournalError, KernelError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.kernel.knobnames import KnobName
from agentlatd.plan.changes import Change
from agentlatd.policy import Policy
from agentlatd.sysfs.root import Root


@dataclass(slots=True)
class _Pending:
    change: Change
    knob: Knob
    current: str
    entry: Entry
    new_entry: bool
    result: KnobResult | None = field(default=None)
    prev_written: str | None = None  # entry.written before this batch
    prev_original: str = ""  # entry.original before this batch (an entry it did not add)
    inherited: bool = False  # journaled Change.inherited_original, not the value read


def _ban_not_landed(p: _Pending, changes: list[Change], results: list[KnobResult | None],
                    pending_ban: frozenset[str]) -> KnobResult | None:
    """A SKIPPED result for an irq.affinity write whose hand-over rests on a ban
    change of this batch (irqbalance.banned_irqs, or --banirq through
    irqbalance.env_banned_cpus) that was not written: steering it anyway would
    start the fight with irqbalance the ban exists to prevent. None: write it.
    The ban changes sort before irq.affinity (plan/build.py KNOB_ORDER), so
    their results are known here."""
    c = p.change
    if c.knob != KnobName.IRQ_AFFINITY or c.target_text not in pending_ban:
        return None
    for k, other in enumerate(changes):
        r = results[k]
        if (r is not None and r.status in (CHANGED, CLAMPED, UNCHANGED)
                and c.target_text in irqbalance.handed_over((other,), ())):
            return None
    return KnobResult(c.knob, c.target_text, SKIPPED, p.knob.original_of(p.current, c.desired),
                      c.desired, "", None,
                      f"IRQ {c.target_text} is irqbalance's: the ban that hands it over to agentlatd "
                      "was not written in this batch, so it is left where irqbalance keeps it",
                      c.reason)


class BatchWriter:
    def __init__(self, io: KnobIO, refusals: Refusals) -> None:
        self._io = io
        self._refusals = refusals

    @property
    def root(self) -> Root:
        return self._io.root

    def run(self, changes: list[Change], j: Journal | None, journaled: Journal | None,
            policy: Policy, *, dry_run: bool = False, bracket: bool = True
            ) -> tuple[tuple[KnobResult, ...], tuple[str, ...]]:
        """Apply `changes` in order, journaling in `j` (None: dry run); every change
        gets a KnobResult. `journaled` is the engine's journal, read even in a dry run
        (the IRQs irqbalance was handed). Returns the results and the notes.

        `bracket`: the journal says "incomplete" while the writes run (a crash then
        restores rather than adopts it: engine.py). False for writes whose entries
        are restored at every start whatever the journal says (the agent side's):
        the flag is left as it is, and when every write lands as journaled the
        save after the writes has nothing to append."""
        notes: list[str] = []
        pids: tuple[int, ...] = ()
        if any(c.knob == KnobName.IRQ_AFFINITY for c in changes):
            pids = irqbalance.running(self.root)
            msg = irqbalance.note(policy.daemon.irqbalance, pids)
            if msg:
                notes.append(msg)
        steer = irqbalance.steers_irqs(policy.daemon.irqbalance, pids)
        # "cooperate": only IRQs banned in irqbalance (this batch or the journal) are steered
        cooperate = bool(pids) and not steer and policy.daemon.irqbalance == "cooperate"
        entries = journaled.entries if journaled else ()
        handed = irqbalance.handed_over(changes, entries) if cooperate else frozenset()
        # handed over by the journal already; the rest only once this batch's ban landed
        held = irqbalance.handed_over((), entries) if cooperate else frozenset()

        # the last change of a knob instance wins; earlier ones are superseded
        last: dict[tuple[str, str], int] = {c.key: i for i, c in enumerate(changes)}
        results: list[KnobResult | None] = [None] * len(changes)
        ids: dict[str, DeviceId | None] = {}
        dropped = False
        pending: list[tuple[int, _Pending]] = []
        for i, c in enumerate(changes):
            def res(status: Status, message: str = "", *, before: str = "",
                    errclass: ErrClass | None = None, c: Change = c) -> KnobResult:
                return KnobResult(c.knob, c.target_text, status, before, c.desired, "",
                                  errclass, message, c.reason)

            if last[c.key] != i:
                results[i] = res(SKIPPED, "superseded by a later change of the same knob")
                continue
            knob = self._io.knob(c.knob)
            if knob is None:
                results[i] = res(FAILED, f"no knob named {str(c.knob)!r} in this build",
                                 errclass=ErrClass.INVALID)
                continue
            try:
                knob.check_target(c.target_text)
            except ValueError as e:
                results[i] = res(FAILED, str(e), errclass=ErrClass.INVALID)
                continue
            if knob.live_only and not self.root.is_host:
                # a recorded tree's "eth0" or pid is not this host's: never reach them
                results[i] = res(UNSUPPORTED, f"{c.knob} acts on the live kernel only; "
                                 f"{self.root.base} is a recorded tree",
                                 errclass=ErrClass.UNSUPPORTED)
                continue
            entry = j.find(c.knob, c.target_text) if j is not None else None
            if entry is not None and j is not None:
                other = self._io.replaced(knob, entry, ids)
                if other is not None:
                    # the journaled original belongs to a device that is gone; the
                    # one with its name now starts from its own value
                    assert entry.device is not None
                    notes.append(f"{c.knob} {c.target_text}: device replaced "
                                 f"({entry.device.differs(other)}); the original journaled "
                                 "for the old device is dropped, not restored")
                    j.remove_entry(entry)
                    entry = None
                    dropped = True
            if entry is not None and entry.has(FLAG_INHERITED) and j is not None and not dry_run:
                # a forked process that registered itself: agentlatd's own value
                # from now on, with the original its agent had (agents/forks.py)
                entry.flags = [f for f in entry.flags if f != FLAG_INHERITED]
            if entry is not None and entry.has(FLAG_MANAGED):
                results[i] = res(MANAGED, "kernel-managed IRQ (EIO earlier): not retried",
                                 errclass=ErrClass.MANAGED)
                continue
            if entry is not None and entry.has(FLAG_YIELDED):
                results[i] = res(SKIPPED, "another writer changed it after agentlatd; "
                                          "yielded (policy daemon.drift = \"yield\")")
                continue
            again = self._refusals.recall(c)
            if again is not None:
                results[i] = again
                continue
            if c.knob == KnobName.IRQ_AFFINITY and not steer and c.target_text not in handed:
                results[i] = res(SKIPPED, irqbalance.skip_reason(policy.daemon.irqbalance))
                continue
            try:
                current = knob.read(self.root, c.target_text)
            except KernelError as e:
                st = UNSUPPORTED if e.errclass is ErrClass.UNSUPPORTED else FAILED
                results[i] = res(st, sentence(e), errclass=e.errclass)
                self._refusals.hold(c, results[i])
                continue
            except (ValueError, AgentlatdError) as e:
                results[i] = res(FAILED, f"cannot read: {e}", errclass=ErrClass.INVALID)
                continue
            shown = knob.original_of(current, c.desired)  # the fields this change names
            # a thread that inherited agentlatd's value: journal the original the
            # change names (plan/changes.py) and write the same value again
            same = knob.equal(current, c.desired)
            inherited = (same and c.inherited_original is not None and entry is None
                         and not dry_run and not knob.equal(c.inherited_original, c.desired))
            if same and not inherited:
                if (not dry_run and entry is not None and entry.written is not None
                        and not knob.equal(entry.written, c.desired)):
                    # agentlatd's own earlier value is gone but the kernel shows what
                    # the plan wants now (a driver re-spread its queues on CPU
                    # hotplug to where the new partition steers them): that is
                    # agentlatd's value from here on, or check_drift would call
                    # it another writer's
                    entry.written = c.desired
                results[i] = res(UNCHANGED, "already right", before=shown)
                continue
            if dry_run:
                why = knob.refusal(self.root, c.target_text, c.desired)
                if why is not None:
                    results[i] = res(UNSUPPORTED, why, before=shown, errclass=ErrClass.UNSUPPORTED)
                else:
                    results[i] = res(PLANNED, "would be written", before=shown)
                continue
            assert j is not None
            new = entry is None
            prev_original = entry.original if entry is not None else ""
            if entry is None:
                original = (c.inherited_original if inherited and c.inherited_original is not None
                            else knob.original_of(current, c.desired))
                entry = j.add(c.knob, c.target_text, original,
                              device=self._io.device_id(knob, c.target_text, ids))
            else:
                entry.original = knob.merge_original(entry.original,
                                                     knob.original_of(current, c.desired))
            pending.append((i, _Pending(c, knob, current, entry, new, prev_written=entry.written,
                                        prev_original=prev_original, inherited=inherited)))

        if pending:
            assert j is not None
            # originals durable BEFORE the first write (style.md habit 6), with
            # the values about to be written: when every write lands as planned
            # the save after the writes appends only "complete" (journal.py), or
            # nothing when not bracketed
            for _, p in pending:
                p.entry.written = p.change.desired
            was_complete = j.complete
            if bracket:
                j.complete = False
            try:
                j.save()
            except JournalError:
                # nothing was written: the batch leaves nothing behind, in memory
                # either. An original kept here would reach the file with the
                # next save and be "restored" at stop over a value agentlatd
                # never changed (the process's own later choice)
                for _, p in pending:
                    p.entry.written = p.prev_written
                    if not p.new_entry and p.entry.original != p.prev_original:
                        p.entry.original = p.prev_original
                j.remove_entries([p.entry for _, p in pending if p.new_entry])
                j.complete = was_complete
                raise
            self._io.saved_first()
            failed: list[Entry] = []
            for i, p in pending:
                r = (_ban_not_landed(p, changes, results, handed - held)
                     or self._write_one(p))
                results[i] = r
                self._refusals.hold(p.change, r)
                if r.status not in (CHANGED, CLAMPED) and p.entry.written != p.prev_written:
                    p.entry.written = p.prev_written  # not written: the kernel kept its value
                if (p.new_entry and p.entry.written is None and not p.entry.has(FLAG_MANAGED)
                        and (p.inherited or self._untouched(p))):
                    # the write failed: the kernel kept its value, nothing to restore
                    # (an inherited value stays as it was born: the write refused
                    # here, for the owner's credentials, is the restore's write)
                    failed.append(p.entry)
            j.remove_entries(failed)
            if bracket:
                j.complete = True
            if not j.entries:
                j.delete()
            else:
                # what changed since the save above (a write that failed, a clamped
                # value), and "complete" when bracketed
                j.save()
        elif j is not None and j.entries:
            j.save()  # an adopted value, a replaced device's entry dropped; else no write
        elif j is not None and dropped:
            j.delete()
        return tuple(r for r in results if r is not None), tuple(notes)

    def _untouched(self, p: _Pending) -> bool:
        """After a failed write: the kernel still shows the original. A knob that
        writes several files (napi.config's sysfs fallback) can fail half way;
        its entry then stays, or the half that landed would never be restored."""
        try:
            now = p.knob.read(self.root, p.change.target_text)
        except (KernelError, ValueError, AgentlatdError):
            return False
        return p.knob.equal(p.knob.original_of(now, p.change.desired), p.entry.original)

    def _write_one(self, p: _Pending) -> KnobResult:
        c, knob = p.change, p.knob

        def res(status: Status, message: str, after: str = "",
                errclass: ErrClass | None = None) -> KnobResult:
            return KnobResult(c.knob, c.target_text, status, knob.original_of(p.current, c.desired),
                              c.desired, after,
                              errclass, message, c.reason)

        try:
            if c.owner is None:
                knob.write(self.root, c.target_text, c.desired)
            else:
                knob.write_for(self.root, c.target_text, c.desired, c.owner)
        except KernelError as e:
            if e.errclass is ErrClass.MANAGED:
                p.entry.set_flag(FLAG_MANAGED)
                return res(MANAGED, sentence(e), errclass=e.errclass)
            st = UNSUPPORTED if e.errclass is ErrClass.UNSUPPORTED else FAILED
            return res(st, sentence(e), errclass=e.errclass)
        except ValueError as e:
            return res(FAILED, str(e), errclass=ErrClass.INVALID)
        except AgentlatdError as e:
            return res(FAILED, str(e), errclass=ErrClass.IO)
        self._io.wrote()
        try:
            ok, shown = knob.verify(self.root, c.target_text, c.desired)
        except (KernelError, ValueError) as e:
            p.entry.written = c.desired
            return res(CHANGED, f"written; reading it back failed: {e}")
        if ok:
            p.entry.written = c.desired
            return res(CHANGED, "written and read back", shown)
        # the kernel clamped or ignored it: remember what it shows, so the
        # next tick does not mistake the kernel's own value for drift
        try:
            p.entry.written = knob.read(self.root, c.target_text)
        except (KernelError, ValueError):
            p.entry.written = shown
        return res(CLAMPED, f"written {c.desired!r}; the kernel shows {shown!r}", shown)

    # -- single entries --------------------------------------------------
