"""$NOTIFY_SOCKET and $LISTEN_FDS: the systemd service protocols, in-tree.

sd_notify(3) (man 3 sd_notify, systemd 252 on Debian 12): a service of
Type=notify sends newline-separated VAR=value assignments in ONE datagram to
the AF_UNIX socket named by $NOTIFY_SOCKET: a filesystem path, or an abstract
name written with a leading "@" (the "@" stands for the leading NUL byte).
sd_listen_fds(3): sockets systemd passed are fds 3 .. 3+$LISTEN_FDS-1, for
the process whose pid is $LISTEN_PID.

Why not the `sdnotify` package: its last release is
from 2017 and its notify() catches every exception and drops it, so a
watchdog ping that cannot be sent is silent until systemd kills the service
for a missed watchdog. Here every failed send is logged with the errno and
counted (Notifier.errors), and the caller still gets False.

What agentlatd sends (docs/service.md):
  READY=1             after the first apply that did not fail (systemd holds
                      `systemctl start` until then; After= units wait for it)
  WATCHDOG=1          every WATCHDOG_USEC/2 from the main loop (never from a
                      helper thread: a ping must mean the loop is alive)
  STATUS=...          one line, shown by `systemctl status`
  RELOADING=1         on SIGHUP, with MONOTONIC_USEC (systemd >= 253 needs it
                      for Type=notify-reload; 252 ignores it); READY=1 again
                      when the reload is done
  STOPPING=1          on SIGTERM, before the rollback
The watchdog is ours only when WATCHDOG_PID is unset or equals our pid
(sd_watchdog_enabled(3)): a child started by the daemon inherits the variables
and must not ping for it.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("agentlatd.sdnotify")

SD_LISTEN_FDS_START = 3  # sd-daemon.h


def _address(raw: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as a socket address; None when unusable (logged)."""
    if raw.startswith("@"):
        # abstract namespace: the "@" is written for the leading NUL (unix(7))
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # systemd 253 added "vsock:CID:PORT" for VMs; nothing here runs in one
    log.error("NOTIFY_SOCKET=%r is neither a path nor an abstract @name: systemd "
              "notifications are off", raw)
    return None


class Notifier:
    """Sends sd_notify messages; a no-op when the service manager did not ask for them.

    Every send is one sendto() of one datagram on a socket kept open for the
    daemon's lifetime (a watchdog ping costs one syscall). Errors are logged
    (first occurrence at ERROR, repeats at DEBUG so a dead notify socket does
    not flood the journal) and counted in `errors`.
    """

    def __init__(self, address: str | bytes | None, *, watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.errors = 0
        self.sent = 0
        self._sock: socket.socket | None = None
        self._last_ping: float | None = None
        self._last_status = ""
        self._logged_errno: int | None = None

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None, *,
                 pid: int | None = None, unset: bool = False) -> Notifier:
        """Read $NOTIFY_SOCKET, $WATCHDOG_USEC, $WATCHDOG_PID.

        unset=True removes the variables (sd_notify's unset_environment) so
        processes the daemon starts do not talk to systemd in its name.
        """
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET", "")
        addr = _address(raw) if raw else None
        wd = _watchdog_usec(env, pid)
        if unset:
            for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(k, None)
        return cls(addr, watchdog_usec=wd if addr is not None else 0)

    # -- state -----------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises)."""
        if not self.enabled or self.watchdog_usec <= 0:
            return None
        return self.watchdog_usec / 2e6

    def watchdog_due(self, now: float | None = None) -> float | None:
        """Seconds until the next ping is due (<= 0: now); None without a watchdog."""
        iv = self.watchdog_interval
        if iv is None:
            return None
        if self._last_ping is None:
            return 0.0
        now = time.monotonic() if now is None else now
        return self._last_ping + iv - now

    # -- messages --------------------------------------------------------
    def notify(self, *assignments: str) -> bool:
        """Send VAR=value lines as one datagram. False when not sent (logged)."""
        if self.address is None:
            return False
        for a in assignments:
            if "=" not in a or "\n" in a:
                raise ValueError(f"not a one-line VAR=value assignment: {a!r}")
        data = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(data, socket.MSG_NOSIGNAL, self.address)
        except OSError as e:
            self.errors += 1
            code = e.errno or 0
            name = errno.errorcode.get(code, str(code))
            first = code != self._logged_errno
            self._logged_errno = code
            log.log(logging.ERROR if first else logging.DEBUG,
                    "cannot notify systemd at %s: %s (%s); message was %s",
                    _show(self.address), name, e.strerror, _show_msg(assignments))
            if code in (errno.EBADF, errno.ENOTSOCK):
                self._close()
            return False
        self.sent += 1
        if self._logged_errno is not None:
            log.info("systemd notify socket %s works again", _show(self.address))
            self._logged_errno = None
        return True

    def ready(self, status: str = "") -> bool:
        lines = ["READY=1"]
        if status:
            lines.append(_status_line(status))
            self._last_status = status
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        """STATUS=text; not resent when unchanged (systemctl status keeps the last one)."""
        if text == self._last_status:
            return True
        ok = self.notify(_status_line(text))
        if ok:
            self._last_status = text
        return ok

    def watchdog(self, now: float | None = None) -> bool:
        """WATCHDOG=1 now (and remember when)."""
        ok = self.notify("WATCHDOG=1")
        self._last_ping = time.monotonic() if now is None else now
        return ok

    def watchdog_if_due(self, now: float | None = None) -> bool:
        """Ping when half the watchdog timeout passed since the last ping; True if pinged."""
        due = self.watchdog_due(now)
        if due is None or due > 0:
            return False
        self.watchdog(now)
        return True

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str = "") -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append(_status_line(status))
        return self.notify(*lines)

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: a long rollback at stop is not killed by TimeoutStopSec."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str], pid: int) -> int:
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return 0
    wpid = env.get("WATCHDOG_PID", "")
    if wpid:
        try:
            if int(wpid) != pid:
                return 0  # another process's watchdog (we inherited the env)
        except ValueError:
            log.error("WATCHDOG_PID=%r is not a pid: watchdog off", wpid)
            return 0
    try:
        usec = int(raw)
    except ValueError:
        log.error("WATCHDOG_USEC=%r is not a number: watchdog off", raw)
        return 0
    if usec <= 0:
        log.error("WATCHDOG_USEC=%r is not positive: watchdog off", raw)
        return 0
    return usec


def _status_line(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line, whatever the caller built


def _show(addr: str | bytes | None) -> str:
    if isinstance(addr, bytes):
        return "@" + addr[1:].decode(errors="replace")
    return str(addr)


def _show_msg(lines: tuple[str, ...]) -> str:
    return "; ".join(lines)


# ---------------------------------------------------------------------------
# socket activation


def listen_fds(environ: MutableMapping[str, str] | None = None, *, pid: int | None = None,
               unset: bool = True) -> list[int]:
    """File descriptors systemd passed (sd_listen_fds(3)); [] when none are ours.

    Sets FD_CLOEXEC on each (sd_listen_fds does too) and, with unset=True,
    removes LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES so children do not claim them.
    """
    env = os.environ if environ is None else environ
    pid = os.getpid() if pid is None else pid
    raw_pid, raw_n = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    try:
        if not raw_pid or not raw_n or int(raw_pid) != pid:
            return []
        n = int(raw_n)
    except ValueError:
        log.error("LISTEN_PID=%r / LISTEN_FDS=%r are not numbers: no socket activation",
                  raw_pid, raw_n)
        return []
    finally:
        if unset:
            for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                env.pop(k, None)
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(n, 0)))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds


def is_unix_stream_listener(fd: int, path: str | None = None) -> bool:
    """sd_is_socket_unix(fd, SOCK_STREAM, listening=1, path): is `fd` what we expect?"""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        s = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        if s.family != socket.AF_UNIX or s.type != socket.SOCK_STREAM:
            return False
        if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        if path is not None:
            name = s.getsockname()
            if os.path.abspath(name if isinstance(name, str) else name.decode()) \
                    != os.path.abspath(path):
                return False
        return True
    finally:
        s.detach()  # the fd stays open: it belongs to the caller


def inherited_socket(path: str, environ: MutableMapping[str, str] | None = None, *,
                     pid: int | None = None) -> socket.socket | None:
    """The listening AF_UNIX stream socket systemd passed for `path`, if any.

    agentlatd.socket passes exactly one (ListenStream=/run/agentlatd/agentlatd.sock).
    An fd that is not a listening AF_UNIX stream socket bound to `path` is
    logged and left alone: serving the wrong socket would hide the mistake.
    """
    for fd in listen_fds(environ, pid=pid):
        if is_unix_stream_listener(fd, path):
            sock = socket.socket(fileno=fd)
            log.info("using socket %s passed by systemd (fd %d)", path, fd)
            return sock
        log.error("fd %d passed by systemd is not a listening unix stream socket at %s: "
                  "ignored (check ListenStream= in agentlatd.socket against daemon.socket "
                  "in the policy)", fd, path)
    return None
