"""Completion chains: which local processes an agent waits on, and where they run (pure).

Why: an agent's step is a chain -- the agent sends a request, a tool server
(an MCP server, a vector database, an embedding server) computes, the reply
wakes the agent. Protecting the agent process alone made things worse than
doing nothing: its exclusive home CPU pushed an unregistered tool server onto
the completion CPU, next to the flood's sender and its softirq, and every
reply waited behind them (measured: step p50 7 -> 69 us, p999 51 us -> 3.9 ms).
So the processes an agent waits on are found and placed with it.

Who is a peer (match_peers): for each of the agent's TCP/UDP sockets with a
peer address (connected UDP, an established TCP connection), the socket whose
local end is that address, in whichever network namespace holds it: a reply
over a veth comes from a process in another namespace, and the same 4-tuple is
seen from both ends (no NAT between namespaces of one host). A peer socket
  - has the same protocol and local port = the agent's remote port;
  - has local address = the agent's remote address, or the wildcard (a
    server bound to 0.0.0.0 / ::), and then the namespace must own the
    agent's remote address (fib_trie LOCAL / if_inet6): two containers that
    both listen on 0.0.0.0:8080 are told apart by who owns 10.0.0.2;
  - has remote end = the agent's local end (a connected socket), or none
    (an unconnected UDP server, a TCP listener);
  - for a loopback address, is in the agent socket's own namespace
    (127.0.0.1 is per namespace).
What cannot be found this way (docs/protocol.md, "Chains"): a peer on
another host; an agent socket that is not connected (UDP sendto() to many
peers: no peer in the table), shared-memory rings, futexes, signals and
eventfds (no socket, no pipe), a peer behind NAT or a userspace proxy (the
proxy is found, not what it forwards to). Those are declared by the agent.

Pipes (pipe_peers): a child process (a stdio MCP server) holding an
anonymous pipe the agent also holds: both ends of a pipe show the same inode
in proc/PID/fd.

Where a member runs (member_cpus): on the home CPUs of the agents it serves
(and their quiet SMT siblings, see member_cpus).
A member waits for its agent and its agent waits for it: they alternate, so
the home CPU is idle exactly when the member has work, its caches are the
agent's, and a wakeup stays on one quiet CPU. A member shared by several
agents is allowed on all of their home CPUs: the scheduler's wake-affine
choice runs it on the CPU of the agent that just called it, all of them
quiet. An agent without a home CPU contributes none; with none at all the
member is left where it is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from agentlatd.cpuset import CpuSet
from agentlatd.model.layout import CpuLayout
from agentlatd.sample.chain import NsTable
from agentlatd.sample.sockets import TCP_LISTEN, Addr, Sock


@dataclass(frozen=True, slots=True)
class PeerSocket:
    """A socket on the other end of one of an agent's sockets."""

    ns: int
    inode: int
    via: str  # "udp 10.0.0.2:7777" as a person reads it


def _owns(t: NsTable, addr: Addr) -> bool:
    """Whether namespace `t` has `addr` as one of its own addresses (unknown = yes)."""
    if isinstance(addr, ipaddress.IPv4Address):
        return not t.local4 or any(addr in n for n in t.local4)
    return not t.local6 or addr in t.local6


def owner_namespaces(addr: Addr, tables: Iterable[NsTable]) -> list[int]:
    """The namespaces that have `addr` as one of their own addresses (known ones only)."""
    out: list[int] = []
    for t in tables:
        if isinstance(addr, ipaddress.IPv4Address):
            if any(addr in n for n in t.local4):
                out.append(t.ns)
        elif addr in t.local6:
            out.append(t.ns)
    return out


def tcp_namespaces(agent_inodes: Iterable[int], tables: Iterable[NsTable]) -> set[int]:
    """Where the peers of the agent's connected TCP sockets can be: the
    namespaces owning each remote address, and the socket's own for loopback
    (or when no namespace claims the address)."""
    tabs = list(tables)
    mine = set(agent_inodes)
    out: set[int] = set()
    for t in tabs:
        for s in t.socks:
            if s.inode not in mine or s.proto != "tcp" or s.remote.is_unspecified:
                continue
            owners = [] if s.remote.is_loopback else owner_namespaces(s.remote, tabs)
            out.update(owners or [t.ns])
    return out


def _endpoint(addr: Addr, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _peer_of(s: Sock, s_ns: int, p: Sock, t: NsTable) -> bool:
    if p.proto != s.proto or p.inode == s.inode or p.local_port != s.remote_port:
        return False
    if s.remote.is_loopback and t.ns != s_ns:
        return False
    if p.local != s.remote and (not p.local.is_unspecified or not _owns(t, s.remote)):
        return False
    if p.remote.is_unspecified:
        # an unconnected UDP server or a TCP listener (the accepted socket, when
        # there is one, matches below as well)
        return p.proto == "udp" or p.state == TCP_LISTEN
    return p.remote == s.local and p.remote_port == s.local_port


PortIndex = Mapping[tuple[str, int], Sequence[tuple[NsTable, Sock]]]


def port_index(tables: Iterable[NsTable]) -> dict[tuple[str, int], list[tuple[NsTable, Sock]]]:
    """(proto, local port) -> the sockets bound there, in every namespace: built once
    per scan, so matching costs O(sockets) and not agents x sockets."""
    out: dict[tuple[str, int], list[tuple[NsTable, Sock]]] = {}
    for t in tables:
        for s in t.socks:
            out.setdefault((s.proto, s.local_port), []).append((t, s))
    return out


def match_peers(agent_inodes: Iterable[int], tables: Iterable[NsTable],
                index: PortIndex | None = None) -> list[PeerSocket]:
    """The peer sockets of the agent's sockets `agent_inodes`, in every namespace
    (module docstring). `index`: port_index(tables), when the caller has it."""
    tabs = list(tables)
    idx = port_index(tabs) if index is None else index
    mine = set(agent_inodes)
    own = [(t.ns, s) for t in tabs for s in t.socks if s.inode in mine]
    return peers_of(own, mine, idx)


def peers_of(own: Iterable[tuple[int, Sock]], mine: Container[int],
             idx: PortIndex) -> list[PeerSocket]:
    """match_peers for the agent's sockets already found: (namespace, socket) each."""
    out: dict[tuple[int, int], PeerSocket] = {}
    for s_ns, s in own:
        if s.remote.is_unspecified or s.remote_port == 0:
            continue  # not connected: its peers are not in any table
        for t, p in idx.get((s.proto, s.remote_port), ()):
            if p.inode in mine or (t.ns, p.inode) in out:
                continue
            if _peer_of(s, s_ns, p, t):
                out[(t.ns, p.inode)] = PeerSocket(
                    t.ns, p.inode, f"{s.proto} {_endpoint(s.remote, s.remote_port)}")
    return sorted(out.values(), key=lambda p: (p.ns, p.inode))


def bound_to(proto: str, addr: Addr, port: int, tables: Iterable[NsTable]) -> list[PeerSocket]:
    """Sockets bound to addr:port (a declared member address), in the namespaces
    that own `addr` (or hold it bound exactly)."""
    out: list[PeerSocket] = []
    for t in tables:
        for p in t.socks:
            if p.proto != proto or p.local_port != port:
                continue
            if not (p.remote.is_unspecified or p.proto == "tcp"):
                continue
            if p.local == addr or (p.local.is_unspecified and not addr.is_loopback
                                   and _owns(t, addr) and (t.local4 or t.local6)):
                out.append(PeerSocket(t.ns, p.inode, f"{proto} {_endpoint(addr, port)} (declared)"))
    return out


def pipe_peers(agent_pipes: Iterable[int], children: Mapping[int, Iterable[int]]) -> dict[int, int]:
    """child pid -> one pipe inode it shares with the agent, for each child sharing any."""
    mine = set(agent_pipes)
    out: dict[int, int] = {}
    for pid, pipes in children.items():
        common = mine.intersection(pipes)
        if common:
            out[pid] = min(common)
    return out


def member_cpus(homes: Iterable[int | None], layout: CpuLayout | None = None,
                hot: Container[int] = frozenset(), load: Mapping[int, int] | None = None) -> CpuSet:
    """Where a member of agents with these home CPUs runs (module docstring); empty = leave it.

    With a layout: plus each home CPU's SMT siblings that are home CPUs too, not
    hot and home to no agent of their own -- a quiet sibling shares the core's
    L1/L2 with the agent, so a member with more work than fits between the
    agent's steps spills there rather than queueing behind the agent."""
    base = CpuSet(h for h in homes if h is not None)
    if layout is None or not base:
        return base
    load = load or {}
    extra = {c for c in layout.siblings_of(base) - base
             if c in layout.home and c not in hot and not load.get(c)}
    return base | CpuSet(extra)
