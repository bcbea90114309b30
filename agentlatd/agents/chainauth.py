"""Who may have a chain member moved (docs/protocol.md, "Identity").

A member is moved for an agent only when the agent was registered by an admin
(root, daemon.admin_group, an auto_register rule) or the member's real AND
effective uid are the uid of the peer that registered the agent: the
registration rule, applied to what discovery finds and what an agent declares,
and checked again per thread right before each batch of writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from agentlatd.agents.agent import Agent
from agentlatd.errors import KernelError
from agentlatd.policy import Policy
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root


class Registrations(Protocol):
    """What the chain keeper reads of the registry (agents/registry.py AgentManager)."""

    @property
    def agents(self) -> Mapping[ProcId, Agent]: ...
    @property
    def by_pid(self) -> Mapping[int, Agent]: ...
    @property
    def policy(self) -> Policy: ...


class MemberAuth:
    """The registrars of agents, and what they may have moved."""

    def __init__(self, root: Root, reg: Registrations) -> None:
        self.root = root
        self.reg = reg
        self.owners: dict[ProcId, int | None] = {}  # agent -> uid of the non-admin registrar

    def may_move(self, agent: ProcId, member_pid: int) -> str:
        """"" when `agent`'s registrar may have `member_pid` moved, else why not."""
        owner = self.owners.get(agent, -1)
        if owner is None:
            return ""
        if owner == -1:
            a = self.reg.agents.get(agent)
            owner = a.uid if a is not None else -1
        uids = tasks.uids_of(self.root, member_pid)
        if uids is None:
            return f"process {member_pid} has exited"
        if uids == (owner, owner):
            return ""
        return (f"runs as uid {uids[0] if uids[0] != owner else uids[1]}; the agent was "
                f"registered by uid {owner}, which may have only its own processes moved")

    def owner_uids(self, agents: Iterable[ProcId]) -> set[tuple[int, int]] | None:
        """(ruid, euid) pairs a member's threads may have to be written for these
        agents; None when an admin registered one of them (no limit)."""
        out: set[tuple[int, int]] = set()
        for ap in agents:
            owner = self.owners.get(ap, -1)
            if owner is None:
                return None
            if owner == -1:
                a = self.reg.agents.get(ap)
                if a is None:
                    continue
                owner = a.uid
            out.add((owner, owner))
        return out

    def thread_uids(self, pid: int, tid: int) -> tuple[int, int] | None:
        try:
            return tasks.parse_status_uids(
                self.root.read_text(f"proc/{pid}/task/{tid}/status", tasks.CONTEXT))
        except (KernelError, ValueError):
            return None

    def writable(self, pid: int, tids: list[int], agents: Iterable[ProcId]
                 ) -> tuple[list[int], str, int | None]:
        """Of member `pid`'s threads `tids`, those these agents' registrars may have
        written, why the others are left (""), and the one uid the write point checks
        each thread against again (tasks.check_thread; None: no single registrar).
        A thread can change credentials on its own (setresuid is per thread in the
        kernel): with no admin among the registrars, each thread must still be the
        registrars' uid, right before the batch."""
        uids = self.owner_uids(agents)
        if uids is None:
            return tids, "", None
        skipped = [t for t in tids if self.thread_uids(pid, t) not in uids]
        why = ""
        if skipped:
            tids = [t for t in tids if t not in skipped]
            why = (f"thread(s) {', '.join(map(str, skipped[:4]))} run as another uid than "
                   "the agent's registrar: left where they are")
        owner = next(iter(uids))[0] if len(uids) == 1 else None
        return tids, why, owner
