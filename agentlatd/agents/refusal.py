"""Why the agent side refuses a request, and what a registration asks for.

The agent side knows nothing of the wire protocol: it raises AgentRefused
with a Refusal, and the request handlers (agentlatd/handlers.py) map each
Refusal to the protocol's error code (docs/protocol.md, "Errors").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agentlatd.errors import AgentlatdError


class Refusal(StrEnum):
    NO_SUCH_PROCESS = "no_such_process"  # not running, recycled, or exited meanwhile
    BAD_REQUEST = "bad_request"  # a thread id or a kernel thread where a process belongs
    NOT_PERMITTED = "not_permitted"  # the peer may not act on that process or device
    LIMIT = "limit_exceeded"  # too many agents in all, or for this uid
    UNAVAILABLE = "unavailable"  # the journal cannot be written: nothing was changed
    INTERNAL = "internal"  # a bug in agentlatd: logged with a traceback


class AgentRefused(AgentlatdError):
    """A registration (or a write for one) the agent side refuses; str(e) says why."""

    def __init__(self, why: Refusal, message: str) -> None:
        super().__init__(message)
        self.why = why
        self.message = message


@dataclass(frozen=True, slots=True)
class Registration:
    """What a registration asks for (the request, or an auto_register rule)."""

    agent_id: str
    pid: int | None  # None = the peer itself
    latency_class: str
    deadline_ns: int | None = None
    budget_ns: int | None = None
    numa_node: int | None = None
    devices: tuple[str, ...] = ()
    starttime: int | None = None  # the caller's view of the process: refused if it differs
