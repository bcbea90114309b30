"""The registration protocol: versioned JSON lines (docs/protocol.md). Pure.

One request per line, one answer per request, in order:
  -> {"v": 1, "op": "register", "id": 7, "agent_id": "planner", "latency_class": "interactive"}
  <- {"v": 1, "id": 7, "ok": true, "result": {...}}
  <- {"v": 1, "id": 7, "ok": false, "error": {"code": "not_permitted", "message": "..."}}

This module turns a line into a typed request or a ProtocolError (code + a
sentence), and results into lines. Nothing a client sends becomes a path or a
format string: pids are JSON integers checked against PID_MAX, names are
bounded printable strings, numbers are bounded integers. Text that stands for a
number (a histogram bucket key) is ASCII decimal, checked with the same test
that guards its conversion: str.isdigit() is true for "²", which int() refuses,
and int() takes every Unicode Nd digit ("١", "１"), which the protocol does not.
An object with a key twice is refused: parsers disagree on which one wins, so
a request could mean one thing to a proxy or a log reader and another here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentlatd import stepstats as stats
from agentlatd.sample.tasks import valid_pid
from agentlatd.wire import LATENCY_CLASSES, Op, json_line, parse_endpoint

VERSION = 1
MAX_LINE = 64 * 1024  # bytes per request line, newline included
MAX_SAMPLES = 4096  # raw samples per step report
MAX_STEP_COUNT = 1 << 40
MAX_ID_LEN = 128
MAX_DEVICES = 16

# error codes (docs/protocol.md, "Errors")
BAD_JSON = "bad_json"  # not a JSON object on one line
BAD_REQUEST = "bad_request"  # a field missing, of the wrong type or out of range
TOO_LARGE = "too_large"  # a line over MAX_LINE: the connection is closed after the answer
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_OP = "unknown_op"
NOT_PERMITTED = "not_permitted"  # SO_PEERCRED says this peer may not do that
NO_SUCH_PROCESS = "no_such_process"  # pid not running (or recycled: starttime differs)
NOT_REGISTERED = "not_registered"
LIMIT = "limit_exceeded"  # too many agents / connections / queued output
RATE_LIMITED = "rate_limited"  # this uid's request rate or in-flight requests: retry later
UNAVAILABLE = "unavailable"  # no home CPU, daemon stopping, ...
INTERNAL = "internal"  # a bug in agentlatd: logged with a traceback

OPS = tuple(Op)  # in the order the unknown_op message lists them


class ProtocolError(Exception):
    """An error answer: code (machine) and message (a sentence for a person)."""

    def __init__(self, code: str, message: str, req_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req_id = req_id


@dataclass(frozen=True, slots=True)
class Register:
    agent_id: str
    pid: int | None  # None = the peer
    latency_class: str
    deadline_ns: int | None = None
    budget_ns: int | None = None
    numa_node: int | None = None
    devices: tuple[str, ...] = ()
    starttime: int | None = None  # the caller's view of the process: refused if it differs


@dataclass(frozen=True, slots=True)
class Unregister:
    pid: int | None
    agent_id: str | None


@dataclass(frozen=True, slots=True)
class Step:
    pid: int | None
    agent_id: str | None
    count: int
    hist: Mapping[int, int]  # bucket -> count (agentlatd.stepstats)
    sum_ns: int
    max_ns: int
    dropped: int = 0  # samples the client could not keep


@dataclass(frozen=True, slots=True)
class Query:
    op: Op  # AGENTS | STATUS | PING | SLOW_STEPS


@dataclass(frozen=True, slots=True)
class ChainMember:
    """A process an agent waits on, as the agent names it: a process or a local
    address:port some process is bound to (docs/protocol.md, "Chains")."""

    pid: int | None = None
    starttime: int | None = None
    proto: str | None = None  # "udp" | "tcp" with address
    address: str | None = None  # "10.0.0.2:7777", "[fd00::2]:7777"


@dataclass(frozen=True, slots=True)
class Chain:
    """Declare the members of a registered agent's chain (replaces the previous list)."""

    pid: int | None
    agent_id: str | None
    members: tuple[ChainMember, ...]


Request = Register | Unregister | Step | Query | Chain


@dataclass(frozen=True, slots=True)
class Envelope:
    req_id: Any
    op: Op
    req: Request


# ---------------------------------------------------------------------------
# decoding


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: a dict, or _DuplicateKey for a key given twice."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def ascii_uint(text: str, max_len: int) -> int | None:
    """`text` as a non-negative integer when it is 1..max_len ASCII digits, else None."""
    if not (0 < len(text) <= max_len and text.isascii() and text.isdigit()):
        return None
    return int(text)


def _name(obj: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise ProtocolError(BAD_REQUEST, f"field {key!r} is required")
        return None
    if not isinstance(v, str) or not 0 < len(v) <= MAX_ID_LEN or not v.isprintable():
        raise ProtocolError(BAD_REQUEST, f"field {key!r} must be a printable string of "
                                         f"1..{MAX_ID_LEN} characters")
    return v


def _int(obj: Mapping[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int | None:
    v = obj.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError(BAD_REQUEST, f"field {key!r} must be an integer in {lo}..{hi}")
    return v


def _pid(obj: Mapping[str, Any]) -> int | None:
    v = obj.get("pid")
    if v is None:
        return None
    pid = valid_pid(v)
    if pid is None:
        raise ProtocolError(BAD_REQUEST, "field 'pid' must be a positive integer process id")
    return pid


def _register(obj: Mapping[str, Any]) -> Register:
    agent_id = _name(obj, "agent_id", required=True)
    assert agent_id is not None
    cls = obj.get("latency_class", "interactive")
    if cls not in LATENCY_CLASSES:
        raise ProtocolError(BAD_REQUEST, "field 'latency_class' must be one of "
                                         + ", ".join(LATENCY_CLASSES))
    devs = obj.get("devices", [])
    if (not isinstance(devs, list) or len(devs) > MAX_DEVICES
            or not all(isinstance(d, str) and 0 < len(d) <= 64 and d.isprintable() for d in devs)):
        raise ProtocolError(BAD_REQUEST, f"field 'devices' must be a list of at most "
                                         f"{MAX_DEVICES} device names")
    return Register(
        agent_id=agent_id, pid=_pid(obj), latency_class=cls,
        deadline_ns=_int(obj, "deadline_ns", 0, 1 << 62),
        budget_ns=_int(obj, "budget_ns", 0, 1 << 62),
        numa_node=_int(obj, "numa_node", 0, 1 << 16),
        devices=tuple(devs),
        starttime=_int(obj, "starttime", 0, 1 << 62))


def _step(obj: Mapping[str, Any]) -> Step:
    hist: dict[int, int] = {}
    raw_hist = obj.get("hist")
    raw_samples = obj.get("samples_ns")
    max_seen = 0
    total = 0
    sum_ns = 0
    if raw_hist is not None:
        if not isinstance(raw_hist, dict) or len(raw_hist) > stats.MAX_BUCKET + 1:
            raise ProtocolError(BAD_REQUEST, "field 'hist' must be an object {bucket: count}")
        for k, c in raw_hist.items():
            b_or_none = ascii_uint(k, 5) if isinstance(k, str) else None
            if b_or_none is None or b_or_none > stats.MAX_BUCKET:
                raise ProtocolError(BAD_REQUEST, f"field 'hist' has a bad bucket {k!r} "
                                                 f"(expected ASCII digits 0..{stats.MAX_BUCKET})")
            b = b_or_none
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_STEP_COUNT:
                raise ProtocolError(BAD_REQUEST, f"field 'hist' has a bad count for bucket {b}")
            if c:
                hist[b] = hist.get(b, 0) + c
                total += c
                max_seen = max(max_seen, stats.bucket_bounds(b)[1])
                sum_ns += stats.bucket_value(b) * c
    if raw_samples is not None:
        if not isinstance(raw_samples, list) or len(raw_samples) > MAX_SAMPLES:
            raise ProtocolError(BAD_REQUEST, f"field 'samples_ns' must be a list of at most "
                                             f"{MAX_SAMPLES} integers")
        for v in raw_samples:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= stats.MAX_NS:
                raise ProtocolError(BAD_REQUEST, "field 'samples_ns' must hold integers "
                                                 f"0..{stats.MAX_NS}")
            b = stats.bucket_of(v)
            hist[b] = hist.get(b, 0) + 1
            total += 1
            sum_ns += v
            max_seen = max(max_seen, v)
    if total > MAX_STEP_COUNT:
        raise ProtocolError(BAD_REQUEST, "too many steps in one report")
    count = _int(obj, "count", 0, MAX_STEP_COUNT, total)
    assert count is not None
    if count != total:
        raise ProtocolError(BAD_REQUEST, f"field 'count' ({count}) differs from the samples "
                                         f"and histogram counts ({total})")
    client_sum = _int(obj, "sum_ns", 0, MAX_STEP_COUNT * stats.MAX_NS)
    client_max = _int(obj, "max_ns", 0, stats.MAX_NS)
    # the client's exact sum/max are kept when they are consistent with the buckets
    if client_max is not None and client_max <= max_seen:
        max_seen = client_max
    if client_sum is not None and raw_samples is None:
        sum_ns = client_sum
    dropped = _int(obj, "dropped", 0, MAX_STEP_COUNT, 0)
    assert dropped is not None
    return Step(pid=_pid(obj), agent_id=_name(obj, "agent_id", required=False), count=count,
                hist=hist, sum_ns=sum_ns, max_ns=max_seen, dropped=dropped)


MAX_CHAIN = 64  # members one agent may declare


def _chain(obj: Mapping[str, Any]) -> Chain:
    raw = obj.get("members")
    if not isinstance(raw, list) or len(raw) > MAX_CHAIN:
        raise ProtocolError(BAD_REQUEST, f"field 'members' must be a list of at most {MAX_CHAIN} "
                                         "members")
    out: list[ChainMember] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not ("pid" in m) ^ ("address" in m) \
                or set(m) - {"pid", "starttime", "address", "proto"}:
            raise ProtocolError(BAD_REQUEST, f"members[{i}] must be {{\"pid\": N[, \"starttime\": "
                                             "S]} or {\"address\": \"ADDR:PORT\", \"proto\": "
                                             "\"udp\"|\"tcp\"}")
        if "pid" in m:
            pid = valid_pid(m["pid"])
            if pid is None:
                raise ProtocolError(BAD_REQUEST, f"members[{i}].pid must be a positive integer "
                                                 "process id")
            out.append(ChainMember(pid=pid, starttime=_int(m, "starttime", 0, 1 << 62)))
            continue
        addr, proto = m.get("address"), m.get("proto", "udp")
        if proto not in ("udp", "tcp") or not isinstance(addr, str) or len(addr) > 64:
            raise ProtocolError(BAD_REQUEST, f"members[{i}] needs \"address\": \"ADDR:PORT\" and "
                                             "\"proto\": \"udp\" or \"tcp\"")
        try:
            parse_endpoint(addr)
        except ValueError as e:
            raise ProtocolError(BAD_REQUEST, f"members[{i}].address: {e}") from None
        out.append(ChainMember(proto=proto, address=addr))
    return Chain(pid=_pid(obj), agent_id=_name(obj, "agent_id", required=False),
                 members=tuple(out))


_OP_OF: Mapping[str, Op] = {str(o): o for o in Op}


def decode(line: bytes) -> Envelope:
    """One request line -> Envelope; ProtocolError (with the id when known) otherwise."""
    if len(line) > MAX_LINE:
        raise ProtocolError(TOO_LARGE, f"request line of {len(line)} bytes exceeds the "
                                       f"{MAX_LINE}-byte limit")
    try:
        obj = json.loads(line, object_pairs_hook=_unique)
    except _DuplicateKey as e:
        raise ProtocolError(BAD_REQUEST, f"key {e.key!r} appears twice in one object; "
                                         "each key may be given once") from None
    except (ValueError, RecursionError) as e:
        raise ProtocolError(BAD_JSON, f"request is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_JSON, "request must be a JSON object")
    req_id = obj.get("id")
    if not (req_id is None or isinstance(req_id, int | str)) or (
            isinstance(req_id, str) and len(req_id) > MAX_ID_LEN):
        req_id = None
        raise ProtocolError(BAD_REQUEST, f"field 'id' must be an integer or a string of at "
                                         f"most {MAX_ID_LEN} characters")
    try:
        v = obj.get("v", VERSION)
        # type() too: in Python true == 1 and 1.0 == 1, but JSON's true and 1.0
        # are not the integer 1 that docs/protocol.md asks for
        if type(v) is not int or v != VERSION:
            raise ProtocolError(UNSUPPORTED_VERSION, f"protocol version {v!r} is not supported; "
                                                     f"this daemon speaks version {VERSION}")
        raw_op = obj.get("op")
        # any JSON value may stand here (null, a list): only a known string is an op
        op = _OP_OF.get(raw_op) if isinstance(raw_op, str) else None
        if op is None:
            raise ProtocolError(UNKNOWN_OP, f"unknown op {raw_op!r}; known: {', '.join(OPS)}")
        req: Request
        if op is Op.REGISTER:
            req = _register(obj)
        elif op is Op.UNREGISTER:
            req = Unregister(pid=_pid(obj), agent_id=_name(obj, "agent_id", required=False))
        elif op is Op.STEP:
            req = _step(obj)
        elif op is Op.CHAIN:
            req = _chain(obj)
        else:
            req = Query(op)
    except ProtocolError as e:
        e.req_id = req_id
        raise
    return Envelope(req_id, op, req)


# ---------------------------------------------------------------------------
# encoding

def ok(req_id: Any, result: Any) -> bytes:
    return json_line({"v": VERSION, "id": req_id, "ok": True, "result": result})


def error(req_id: Any, code: str, message: str, retry_after_ms: int | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if retry_after_ms is not None:
        err["retry_after_ms"] = retry_after_ms
    return json_line({"v": VERSION, "id": req_id, "ok": False, "error": err})


def request(op: Op, req_id: Any = None, **fields: Any) -> bytes:
    """A request line (for clients)."""
    msg: dict[str, Any] = {"v": VERSION, "op": str(op)}
    if req_id is not None:
        msg["id"] = req_id
    msg.update({k: v for k, v in fields.items() if v is not None})
    return json_line(msg)
