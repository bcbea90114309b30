"""Auto-registration: unmodified agents matched by comm, exe or cgroup (policy [[auto_register]]).

Kernel files: proc/PID/comm (the 15-byte task name), proc/PID/exe (a symlink to
the executable; unreadable for kernel threads), proc/PID/cgroup ("0::/path" on
cgroup v2, Documentation/admin-guide/cgroup-v2.rst). A process matches a rule
when EVERY non-empty field of the rule matches (fnmatch globs, case
sensitive); a rule with no field set matches nothing (it would register every
process on the host). The first matching rule wins.

Each tick only processes not seen before (by (pid, starttime)) are examined,
and a seen process again when its comm changed (it called execve). A process
that was unregistered by hand is not registered again (`declined`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agentlatd.policy import AutoRegisterRule, ChainRule
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root


def rule_usable(r: AutoRegisterRule | ChainRule) -> bool:
    return bool(r.comm or r.exe or r.cgroup)


def matches(r: AutoRegisterRule | ChainRule, comm: str, exe: str, cgroup: str) -> bool:
    """Pure: does a process with these attributes match rule `r`?"""
    if not rule_usable(r):
        return False
    if r.comm and not fnmatch.fnmatchcase(comm, r.comm):
        return False
    if r.exe and not (exe and fnmatch.fnmatchcase(exe, r.exe)):
        return False
    return not (r.cgroup and not (cgroup and fnmatch.fnmatchcase(cgroup, r.cgroup)))


def agent_id_for(r: AutoRegisterRule, comm: str, pid: int) -> str:
    """The rule's agent id (checked by the policy loader), else one made of the
    process's comm, which any process sets to any bytes but NUL (PR_SET_NAME):
    what is not printable becomes "?", so the id keeps the protocol's name
    rule (printable, at most 128 characters) like a registered one."""
    if r.agent_id:
        return r.agent_id
    name = "".join(c if c.isprintable() else "?" for c in comm[:64]) or "pid"
    return f"{name}-{pid}"


@dataclass(frozen=True, slots=True)
class Match:
    proc: ProcId
    rule_index: int
    rule: AutoRegisterRule
    comm: str


@dataclass(slots=True)
class AutoRegistrar:
    """Scans proc/ each tick for processes the rules name."""

    seen: dict[ProcId, str] = field(default_factory=dict)  # proc -> comm when examined
    declined: set[ProcId] = field(default_factory=set)

    def scan(self, root: Root, rules: Sequence[AutoRegisterRule], registered: Iterable[ProcId],
             pids: Sequence[int] | None = None) -> list[Match]:
        usable = [(i, r) for i, r in enumerate(rules) if rule_usable(r)]
        if not usable:
            self.seen.clear()
            return []
        known = set(registered)
        out: list[Match] = []
        live: set[ProcId] = set()
        for pid in tasks.list_pids(root) if pids is None else pids:
            st = tasks.pid_stat(root, pid)
            if st is None or st.kthread:
                continue
            p = ProcId(pid, st.starttime)
            live.add(p)
            if p in known or p in self.declined:
                continue
            comm = tasks.read_comm(root, pid) or st.comm
            if self.seen.get(p) == comm:
                continue
            self.seen[p] = comm
            exe = tasks.read_exe(root, pid) if any(r.exe for _, r in usable) else ""
            cg = tasks.read_cgroup(root, pid) if any(r.cgroup for _, r in usable) else ""
            for i, r in usable:
                if matches(r, comm, exe, cg):
                    out.append(Match(p, i, r, comm))
                    break
        # forget processes that are gone
        for p in list(self.seen):
            if p not in live:
                del self.seen[p]
        self.declined &= live
        return out
