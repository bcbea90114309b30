"""agentlatd rollback: restore every original the journal holds, in reverse order."""

from __future__ import annotations

import argparse
import os

from agentlatd import jsonout, knobset
from agentlatd.apply.engine import (
    CLAMPED,
    FAILED,
    GONE,
    MANAGED,
    RESTORED,
    UNCHANGED,
    Engine,
    Status,
    rollback_commands,
)
from agentlatd.commands.apply import _wrap, load_policy, state_dir_for, value_lines
from agentlatd.errors import AgentlatdError
from agentlatd.plan.changes import human_value
from agentlatd.sysfs.root import Root

HELP = "restore every knob agentlatd changed to its original value"
EXAMPLES = (
    "agentlatd rollback",
    "agentlatd rollback --print > undo.sh",
    "agentlatd rollback --root /tmp/tree --state-dir /tmp/state --json",
)

_LABEL = {RESTORED: "restored", UNCHANGED: "already original", GONE: "gone",
          MANAGED: "managed", FAILED: "FAILED", CLAMPED: "not restored"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/", metavar="DIR",
                   help="filesystem root holding proc/ and sys/ (default /: this host)")
    p.add_argument("--config", metavar="FILE", help="policy file (for daemon.state_dir)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="journal directory (default: policy daemon.state_dir on /, "
                        "DIR/run/agentlatd under another --root)")
    p.add_argument("--print", action="store_true", dest="print_only",
                   help="print shell commands that would restore the originals; write nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    root = Root(args.root)
    pol = load_policy(args.config)
    state_dir = state_dir_for(root, args.state_dir, pol.daemon.state_dir)
    if args.print_only:
        for line in rollback_commands(root, state_dir):
            print(line)
        return 0
    if root.is_host and os.geteuid() != 0:
        raise AgentlatdError("rollback writes kernel settings of this host: run it as root "
                             "(or --print to see the commands)")
    with Engine(root, state_dir, policy=pol, knobs=knobset.REGISTRY) as eng:
        rep = eng.rollback()
    if args.json:
        print(jsonout.dumps(rep.to_json()))
        return 0 if rep.ok else 1
    if rep.damaged:
        print(_wrap(f"WARNING: the journal was damaged ({rep.damaged}); kept as {rep.kept_as}; "
                    "the entries that parsed were restored", ""))
    counts: dict[Status, int] = {}
    for r in rep.results:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {_LABEL.get(s, s)}" for s, n in counts.items())
    notes = list(rep.notes)
    if not summary and notes:
        summary = notes.pop(0)  # "no journal: nothing to roll back", said once
    print(_wrap(f"agentlatd rollback: {summary or 'nothing to roll back'}", ""))
    for r in rep.results:
        label = _LABEL.get(r.status, r.status)
        head = f"  {label:<16} {r.knob} {r.target}"
        if r.status == RESTORED:
            lines = value_lines(head, human_value(r.knob, r.before),
                                human_value(r.knob, r.after) or "none", 19)
        else:
            lines = value_lines(head, human_value(r.knob, r.desired) or "none", None, 19)
        for ln in lines:
            print(ln)
        if r.status in (FAILED, CLAMPED, GONE) and r.message:
            print(_wrap(r.message, " " * 19))
    for n in notes:
        print(_wrap(f"note: {n}", ""))
    if rep.journal_removed:
        print(_wrap(f"journal {rep.journal} removed: every original is back", ""))
    return 0 if rep.ok else 1
