"""`agentlatd plan`: the CPU partition and the changes apply would make. Writes nothing.

It runs the daemon's tick (agentlatd/tick.py): on a recorded tree (`--root`) with
the rates of the two counter samples a capture holds; on this host with none
(the daemon's first tick).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from typing import Any

from agentlatd import jsonout
from agentlatd import policy as policy_mod
from agentlatd.cpuset import CpuSet
from agentlatd.errors import AgentlatdError
from agentlatd.model.roles import Role
from agentlatd.plan.changes import Change, Plan, human_value
from agentlatd.sysfs.root import Root
from agentlatd.tick import plan_tick, sample_once

HELP = "show the CPU partition and the changes agentlatd would make (writes nothing)"
EXAMPLES = (
    "agentlatd plan",
    "agentlatd plan --json",
    "agentlatd plan --config /etc/agentlatd.toml",
    "agentlatd plan --root tests/fixtures/machines/server-2s64t",
    "agentlatd plan --root tests/fixtures/machines/cloud-vm-small --json",
)

WIDTH = 80
_ROLE_ORDER = {r: i for i, r in enumerate(Role)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/", metavar="DIR",
                   help="filesystem root holding proc/ and sys/ (default: this host)")
    p.add_argument("--config", metavar="FILE",
                   help="policy file (default: /etc/agentlatd.toml when it exists, else "
                        "the embedded default)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def plan_to_json(plan: Plan, *, policy_source: str, irqbalance_running: bool) -> dict[str, Any]:
    """The `plan --json` document (key order is fixed; values are sorted by the planner)."""
    return {
        "policy": policy_source,
        "irqbalance_running": irqbalance_running,
        "completion_cpus": plan.completion_cpus.to_list(),
        "home_cpus": plan.home_cpus.to_list(),
        "quiet_home_order": list(plan.quiet_home_order),
        "roles": [{"cpu": r.cpu, "role": r.role, "reason": r.reason} for r in plan.roles],
        # current/desired: the kernel's syntax (`apply --plan` writes desired as it is);
        # before/after: the same values as people read them (CPU lists, as `status`)
        "changes": [{"knob": c.knob, "target": c.target_text, "current": c.current,
                     "desired": c.desired, "before": human_value(c.knob, c.current),
                     "after": human_value(c.knob, c.desired), "reason": c.reason}
                    for c in plan.changes],
        "advice": list(plan.advice),
        "notes": list(plan.notes),
    }


def _wrap(text: str, indent: str, first: str | None = None) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent if first is None else first,
                         subsequent_indent=indent, break_on_hyphens=False) or [indent.rstrip()]


def render_text(plan: Plan, *, policy_source: str) -> str:
    out: list[str] = [f"Policy: {policy_source}"]
    out += _wrap(f"Completion CPUs: {plan.completion_cpus.to_list() or 'none'}   "
                 f"Home CPUs: {plan.home_cpus.to_list() or 'none'}", "  ", "")
    out.append("")
    out.append("CPU roles:")
    groups: dict[tuple[Role, str], list[int]] = {}
    for r in plan.roles:
        groups.setdefault((r.role, r.reason), []).append(r.cpu)
    for (role, reason), cpus in sorted(groups.items(),
                                       key=lambda kv: (_ROLE_ORDER[kv[0][0]], min(kv[1]))):
        out += _wrap(f"{role} {CpuSet(cpus).to_list()}", "      ", "  ")
        out += _wrap(reason, "      ")
    if plan.quiet_home_order:
        order = list(plan.quiet_home_order)
        shown = ",".join(str(c) for c in order[:20]) + (",..." if len(order) > 20 else "")
        out += _wrap(f"Agents take home CPUs quietest first: {shown}", "  ", "")
    out.append("")
    out.append(f"Changes ({len(plan.changes)}):" if plan.changes else "Changes: none")
    # changes of one knob that differ only by target print as one entry
    runs: dict[tuple[str, str, str, str], tuple[Change, list[str]]] = {}
    for c in plan.changes:
        runs.setdefault((c.knob, c.current, c.desired, c.reason), (c, []))[1].append(c.target_text)
    for c, targets in runs.values():
        cur = show_value(c.knob, c.current)
        out += _wrap(f"{c.knob} {compress_targets(targets)}: {cur} -> "
                     f"{show_value(c.knob, c.desired)}",
                     "      ", "  ")
        out += _wrap(c.reason, "      ")
    if plan.advice:
        out.append("")
        out.append("Boot-time advice (printed, never applied):")
        for a in plan.advice:
            out += _wrap(a, "    ", "  - ")
    if plan.notes:
        out.append("")
        out.append("Notes:")
        for n in plan.notes:
            out += _wrap(n, "    ", "  - ")
    return "\n".join(out) + "\n"


def show_value(knob: str, value: str) -> str:
    """A value for a person: "?" unknown, a mask knob's CPUs as a list ("none": no CPU)."""
    if value == "":
        return "?"
    return human_value(knob, value) or "none"


def compress_targets(targets: list[str]) -> str:
    """["eth0/rx-0", "eth0/rx-1", "eth0/rx-3"] -> "eth0/rx-[0-1,3]"; ["76", "78"] -> "76,78"."""
    by_prefix: dict[str, list[int]] = {}
    plain: list[str] = []
    for t in targets:
        m = re.fullmatch(r"(.*?)(\d+)", t)
        if m is None:
            plain.append(t)
        else:
            by_prefix.setdefault(m.group(1), []).append(int(m.group(2)))
    parts: list[str] = []
    for prefix, nums in by_prefix.items():
        if len(nums) == 1:
            parts.append(f"{prefix}{nums[0]}")
        elif prefix == "":
            parts.append(",".join(str(n) for n in nums))
        else:
            parts.append(f"{prefix}[{CpuSet(nums).to_list()}]")
    return ", ".join(parts + plain)


def run(args: argparse.Namespace) -> int:
    pol = policy_mod.resolve(args.config)
    snap = sample_once(Root(args.root), pol)
    tp = plan_tick(snap, pol)
    if tp.policy_error is not None:
        raise tp.policy_error
    if tp.plan is None:
        raise AgentlatdError("; ".join((*snap.errors, tp.error)))
    plan = tp.plan
    ib = bool(snap.irqbalance_pids)
    if args.json:
        doc = plan_to_json(plan, policy_source=pol.source, irqbalance_running=ib)
        sys.stdout.write(jsonout.dumps(doc) + "\n")
    else:
        sys.stdout.write(render_text(plan, policy_source=pol.source))
    return 0
