"""One client connection of the registration socket and its buffered, non-blocking I/O.

A connection reads into buf_in (not read while more than IN_BACKLOG bytes wait
to be processed, nor while parked by admission control) and queues answers in
buf_out; a client that leaves more than MAX_OUT bytes of answers unread is
closed. The selector watches a connection for reading unless it is parked and
for writing while output is queued. Framing (JSON lines) and requests are the
server's (api/server.py).
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentlatd.api import protocol

IN_BACKLOG = 4 * protocol.MAX_LINE
MAX_OUT = 32 << 20
RECV = 1 << 16


@dataclass(frozen=True, slots=True)
class Peer:
    """SO_PEERCRED of a connection: who connected, at connect() time."""

    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


class Conn:
    """One client connection."""

    __slots__ = ("buf_in", "buf_out", "closed", "id", "last", "parked", "peer", "pending",
                 "sock", "write_wanted")

    def __init__(self, sock: socket.socket, peer: Peer, cid: int) -> None:
        self.sock = sock
        self.peer = peer
        self.id = cid
        self.buf_in = bytearray()
        self.buf_out = bytearray()
        self.pending: Any = None  # id of the request awaiting an answer (PENDING handler)
        self.last = time.monotonic()
        self.closed = False
        self.write_wanted = False
        self.parked = 0.0  # rate limited: not read before this time.monotonic()

    def __repr__(self) -> str:
        return f"<conn {self.id} pid={self.peer.pid} uid={self.peer.uid}>"


class ConnIO:
    """Selector registration, reads and buffered writes of the server's connections.

    `on_events(c, mask)` is called for a connection's selector events; `drop(c, why)`
    closes one (a send or recv error, output the client does not read).
    """

    def __init__(self, sel: selectors.BaseSelector, on_events: Callable[[Conn, int], None],
                 drop: Callable[[Conn, str], None]) -> None:
        self.sel = sel
        self._on_events = on_events
        self._drop = drop

    def register(self, c: Conn) -> None:
        self.sel.register(c.sock, selectors.EVENT_READ, lambda m, c=c: self._on_events(c, m))

    def receive(self, c: Conn) -> bool:
        """Read what c's client sent; True when a complete (or over-long) line waits."""
        if len(c.buf_in) > IN_BACKLOG:
            return False  # drains through the server's process(); read again after
        try:
            data = c.sock.recv(RECV)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            self._drop(c, f"recv: {e.strerror}")
            return False
        if not data:
            self._drop(c, "peer closed")
            return False
        c.buf_in += data
        return b"\n" in data or len(c.buf_in) > protocol.MAX_LINE

    def watch(self, c: Conn) -> None:
        """Selector events of c: read unless parked, write while output is queued."""
        ev = (0 if c.parked else selectors.EVENT_READ) | (
            selectors.EVENT_WRITE if c.write_wanted else 0)
        try:
            key = self.sel.get_key(c.sock)
        except (KeyError, ValueError):
            key = None
        if key is None:
            if ev:
                self.sel.register(c.sock, ev, lambda m, c=c: self._on_events(c, m))
        elif not ev:
            self.sel.unregister(c.sock)
        elif key.events != ev:
            self.sel.modify(c.sock, ev, key.data)

    def reply(self, c: Conn, data: bytes) -> None:
        if c.closed:
            return
        c.buf_out += data
        if len(c.buf_out) > MAX_OUT:
            self._drop(c, f"client does not read its answers ({len(c.buf_out)} bytes queued)")
            return
        self.flush(c)

    def flush(self, c: Conn) -> None:
        while c.buf_out and not c.closed:
            try:
                n = c.sock.send(c.buf_out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._drop(c, f"send: {e.strerror}")
                return
            del c.buf_out[:n]
        want = bool(c.buf_out)
        if want != c.write_wanted and not c.closed:
            c.write_wanted = want
            self.watch(c)
