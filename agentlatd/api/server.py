"""The registration socket: a Unix stream socket serving JSON lines (docs/protocol.md).

Single-threaded and non-blocking, on a `selectors` selector the daemon owns
(the daemon's loop also waits on pidfds, the signal pipe and its tick timer).
Requests are table entries (style.md habit 9): `handlers` maps an op to a
function (conn, envelope) -> result. A handler may return PENDING and answer
later with Server.answer()/fail() (the daemon batches the affinity writes of
every registration that arrived in one loop turn into one journal save); a
connection with an unanswered request reads no further request until it is
answered, so answers always come in request order.

Identity is SO_PEERCRED (socket(7)): the pid, uid and gid of the process that
connected, given by the kernel, never taken from the request. Who may connect
at all is the socket file's mode (0660) and group (policy daemon.socket_group).

Limits, so that one client never stalls or starves the others:
  - a request line over protocol.MAX_LINE (64 KiB): answered too_large, then
    the connection is closed (the stream cannot be resynchronised);
  - at most LINES_PER_TURN requests of one connection per loop turn, round
    robin over connections; a connection with more than IN_BACKLOG bytes of
    unprocessed input is not read until it drains;
  - answers queued but not read by the client beyond MAX_OUT bytes: closed;
  - no complete request for IDLE_TIMEOUT seconds: closed (the client
    reconnects). Only a complete line counts, not bytes: a client trickling
    a partial line one byte at a time (slowloris) is closed all the same;
  - at most policy daemon.max_clients connections, and at most
    max(16, max_clients / 8) of them for one non-root uid: the next is
    answered limit_exceeded and closed;
  - work per non-root peer uid, over all its connections: a token bucket
    (policy daemon.uid_requests_per_s, refilled continuously, holding at most
    daemon.uid_request_burst) pays for each request line, and at most
    daemon.uid_max_inflight of its requests may wait for an answer (a
    registration waits for the next loop turn's batch). A line over either
    limit is answered rate_limited with retry_after_ms, and the connection is
    parked (not read, its buffered lines not looked at) until then, so a
    flood costs one small answer per connection per retry interval;
  - at most LINES_PER_TURN lines of one uid per loop turn, round robin over
    its connections: a uid with many pipelining connections gets the same
    share of a turn as a client with one, and a turn stays short (the
    registration path of everyone else waits at most one turn).
The connection limits and the per-uid budgets are api/admission.py's; a
connection's buffers and non-blocking reads and writes are api/conn.py's.
Measured by bench/flood.py: one uid pipelining from 16 connections, another
uid's ping p99 (docs/hostile.md has the figures).
Bad input is answered with an error code and a sentence; the server keeps
serving everyone else. Anything but ProtocolError raised while decoding or
handling a request is a bug: logged with its traceback, answered "internal" on
that connection. An unexpected exception while reading, writing or accepting
closes that one connection (logged with its traceback). No exception that a
client's bytes can cause leaves this module: one request line must never stop
the daemon, which would roll back every agent's placement.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import selectors
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

from agentlatd import safepath
from agentlatd.api import protocol
from agentlatd.api.admission import Admission
from agentlatd.api.conn import Conn, ConnIO, Peer, peer_cred
from agentlatd.api.protocol import Envelope, ProtocolError
from agentlatd.errors import AgentlatdError
from agentlatd.wire import Op

__all__ = ["PENDING", "Conn", "Handler", "Peer", "Server", "SocketError", "SocketInUse",
           "bind_socket", "peer_cred"]

log = logging.getLogger("agentlatd.api")

LINES_PER_TURN = 64
IDLE_TIMEOUT = 600.0


class _Pending:
    def __repr__(self) -> str:
        return "PENDING"


PENDING: Any = _Pending()


Callback = Callable[[int], None]
Handler = Callable[["Conn", Envelope], Any]


def _req_id(line: bytes) -> Any:
    """The id of a request line, for an answer given without handling it (None
    when the line is not a JSON object with one)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if rid is None or (isinstance(rid, (str, int)) and not isinstance(rid, bool)) \
        else None


class SocketInUse(AgentlatdError):
    """The socket path is taken: another daemon answers there, or it is not a socket."""


def group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the NUL (unix(7))


class SocketError(AgentlatdError):
    """The registration socket cannot be made at its path (one sentence naming it)."""


def bind_socket(path: str, *, mode: int = 0o660, group: str = "") -> socket.socket:
    """A listening socket at `path`: mode `mode`, group `group` when it exists.

    A stale socket file (nobody accepts on it) is replaced; one that answers
    means another daemon serves it: SocketInUse. A path that is not a socket
    is never removed. Any other problem: SocketError naming the path.

    The socket's directory is trusted like the state directory
    (agentlatd/safepath.py). The socket is bound, given its group and mode,
    and listening inside a private 0700 directory next to it, then renamed
    into place: it is never reachable with another mode or group, and a
    symlink swapped in at any moment can redirect neither the chown nor the
    chmod. Why not the socket's fd: fchmod/fchown on it change the sockfs
    inode, not the file bind() makes (measured on 6.18: path mode and group
    unchanged); an fchmod BEFORE bind() does carry the mode (unix_bind_bsd()
    creates the file with the socket inode's mode & ~umask), but nothing
    carries the group, which needs a chown by path.
    """
    path = os.path.abspath(path)
    if "\0" in path:
        raise SocketError(f"socket path {path!r} contains a NUL byte")
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise SocketError(f"socket path {path} is {len(os.fsencode(path))} bytes; a Unix socket "
                          f"path has at most {SUN_PATH_MAX} (unix(7) sun_path)")
    d, name = os.path.split(path)
    try:
        dfd = safepath.open_dir(d, create=0o755, sticky_leaf_ok=True)
    except safepath.UnsafePath as e:
        raise SocketError(f"cannot use socket directory {d} for {path}: {e.about(d)}") from None
    except OSError as e:
        raise SocketError(f"cannot use socket directory {d} for {path}: {e.strerror}") from e
    try:
        return _bind_in(dfd, d, name, path, mode, group)
    finally:
        os.close(dfd)


def _bind_in(dfd: int, d: str, name: str, path: str, mode: int, group: str) -> socket.socket:
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise SocketError(f"cannot use socket path {path}: {e.strerror}") from e
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUse(f"{path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(path)
        except OSError:
            pass  # stale: its daemon is gone (the rename below replaces it)
        else:
            raise SocketInUse(f"another agentlatd serves {path}")
        finally:
            probe.close()
    try:
        private = tempfile.mkdtemp(prefix=".agentlatd-bind-", dir=d)  # 0700, ours
    except OSError as e:
        raise SocketError(f"cannot make socket {path}: {e.strerror} (in {d})") from e
    pname = os.path.basename(private)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        pfd = os.open(pname, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=dfd)
        try:
            # bound through the private directory's fd: the temporary path's
            # length never matters, only the final one's (checked above)
            old = os.umask(0o177)
            try:
                sock.bind(f"/proc/self/fd/{pfd}/{name}")
            except OSError:
                sock.bind(os.path.join(private, name))
            finally:
                os.umask(old)
            gid = group_gid(group) if group else None
            if gid is not None:
                try:
                    os.chown(name, -1, gid, dir_fd=pfd, follow_symlinks=False)
                except OSError as e:
                    log.warning("cannot give socket %s to group %s: %s", path, group, e.strerror)
            elif group:
                log.info("group %r does not exist: socket %s stays group %d", group, path,
                         os.stat(name, dir_fd=pfd).st_gid)
            os.chmod(name, mode, dir_fd=pfd)
            # a full backlog makes connect() wait or fail (EAGAIN): sized for a burst of
            # every client reconnecting at once (the kernel caps it at net.core.somaxconn)
            sock.listen(4096)
            # atomic, and over a stale socket file in one step
            os.rename(name, name, src_dir_fd=pfd, dst_dir_fd=dfd)
        finally:
            os.close(pfd)
    except OSError as e:
        sock.close()
        raise SocketError(f"cannot make socket {path}: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(OSError):
            for left in os.listdir(private):
                os.unlink(os.path.join(private, left))
        with contextlib.suppress(OSError):
            os.rmdir(pname, dir_fd=dfd)
    sock.setblocking(False)
    return sock


class Server:
    """Serves `handlers` on a listening socket, inside the caller's selector."""

    def __init__(self, sel: selectors.BaseSelector, sock: socket.socket,
                 handlers: Mapping[Op, Handler], *, max_clients: int = 4096,
                 on_close: Callable[[Conn], None] | None = None,
                 on_accept: Callable[[Conn], None] | None = None,
                 idle_timeout: float = IDLE_TIMEOUT, path: str | None = None,
                 uid_requests_per_s: float = 1000.0, uid_request_burst: int = 256,
                 uid_max_inflight: int = 64) -> None:
        self.sel = sel
        self.sock = sock
        # bind_socket() binds under a temporary name: getsockname() is that one
        self.path = path if path is not None else sock.getsockname()
        self.handlers = handlers
        self.on_close = on_close
        self.on_accept = on_accept
        self.admission = Admission(max_clients=max_clients,
                                   uid_requests_per_s=uid_requests_per_s,
                                   uid_request_burst=uid_request_burst,
                                   uid_max_inflight=uid_max_inflight)
        self.io = ConnIO(sel, self._on_conn, self.drop)
        self.idle_timeout = idle_timeout
        self.conns: dict[int, Conn] = {}
        self._next_id = 1
        self._ready: list[Conn] = []  # connections with unprocessed complete lines
        self.requests = 0
        self.accepting = True
        sel.register(sock, selectors.EVENT_READ, self._on_accept)

    # -- lifecycle -------------------------------------------------------
    def close(self, unlink: bool = True) -> None:
        for c in list(self.conns.values()):
            self.drop(c, "server stopping")
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.sock)
        path = self.path if isinstance(self.path, str) else ""
        self.sock.close()
        if unlink and path:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def drop(self, c: Conn, why: str = "") -> None:
        if c.closed:
            return
        c.closed = True
        if why:
            log.debug("closing %r: %s", c, why)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        with contextlib.suppress(OSError):
            c.sock.close()
        if self.conns.pop(c.id, None) is not None:
            self.admission.closed(c)
        if self.on_close is not None:
            try:
                self.on_close(c)
            except Exception:
                log.exception("on_close hook failed for %r", c)

    # -- events ----------------------------------------------------------
    def _on_accept(self, _mask: int) -> None:
        for _ in range(64):
            try:
                s, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("cannot accept a connection: %s", e.strerror)
                    return
                # ECONNABORTED, EPROTO, ... (accept(2)): that connection is lost,
                # the listening socket serves on
                log.warning("accept failed: %s", e.strerror or e)
                return
            s.setblocking(False)
            try:
                peer = peer_cred(s)
            except OSError:
                s.close()
                continue
            msg = self.admission.refusal(peer, len(self.conns), self.accepting)
            if msg is not None:
                with contextlib.suppress(OSError):
                    s.send(msg)
                s.close()
                continue
            c = Conn(s, peer, self._next_id)
            self._next_id += 1
            self.conns[c.id] = c
            self.admission.opened(peer, time.monotonic())
            if self.on_accept is not None:
                try:
                    self.on_accept(c)
                except Exception:
                    log.exception("on_accept hook failed for %r", c)
            self.io.register(c)

    def _on_conn(self, c: Conn, mask: int) -> None:
        try:
            self._on_conn_events(c, mask)
        except Exception:
            log.exception("I/O on %r failed", c)
            self.drop(c, "internal error on this connection")

    def _on_conn_events(self, c: Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.io.flush(c)
        if c.closed or not mask & selectors.EVENT_READ or c.parked:
            return
        if self.io.receive(c):
            self._ready.append(c)

    @property
    def busy(self) -> bool:
        """Complete lines are waiting: the loop should not sleep."""
        return bool(self._ready)

    def wakeup(self) -> float | None:
        """When the first parked connection may be read again (time.monotonic())."""
        return self.admission.wakeup()

    def _admit(self, c: Conn, now: float) -> bool:
        """Charge one request line to c's uid; False (answered, parked) when over a limit."""
        over = self.admission.charge(c, now)
        if over is None:
            return True
        wait, why = over
        ms = max(1, int(wait * 1000 + 0.999))
        # the line is consumed and answered: the client resends it after the wait
        i = c.buf_in.find(b"\n")
        req_id = _req_id(bytes(c.buf_in[:i]))
        del c.buf_in[:i + 1]
        self.io.reply(c, protocol.error(req_id, protocol.RATE_LIMITED, why + f"; retry in {ms} ms",
                                      retry_after_ms=ms))
        if not c.closed:
            self.admission.park(c, now + ms / 1000.0)
            self.io.watch(c)
        return False

    def _unpark(self, now: float) -> None:
        for c in self.admission.unpark(now):
            self.io.watch(c)
            if b"\n" in c.buf_in:
                self._ready.append(c)

    def process(self) -> None:
        """Handle up to LINES_PER_TURN lines of each uid with input, round robin."""
        now = time.monotonic()
        self._unpark(now)
        ready, self._ready = self._ready, []
        seen: set[int] = set()
        per_uid: dict[int, int] = {}
        starved: list[Conn] = []
        for c in ready:
            if c.closed or c.id in seen or c.parked:
                continue
            seen.add(c.id)
            try:
                self._process_conn(c, now, per_uid, starved)
            except Exception:
                log.exception("processing input of %r failed", c)
                self.drop(c, "internal error on this connection")
        self._ready[:0] = starved

    def _process_conn(self, c: Conn, now: float, per_uid: dict[int, int],
                      starved: list[Conn]) -> None:
        n = 0
        uid = c.peer.uid
        used = per_uid.get(uid, 0)
        while not c.closed and c.pending is None and n < LINES_PER_TURN - used:
            i = c.buf_in.find(b"\n")
            if i < 0:
                if len(c.buf_in) > protocol.MAX_LINE:
                    self.io.reply(c, protocol.error(
                        None, protocol.TOO_LARGE, f"request line exceeds the "
                        f"{protocol.MAX_LINE}-byte limit; closing the connection"))
                    self.io.flush(c)
                    self.drop(c, "line too long")
                break
            if not self._admit(c, now):
                break
            line = bytes(c.buf_in[:i])
            del c.buf_in[:i + 1]
            n += 1
            if line.strip():
                self._handle(c, line)
        per_uid[uid] = used + n
        if not c.closed and c.pending is None and not c.parked and b"\n" in c.buf_in:
            # more next turn (round robin); one its uid's other connections
            # left no share of this turn goes first next turn
            (starved if n == 0 else self._ready).append(c)

    def _handle(self, c: Conn, line: bytes) -> None:
        self.requests += 1
        c.last = time.monotonic()  # a complete request: bytes alone do not count
        env: Envelope | None = None
        try:
            env = protocol.decode(line + b"\n")
            h = self.handlers.get(env.op)
            if h is None:
                raise ProtocolError(protocol.UNKNOWN_OP,
                                    f"op {str(env.op)!r} is not served by this daemon", env.req_id)
            result = h(c, env)
        except ProtocolError as e:
            self.io.reply(c, protocol.error(env.req_id if env is not None else e.req_id,
                                          e.code, e.message))
            return
        except Exception:
            # a bug, in the decoder or a handler: this request fails, the daemon serves on
            log.exception("request from %r failed (%s): %r", c,
                          f"op {str(env.op)!r}" if env is not None else "decoding", line[:200])
            self.io.reply(c, protocol.error(env.req_id if env is not None else None,
                                          protocol.INTERNAL,
                                          "agentlatd failed to handle this request; "
                                          "the daemon log has the details"))
            return
        if result is PENDING:
            c.pending = env.req_id if env.req_id is not None else PENDING
            self.admission.pending(c)
            return
        self.io.reply(c, protocol.ok(env.req_id, result))

    def answer(self, c: Conn, req_id: Any, result: Any) -> None:
        """Answer a request its handler left PENDING."""
        self._resume(c, protocol.ok(None if req_id is PENDING else req_id, result))

    def fail(self, c: Conn, req_id: Any, code: str, message: str) -> None:
        self._resume(c, protocol.error(None if req_id is PENDING else req_id, code, message))

    def _resume(self, c: Conn, data: bytes) -> None:
        if c.pending is not None:
            self.admission.answered(c)
        c.pending = None
        if c.closed:
            return
        self.io.reply(c, data)
        if b"\n" in c.buf_in:
            self._ready.append(c)

    # -- housekeeping ----------------------------------------------------
    def reap_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        n = 0
        for c in list(self.conns.values()):
            if c.pending is None and now - c.last > self.idle_timeout:
                self.drop(c, f"idle for {self.idle_timeout:.0f} s")
                n += 1
        return n
