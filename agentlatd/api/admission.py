"""Admission control of the registration socket: who may connect, and how fast they may ask.

Per peer uid (root is never limited):
  - connections: at most max(16, max_clients / 8) of them for one non-root uid
    (and at most max_clients in all, the server's count);
  - work, over all its connections: a token bucket (policy
    daemon.uid_requests_per_s, refilled continuously, holding at most
    daemon.uid_request_burst) pays for each request line, and at most
    daemon.uid_max_inflight of its requests may wait for an answer. A line over
    either limit is answered rate_limited with retry_after_ms by the server,
    and the connection is parked (not read) until then.

Holds numbers only (counts, buckets, parking times); the server (api/server.py)
does the I/O: answers, closes, and selector registration.
"""

from __future__ import annotations

from agentlatd.api import protocol
from agentlatd.api.conn import Conn, Peer


class _UidBudget:
    """The token bucket and in-flight count of one peer uid."""

    __slots__ = ("conns", "inflight", "stamp", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.stamp = now
        self.inflight = 0
        self.conns = 0


class Admission:
    def __init__(self, *, max_clients: int, uid_requests_per_s: float,
                 uid_request_burst: int, uid_max_inflight: int) -> None:
        self.max_clients = max_clients
        self.max_per_uid = max(16, max_clients // 8)
        self.per_uid: dict[int, int] = {}
        self.budgets: dict[int, _UidBudget] = {}
        self._parked: list[Conn] = []
        self.set_limits(uid_requests_per_s, uid_request_burst, uid_max_inflight)

    def set_limits(self, requests_per_s: float, burst: int, max_inflight: int) -> None:
        """New per-uid work limits (a policy reload); buckets keep their tokens."""
        self.rate = float(requests_per_s)
        self.burst = float(burst)
        self.max_inflight = max_inflight

    # -- connections -----------------------------------------------------
    def refusal(self, peer: Peer, open_conns: int, accepting: bool) -> bytes | None:
        """The answer that refuses a new connection of `peer` (None: admit it)."""
        mine = self.per_uid.get(peer.uid, 0)
        if not (open_conns >= self.max_clients or not accepting
                or (peer.uid != 0 and mine >= self.max_per_uid)):
            return None
        return (protocol.error(None, protocol.UNAVAILABLE, "agentlatd is stopping")
                if not accepting else
                protocol.error(None, protocol.LIMIT, f"too many connections (limit "
                               f"{self.max_clients}, policy daemon.max_clients)")
                if open_conns >= self.max_clients else
                protocol.error(None, protocol.LIMIT, f"uid {peer.uid} has {mine} "
                               f"connections open (limit {self.max_per_uid})"))

    def opened(self, peer: Peer, now: float) -> None:
        self.per_uid[peer.uid] = self.per_uid.get(peer.uid, 0) + 1
        if peer.uid != 0:
            b = self.budgets.get(peer.uid)
            if b is None:
                b = self.budgets[peer.uid] = _UidBudget(self.burst, now)
            b.conns += 1

    def closed(self, c: Conn) -> None:
        """An admitted connection is gone (with its request in flight, if any)."""
        n = self.per_uid.get(c.peer.uid, 0) - 1
        if n > 0:
            self.per_uid[c.peer.uid] = n
        else:
            self.per_uid.pop(c.peer.uid, None)
        b = self.budgets.get(c.peer.uid)
        if b is not None:
            if c.pending is not None:
                b.inflight -= 1
            b.conns -= 1
            if b.conns <= 0 and b.tokens >= self.burst:
                del self.budgets[c.peer.uid]  # a full bucket: nothing to remember

    # -- requests --------------------------------------------------------
    def charge(self, c: Conn, now: float) -> tuple[float, str] | None:
        """Charge one request line to c's uid: None when admitted, else (seconds to
        wait, why) for the rate_limited answer."""
        b = self.budgets.get(c.peer.uid)
        if b is None:  # root: not limited
            return None
        b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
        b.stamp = now
        if b.inflight >= self.max_inflight:
            return 0.01, (f"uid {c.peer.uid} has {b.inflight} requests in flight "
                          f"(limit {self.max_inflight}, policy daemon.uid_max_inflight)")
        if b.tokens < 1.0:
            # until this connection's share of the refill: with every connection
            # of the uid woken at the next token, all but one would be answered
            # rate_limited again at once (16 flooding connections: 16x the answers)
            return max((1.0 - b.tokens) / self.rate, b.conns / self.rate, 0.005), (
                f"uid {c.peer.uid} is over its request rate ({self.rate:g}/s, burst "
                f"{self.burst:g}; policy daemon.uid_requests_per_s, uid_request_burst)")
        b.tokens -= 1.0
        return None

    def pending(self, c: Conn) -> None:
        """c's request waits for an answer (a PENDING handler)."""
        b = self.budgets.get(c.peer.uid)
        if b is not None:
            b.inflight += 1

    def answered(self, c: Conn) -> None:
        """c's pending request got its answer."""
        b = self.budgets.get(c.peer.uid)
        if b is not None:
            b.inflight -= 1

    # -- parking ---------------------------------------------------------
    def park(self, c: Conn, until: float) -> None:
        c.parked = until
        self._parked.append(c)

    def unpark(self, now: float) -> list[Conn]:
        """The parked connections whose time has come (their `parked` reset)."""
        if not self._parked:
            return []
        due: list[Conn] = []
        still: list[Conn] = []
        for c in self._parked:
            if c.closed:
                continue
            if c.parked > now:
                still.append(c)
                continue
            c.parked = 0.0
            due.append(c)
        self._parked = still
        return due

    def wakeup(self) -> float | None:
        """When the first parked connection may be read again (time.monotonic())."""
        return min((c.parked for c in self._parked), default=None)
