"""The socket API's request handlers, and who may do what: in one place.

Each operation of docs/protocol.md is a table entry (op -> handler). The
handlers translate the wire's requests into the agent side's calls and the
agent side's refusals (agents/refusal.py) into the wire's error codes; the
agent side never sees a protocol error, the wire never sees an agent.

Authorisation (docs/protocol.md, "Identity"; docs/hostile.md):
  - the peer is SO_PEERCRED's (pid, uid, gid), read once at accept, plus the
    starttime of that pid then (a request without a pid means "this process",
    and a pid reused after the peer exited must not get in);
  - an admin is uid 0, or a member (primary or supplementary) of the policy's
    daemon.admin_group;
  - a non-admin peer may register and declare only processes whose real and
    effective uid are its own, may name only NICs the policy marks agent-
    nameable, and may act only on agents of its own uid;
  - pids in requests are read in the peer's PID namespace (agents/pidns.py).

Registrations and unregistrations write (pins, restores): their handlers
validate and queue them; the daemon's locked phase performs them and answers
through finish_unregisters() and answer_registers().
"""

from __future__ import annotations

import grp
import pwd
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentlatd import __version__
from agentlatd.agents import pidns, views
from agentlatd.agents.agent import Agent
from agentlatd.agents.chain import ChainKeeper, Declared
from agentlatd.agents.refusal import AgentRefused, Refusal, Registration
from agentlatd.agents.registry import AgentManager, log_dropped, log_registered
from agentlatd.api import protocol
from agentlatd.api.protocol import Chain, Envelope, ProtocolError, Register, Step, Unregister
from agentlatd.api.server import PENDING, Conn, Server
from agentlatd.policy import Policy
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root
from agentlatd.wire import Op, parse_endpoint

Handler = Callable[[Conn, Envelope], Any]

# the wire's error code for each refusal of the agent side
WIRE_CODE: Mapping[Refusal, str] = {
    Refusal.NO_SUCH_PROCESS: protocol.NO_SUCH_PROCESS,
    Refusal.BAD_REQUEST: protocol.BAD_REQUEST,
    Refusal.NOT_PERMITTED: protocol.NOT_PERMITTED,
    Refusal.LIMIT: protocol.LIMIT,
    Refusal.UNAVAILABLE: protocol.UNAVAILABLE,
    Refusal.INTERNAL: protocol.INTERNAL,
}


def wire_error(e: AgentRefused) -> ProtocolError:
    return ProtocolError(WIRE_CODE[e.why], e.message)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A request answered after the locked phase has written (PENDING)."""

    conn: Conn
    req_id: Any
    op: Op  # REGISTER | UNREGISTER
    proc: ProcId
    new: bool = False  # a REGISTER of a process not registered before it


def register_result(a: Agent) -> dict[str, Any]:
    return a.placement_json()


class Handlers:
    """The request table and authorisation; state: the peers' starttimes and the
    requests waiting for the locked phase."""

    def __init__(self, root: Root, manager: AgentManager, chain: ChainKeeper, *,
                 policy: Callable[[], Policy], status: Callable[[], dict[str, Any]],
                 device_nodes: Callable[[], Mapping[str, int]]) -> None:
        self.root = root
        self.manager = manager
        self.chain = chain
        self._policy = policy
        self._status = status
        self._device_nodes = device_nodes
        self.peer_start: dict[int, int | None] = {}  # conn id -> starttime of its peer
        # conn ids whose peer was in the daemon's PID namespace when it connected:
        # their pids need no translation (two readlinks per request saved)
        self.peer_same_ns: set[int] = set()
        self.waiting: list[Waiting] = []

    def table(self) -> dict[Op, Handler]:
        return {Op.REGISTER: self.register, Op.UNREGISTER: self.unregister, Op.STEP: self.step,
                Op.AGENTS: self.agents, Op.STATUS: self.status, Op.PING: self.ping,
                Op.CHAIN: self.declare_chain}

    # -- connections ---------------------------------------------------------
    def on_accept(self, c: Conn) -> None:
        self.peer_start[c.id] = tasks.starttime_of(self.root, c.peer.pid)
        if pidns.same_ns_as_daemon(self.root, c.peer.pid):
            self.peer_same_ns.add(c.id)

    def on_close(self, c: Conn) -> None:
        self.peer_start.pop(c.id, None)
        self.peer_same_ns.discard(c.id)

    # -- authorisation -------------------------------------------------------
    def is_admin(self, uid: int, gid: int) -> bool:
        if uid == 0:
            return True
        name = self._policy().daemon.admin_group
        try:
            g = grp.getgrnam(name)
        except KeyError:
            return False
        if gid == g.gr_gid:
            return True
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            return False
        return user in g.gr_mem

    def peer_pid(self, c: Conn, pid: int) -> int:
        """A pid from a request, as the peer sees it, in the daemon's PID namespace
        (agents/pidns.py; docs/protocol.md "PID namespaces")."""
        if c.id in self.peer_same_ns:
            return pid
        out = pidns.translate(self.root, c.peer.pid, pid)
        if out is None:
            raise ProtocolError(protocol.NO_SUCH_PROCESS,
                                f"no process {pid} in your PID namespace (pids in requests "
                                "are read in the client's own PID namespace; a process in a "
                                "namespace nested below it must register itself)")
        return out

    def agent_for(self, c: Conn, pid: int | None, agent_id: str | None) -> Agent:
        """The agent a request names (default: the peer itself), if the peer may act on it."""
        if pid is not None:
            pid = self.peer_pid(c, pid)
        target = pid if pid is not None else c.peer.pid
        a = self.manager.find(target)
        if a is None:
            raise ProtocolError(protocol.NOT_REGISTERED, f"process {target} is not registered")
        if pid is None and self.peer_start.get(c.id) not in (None, a.proc.starttime):
            raise ProtocolError(protocol.NOT_REGISTERED, f"process {target} is not registered")
        if agent_id is not None and agent_id != a.agent_id:
            raise ProtocolError(protocol.NOT_REGISTERED, f"process {target} is registered as "
                                                         f"{a.agent_id!r}, not {agent_id!r}")
        if a.uid != c.peer.uid and not self.is_admin(c.peer.uid, c.peer.gid):
            raise ProtocolError(protocol.NOT_PERMITTED, f"uid {c.peer.uid} may not act on "
                                                        f"agent {a.agent_id!r} of uid {a.uid}")
        return a

    # -- operations ------------------------------------------------------------
    def register(self, c: Conn, env: Envelope) -> Any:
        req = env.req
        assert isinstance(req, Register)
        numa_node = req.numa_node
        if numa_node is None and req.devices:
            known = self._device_nodes()
            nodes = {known[d] for d in req.devices if d in known}
            if len(nodes) == 1:
                numa_node = nodes.pop()
        admin = self.is_admin(c.peer.uid, c.peer.gid)
        pid = self.peer_pid(c, req.pid) if req.pid is not None else None
        reg = Registration(agent_id=req.agent_id, pid=pid, latency_class=req.latency_class,
                           deadline_ns=req.deadline_ns, budget_ns=req.budget_ns,
                           numa_node=numa_node, devices=req.devices, starttime=req.starttime)
        try:
            p, uid = self.manager.check_register(c.peer.pid, c.peer.uid,
                                                 self.peer_start.get(c.id), reg, admin)
            new = p not in self.manager.agents
            # its log line comes after the answer (answer_register): the client
            # does not wait for it
            self.manager.register(p, uid, reg, owner=None if admin else c.peer.uid,
                                  logged_by_caller=True)
        except AgentRefused as e:
            raise wire_error(e) from None
        self.chain.set_owner(p, None if admin else c.peer.uid)
        self.manager.autoreg.declined.discard(p)
        self.waiting.append(Waiting(c, env.req_id, Op.REGISTER, p, new))
        return PENDING

    def unregister(self, c: Conn, env: Envelope) -> Any:
        req = env.req
        assert isinstance(req, Unregister)
        a = self.agent_for(c, req.pid, req.agent_id)
        self.waiting.append(Waiting(c, env.req_id, Op.UNREGISTER, a.proc))
        return PENDING

    def step(self, c: Conn, env: Envelope) -> Any:
        req = env.req
        assert isinstance(req, Step)
        a = self.agent_for(c, req.pid, req.agent_id)
        a.hist.merge_counts(req.hist, sum_ns=req.sum_ns, max_ns=req.max_ns)
        a.recent.merge_counts(req.hist, time.monotonic())
        a.dropped += req.dropped
        return {"steps": a.hist.count}

    def declare_chain(self, c: Conn, env: Envelope) -> Any:
        """Members an agent declares (docs/protocol.md, "Chains"): a non-admin peer
        may name only processes whose real and effective uid are its own."""
        req = env.req
        assert isinstance(req, Chain)
        a = self.agent_for(c, req.pid, req.agent_id)
        admin = self.is_admin(c.peer.uid, c.peer.gid)
        procs: list[ProcId] = []
        addrs: list[tuple[str, Any, int]] = []
        for m in req.members:
            if m.address is not None:
                addr, port = parse_endpoint(m.address)
                addrs.append((m.proto or "udp", addr, port))
                continue
            assert m.pid is not None
            st = tasks.starttime_of(self.root, m.pid)
            if st is None or (m.starttime is not None and st != m.starttime):
                raise ProtocolError(protocol.NO_SUCH_PROCESS, f"process {m.pid} does not exist"
                                    + (" (or was recycled)" if st is not None else ""))
            uids = tasks.uids_of(self.root, m.pid)
            if uids is None:
                raise ProtocolError(protocol.NO_SUCH_PROCESS, f"process {m.pid} does not exist")
            if not admin and uids != (c.peer.uid, c.peer.uid):
                raise ProtocolError(protocol.NOT_PERMITTED,
                                    f"uid {c.peer.uid} may declare only its own processes, and "
                                    f"process {m.pid} runs as uid "
                                    f"{uids[0] if uids[0] != c.peer.uid else uids[1]}")
            procs.append(ProcId(m.pid, st))
        self.chain.declare(a.proc, Declared(tuple(procs), tuple(addrs)))
        return {"agent_id": a.agent_id, "pid": a.proc.pid,
                "members": [{"pid": p.pid, "starttime": p.starttime} for p in procs]
                + [{"proto": pr, "address": f"{ad}:{po}"} for pr, ad, po in addrs]}

    def agents(self, c: Conn, env: Envelope) -> Any:
        return views.rows(self.manager, self.chain.row)

    def status(self, c: Conn, env: Envelope) -> Any:
        return self._status()

    def ping(self, c: Conn, env: Envelope) -> Any:
        return {"pong": True, "version": __version__, "protocol": protocol.VERSION}

    # -- the answers of the locked phase ----------------------------------------
    def take_waiting(self) -> list[Waiting]:
        waiting, self.waiting = self.waiting, []
        return waiting

    def finish_unregister(self, server: Server, w: Waiting) -> None:
        """Restore the originals of an agent a peer unregistered, and answer (lock held)."""
        a = self.manager.unregister(w.proc, logged_by_caller=True)
        if a is None:
            server.fail(w.conn, w.req_id, protocol.NOT_REGISTERED,
                        f"process {w.proc.pid} is not registered")
            return
        self.manager.decline(w.proc)
        server.answer(w.conn, w.req_id, {"agent_id": a.agent_id, "pid": w.proc.pid,
                                         "restored": True, "steps": a.hist.count})
        log_dropped(a, "unregistered")

    def answer_register(self, server: Server, w: Waiting, err: AgentRefused | None) -> None:
        """Answer a registration after its placement (or its refusal)."""
        a = self.manager.agents.get(w.proc)
        if err is not None or a is None:
            code = WIRE_CODE[err.why] if err is not None else protocol.NO_SUCH_PROCESS
            msg = err.message if err is not None else f"process {w.proc.pid} has exited"
            server.fail(w.conn, w.req_id, code, msg)
        else:
            server.answer(w.conn, w.req_id, register_result(a))
            if w.new:
                log_registered(a)
