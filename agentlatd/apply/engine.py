"""The tuning engine: apply a plan's Changes through Knobs, journal, verify, roll back.

style.md habits 5-7. For each Change the engine reads the current value, skips
a no-op, journals the original before the first write (crash-safe, see
journal.py), writes, reads back (the kernel may clamp or ignore: reported
"clamped"), and handles a failure by its ErrClass, never by raw errno. One
failing knob never stops the others. Rollback restores every original in
reverse order and removes the journal only when every entry is back.

A journal found at start (recover()):
  - complete = false: a run died in the middle of a batch of writes (kill -9,
    OOM, power). It is RESTORED before anything else: the batch's written
    values are unknown (a crash can land between a write and the journal
    update), and a half-applied plan (IRQs moved, RPS not) is a state nobody
    chose. Restoring returns the host to the last state a person saw; the new
    run then applies its plan from there.
  - complete = true: the previous run finished its batch and left its changes
    in place on purpose (`agentlatd apply` is one-shot and exits; a daemon
    killed between ticks). It is ADOPTED: its originals stay the originals
    (re-reading now would journal agentlatd's own values as "original") and
    the next apply continues from it; `agentlatd rollback` undoes both.
  - from another boot (boot_id differs): the kernel state it describes is
    gone; it is renamed journal.json.stale-boot and not replayed.
  - for another root or network namespace: refused with a JournalError (a
    sysfs path in another namespace is another device).
  - damaged: kept aside as journal.json.corrupt, every entry that still parses
    is restored, and the report says what was wrong.

Drift (check_drift): a journaled knob whose value is no longer what agentlatd
wrote was changed by another writer. policy.daemon.drift = "yield" reports it
and stops managing it (flag "yielded"; rollback still restores the original,
as etc/agentlatd.toml documents); "reassert" writes agentlatd's value back.

Kernel-managed IRQs (EIO on smp_affinity_list on 6.1, EPERM on 6.12 where the
file is 0444: both ErrClass.MANAGED, seen in the VM tier) are flagged in the
journal and never written again while the journal lives (the daemon's
lifetime, or until `agentlatd rollback`).

Use (the daemon keeps one Engine, and its lock, for its lifetime):
    with Engine(root, policy.daemon.state_dir, policy=policy) as eng:
        eng.recover()                      # first, before any other write
        report = eng.apply(plan.changes)   # each tick; no-ops cost one read each
        drifted = eng.check_drift()        # each tick
        ...
        eng.rollback()                     # on stop

Write points: Engine(write_hook=f) calls f(0) once a batch's journal is
saved while no kernel write has been made yet, and f(n) right after the nth
successful kernel write (apply, reassert or restore writes, counted per
Engine). Nothing in agentlatd passes one and nothing reads it from the
environment: fault-injection tests do (tests/support/launch.py kills the
process at a chosen point, tests/apply/test_crash.py at every one of them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import fcntl
import os
import shlex
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agentlatd import safepath
from agentlatd.apply import irqbalance, journal
from agentlatd.apply.identity import DeviceId, netns_inode, read_device_id
from agentlatd.apply.journal import (
    FLAG_MANAGED,
    FLAG_YIELDED,
    Entry,
    Journal,
    JournalDamaged,
    JournalUntrusted,
)
from agentlatd.apply.knobs import REGISTRY, Knob, netns_scoped
from agentlatd.errors import AgentlatdError, JournalError, KernelError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.kernel.knobnames import KnobName
from agentlatd.plan.changes import CPUMASK_KNOBS, Change, human_value
from agentlatd.policy import Policy
from agentlatd.sample import namespaces
from agentlatd.sysfs.root import HOST, Root


class Status(enum.StrEnum):
    """What happened to one knob instance in an apply or a rollback (KnobResult.status).

    The values are what `apply --json`, `rollback --json`, status JSON and
    metrics carry; a member compares equal to its value.
    """

    CHANGED = "changed"  # written and read back as desired
    UNCHANGED = "unchanged"  # already right: no write
    CLAMPED = "clamped"  # written, but the kernel shows another value (clamped or ignored)
    FAILED = "failed"  # the write (or the read before it) failed
    UNSUPPORTED = "unsupported"  # the device or kernel lacks the knob (EOPNOTSUPP): not fatal
    MANAGED = "managed"  # kernel-managed IRQ: recorded, never retried
    SKIPPED = "skipped"  # not attempted (irqbalance refuse, yielded to another writer)
    PLANNED = "planned"  # --dry-run: would be written
    # rollback statuses (plus UNCHANGED, FAILED, CLAMPED, MANAGED)
    RESTORED = "restored"
    GONE = "gone"  # the object vanished (device removed): nothing left to restore
    REPLACED = "replaced"  # another device took the name: the original is not its own


CHANGED = Status.CHANGED
UNCHANGED = Status.UNCHANGED
CLAMPED = Status.CLAMPED
FAILED = Status.FAILED
UNSUPPORTED = Status.UNSUPPORTED
MANAGED = Status.MANAGED
SKIPPED = Status.SKIPPED
PLANNED = Status.PLANNED
RESTORED = Status.RESTORED
GONE = Status.GONE
REPLACED = Status.REPLACED


class Recovery(enum.StrEnum):
    """What recover() did with a journal found at start (RecoverReport.action)."""

    NONE = "none"
    ADOPTED = "adopted"
    RESTORED = "restored"
    SET_ASIDE = "set-aside"


class DriftAction(enum.StrEnum):
    """What check_drift() did about a knob another writer changed (Drift.action)."""

    YIELDED = "yielded"
    REASSERTED = "reasserted"
    FAILED = "failed"
    UNREADABLE = "unreadable"
    REPLACED = "replaced"  # another device took the name: dropped from the journal


# an apply result after which the knob holds the value asked for (or what the kernel made of it)
WRITTEN = frozenset({CHANGED, CLAMPED})
# knobs whose restore spreads to threads and processes that inherited the value
_TASK_KNOBS = frozenset({KnobName.TASK_AFFINITY, KnobName.TASK_NICE, KnobName.TASK_IOPRIO})
# rollback statuses after which an entry leaves the journal
DONE = frozenset({RESTORED, UNCHANGED, GONE, MANAGED, REPLACED})

_ADVICE: dict[ErrClass, str] = {
    ErrClass.MANAGED: "the kernel manages this IRQ's affinity; recorded, never retried",
    ErrClass.NO_SPACE: "no free interrupt vector on those CPUs; a wider CPU set may fit",
    ErrClass.TRANSIENT: "busy; a later tick tries again",
    ErrClass.GONE: "the object vanished; the next tick rescans",
    ErrClass.UNSUPPORTED: "not supported by this device or kernel",
    ErrClass.INVALID: "the kernel refused the value",
    ErrClass.DENIED: "not permitted (root? read-only filesystem? LSM?)",
    ErrClass.IO: "I/O error",
}


def _sentence(e: KernelError) -> str:
    return f"{e} -- {_ADVICE.get(e.errclass, '')}".rstrip(" -")


# ---------------------------------------------------------------------------
# reports


@dataclass(frozen=True, slots=True)
class KnobResult:
    """What happened to one knob instance in an apply or a rollback."""

    knob: str
    target: str
    status: Status
    before: str = ""  # value read before writing ("" when unknown)
    desired: str = ""  # value asked for (apply: the plan's; rollback: the original)
    after: str = ""  # value read back after writing ("" when not written)
    errclass: ErrClass | None = None
    message: str = ""  # one sentence for a person
    reason: str = ""  # the plan's reason (apply)

    def to_json(self) -> dict[str, Any]:
        # before/after as people read them (CPU lists); desired is the literal value written
        return {"knob": self.knob, "target": self.target, "status": str(self.status),
                "before": human_value(self.knob, self.before), "desired": self.desired,
                "after": human_value(self.knob, self.after),
                "errclass": None if self.errclass is None else str(self.errclass),
                "message": self.message, "reason": self.reason}


def _counts(results: Iterable[KnobResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[str(r.status)] = out.get(str(r.status), 0) + 1
    return out


@dataclass(frozen=True, slots=True)
class RollbackReport:
    results: tuple[KnobResult, ...]
    journal: str
    journal_removed: bool
    damaged: str = ""  # what was wrong with a damaged journal ("" = it was fine)
    kept_as: str = ""  # where a damaged journal was kept
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Every original is back and nothing was lost."""
        return not self.damaged and all(r.status in DONE for r in self.results)

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "journal": self.journal, "journal_removed": self.journal_removed,
                "damaged": self.damaged, "kept_as": self.kept_as, "notes": list(self.notes),
                "summary": _counts(self.results), "results": [r.to_json() for r in self.results]}


@dataclass(frozen=True, slots=True)
class RecoverReport:
    action: Recovery
    message: str
    rollback: RollbackReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {"action": str(self.action), "message": self.message,
                "rollback": self.rollback.to_json() if self.rollback else None}


@dataclass(frozen=True, slots=True)
class ApplyReport:
    results: tuple[KnobResult, ...]
    journal: str
    recovery: RecoverReport | None = None
    notes: tuple[str, ...] = ()
    dry_run: bool = False

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> bool:
        """A knob failed for a reason other than lack of support or a managed IRQ."""
        return any(r.status == FAILED for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"ok": not self.failed, "dry_run": self.dry_run, "journal": self.journal,
                "recovery": self.recovery.to_json() if self.recovery else None,
                "notes": list(self.notes), "summary": _counts(self.results),
                "results": [r.to_json() for r in self.results]}


@dataclass(frozen=True, slots=True)
class Drift:
    """A knob another writer changed after agentlatd set it."""

    knob: str
    target: str
    expected: str  # what agentlatd wrote
    actual: str  # what the kernel shows now
    action: DriftAction
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"knob": self.knob, "target": self.target, "expected": self.expected,
                "actual": self.actual, "action": str(self.action), "message": self.message}


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


# ---------------------------------------------------------------------------


class Engine:
    """Applies and rolls back knob changes on one Root, journaling under state_dir.

    Holds an exclusive lock on <state_dir>/lock from its first operation until
    close() (a daemon holds it for its lifetime; a second agentlatd on the same
    state directory is refused, never interleaved). Use as a context manager.
    """

    def __init__(self, root: Root, state_dir: str, *, policy: Policy | None = None,
                 knobs: Mapping[str, Knob] | None = None,
                 write_hook: Callable[[int], None] | None = None) -> None:
        self.root = root
        self.state_dir = os.path.abspath(state_dir)
        self.policy = policy if policy is not None else Policy()
        # REGISTRY: every knob registered in this process; an entry point that may meet
        # any journal entry imports agentlatd.knobset first
        self._knobs = REGISTRY if knobs is None else knobs
        self._lock_fd: int | None = None
        self._journal: Journal | None = None
        self._recovered: RecoverReport | None = None
        self._writes = 0
        self._write_hook = write_hook  # the module docstring's write points
        self._netns_note = ""  # _check_owner(): entries of a vanished namespace dropped
        # (knob, target) -> (the value refused, the result): a knob the kernel refused for
        # good (unsupported, value invalid, not permitted) is not tried again with the same
        # value until forget_refusals(), which the daemon calls at each machine rescan:
        # without it every tick repeats the failing write (and its journal round trip)
        self._refused: dict[tuple[str, str], tuple[str, KnobResult]] = {}
        # one engine serves the daemon's tuner thread and its agent side (the main
        # loop): every call that reads or writes the journal is made holding this
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, blocking: bool = True) -> Iterator[bool]:
        """with engine.hold(blocking=False) as got: ...  -- got False: another thread has it."""
        got = self.lock.acquire(blocking)
        try:
            yield got
        finally:
            if got:
                self.lock.release()

    # -- lifecycle -------------------------------------------------------
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the fd drops the flock
            self._lock_fd = None

    @property
    def journal_path(self) -> str:
        return journal.journal_path(self.state_dir)

    def _lock(self) -> None:
        if self._lock_fd is not None:
            return
        # every component checked and opened without following a planted
        # symlink (agentlatd/safepath.py): the journal replayed as root at the
        # next start must be one only root could have written
        try:
            dfd = safepath.open_dir(self.state_dir, create=0o755)
        except safepath.UnsafePath as e:
            raise JournalError(f"cannot use state directory {self.state_dir}: "
                               f"{e.about(self.state_dir)}") from None
        except OSError as e:
            raise JournalError(f"cannot use state directory {self.state_dir}: {e.strerror}") from e
        try:
            fd = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600,
                         dir_fd=dfd)
        except OSError as e:
            raise JournalError(f"cannot use state directory {self.state_dir}: {e.strerror}") from e
        finally:
            os.close(dfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise JournalError(f"state directory {self.state_dir} is in use by another "
                                   f"agentlatd (pid {holder or '?'})") from None
            raise JournalError(f"cannot lock {self.state_dir}/lock: {e.strerror}") from e
        with contextlib.suppress(OSError):
            # the holder's pid is for the "in use by" message only: a full state
            # directory (ENOSPC on this write) must not stop a rollback, which
            # only removes the journal (tests/hostile/test_journal_damage.py)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        # a save interrupted by a crash leaves journal.json.tmp<pid> behind
        # (journal.json itself is the previous, consistent version)
        for name in os.listdir(self.state_dir):
            if name.startswith(journal.JOURNAL_NAME + ".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.state_dir, name))

    def _identity(self) -> tuple[str, str]:
        netns = self.root.readlink("proc/self/ns/net") if self.root.is_host else ""
        boot = self.root.read_optional("proc/sys/kernel/random/boot_id")
        return netns, boot

    def _fresh(self) -> Journal:
        netns, boot = self._identity()
        return Journal(path=self.journal_path, root=self.root.base, netns=netns, boot_id=boot)

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
        namespace and stay to be restored.
        """
        if os.path.abspath(j.root) != self.root.base:
            raise JournalError(f"rollback journal {j.path} applies to root {j.root}, not "
                               f"{self.root.base}: use its own --root or another --state-dir")
        netns, _ = self._identity()
        if not (j.netns and netns and j.netns != netns):
            return ""
        if namespaces.netns_in_use(self.root, j.netns):
            raise JournalError(f"rollback journal {j.path} was written in network namespace "
                               f"{j.netns}; this process is in {netns}: run agentlatd there "
                               f"(ip netns exec NAME agentlatd ...)")
        gone = [e for e in j.entries if netns_scoped(e.knob, e.target)]
        j.remove_entries(gone)
        old, j.netns = j.netns, netns
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
            j = journal.load(self.journal_path)
        except JournalDamaged as e:
            sal = journal.salvage(self.journal_path, default_root=self.root.base)
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
            kept = journal.set_aside(self.journal_path, ".stale-boot")
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
        self._lock()
        try:
            j = journal.load(self.journal_path)
        except JournalDamaged:
            return
        if j is not None:
            self._check_owner(j)  # raises for a live foreign namespace; `j` is a copy

    # -- recover ---------------------------------------------------------
    def recover(self) -> RecoverReport:
        """Deal with a journal left by an earlier run (see the module docstring)."""
        if self._recovered is not None:
            return self._recovered
        self._lock()
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

    def _j(self) -> Journal:
        self.recover()
        assert self._journal is not None
        return self._journal

    def managed(self) -> frozenset[tuple[str, str]]:
        """Knob instances the kernel manages (never written again)."""
        return frozenset(e.key for e in self._j().entries if e.has(FLAG_MANAGED))

    def refused(self) -> dict[tuple[str, str], KnobResult]:
        """The knobs held back until the next forget_refusals(), with why."""
        return {k: r for k, (_, r) in self._refused.items()}

    def forget_refusals(self) -> None:
        """Try refused knobs again (a machine rescan: a driver, link or kernel changed)."""
        self._refused.clear()

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._j().entries)

    # -- kernel writes ---------------------------------------------------
    def _wrote(self) -> None:
        self._writes += 1
        if self._write_hook is not None:
            self._write_hook(self._writes)

    def _knob(self, name: str) -> Knob | None:
        return self._knobs.get(name)

    def _device_id(self, knob: Knob, target: str,
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

    def _replaced(self, knob: Knob, e: Entry,
                  cache: dict[str, DeviceId | None]) -> DeviceId | None:
        """The device now named like e's, when it is not the device e was journaled for."""
        if e.device is None:
            return None
        now = self._device_id(knob, e.target, cache)
        return now if now is not None and now != e.device else None

    # -- apply -----------------------------------------------------------
    def apply(self, changes: Iterable[Change], *, dry_run: bool = False) -> ApplyReport:
        """Apply `changes` in order; every one gets a KnobResult."""
        changes = list(changes)
        recovery: RecoverReport | None = None
        if not dry_run:
            first = self._recovered is None
            recovery = self.recover()
            if not first or recovery.action is Recovery.NONE:
                recovery = None
        j = self._journal if not dry_run else None

        notes: list[str] = []
        pids: tuple[int, ...] = ()
        if any(c.knob == KnobName.IRQ_AFFINITY for c in changes):
            pids = irqbalance.running(self.root)
            msg = irqbalance.note(self.policy.daemon.irqbalance, pids)
            if msg:
                notes.append(msg)
        steer = irqbalance.steers_irqs(self.policy.daemon.irqbalance, pids)
        # "cooperate": only IRQs banned in irqbalance (this batch or the journal) are steered
        handed = (irqbalance.handed_over(changes, self._journal.entries if self._journal else ())
                  if pids and not steer and self.policy.daemon.irqbalance == "cooperate"
                  else frozenset())

        # the last change of a knob instance wins; earlier ones are superseded
        last: dict[tuple[str, str], int] = {c.key: i for i, c in enumerate(changes)}
        results: list[KnobResult | None] = [None] * len(changes)
        ids: dict[str, DeviceId | None] = {}
        dropped = False
        pending: list[tuple[int, _Pending]] = []
        for i, c in enumerate(changes):
            def res(status: Status, message: str = "", *, before: str = "",
                    errclass: ErrClass | None = None, c: Change = c) -> KnobResult:
                return KnobResult(c.knob, c.target, status, before, c.desired, "",
                                  errclass, message, c.reason)

            if last[c.key] != i:
                results[i] = res(SKIPPED, "superseded by a later change of the same knob")
                continue
            knob = self._knob(c.knob)
            if knob is None:
                results[i] = res(FAILED, f"no knob named {str(c.knob)!r} in this build",
                                 errclass=ErrClass.INVALID)
                continue
            try:
                knob.check_target(c.target)
            except ValueError as e:
                results[i] = res(FAILED, str(e), errclass=ErrClass.INVALID)
                continue
            if knob.live_only and not self.root.is_host:
                # a recorded tree's "eth0" or pid is not this host's: never reach them
                results[i] = res(UNSUPPORTED, f"{c.knob} acts on the live kernel only; "
                                 f"{self.root.base} is a recorded tree",
                                 errclass=ErrClass.UNSUPPORTED)
                continue
            entry = j.find(c.knob, c.target) if j is not None else None
            if entry is not None and j is not None:
                other = self._replaced(knob, entry, ids)
                if other is not None:
                    # the journaled original belongs to a device that is gone; the
                    # one with its name now starts from its own value
                    assert entry.device is not None
                    notes.append(f"{c.knob} {c.target}: device replaced "
                                 f"({entry.device.differs(other)}); the original journaled "
                                 "for the old device is dropped, not restored")
                    j.remove_entry(entry)
                    entry = None
                    dropped = True
            if entry is not None and entry.has(FLAG_MANAGED):
                results[i] = res(MANAGED, "kernel-managed IRQ (EIO earlier): not retried",
                                 errclass=ErrClass.MANAGED)
                continue
            if entry is not None and entry.has(FLAG_YIELDED):
                results[i] = res(SKIPPED, "another writer changed it after agentlatd; "
                                          "yielded (policy daemon.drift = \"yield\")")
                continue
            held = self._refused.get(c.key)
            if held is not None and held[0] == c.desired:
                r = held[1]
                results[i] = dataclasses.replace(
                    r, reason=c.reason, message=r.message.removesuffix(_HELD) + _HELD)
                continue
            if c.knob == KnobName.IRQ_AFFINITY and not steer and c.target not in handed:
                results[i] = res(SKIPPED, irqbalance.skip_reason(self.policy.daemon.irqbalance))
                continue
            try:
                current = knob.read(self.root, c.target)
            except KernelError as e:
                st = UNSUPPORTED if e.errclass is ErrClass.UNSUPPORTED else FAILED
                results[i] = res(st, _sentence(e), errclass=e.errclass)
                self._hold(c, results[i])
                continue
            except (ValueError, AgentlatdError) as e:
                results[i] = res(FAILED, f"cannot read: {e}", errclass=ErrClass.INVALID)
                continue
            shown = knob.original_of(current, c.desired)  # the fields this change names
            if knob.equal(current, c.desired):
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
                why = knob.refusal(self.root, c.target, c.desired)
                if why is not None:
                    results[i] = res(UNSUPPORTED, why, before=shown, errclass=ErrClass.UNSUPPORTED)
                else:
                    results[i] = res(PLANNED, "would be written", before=shown)
                continue
            assert j is not None
            new = entry is None
            prev_original = entry.original if entry is not None else ""
            if entry is None:
                entry = j.add(c.knob, c.target, knob.original_of(current, c.desired),
                              device=self._device_id(knob, c.target, ids))
            else:
                entry.original = knob.merge_original(entry.original,
                                                     knob.original_of(current, c.desired))
            pending.append((i, _Pending(c, knob, current, entry, new, prev_written=entry.written,
                                        prev_original=prev_original)))

        if pending:
            assert j is not None
            # originals durable BEFORE the first write (style.md habit 6), with
            # the values about to be written: when every write lands as planned
            # the save after the writes appends only "complete" (journal.py)
            for _, p in pending:
                p.entry.written = p.change.desired
            was_complete = j.complete
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
            if self._write_hook is not None and self._writes == 0:
                self._write_hook(0)
            failed: list[Entry] = []
            for i, p in pending:
                r = self._write_one(p)
                results[i] = r
                self._hold(p.change, r)
                if r.status not in (CHANGED, CLAMPED) and p.entry.written != p.prev_written:
                    p.entry.written = p.prev_written  # not written: the kernel kept its value
                if (p.new_entry and p.entry.written is None and not p.entry.has(FLAG_MANAGED)
                        and self._untouched(p)):
                    # the write failed: the kernel kept its value, nothing to restore
                    failed.append(p.entry)
            j.remove_entries(failed)
            j.complete = True
            if not j.entries:
                j.delete()
            else:
                j.save()  # appends what changed since the save above, at least "complete"
        elif j is not None and j.entries:
            j.save()  # an adopted value, a replaced device's entry dropped; else no write
        elif j is not None and dropped:
            j.delete()
        out = tuple(r for r in results if r is not None)
        return ApplyReport(out, self.journal_path, recovery, tuple(notes), dry_run)

    def _hold(self, c: Change, r: KnobResult | None) -> None:
        # device and kernel knobs only: a process knob (live_only: task.*) names threads
        # that come and go between ticks, and the agent applier retries them itself
        knob = self._knob(c.knob)
        if r is not None and r.errclass in _HOLD_BACK and knob is not None and not knob.live_only:
            self._refused[c.key] = (c.desired, r)

    def _untouched(self, p: _Pending) -> bool:
        """After a failed write: the kernel still shows the original. A knob that
        writes several files (napi.config's sysfs fallback) can fail half way;
        its entry then stays, or the half that landed would never be restored."""
        try:
            now = p.knob.read(self.root, p.change.target)
        except (KernelError, ValueError, AgentlatdError):
            return False
        return p.knob.equal(p.knob.original_of(now, p.change.desired), p.entry.original)

    def _write_one(self, p: _Pending) -> KnobResult:
        c, knob = p.change, p.knob

        def res(status: Status, message: str, after: str = "",
                errclass: ErrClass | None = None) -> KnobResult:
            return KnobResult(c.knob, c.target, status, knob.original_of(p.current, c.desired),
                              c.desired, after,
                              errclass, message, c.reason)

        try:
            if c.owner is None:
                knob.write(self.root, c.target, c.desired)
            else:
                knob.write_for(self.root, c.target, c.desired, c.owner)
        except KernelError as e:
            if e.errclass is ErrClass.MANAGED:
                p.entry.set_flag(FLAG_MANAGED)
                return res(MANAGED, _sentence(e), errclass=e.errclass)
            st = UNSUPPORTED if e.errclass is ErrClass.UNSUPPORTED else FAILED
            return res(st, _sentence(e), errclass=e.errclass)
        except ValueError as e:
            return res(FAILED, str(e), errclass=ErrClass.INVALID)
        except AgentlatdError as e:
            return res(FAILED, str(e), errclass=ErrClass.IO)
        self._wrote()
        try:
            ok, shown = knob.verify(self.root, c.target, c.desired)
        except (KernelError, ValueError) as e:
            p.entry.written = c.desired
            return res(CHANGED, f"written; reading it back failed: {e}")
        if ok:
            p.entry.written = c.desired
            return res(CHANGED, "written and read back", shown)
        # the kernel clamped or ignored it: remember what it shows, so the
        # next tick does not mistake the kernel's own value for drift
        try:
            p.entry.written = knob.read(self.root, c.target)
        except (KernelError, ValueError):
            p.entry.written = shown
        return res(CLAMPED, f"written {c.desired!r}; the kernel shows {shown!r}", shown)

    # -- single entries --------------------------------------------------
    def restore(self, keys: Iterable[tuple[str, str]]) -> tuple[KnobResult, ...]:
        """Restore the journaled originals of these (knob, target) instances only.

        For changes that end before the run does (an agent unregisters, a home
        CPU stops being exclusive). Newest entry first, as rollback() does; an
        entry whose original is back (or has nothing left to restore: gone,
        unchanged, kernel-managed) leaves the journal, a failed one stays for a
        later restore() or rollback(). Keys not journaled are ignored. The
        journal is saved once, crash-safe, or removed when it is empty.
        """
        j = self._j()
        chosen = [e for k in set(keys) if (e := j.find(*k)) is not None]
        if not chosen:
            return ()
        if len(chosen) > 1:
            pos = {id(e): n for n, e in enumerate(j.entries)}
            chosen.sort(key=lambda e: pos[id(e)])
        results: list[KnobResult] = []
        done: list[Entry] = []
        held = frozenset(x.key for x in j.entries)
        ids: dict[str, DeviceId | None] = {}
        for e in reversed(chosen):
            r = self._restore_one(e, held, ids)
            results.append(r)
            if r.status in DONE:
                done.append(e)
        if done:
            j.remove_entries(done)
            self._persist(j)
        return tuple(results)

    def forget(self, keys: Iterable[tuple[str, str]]) -> int:
        """Drop these (knob, target) entries without writing anything; the number dropped.

        For objects that are gone (a thread that exited has nothing to restore,
        and its tid may be reused by an unrelated thread that must not get the
        original). Keys not journaled are ignored; one crash-safe save.
        """
        j = self._j()
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

    # -- rollback --------------------------------------------------------
    def rollback(self) -> RollbackReport:
        """Restore every journaled original, in reverse order."""
        self._lock()
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

    def _restore(self, j: Journal, *, damaged: str = "", kept_as: str = "") -> RollbackReport:
        results: list[KnobResult] = []
        done: list[Entry] = []
        held = frozenset(x.key for x in j.entries)
        ids: dict[str, DeviceId | None] = {}
        for e in reversed(j.entries):
            r = self._restore_one(e, held, ids)
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
        notes: tuple[str, ...] = (self._netns_note,) if self._netns_note else ()
        if j.migrated_from:
            notes += (f"{j.path} was written in format {j.migrated_from}, without device "
                      "identities: its device originals were restored by device name",)
        if keep:
            notes += (f"{len(keep)} original(s) could not be restored and stay in {j.path}",)
        return RollbackReport(tuple(results), j.path, removed, damaged, kept_as, notes)

    def _restore_one(self, e: Entry, held: frozenset[tuple[str, str]] = frozenset(),
                     ids: dict[str, DeviceId | None] | None = None) -> KnobResult:
        """Restore one entry; `held` is every (knob, target) of its journal, `ids`
        the device identities read so far in this restore."""
        def res(status: Status, message: str, before: str = "", after: str = "",
                errclass: ErrClass | None = None) -> KnobResult:
            return KnobResult(e.knob, e.target, status, before, e.original, after,
                              errclass, message)

        if e.has(FLAG_MANAGED) and e.written is None:
            return res(MANAGED, "kernel-managed IRQ: agentlatd never changed it")
        knob = self._knob(e.knob)
        if knob is None:
            return res(FAILED, f"no knob named {e.knob!r} in this build; entry kept",
                       errclass=ErrClass.INVALID)
        if knob.live_only and not self.root.is_host:
            return res(FAILED, f"{e.knob} acts on the live kernel only; entry kept",
                       errclass=ErrClass.UNSUPPORTED)
        other = self._replaced(knob, e, {} if ids is None else ids)
        if other is not None:
            # never write one device's original onto another that took its name
            assert e.device is not None
            return res(REPLACED, f"device replaced, original not restored: journaled for "
                       f"{e.device.describe()}, now {other.describe()}")
        try:
            current = knob.read(self.root, e.target)
        except KernelError as err:
            if err.errclass is ErrClass.GONE:
                return res(GONE, f"{_sentence(err)}: nothing left to restore", errclass=err.errclass)
            return res(FAILED, _sentence(err), errclass=err.errclass)
        except (ValueError, AgentlatdError) as err:
            return res(FAILED, f"cannot read: {err}", errclass=ErrClass.INVALID)
        current = knob.original_of(current, e.original)  # the journaled fields only
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
                return res(GONE, f"{_sentence(err)}: nothing left to restore", current,
                           errclass=err.errclass)
            return res(FAILED, _sentence(err), current, errclass=err.errclass)
        except (ValueError, AgentlatdError) as err:
            return res(FAILED, str(err), current, errclass=ErrClass.INVALID)
        self._wrote()
        try:
            after = knob.read(self.root, e.target)
        except (KernelError, ValueError) as err:
            return res(FAILED, f"written; reading it back failed: {err}", current,
                       errclass=ErrClass.IO)
        after = knob.original_of(after, e.original)
        if knob.equal(after, e.original):
            return res(RESTORED, f"restored; {note}" if note else "restored", current, after)
        return res(CLAMPED, f"wrote {e.original!r}; the kernel shows {after!r}", current, after)

    # -- drift -----------------------------------------------------------
    def unyield(self, keys: Iterable[tuple[str, str]]) -> int:
        """Manage these (knob, target) entries again: a yield that was not another
        writer's doing (the kernel's or a driver's own rewrite on CPU hotplug,
        daemon.py). The next apply re-plans them. Returns how many."""
        j = self._j()
        want = set(keys)
        n = 0
        for e in j.entries:
            if e.key in want and e.has(FLAG_YIELDED):
                e.flags = [f for f in e.flags if f != FLAG_YIELDED]
                n += 1
        if n:
            j.save()
        return n

    def check_drift(self) -> list[Drift]:
        """Knobs another writer changed after agentlatd set them; yield or reassert per policy."""
        j = self._j()
        mode = self.policy.daemon.drift
        out: list[Drift] = []
        dirty = False
        ids: dict[str, DeviceId | None] = {}
        replaced: list[Entry] = []
        for e in j.entries:
            if e.written is None or e.has(FLAG_MANAGED) or e.has(FLAG_YIELDED):
                continue
            knob = self._knob(e.knob)
            if knob is None:
                continue
            other = self._replaced(knob, e, ids)
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
                self._wrote()
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


# ---------------------------------------------------------------------------


def _same_netns(cmd: str) -> str:
    return cmd


def _netns_wrapper(root: Root, journal_netns: str) -> Callable[[str], str] | None:
    """How to run a restore line in the journal's network namespace.

    sysfs under /sys/class/net shows the devices of the namespace that mounted it, so a
    line for a veth inside namespace NS must run as `ip netns exec NS sh -c '...'` (which
    also remounts /sys there). The journal keeps the namespace's identity
    ("net:[inode]"); its name is the /run/netns entry with that inode. None: a foreign
    namespace with no name.
    """
    if not journal_netns or not root.is_host:
        return _same_netns
    if root.readlink("proc/self/ns/net") == journal_netns:
        return _same_netns
    inode = journal_netns.removeprefix("net:[").removesuffix("]")
    with contextlib.suppress(KernelError):
        for name in root.listdir("run/netns"):
            with contextlib.suppress(OSError):
                if str(os.stat(root.path(f"run/netns/{name}")).st_ino) == inode:
                    ns = shlex.quote(name)
                    return lambda cmd: f"ip netns exec {ns} sh -c {shlex.quote(cmd)}"
    return None


# Failures that repeat as long as the device, driver and value stay the same (errnos.py).
_HOLD_BACK = frozenset({ErrClass.UNSUPPORTED, ErrClass.INVALID, ErrClass.DENIED})
_HELD = " (not tried again until the next machine rescan)"


def _guarded(cmd: str, dev: DeviceId | None) -> list[str]:
    """`cmd`, run only while the device named `dev.name` is still `dev`.

    The guard compares the ifindex (a re-created device gets a new one) and,
    where journaled, the parent's bus path; the header line names the network
    namespace the commands must run in.
    """
    if dev is None:
        return [cmd]
    code, sep, comment = cmd.partition("  # ")
    out = [f"# {comment}"] if sep else []
    q = shlex.quote
    test = f'[ "$(cat {q(HOST.path(f"sys/class/net/{dev.name}/ifindex"))} 2>/dev/null)" = ' \
           f'{dev.ifindex} ]'
    if dev.bus:
        test += (f' && [ "$(basename "$(readlink '
                 f'{q(HOST.path(f"sys/class/net/{dev.name}/device"))})")" = {q(dev.bus)} ]')
    if not code.strip():
        return out
    msg = q(f"agentlatd: {dev.name} is not the device journaled ({dev.describe()}): "
            "device replaced, original not restored")
    out.append(f"if {test}; then {code}; else echo {msg} >&2; fi")
    return out


def rollback_commands(root: Root, state_dir: str) -> list[str]:
    """Shell commands that would restore the journal's originals; reads only.

    For `agentlatd rollback --print`: takes no lock and moves nothing (a damaged
    journal is read leniently and the damage is said in a comment line).
    """
    path = journal.journal_path(os.path.abspath(state_dir))
    out: list[str] = []
    try:
        j = journal.load(path)
    except JournalUntrusted as exc:
        # printed, never run: a person reads it before deciding (its own message
        # says how to remove it)
        out.append(f"# WARNING: {exc.problem}; agentlatd refuses to replay this journal. "
                   "Read every line below before running any of it.")
        try:
            j = journal.load(path, check=False)
        except JournalUntrusted:  # a symlink: never followed, not even to print
            return out
    except JournalDamaged as exc:
        sal = journal.salvage(path, default_root=root.base, move=False)
        j = sal.journal
        out.append(f"# WARNING: {exc}; {len(j.entries)} entries still parse, "
                   f"{sal.lines_lost} damaged line(s) lost")
    if j is None:
        return ["# no rollback journal at " + path + ": nothing to restore"]
    out.append(f"# agentlatd rollback of {path} (root {j.root}"
               + (f", network namespace {j.netns}" if j.netns else "") + ")")
    if os.path.abspath(j.root) != root.base:
        out.append(f"# NOTE: the journal applies to root {j.root}, not {root.base}")
    gone_netns = False
    if j.netns and root.is_host and j.netns != root.readlink("proc/self/ns/net"):
        gone_netns = not namespaces.netns_in_use(root, j.netns)
        if gone_netns:
            out.append(f"# NOTE: network namespace {j.netns} no longer exists: its device "
                       "entries have nothing left to act on and are left out "
                       "(`agentlatd rollback` drops them)")
    wrap = _same_netns if gone_netns else _netns_wrapper(root, j.netns)
    if wrap is None:
        out.append(f"# NOTE: the journal was written in network namespace {j.netns}, which has "
                   "no name under /run/netns: run these lines inside it (nsenter --net=...)")
        wrap = _same_netns
    for e in reversed(j.entries):
        if gone_netns and netns_scoped(e.knob, e.target):
            continue
        if e.has(FLAG_MANAGED) and e.written is None:
            out.append(f"# {e.knob} {e.target}: kernel-managed, never changed")
            continue
        knob = REGISTRY.get(e.knob)
        if knob is None:
            out.append(f"# {e.knob} {e.target}: no such knob in this build; original {e.original!r}")
            continue
        try:
            cmd = knob.shell(e.target, e.original)
            if e.knob in CPUMASK_KNOBS:  # the mask is what the kernel takes; say the CPUs
                cmd += f"  # CPUs {human_value(e.knob, e.original) or 'none'}"
        except ValueError as err:
            out.append(f"# {e.knob} {e.target}: {err}")
            continue
        out += [ln if ln.startswith("#") else wrap(ln) for ln in _guarded(cmd, e.device)]
    if any(e.knob in _TASK_KNOBS and e.written is not None for e in j.entries):
        # restore() also puts back threads and forked processes that inherited a
        # pin, nice or ioprio (agents/knobs.py); which ones is only known when it runs
        out.append("# NOTE: `agentlatd rollback` also restores the threads and forked child "
                   "processes that inherited an agent's pin, nice or ioprio and have no entry "
                   "of their own; the lines above do not")
    return out
