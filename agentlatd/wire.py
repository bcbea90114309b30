"""What both ends of the registration socket agree on, for the daemon's policy and for the
client library alike (docs/protocol.md): the client imports this, never the policy."""

from __future__ import annotations

import ipaddress
import json
from enum import StrEnum
from typing import Any

# the policy's daemon.socket default, and the client's when neither socket= nor
# $AGENTLATD_SOCKET names one (systemd/agentlatd.socket listens here too)
DEFAULT_SOCKET = "/run/agentlatd/agentlatd.sock"


class Op(StrEnum):
    """A request's "op" (docs/protocol.md, "Operations"), parsed once by the decoder."""

    REGISTER = "register"
    UNREGISTER = "unregister"
    STEP = "step"
    AGENTS = "agents"
    STATUS = "status"
    PING = "ping"
    CHAIN = "chain"
    SLOW_STEPS = "slow_steps"


# register's "class" values, from the most latency-sensitive down
LATENCY_CLASSES = ("interactive", "normal", "background")


# a chain member's declared address (register's and chain's "address" field)
def parse_endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """"10.0.0.2:7777" or "[fd00::2]:7777" -> (address, port); ValueError otherwise."""
    host, sep, port_s = text.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ValueError(f"{text!r} is not ADDRESS:PORT")
    port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range in {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped, port
    return addr, port


# one encoder for every line: json.dumps with separators= builds a new JSONEncoder
# per call, a third of an answer's encoding time (bench/agents.py register answer)
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def json_line(obj: Any) -> bytes:
    """`obj` as one compact JSON line (ASCII, newline-terminated): the framing of
    the socket's requests and answers (api/protocol.py) and of the scan worker's
    pipe (agents/scanwire.py)."""
    return (_COMPACT.encode(obj) + "\n").encode()
