"""The scan worker's messages (agents/scanworker.py, agents/scanchild.py): one JSON
object per line each way, a request answered by one reply, in order.

    daemon -> worker   {"op": "irqbalance"}
                       {"op": "chain", "add": [AGENT...], "drop": [[pid, st]...],
                        "rules": [[agent, comm, exe, cgroup]...]}
    worker -> daemon   {"ready": PID}                         (once, after its set-up)
                       {"pids": [pid...]}                     (irqbalance)
                       {"scanned": [[pid, st, [LINK...]]...],
                        "cost": [agents, namespaces, fd_reads, seconds, truncated]}
                       {"error": "why"}                       (a scan failed; it serves on)

    AGENT = [pid, starttime, agent_id, [[proto, address, port]...]]
    LINK  = [pid, starttime, via]

The chain request names the agents added or changed since the last one and those
dropped (the worker keeps the set); the reply names only the agents scanned in that
batch. At 1000 agents a full list each way was ~1 ms of the tuner thread's time
under the interpreter lock per tick, the cost the worker is there to move.

The daemon reads what a root-owned child wrote, but that child parses what any
user controls (/proc, socket tables), so a reply is checked like client input:
decode_* raise BadReply for anything but the exact shapes and ranges above, and
the caller treats the worker as broken (agents/scanworker.py).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agentlatd.agents.chain import ChainAgent, Link, ScanCost
from agentlatd.policy import ChainRule
from agentlatd.sample.tasks import ProcId
from agentlatd.wire import json_line

PID_MAX = 1 << 22  # PID_MAX_LIMIT (include/linux/threads.h)
VIA_MAX = 4096  # a link's "how found": a Unix socket path and a namespace at most
AGENT_ID_MAX = 4096


class BadReply(ValueError):
    """A worker message that is not what the protocol says."""


# -- daemon -> worker ----------------------------------------------------------

def irqbalance_request() -> bytes:
    return json_line({"op": "irqbalance"})


def chain_request(add: Iterable[ChainAgent], drop: Iterable[ProcId],
                  rules: Sequence[ChainRule]) -> bytes:
    return json_line({"op": "chain",
                      "add": [[a.proc.pid, a.proc.starttime, a.agent_id,
                               [[proto, str(addr), port] for proto, addr, port in a.addrs]]
                              for a in add],
                      "drop": [[p.pid, p.starttime] for p in drop],
                      "rules": [[r.agent, r.comm, r.exe, r.cgroup] for r in rules]})


def decode_request(line: bytes) -> dict[str, Any]:
    """A request as the worker reads it (its parent wrote it: shapes are not checked
    beyond what the use below needs)."""
    obj = json.loads(line)
    if not isinstance(obj, dict) or obj.get("op") not in ("irqbalance", "chain"):
        raise ValueError(f"not a scan request: {line[:80]!r}")
    return obj


def request_agents(obj: Mapping[str, Any]) -> tuple[list[ChainAgent], list[ProcId]]:
    add = [ChainAgent(ProcId(int(pid), int(st)),
                      tuple((str(proto), ipaddress.ip_address(addr), int(port))
                            for proto, addr, port in addrs), str(aid))
           for pid, st, aid, addrs in obj["add"]]
    drop = [ProcId(int(pid), int(st)) for pid, st in obj["drop"]]
    return add, drop


def request_rules(obj: Mapping[str, Any]) -> tuple[ChainRule, ...]:
    return tuple(ChainRule(agent=str(a), comm=str(c), exe=str(e), cgroup=str(g))
                 for a, c, e, g in obj["rules"])


# -- worker -> daemon ----------------------------------------------------------

def ready(pid: int) -> bytes:
    return json_line({"ready": pid})


def irqbalance_reply(pids: Iterable[int]) -> bytes:
    return json_line({"pids": list(pids)})


def chain_reply(scanned: Mapping[ProcId, tuple[Link, ...]], cost: ScanCost) -> bytes:
    return json_line({"scanned": [[p.pid, p.starttime,
                                   [[lk.proc.pid, lk.proc.starttime, lk.via] for lk in links]]
                                  for p, links in scanned.items()],
                      "cost": [cost.agents, cost.namespaces, cost.fd_reads, cost.duration_s,
                               cost.truncated]})


def error_reply(why: str) -> bytes:
    return json_line({"error": why[:VIA_MAX]})


# -- the daemon's checks of a reply ---------------------------------------------

def _obj(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as e:  # UnicodeDecodeError is one
        raise BadReply(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadReply("not a JSON object")
    return obj


def _int(v: Any, what: str, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise BadReply(f"{what}: {v!r} is not an integer in [{lo}, {hi}]")
    return v


def _list(v: Any, what: str, n: int | None = None) -> list[Any]:
    if type(v) is not list or (n is not None and len(v) != n):
        raise BadReply(f"{what}: not a list" + (f" of {n}" if n is not None else ""))
    return v


def _proc(pid: Any, st: Any, what: str) -> ProcId:
    return ProcId(_int(pid, f"{what} pid", 1, PID_MAX), _int(st, f"{what} starttime"))


class WorkerError(Exception):
    """The worker answered that a scan failed (it serves on)."""


def decode_ready(line: bytes) -> int:
    obj = _obj(line)
    if set(obj) != {"ready"}:
        raise BadReply(f"expected the ready line, got keys {sorted(obj)[:8]}")
    return _int(obj["ready"], "ready", 1, PID_MAX)


def _checked(line: bytes, keys: set[str]) -> dict[str, Any]:
    obj = _obj(line)
    if set(obj) == {"error"}:
        why = obj["error"]
        if type(why) is not str:
            raise BadReply("error: not a string")
        raise WorkerError(why[:VIA_MAX])
    if set(obj) != keys:
        raise BadReply(f"expected keys {sorted(keys)}, got {sorted(obj)[:8]}")
    return obj


def decode_irqbalance(line: bytes) -> tuple[int, ...]:
    obj = _checked(line, {"pids"})
    return tuple(sorted({_int(p, "irqbalance pid", 1, PID_MAX)
                         for p in _list(obj["pids"], "pids")}))


def decode_chain(line: bytes, asked: Mapping[ProcId, object]
                 ) -> tuple[dict[ProcId, tuple[Link, ...]], ScanCost]:
    """The agents scanned and their links; each must be an agent of the request's set
    (`asked`), named once."""
    obj = _checked(line, {"scanned", "cost"})
    out: dict[ProcId, tuple[Link, ...]] = {}
    for row in _list(obj["scanned"], "scanned"):
        pid, st, links = _list(row, "scanned row", 3)
        p = _proc(pid, st, "agent")
        if p not in asked or p in out:
            raise BadReply(f"agent {p} was not asked for, or is named twice")
        got: list[Link] = []
        for lk in _list(links, "links"):
            mpid, mst, via = _list(lk, "link", 3)
            if type(via) is not str or len(via) > VIA_MAX:
                raise BadReply("link via: not a string of at most "
                               f"{VIA_MAX} characters")
            got.append(Link(_proc(mpid, mst, "member"), via))
        out[p] = tuple(got)
    agents, nss, fds, secs, trunc = _list(obj["cost"], "cost", 5)
    if type(secs) not in (int, float) or not 0.0 <= secs < 1e6 or type(trunc) is not bool:
        raise BadReply("cost: seconds or truncated out of range")
    return out, ScanCost(_int(agents, "cost agents"), _int(nss, "cost namespaces"),
                         _int(fds, "cost fd_reads"), float(secs), trunc)
