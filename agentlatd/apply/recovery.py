"""The journal's keeper: adopt, restore or set aside a journal found at start; roll back.

Owns the Engine's current Journal and what recover() decided about the one it
found (engine.py's docstring lists the cases: interrupted run restored,
finished run adopted, another boot set aside, another root or live network
namespace refused, damaged salvaged). The restores themselves are
apply/restore.py's.
"""

from __future__ import annotations

import os

from agentlatd.apply import journal_read, journal_salvage
from agentlatd.apply.journal import Journal, JournalDamaged
from agentlatd.apply.knobio import KnobIO
from agentlatd.apply.knobs import netns_scoped
from agentlatd.apply.reports import RecoverReport, Recovery, RollbackReport
from agentlatd.apply.restore import Restorer
from agentlatd.apply.statelock import StateLock
from agentlatd.errors import JournalError
from agentlatd.sample import namespaces
from agentlatd.sysfs.root import Root


class JournalKeeper:
    def __init__(self, io: KnobIO, lock: StateLock, restorer: Restorer,
                 journal_path: str) -> None:
        self._io = io
        self._statelock = lock
        self._restorer = restorer
        self.journal_path = journal_path
        self._journal: Journal | None = None
        self._recovered: RecoverReport | None = None
        self._netns_note = ""  # _check_owner(): entries of a vanished namespace dropped

    @property
    def root(self) -> Root:
        return self._io.root

    @property
    def journal(self) -> Journal | None:
        """The journal in use (None before recover() or rollback())."""
        return self._journal

    @property
    def recovered(self) -> bool:
        """recover() (or rollback()) has dealt with the journal found at start."""
        return self._recovered is not None

    def _restore(self, j: Journal, *, damaged: str = "", kept_as: str = "") -> RollbackReport:
        return self._restorer.restore_all(j, damaged=damaged, kept_as=kept_as,
                                          note=self._netns_note)

    def _identity(self) -> tuple[str, str]:
        netns = self.root.readlink("proc/self/ns/net") if self.root.is_host else ""
        boot = self.root.read_optional("proc/sys/kernel/random/boot_id")
        return netns, boot

    def _fresh(self) -> Journal:
        netns, boot = self._identity()
        return Journal(path=self.journal_path, root=self.root.base, netns=netns, boot_id=boot,
                       netns_cookie=namespaces.own_netns_cookie() if netns else 0)

    def _check_owner(self, j: Journal) -> str:
        """Refuse a journal of another root or of another LIVE network namespace.

        A journal of a network namespace that no longer exists (`ip netns del`
        after a crash) is not refused: its device entries are dropped from `j`
        and named in the note returned ("" when nothing was dropped). Virtual
        devices (veth, macvlan) were deleted with the namespace; a physical
        NIC was moved back to the initial namespace (net/core/dev.c
        default_device_exit), possibly renamed, and a name-keyed entry cannot
        tell it from another device of that name there: reported, never
        written. Its other entries (tasks, IRQs, CPUs) act on objects of no
        namespace and stay to be restored. A namespace is told by its inode
        number AND its cookie: the number of a deleted namespace is handed to
        the next one made (sample/namespaces.py), which then neither blocks
        this journal nor gets its device entries.
        """
        if os.path.abspath(j.root) != self.root.base:
            raise JournalError(f"rollback journal {j.path} applies to root {j.root}, not "
                               f"{self.root.base}: use its own --root or another --state-dir")
        netns, _ = self._identity()
        if not (j.netns and netns):
            return ""
        if not namespaces.journal_netns_gone(self.root, j.netns, j.netns_cookie, netns):
            if j.netns == netns:
                return ""  # ours
            raise JournalError(f"rollback journal {j.path} was written in network namespace "
                               f"{j.netns}; this process is in {netns}: run agentlatd there "
                               f"(ip netns exec NAME agentlatd ...)")
        gone = [e for e in j.entries if netns_scoped(e.knob, e.target)]
        j.remove_entries(gone)
        old, j.netns, j.netns_cookie = j.netns, netns, namespaces.own_netns_cookie()
        shown = ", ".join(f"{e.knob} {e.target}" for e in gone[:6])
        more = f" and {len(gone) - 6} more" if len(gone) > 6 else ""
        return (f"network namespace {old} of the journal no longer exists: "
                f"{len(gone)} entr{'y' if len(gone) == 1 else 'ies'} of its devices dropped, "
                f"nothing left to restore there ({shown or 'none'}{more}); "
                f"{len(j.entries)} other entr{'y' if len(j.entries) == 1 else 'ies'} kept")

    def _stale_boot(self, j: Journal) -> bool:
        _, boot = self._identity()
        return bool(j.boot_id and boot and j.boot_id != boot)

    def _load(self) -> tuple[Journal | None, RollbackReport | None, str]:
        """Load the journal under the lock. A damaged one is salvaged and restored at once.

        Returns (journal or None, rollback report of a salvage, set-aside message).
        """
        try:
            j = journal_read.load(self.journal_path)
        except JournalDamaged as e:
            sal = journal_salvage.salvage(self.journal_path, default_root=self.root.base)
            if sal.root_known:
                self._netns_note = self._check_owner(sal.journal)
            j = sal.journal
            j.path = self.journal_path
            rep = self._restore(j, damaged=f"{e.problem}; {sal.lines_lost} damaged line(s) lost"
                                if sal.lines_lost else e.problem, kept_as=sal.kept_as)
            return None if rep.journal_removed else j, rep, ""
        if j is None:
            return None, None, ""
        self._netns_note = self._check_owner(j)
        if self._stale_boot(j):
            kept = journal_salvage.set_aside(self.journal_path, ".stale-boot")
            return None, None, (f"rollback journal from an earlier boot (boot id {j.boot_id}) "
                                f"kept as {kept}, not replayed: the kernel state it describes "
                                "is gone")
        return j, None, ""

    def acquire(self) -> None:
        """Lock the state directory and check its journal, writing nothing.

        For a daemon's start: every reason recover() would refuse (a journal
        agentlatd did not write, another root or network namespace) is raised
        here, before the daemon's first write. A damaged journal is not an
        error here: recover() salvages it.
        """
        self._statelock.take()
        try:
            j = journal_read.load(self.journal_path)
        except JournalDamaged:
            return
        if j is not None:
            self._check_owner(j)  # raises for a live foreign namespace; `j` is a copy

    # -- recover ---------------------------------------------------------
    def recover(self) -> RecoverReport:
        """Deal with a journal left by an earlier run (see the module docstring)."""
        if self._recovered is not None:
            return self._recovered
        self._statelock.take()
        j, salvaged, aside = self._load()
        if salvaged is not None:
            rep = RecoverReport(Recovery.RESTORED, f"damaged journal salvaged: {salvaged.damaged}; "
                                f"kept as {salvaged.kept_as}", salvaged)
            self._journal = j if j is not None else self._fresh()
        elif aside:
            rep = RecoverReport(Recovery.SET_ASIDE, aside)
            self._journal = self._fresh()
        elif j is None:
            rep = RecoverReport(Recovery.NONE, "no journal: nothing to recover")
            self._journal = self._fresh()
        elif not j.complete:
            rb = self._restore(j)
            rep = RecoverReport(Recovery.RESTORED, f"journal of an interrupted run (pid {j.pid}): "
                                f"{len(rb.results)} original(s) restored before anything else"
                                + ("" if rb.ok else "; some could not be restored")
                                + (f"; {self._netns_note}" if self._netns_note else ""), rb)
            self._journal = j if not rb.journal_removed else self._fresh()
        else:
            rep = RecoverReport(Recovery.ADOPTED, f"journal of a finished run (pid {j.pid}) adopted: "
                                f"{len(j.entries)} original(s) kept for rollback"
                                + (f"; {self._netns_note}" if self._netns_note else ""))
            self._journal = j
        self._recovered = rep
        return rep

    def current(self) -> Journal:
        self.recover()
        assert self._journal is not None
        return self._journal


    def rollback(self) -> RollbackReport:
        """Restore every journaled original, in reverse order."""
        self._statelock.take()
        if self._recovered is not None and self._journal is not None:
            j: Journal | None = self._journal
            salvaged, aside = None, ""
        else:
            j, salvaged, aside = self._load()
        self._recovered = RecoverReport(Recovery.NONE, "rolled back")
        if salvaged is not None:
            self._journal = j if j is not None else self._fresh()
            return salvaged
        if j is None:
            self._journal = self._fresh()
            return RollbackReport((), self.journal_path, False,
                                  notes=(aside or "no journal: nothing to roll back",))
        rep = self._restore(j)
        self._journal = j if not rep.journal_removed else self._fresh()
        return rep

