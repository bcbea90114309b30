"""Completion chains at run time: find the processes each agent waits on, place
them with it, and undo any decision that made an agent slower.

Two halves, one per daemon thread (model/chain.py and model/harm.py have the
rules and the why):

  ChainScanner  tuner thread, IO only: every RESCAN_S per agent, at most
                MAX_SCANS_PER_TICK agents a tick (oldest first), as the agent
                link scan (agents/links.py). One batch reads the namespace of
                every process (one readlink each, at most MAX_PIDS), the
                socket tables and addresses of each distinct network
                namespace through ONE of its processes (at most
                MAX_NAMESPACES; TCP tables only where an agent or its TCP
                peer lives: each costs a walk of the kernel's whole
                established hash), the agents' fd tables (MAX_FDS each), their
                children's (MAX_CHILDREN), and resolves a peer socket to the
                process holding it by reading fd tables -- the peer's own
                namespace first, at most MAX_FD_READS descriptors a batch, a
                holder remembered for the next batch. It publishes `found`
                (agent -> links) by one reference swap.
  ChainKeeper   main thread, engine lock held, once per agent tick: members =
                what the scanner found + what the agent declared; each member
                is authorised (agents/chainauth.py), protected from
                exclusivity, pinned on its agents' home CPUs through the one
                engine (journaled like an agent's threads), and restored when
                no agent needs it; and the do-no-harm guard (agents/guard.py)
                judges the agent's latency windows.

Authorisation: a member is moved for an agent only when the agent was
registered by an admin (root, daemon.admin_group, an auto_register rule) or
the member's real AND effective uid are the uid of the peer that registered
the agent -- the registration rule, applied to what discovery finds and what
an agent declares, checked again right before each batch of writes. A member
no agent may move is reported ("unmovable" and why) and left where it is;
it is still never an exclusivity victim (not moving it is always allowed).

Exclusivity waits for the agent's first chain scan and one latency window:
a member must never be pushed to the completion CPUs before it is known, and
the guard needs a "before" to compare with.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from agentlatd.agents.agent import Agent
from agentlatd.agents.autoreg import matches, rule_usable
from agentlatd.agents.chainauth import MemberAuth, Registrations
from agentlatd.agents.chainrow import ChainRow, MemberState
from agentlatd.agents.exclusive import CpuKeeper
from agentlatd.agents.guard import EXCLUSIVE, HarmGuard, member_key
from agentlatd.agents.placement import HomePlacer, pinned_home
from agentlatd.agents.registry import ChainInput
from agentlatd.agents.threads import proc_of
from agentlatd.apply.engine import CHANGED, CLAMPED, UNCHANGED
from agentlatd.apply.reports import KnobResult
from agentlatd.cpuset import CpuSet
from agentlatd.errors import AgentlatdError, KernelError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.kernel.knobnames import KnobName
from agentlatd.model.chain import (
    PeerSocket,
    PortIndex,
    bound_to,
    owner_namespaces,
    peers_of,
    pipe_peers,
    port_index,
    tcp_namespaces,
)
from agentlatd.netlink.unix_diag import unix_peers
from agentlatd.plan.changes import Change
from agentlatd.policy import ChainRule
from agentlatd.sample import tasks
from agentlatd.sample.chain import (
    UDP_FILES,
    FdLinks,
    NsTable,
    read_fd_links,
    read_net_ns,
    read_ns_table,
    read_tcp,
)
from agentlatd.sample.procscan import PerProc, list_procs
from agentlatd.sample.sockets import Addr, Sock
from agentlatd.sample.tasks import ProcId, ThreadId
from agentlatd.sysfs.root import Root

if TYPE_CHECKING:
    from agentlatd.agents.registry import AgentManager

log = logging.getLogger("agentlatd.agents")

# the keeper's once-per-tick passes over the agents (members wanted, agents
# published, decisions) yield every this many agents: each pass cost 2-3 ms at
# 1000 agents at once, and a registration arriving meanwhile waited for it
# (bench/agents.py register p99); 64 agents are ~0.1-0.2 ms
SCAN_PIECE = 64
_T = TypeVar("_T")

RESCAN_S = 2.0
MAX_SCANS_PER_TICK = 200
MAX_PIDS = 32768
MAX_NAMESPACES = 256
MAX_FD_READS = 20000
MAX_CHILDREN = 64
MAX_UNIX = 256  # sock_diag lookups per agent and scan (one netlink round trip each)
MAX_DECLARED = 64  # members an agent may declare


# ---------------------------------------------------------------------------
# discovery (tuner thread)


@dataclass(frozen=True, slots=True)
class ChainAgent:
    """An agent as the scanner sees it (published by the main thread)."""

    proc: ProcId
    addrs: tuple[tuple[str, Addr, int], ...] = ()  # declared (proto, address, port)
    agent_id: str = ""


@dataclass(frozen=True, slots=True)
class Link:
    """A process an agent waits on, and how it was found."""

    proc: ProcId
    via: str


@dataclass(frozen=True, slots=True)
class ScanCost:
    agents: int = 0
    namespaces: int = 0
    fd_reads: int = 0
    duration_s: float = 0.0
    truncated: bool = False  # a cap was hit: some peers may be missing


class ScanResults(Protocol):
    """What the keeper reads of the scan (ChainScanner, or agents/scanworker.py's
    WorkerScans): two values, each replaced whole by the tuner thread."""

    @property
    def found(self) -> Mapping[ProcId, tuple[Link, ...]]: ...

    @property
    def cost(self) -> ScanCost: ...


class ChainScanner:
    def __init__(self, daemon_pid: int | None = None) -> None:
        self.found: Mapping[ProcId, tuple[Link, ...]] = {}  # replaced whole
        self.scanned: dict[ProcId, float] = {}
        self.holders: dict[tuple[int, int], ProcId] = {}  # (ns, socket inode) -> holder
        self.cost = ScanCost()
        # the daemon is never an agent's chain member (agents talk to its socket);
        # agents/scanchild.py scans for it from another process
        self.self_pid = os.getpid() if daemon_pid is None else daemon_pid
        self.own_ns: int | None = None
        self.unix_ok = True
        self.rule_seen: dict[ProcId, tuple[str, tuple[int, ...]]] = {}  # proc -> (comm, rules)
        self.used: set[tuple[int, int]] = set()  # holder keys looked up in the last batch
        # pid -> network namespace, read once per process, not once per batch
        # (sample/procscan.py): 7000 readlinks were ~60 % of a batch
        self.ns_root: Root | None = None
        self.ns_cache: PerProc[int] = PerProc(lambda _pid: None)

    def update(self, root: Root, agents: Iterable[ChainAgent], now: float | None = None,
               rules: Sequence[ChainRule] = (),
               procs: Sequence[tuple[int, int]] | None = None) -> None:
        """Scan the agents due. `procs`: this tick's listing of proc/ (procscan.list_procs),
        when the caller has one; else it is read here."""
        now = time.monotonic() if now is None else now
        t0 = time.perf_counter()
        by_proc = {a.proc: a for a in agents}
        for gone in set(self.scanned) - set(by_proc):
            del self.scanned[gone]
        due = sorted((self.scanned.get(p, -1.0), p.pid, p) for p in by_proc
                     if now - self.scanned.get(p, -RESCAN_S - 1.0) >= RESCAN_S)
        found = {p: v for p, v in self.found.items() if p in by_proc}
        if not due:
            if len(found) != len(self.found):
                self.found = found
            return
        if procs is None:
            procs = list_procs(root)
        pids = [pid for pid, _ in procs]
        truncated = len(pids) > MAX_PIDS
        todo = due[:MAX_SCANS_PER_TICK]
        ns_of = self._namespaces(root, procs[:MAX_PIDS], [p.pid for _, _, p in todo])
        by_ns: dict[int, list[int]] = {}
        for pid, ns in ns_of.items():
            by_ns.setdefault(ns, []).append(pid)
        if len(by_ns) > MAX_NAMESPACES:
            truncated = True
        # UDP tables and addresses of every namespace (cheap); TCP tables (a walk
        # of the whole established hash each, sample/chain.py) of the agents' own
        # namespaces, then of the namespaces their TCP peers' addresses belong to
        # over the cap, the agents' own namespaces first
        theirs = {ns_of[p.pid] for _, _, p in todo if p.pid in ns_of}
        base = {ns: read_ns_table(root, ns, min(ps), files=UDP_FILES)
                for ns, ps in sorted(by_ns.items(), key=lambda kv: (kv[0] not in theirs,
                                                                    min(kv[1])))[:MAX_NAMESPACES]}
        budget = [MAX_FD_READS]
        fd_cache: dict[int, FdLinks] = {}
        self.used = set()
        mine = {p: self._fds(root, p.pid, fd_cache, budget) for _, _, p in todo}
        tcp_read: set[int] = set()

        def with_tcp(nss: Iterable[int]) -> None:
            for ns in nss:
                t = base.get(ns)
                if t is None or ns in tcp_read:
                    continue
                tcp_read.add(ns)
                base[ns] = replace(t, socks=t.socks + tuple(read_tcp(root, t.reader)))

        with_tcp(theirs)
        agent_socks = set().union(*(links.sockets for links in mine.values())) if mine else set()
        with_tcp(tcp_namespaces(agent_socks, base.values()))
        with_tcp(ns for _, _, p in todo for proto, addr, _port in by_proc[p].addrs
                 if proto == "tcp" for ns in owner_namespaces(addr, base.values()))
        tables = list(base.values())
        index = port_index(tables)
        by_inode = {s.inode: (t.ns, s) for t in tables for s in t.socks}
        ruled = self._ruled(root, rules, pids[:MAX_PIDS])
        for _, _, p in todo:
            links = self._links(root, by_proc[p], tables, by_ns, fd_cache, budget, index, by_inode)
            if links is None:
                continue
            aid = by_proc[p].agent_id
            have = {lk.proc for lk in links}
            for m, idx in ruled.items():
                i = next((i for i in idx if fnmatch.fnmatchcase(aid, rules[i].agent)), None)
                if i is not None and m.pid != p.pid and m not in have:
                    links += (Link(m, f"policy [[chain]] rule {i}"),)
            found[p] = links
            self.scanned[p] = now
        live = {(t.ns, s.inode) for t in tables for s in t.socks}
        self.holders = {k: v for k, v in self.holders.items() if k in live or k in self.used}
        self.found = found
        self.cost = ScanCost(min(len(due), MAX_SCANS_PER_TICK), len(tables),
                             MAX_FD_READS - budget[0], time.perf_counter() - t0,
                             truncated or budget[0] <= 0)

    def _namespaces(self, root: Root, procs: Sequence[tuple[int, int]],
                    agents: Iterable[int]) -> dict[int, int]:
        """pid -> network namespace of `procs`, from ns_cache. A process can change
        namespace (setns, unshare) under the same pid: the agents scanned now and
        the one process per namespace whose proc/PID/net is read are read again
        here, and if one of them moved, every process is read again, so
        the tables read are those of the namespaces they are filed under; another
        process that moved is filed right within procscan.REFRESH_TICKS batches."""
        if self.ns_root is None or self.ns_root.base != root.base:
            self.ns_root = root
            self.ns_cache = PerProc(lambda pid: read_net_ns(root, pid))
        ns_of = self.ns_cache.update(procs)
        readers: dict[int, int] = {}
        for pid, ns in ns_of.items():  # by pid: the first of a namespace is its reader
            readers.setdefault(ns, pid)
        check = {*readers.values(), *(pid for pid in agents if pid in ns_of)}
        if any(read_net_ns(root, pid) != ns_of[pid] for pid in sorted(check)):
            self.ns_cache = PerProc(lambda pid: read_net_ns(root, pid))
            ns_of = self.ns_cache.update(procs)
        return ns_of

    def _ruled(self, root: Root, rules: Sequence[ChainRule],
               pids: Iterable[int]) -> dict[ProcId, tuple[int, ...]]:
        """Processes matching [[chain]] rules -> the indexes of the rules they match.
        A process is examined once per (pid, starttime, comm), as auto_register does."""
        usable = [(i, r) for i, r in enumerate(rules) if rule_usable(r)]
        if not usable:
            self.rule_seen.clear()
            return {}
        seen: dict[ProcId, tuple[str, tuple[int, ...]]] = {}
        for pid in pids:
            st = tasks.pid_stat(root, pid)
            if st is None or st.kthread:
                continue
            p = ProcId(pid, st.starttime)
            old = self.rule_seen.get(p)
            if old is not None and old[0] == st.comm:
                seen[p] = old
                continue
            exe = tasks.read_exe(root, pid) if any(r.exe for _, r in usable) else ""
            cg = tasks.read_cgroup(root, pid) if any(r.cgroup for _, r in usable) else ""
            seen[p] = (st.comm, tuple(i for i, r in usable if matches(r, st.comm, exe, cg)))
        self.rule_seen = seen
        return {p: idx for p, (_, idx) in seen.items() if idx}

    def _fds(self, root: Root, pid: int, cache: dict[int, FdLinks], budget: list[int]) -> FdLinks:
        got = cache.get(pid)
        if got is None:
            got = read_fd_links(root, pid)
            budget[0] -= got.looked
            cache[pid] = got
        return got

    def _links(self, root: Root, a: ChainAgent, tables: list[NsTable], by_ns: Mapping[int, list[int]],
               cache: dict[int, FdLinks], budget: list[int], index: PortIndex,
               by_inode: Mapping[int, tuple[int, Sock]]) -> tuple[Link, ...] | None:
        mine = self._fds(root, a.proc.pid, cache, budget)
        if not tasks.alive(root, a.proc):
            return None
        own = [by_inode[i] for i in mine.sockets if i in by_inode]
        peers: list[PeerSocket] = peers_of(own, mine.sockets, index)
        for proto, addr, port in a.addrs:
            peers += bound_to(proto, addr, port, tables)
        peers += self._unix(root, frozenset(i for i in mine.sockets if i not in by_inode))
        members: dict[ProcId, str] = {}
        for peer in peers:
            holder = self._holder(root, peer, by_ns, cache, budget)
            if holder is None or holder.pid in (a.proc.pid, self.self_pid):
                continue
            members.setdefault(holder, f"{peer.via} (net ns {peer.ns})")
        kids = tasks.descendants(root, a.proc.pid, MAX_CHILDREN)
        if mine.pipes and kids:
            child_pipes = {k: self._fds(root, k, cache, budget).pipes for k in kids}
            for k, ino in pipe_peers(mine.pipes, child_pipes).items():
                st = tasks.starttime_of(root, k)
                if st is not None:
                    members.setdefault(ProcId(k, st), f"pipe:[{ino}] (child process)")
        return tuple(Link(p, via) for p, via in sorted(members.items(), key=lambda kv: kv[0].pid))

    def _unix(self, root: Root, inodes: frozenset[int]) -> list[PeerSocket]:
        """Peers of the agent's Unix sockets (the sockets no TCP/UDP table holds),
        through sock_diag in agentlatd's own namespace (netlink/unix_diag.py);
        at most MAX_UNIX lookups per agent."""
        if not root.is_host or not self.unix_ok:
            return []
        cand = sorted(inodes)[:MAX_UNIX]
        if not cand:
            return []
        try:
            found = unix_peers(cand)
        except OSError as e:
            self.unix_ok = False  # no CONFIG_UNIX_DIAG: said once, not retried
            log.warning("Unix socket peers cannot be found (sock_diag: %s); declare them", e)
            return []
        if self.own_ns is None:
            self.own_ns = read_net_ns(root, self.self_pid) or 0
        peers = {u.peer for u in found.values() if u.peer is not None}
        # the name is the server's: an accepted socket carries its listener's path
        names = unix_peers(sorted(peers)) if peers else {}
        out: list[PeerSocket] = []
        for u in found.values():
            if u.peer is not None:
                srv = names.get(u.peer)
                name = (srv.name if srv is not None else "") or u.name or "socket"
                out.append(PeerSocket(self.own_ns, u.peer, f"unix {name}"))
        return out

    def _holder(self, root: Root, peer: PeerSocket, by_ns: Mapping[int, list[int]],
                cache: dict[int, FdLinks], budget: list[int]) -> ProcId | None:
        key = (peer.ns, peer.inode)
        self.used.add(key)
        known = self.holders.get(key)
        if known is not None and tasks.alive(root, known) \
                and peer.inode in self._fds(root, known.pid, cache, budget).sockets:
            return known
        # the namespace's own processes first: a socket is usually held by a
        # process of the namespace it was created in
        near = by_ns.get(peer.ns, [])
        rest = (p for ns, ps in by_ns.items() if ns != peer.ns for p in ps)
        for pid in [*near, *rest]:
            if budget[0] <= 0:
                return None
            if peer.inode in self._fds(root, pid, cache, budget).sockets:
                st = tasks.starttime_of(root, pid)
                if st is None:
                    return None
                self.holders[key] = ProcId(pid, st)
                return self.holders[key]
        return None


# ---------------------------------------------------------------------------
# placement and the guard (main thread, engine lock held)


@dataclass(slots=True)
class Member:
    proc: ProcId
    agents: dict[ProcId, str] = field(default_factory=dict)  # agent -> how it was found
    cpus: CpuSet | None = None  # the affinity written (None: not placed)
    orig: str | None = None  # its main thread's affinity when first seen
    threads: set[int] = field(default_factory=set)
    state: MemberState = MemberState.PENDING
    problem: str = ""
    comm: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.proc.pid, "starttime": self.proc.starttime, "comm": self.comm,
                "cpus": self.cpus.to_list() if self.cpus is not None else None,
                "threads": len(self.threads), "state": self.state, "problem": self.problem}


@dataclass(frozen=True, slots=True)
class Declared:
    procs: tuple[ProcId, ...] = ()
    addrs: tuple[tuple[str, Addr, int], ...] = ()


class ChainKeeper:
    """Chain members placed with their agents (main thread, engine lock held).

    Reads the registry through Registrations, asks the placer where members go,
    takes members out of exclusivity through CpuKeeper's chain-member methods,
    and leaves latency judgements to the guard (agents/guard.py)."""

    def __init__(self, manager: AgentManager, scanner: ScanResults,
                 clock: Any = time.monotonic) -> None:
        self.reg: Registrations = manager
        self.placer: HomePlacer = manager.placer
        self.victims: CpuKeeper = manager.cpus
        self.applier = manager.applier
        self.root = manager.root
        self.scanner = scanner
        self.clock = clock
        self.guard = HarmGuard(self.root)
        self.members: dict[ProcId, Member] = {}
        self.auth = MemberAuth(self.root, self.reg)  # who may have which member moved
        self.declared: dict[ProcId, Declared] = {}
        self.published: tuple[ChainAgent, ...] = ()
        self.known: set[ProcId] = set()  # agents whose first scan's members were placed
        self.protected: set[int] = set()  # pids of members: never exclusivity victims

    # -- inputs from the daemon --------------------------------------------
    def set_owner(self, p: ProcId, uid: int | None) -> None:
        """Who registered agent `p`: None = an admin (or a policy rule), else that uid."""
        self.auth.owners[p] = uid

    def declare(self, p: ProcId, decl: Declared) -> None:
        if decl.procs or decl.addrs:
            self.declared[p] = decl
        else:
            self.declared.pop(p, None)
        self.publish()

    def publish(self) -> tuple[ChainAgent, ...]:
        """The agents for the scanner (pinned ones with a home CPU), one tuple swap."""
        return _run(self.publish_steps())

    def publish_steps(self) -> Generator[None, None, tuple[ChainAgent, ...]]:
        """publish() a piece at a time (yields between); the tuple is swapped in
        at the end, from the agents still registered then."""
        if not self.reg.policy.tuning.chains:
            self.published = ()
            return ()
        agents = self.reg.agents
        out: list[ChainAgent] = []
        for i, a in enumerate(list(agents.values())):
            if i % SCAN_PIECE == SCAN_PIECE - 1:
                yield
            if agents.get(a.proc) is a and self._pinned(a):
                out.append(ChainAgent(a.proc, self.declared.get(a.proc, Declared()).addrs,
                                      a.agent_id))
        self.published = tuple(out)
        return self.published

    def _pinned(self, a: Agent) -> bool:
        return pinned_home(a, self.reg.policy)

    # -- decisions for the registry, views -------------------------------------
    def decisions(self) -> ChainInput:
        """What the registry needs of the keeper, as of now (after a tick)."""
        return _run(self.decisions_steps())

    def decisions_steps(self) -> Generator[None, None, ChainInput]:
        """decisions() a piece at a time (yields between). An agent registered
        meanwhile is not in exclusive_ok: the guard has no baseline for it yet,
        so decisions() would not allow it either."""
        agents = self.reg.agents
        ok: list[ProcId] = []
        for i, (p, a) in enumerate(list(agents.items())):
            if i % SCAN_PIECE == SCAN_PIECE - 1:
                yield
            if agents.get(p) is a and self.allow_exclusive(a):
                ok.append(p)
        return ChainInput(frozenset(self.protected), frozenset(ok))

    def allow_exclusive(self, a: Agent) -> bool:
        if self.guard.refuses(a.proc, EXCLUSIVE):
            return False
        if not self.reg.policy.tuning.chains:
            return self.guard.has_baseline(a.proc)  # no scan to wait for; the guard's baseline
        # `known`: the keeper has placed (and protected) what the first scan found;
        # the scanner's `found` alone could be newer than the last placement
        return a.proc in self.known and self.guard.has_baseline(a.proc)

    def row(self, a: Agent) -> dict[str, Any]:
        return {"chain": [dict(m.to_json(), via=m.agents[a.proc])
                          for m in sorted(self.members.values(), key=lambda m: m.proc.pid)
                          if a.proc in m.agents]} | self.guard.row(a.proc)

    def view(self, a: Agent) -> ChainRow:
        """row() as metrics read it: typed, without the details for people."""
        return ChainRow(tuple(m.state for m in sorted(self.members.values(), key=lambda m: m.proc.pid)
                              if a.proc in m.agents),
                        tuple(sorted(self.guard.refused.get(a.proc, ()))))

    def status(self) -> dict[str, Any]:
        c = self.scanner.cost
        return {"chain_members": len(self.members),
                "chain_unmovable": sum(1 for m in self.members.values()
                                       if m.state is MemberState.UNMOVABLE),
                "guard_undone": dict(sorted(self.guard.undone.items())),
                "chain_scan": {"agents": c.agents, "namespaces": c.namespaces,
                               "fd_reads": c.fd_reads, "ms": round(c.duration_s * 1000, 3),
                               "truncated": c.truncated}}

    # -- the tick ------------------------------------------------------------
    def tick(self) -> None:
        """The whole tick at once: see tick_steps()."""
        for _ in self.tick_steps():
            pass

    def tick_steps(self) -> Iterator[None]:
        """The guard's windows a few agents at a time (yields between: the daemon
        serves requests there), then members placed and agents published at once
        from the registry as it is then."""
        now = self.clock()
        yield from self.guard.windows(now, self.reg.agents, self._pinned,
                                      lambda: self.victims.excl)
        live = set(self.reg.agents)
        self.guard.prune(live)
        for d in (self.auth.owners, self.declared):
            for p in [p for p in d if p not in live]:
                del d[p]
        self.known &= live
        yield
        want = yield from self._wanted_steps()
        self._place(want)
        yield
        yield from self.publish_steps()

    def _wanted(self) -> dict[ProcId, dict[ProcId, str]]:
        """member -> {agent: how found} for the pinned agents."""
        return _run(self._wanted_steps())

    def _wanted_steps(self) -> Generator[None, None, dict[ProcId, dict[ProcId, str]]]:
        """_wanted() a piece at a time (yields between). What changed meanwhile is
        settled when it returns: agents gone are dropped, and a member registered
        as an agent itself meanwhile is left to its own class."""
        found = self.scanner.found
        want: dict[ProcId, dict[ProcId, str]] = {}
        if not self.reg.policy.tuning.chains:
            return want
        agents = self.reg.agents
        for i, a in enumerate(list(agents.values())):
            if i % SCAN_PIECE == SCAN_PIECE - 1:
                yield
            if agents.get(a.proc) is not a or not self._pinned(a):
                continue
            if a.proc in found:
                self.known.add(a.proc)
            links = list(found.get(a.proc, ()))
            links += [Link(p, "declared") for p in self.declared.get(a.proc, Declared()).procs]
            for lk in links:
                if lk.proc.pid in self.reg.by_pid or self.guard.refuses(a.proc, member_key(lk.proc)):
                    continue  # a registered agent is placed by its own class
                want.setdefault(lk.proc, {}).setdefault(a.proc, lk.via)
        live = {m: {ap: via for ap, via in by.items() if ap in agents}
                for m, by in want.items() if m.pid not in self.reg.by_pid}
        return {m: by for m, by in live.items() if by}

    def _place(self, want: Mapping[ProcId, dict[ProcId, str]]) -> None:
        for p in [p for p in self.members if p not in want]:
            gone = self.members.pop(p)
            if p.pid in self.reg.by_pid:
                # registered as an agent itself: its journal entries (the same
                # threads, the same originals) are the registry's now
                self.protected.discard(p.pid)
                log.info("chain member pid %d registered as an agent: placed by its class",
                         p.pid)
                continue
            self._release(gone, "no registered agent waits on it any more")
        changes: list[Change] = []
        placing: list[Member] = []
        skipped_why: dict[ProcId, str] = {}
        for p, agents in want.items():
            m = self.members.get(p)
            if m is None:
                if not tasks.alive(self.root, p):
                    continue
                m = self.members[p] = _new_member(self.root, self.victims, p)
            m.agents = dict(agents)
            if not tasks.alive(self.root, p):
                self._gone(self.members.pop(p))
                continue
            allowed: list[ProcId] = []
            why_not: list[str] = []
            for ap in agents:
                why = self.auth.may_move(ap, p.pid)
                if why:
                    why_not.append(why)
                else:
                    allowed.append(ap)
            cpus = self.placer.member_cpus(self.reg.agents[ap].home_cpu for ap in allowed
                                           if ap in self.reg.agents)
            if not cpus:
                if m.cpus is not None:
                    self._release(m, "no agent it serves may move it")
                self._unvictim(m)
                m.state = MemberState.UNMOVABLE
                m.problem = why_not[0] if why_not else "no agent it serves has a home CPU"
                continue
            tids = tasks.list_tids(self.root, p.pid)
            todo = tids if cpus != m.cpus else sorted(set(tids) - m.threads)
            m.threads = set(tids)
            todo, left, owner = self.auth.writable(p.pid, todo, allowed)
            if left:
                skipped_why[p] = left
            if not todo:
                if p in skipped_why and m.cpus is None:
                    m.state, m.problem = MemberState.UNMOVABLE, skipped_why[p]
                continue
            victims = self._adopt_victims(m, todo)
            why = ("chain member of agent(s) "
                   + ", ".join(repr(self.reg.agents[ap].agent_id) for ap in allowed)
                   + f": runs on their home CPU(s) {cpus}")
            # a thread born with our cpus (cloned from a pinned thread): the
            # process's original is journaled for it, not ours (a victim's own
            # original was just written back: it is the value read)
            changes += [Change(KnobName.TASK_AFFINITY, ThreadId(p.pid, p.starttime, t).key, "",
                               cpus.to_list(), why, owner=owner,
                               inherited_original=None if t in victims else m.orig)
                        for t in todo]
            first = m.cpus is None
            m.cpus = cpus
            placing.append(m)
            if first:
                self.guard.member_placed(allowed, p)
        # found means protected, movable or not: never an exclusivity victim
        self.protected = {p.pid for p in self.members}
        if not changes:
            return
        try:
            results = self.applier.apply(changes)
        except AgentlatdError as e:
            log.error("cannot place chain members: %s", e)
            for m in placing:
                m.state, m.problem, m.cpus = MemberState.FAILED, str(e), None
            return
        _settle(placing, results, skipped_why)

    def _adopt_victims(self, m: Member, tids: Iterable[int]) -> set[int]:
        """Threads moved off an exclusive CPU before they were known members: the
        journal keeps their true original (the engine journals only before the
        first write); inherited ones get their original back before pinning.
        Returns the tids that were victims."""
        victims: set[int] = set()
        for tid in tids:
            v = self.victims.take_victim(m.proc.pid, tid)
            if v is None:
                continue
            victims.add(tid)
            if not v.journaled:
                t = ThreadId(m.proc.pid, m.proc.starttime, tid).target
                self.applier.write_direct(KnobName.TASK_AFFINITY, t, v.original.to_list())
        self.victims.spare(m.proc.pid)
        return victims

    def _unvictim(self, m: Member) -> None:
        """A member that stays where it is must not stay narrowed by exclusivity
        either: its victim threads get their originals back."""
        keys: list[tuple[str, str]] = []
        for v in self.victims.take_victims(m.proc.pid):
            if v.journaled:
                keys.append((KnobName.TASK_AFFINITY, v.thread.target))
            else:
                self.applier.write_direct(KnobName.TASK_AFFINITY, v.thread.target, v.original.to_list())
        if keys:
            self.applier.restore(keys)
        self.victims.spare(m.proc.pid)

    def _release(self, m: Member, why: str) -> None:
        """Give a member back its originals (journaled ones through the engine)."""
        keys = [(k, t) for k, t, _ in self.applier.entries((KnobName.TASK_AFFINITY,))
                if proc_of(t) == m.proc]
        if keys:
            self.applier.restore(keys)
        journaled = {t for _, t in keys}
        if m.cpus is not None and m.orig is not None and tasks.alive(self.root, m.proc):
            for tid in tasks.list_tids(self.root, m.proc.pid):
                t = ThreadId(m.proc.pid, m.proc.starttime, tid).target
                if t not in journaled and self.applier.read(KnobName.TASK_AFFINITY, t) == m.cpus.to_list():
                    err = self.applier.write_direct(KnobName.TASK_AFFINITY, t, m.orig)
                    if err:
                        log.warning("restoring the affinity of chain member thread %s: %s", t, err)
        self.protected.discard(m.proc.pid)
        # exclusivity looks at it again, now as any other task
        self.victims.rescan(m.proc.pid)
        if m.cpus is not None:
            log.info("chain member pid %d (%s) restored: %s", m.proc.pid, m.comm, why)
        m.cpus = None

    def _gone(self, m: Member) -> None:
        self.applier.forget((k, t) for k, t, _ in self.applier.entries((KnobName.TASK_AFFINITY,))
                            if proc_of(t) == m.proc)
        self.protected.discard(m.proc.pid)

    def release_all(self) -> None:
        """Before a full rollback: members' threads the journal does not hold."""
        for m in list(self.members.values()):
            try:
                self._release(m, "agentlatd is stopping")
            except Exception:
                log.exception("restoring chain member pid %d", m.proc.pid)
        self.members.clear()


def _new_member(root: Root, victims: CpuKeeper, p: ProcId) -> Member:
    """A member found for the first time, with the affinity to give back: the one
    it had before exclusivity narrowed it, if it did."""
    m = Member(p, comm=tasks.read_comm(root, p.pid) or "")
    moved = victims.narrowed(p.pid)
    with contextlib.suppress(KernelError):
        m.orig = (moved or tasks.get_affinity(p.pid)).to_list()
    return m


def _settle(placing: Iterable[Member], results: Iterable[KnobResult],
            skipped_why: Mapping[ProcId, str]) -> None:
    """Each member placed by one batch is PLACED, or PARTIAL with the first thread
    that was not written (a thread gone meanwhile is no failure) or the threads
    left where they are because they run as another uid."""
    bad: dict[int, str] = {}
    for r in results:
        if r.status in (CHANGED, UNCHANGED, CLAMPED) or r.errclass is ErrClass.GONE:
            continue
        with contextlib.suppress(ValueError):
            bad.setdefault(ThreadId.parse(r.target).pid, f"{r.target}: {r.message}")
    for m in placing:
        if m.proc.pid in bad or m.proc in skipped_why:
            m.state, m.problem = MemberState.PARTIAL, bad.get(m.proc.pid) or skipped_why[m.proc]
            log.warning("chain member pid %d: %s", m.proc.pid, m.problem)
        else:
            m.state, m.problem = MemberState.PLACED, ""
            log.info("chain member pid %d (%s) on CPU(s) %s: %s", m.proc.pid, m.comm,
                     m.cpus, "; ".join(sorted(set(m.agents.values()))))


def _run(steps: Generator[None, None, _T]) -> _T:
    """A *_steps() generator run through at once; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            value: _T = stop.value
            return value
