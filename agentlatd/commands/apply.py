"""agentlatd apply: plan and apply now, journaling every original for rollback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import textwrap
from typing import Any

from agentlatd import jsonout, knobset
from agentlatd import policy as policy_mod
from agentlatd.apply.engine import (
    CHANGED,
    CLAMPED,
    FAILED,
    MANAGED,
    PLANNED,
    RESTORED,
    SKIPPED,
    UNCHANGED,
    UNSUPPORTED,
    ApplyReport,
    Engine,
    KnobResult,
    RecoverReport,
    Recovery,
)
from agentlatd.errors import AgentlatdError
from agentlatd.plan.build import followup_knobs
from agentlatd.plan.changes import Change, human_value
from agentlatd.sysfs.root import Root
from agentlatd.tick import (
    TickPlan,
    followup_changes,
    irqbalance_entries,
    plan_tick,
    sample_once,
    written,
)

HELP = "apply the plan to the kernel (journals originals for rollback)"
EXAMPLES = (
    "agentlatd apply --dry-run",
    "agentlatd apply --config /etc/agentlatd.toml --json",
    "agentlatd plan --json > plan.json && agentlatd apply --plan plan.json",
    "agentlatd apply --root /tmp/tree --state-dir /tmp/state",
)

WIDTH = 80


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/", metavar="DIR",
                   help="filesystem root holding proc/ and sys/ (default /: this host)")
    p.add_argument("--config", metavar="FILE",
                   help="policy file (default: /etc/agentlatd.toml when it exists, else "
                        "the embedded default)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="journal directory (default: policy daemon.state_dir on /, "
                        "DIR/run/agentlatd under another --root)")
    p.add_argument("--plan", metavar="FILE",
                   help="apply the changes of a saved `agentlatd plan --json` instead of "
                        "planning now")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--dry-run", action="store_true",
                   help="read and compare only: write nothing, journal nothing")


def state_dir_for(root: Root, given: str | None, default: str) -> str:
    """--state-dir, else the policy's on the host, else <root>/run/agentlatd.

    A recorded tree keeps its journal inside itself: a test's apply can never
    meet the host's journal.
    """
    if given:
        return given
    if root.is_host:
        return default
    return root.path("run/agentlatd")


def load_policy(path: str | None) -> policy_mod.Policy:
    return policy_mod.resolve(path)


def changes_from_file(path: str) -> list[Change]:
    """The changes of a plan JSON ({"changes": [...]}) or a bare list of changes."""
    try:
        with open(path, encoding="utf-8") as f:
            data: Any = json.load(f)
    except OSError as e:
        raise AgentlatdError(f"cannot read plan {path}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise AgentlatdError(f"plan {path} is not valid JSON: line {e.lineno}: {e.msg}") from e
    raw = data.get("changes") if isinstance(data, dict) else data
    if not isinstance(raw, list):
        raise AgentlatdError(f"plan {path}: expected a list of changes or {{\"changes\": [...]}}")
    out = []
    for i, c in enumerate(raw, 1):
        if not isinstance(c, dict):
            raise AgentlatdError(f"plan {path}: change {i} is not an object")
        for k in ("knob", "target", "desired"):
            if not isinstance(c.get(k), str):
                raise AgentlatdError(f"plan {path}: change {i}: {k!r} missing or not a string")
        # the target's string form is read here, once: nothing is applied from a plan
        # with a target its knob cannot take
        try:
            out.append(Change.parse(c["knob"], c["target"], str(c.get("current", "")),
                                    c["desired"], str(c.get("reason", ""))))
        except KeyError as e:
            raise AgentlatdError(f"plan {path}: change {i}: {e.args[0]}") from None
        except ValueError as e:
            raise AgentlatdError(f"plan {path}: change {i}: {e}") from None
    return out


def _tick(root: Root, pol: policy_mod.Policy, eng: Engine) -> TickPlan:
    """The daemon's tick, once, on `root` (agentlatd/tick.py)."""
    snap = sample_once(root, pol, journaled=irqbalance_entries(eng.entries()))
    tp = plan_tick(snap, pol)
    if tp.policy_error is not None:
        raise tp.policy_error
    if tp.plan is None:
        raise AgentlatdError("; ".join((*snap.errors, tp.error)))
    return tp


def plan_now(root: Root, pol: policy_mod.Policy,
             eng: Engine) -> tuple[list[Change], tuple[str, ...]]:
    """The tick's changes, and its notes and boot-time advice (printed, never applied)."""
    plan = _tick(root, pol, eng).plan
    assert plan is not None
    advice = tuple(f"boot-time advice (not applied): {a}" for a in plan.advice)
    return list(plan.changes), (*plan.notes, *advice)


def _followup(root: Root, pol: policy_mod.Policy, eng: Engine,
              report: ApplyReport) -> ApplyReport:
    """The tick's followup stage (agentlatd/tick.py): a second pass for what the
    first one's writes made its plan miss (threaded NAPI's kthreads, pinned right
    after `threaded` started them; the IRQs irqbalance moved before the ban that
    hands them over was written), planned on a Machine scanned after the first
    batch. Its results join the first report, so the report names every write the
    journal holds."""
    more = followup_knobs(written(report))
    if not more:
        return report
    second = followup_changes(_tick(root, pol, eng), more)
    if not second:
        return report
    return report.then(eng.apply(second))


def run(args: argparse.Namespace) -> int:
    root = Root(args.root)
    if root.is_host and os.geteuid() != 0 and not args.dry_run:
        raise AgentlatdError("apply writes kernel settings of this host: run it as root "
                             "(or --dry-run, or --root DIR for a recorded tree)")
    pol = load_policy(args.config)
    plan_notes: tuple[str, ...] = ()
    state_dir = state_dir_for(root, args.state_dir, pol.daemon.state_dir)
    with Engine(root, state_dir, policy=pol, knobs=knobset.REGISTRY) as eng:
        # Recover a crashed run's journal BEFORE planning: a plan made first
        # sees the crashed run's first N writes as "already right", skips them,
        # and recovery then undoes them, leaving part of the new plan unapplied
        # (found by the VM tier: test_apply_after_a_crash_applies_the_whole_plan).
        recovery = None if args.dry_run else eng.recover()
        if args.plan:
            changes = changes_from_file(args.plan)
        else:
            changes, plan_notes = plan_now(root, pol, eng)
        report = eng.apply(changes, dry_run=args.dry_run)
        if not args.plan and not args.dry_run:
            report = _followup(root, pol, eng, report)
    if recovery is not None and recovery.action is not Recovery.NONE and report.recovery is None:
        report = dataclasses.replace(report, recovery=recovery)
    if args.json:
        out = report.to_json()
        out["plan_notes"] = list(plan_notes)
        out["policy"] = pol.source
        print(jsonout.dumps(out))
    else:
        print(f"Policy: {pol.source}")
        print_report(report, plan_notes, rollback_hint=rollback_command(args))
    return 1 if report.failed else 0


def rollback_command(args: argparse.Namespace) -> str:
    """The `agentlatd rollback` line that finds this apply's journal (same --root/--state-dir)."""
    cmd = ["agentlatd", "rollback"]
    if getattr(args, "root", "/") not in (None, "/"):
        cmd += ["--root", args.root]
    if getattr(args, "state_dir", None):
        cmd += ["--state-dir", args.state_dir]
    if getattr(args, "config", None) and not getattr(args, "state_dir", None):
        cmd += ["--config", args.config]  # its daemon.state_dir names the journal
    return shlex.join(cmd)


_ORDER = (CHANGED, CLAMPED, FAILED, UNSUPPORTED, MANAGED, SKIPPED, PLANNED, UNCHANGED)
_LABEL = {CHANGED: "changed", CLAMPED: "clamped", FAILED: "FAILED", UNSUPPORTED: "unsupported",
          MANAGED: "managed", SKIPPED: "skipped", PLANNED: "would change",
          UNCHANGED: "already right"}


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=True)


def value_lines(head: str, before: str, after: str | None, indent: int) -> list[str]:
    """`head: before -> after` on one line when it fits 80 columns, else
    head, then "was" and "now" lines below it (long values wrap)."""
    val = before if after is None else f"{before or '?'} -> {after}"
    one = f"{head}: {val}" if val else head
    if len(one) <= WIDTH:
        return [one]
    pad = " " * indent
    out = [head]
    if after is None:
        out += _wrap_value(before, pad)
    else:
        out += _wrap_value(f"was {before or '?'}", pad)
        out += _wrap_value(f"now {after}", pad)
    return out


def _wrap_value(text: str, pad: str) -> list[str]:
    """Wrap a "k=v,k=v" or mask value after its commas, never inside a token."""
    parts = text.replace(",", ",\0").split("\0")
    lines: list[str] = []
    cur = pad
    for part in parts:
        if len(cur) + len(part) > WIDTH and cur.strip():
            lines.append(cur)
            cur = pad + "    "
        cur += part
    lines.append(cur)
    return lines


def _line(r: KnobResult) -> list[str]:
    head = f"  {_LABEL.get(r.status, r.status):<13} {r.knob} {r.target}"
    before = human_value(r.knob, r.before)
    if r.status in (CHANGED, PLANNED, CLAMPED):
        after = r.after if r.status == CLAMPED else r.desired
        lines = value_lines(head, before, human_value(r.knob, after) or "none", 16)
    elif r.status == UNCHANGED:
        lines = value_lines(head, before or "none", None, 16)
    else:
        lines = [_wrap(head, "")]
    if r.status in (FAILED, UNSUPPORTED, MANAGED, SKIPPED, CLAMPED) and r.message:
        lines.append(_wrap(r.message, " " * 16))
    return lines


def print_recovery(rec: RecoverReport | None, file: Any = None) -> None:
    if rec is None:
        return
    print(_wrap(f"recovery: {rec.message}", ""), file=file or sys.stdout)
    if rec.rollback is not None:
        for r in rec.rollback.results:
            print(_wrap(f"  {r.status:<13} {r.knob} {r.target} = {r.desired}"
                        + (f" ({r.message})" if r.status not in (RESTORED, UNCHANGED) else ""),
                        ""), file=file or sys.stdout)


def print_report(report: ApplyReport, plan_notes: tuple[str, ...] = (),
                 rollback_hint: str = "agentlatd rollback") -> None:
    print_recovery(report.recovery)
    counts = {s: report.count(s) for s in _ORDER}
    summary = ", ".join(f"{n} {_LABEL[s]}" for s, n in counts.items() if n)
    verb = "agentlatd apply --dry-run" if report.dry_run else "agentlatd apply"
    print(_wrap(f"{verb}: {summary or 'nothing to do'}", ""))
    for status in _ORDER:
        for r in report.results:
            if r.status == status:
                for ln in _line(r):
                    print(ln)
    for n in (*plan_notes, *report.notes):
        print(_wrap(f"note: {n}", ""))
    if not report.dry_run and (report.count(CHANGED) or report.count(CLAMPED)):
        print(_wrap(f"journal: {report.journal} (`{rollback_hint}` restores the originals)",
                    ""))
