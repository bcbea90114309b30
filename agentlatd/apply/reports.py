"""What the engine reports: per-knob results, apply/rollback/recover reports, drift.

The values of the enums are what `apply --json`, `rollback --json`, status JSON
and metrics carry. agentlatd/apply/engine.py re-exports every public name here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from agentlatd.errors import KernelError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.plan.changes import human_value


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


def sentence(e: KernelError) -> str:
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

    def then(self, second: ApplyReport) -> ApplyReport:
        """This report followed by a second pass's (the tick's followup stage): one
        report that names every write the journal holds."""
        return replace(self, results=self.results + second.results,
                       notes=self.notes + second.notes)

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

