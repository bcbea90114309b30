"""Helpers for the hostile-input and fault tests (tests/hostile/).

Everything here is bounded in time and count, and cleans up after itself:
tmpfs mounts are made on fresh directories and unmounted in finally; child
processes are killed and reaped; sockets are closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentlatd.errors import KernelError
from agentlatd.netlink.procevents import ProcEvents

NOBODY = 65534


needs_root = os.geteuid() == 0


def requests_on(path: str, reqs: list[dict[str, Any]]) -> Any:
    """Send `reqs` on one connection to the socket at `path` (in the calling process,
    so as_uid() can run it as another user); the answers, in order."""
    out = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(path)
        f = c.makefile("rwb")
        for i, r in enumerate(reqs):
            f.write((json.dumps({"v": 1, "id": i, **r}) + "\n").encode())
            f.flush()
            out.append(json.loads(f.readline()))
    return out


def proc_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict (field -> raw value text)."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS)."""
    return int(proc_status(pid)["VmRSS"].split()[0])


def rss_anon_kib(pid: int) -> int:
    """Anonymous resident memory of `pid` in KiB (RssAnon: heap and stacks, without
    the file pages of shared libraries that VmRSS also counts)."""
    return int(proc_status(pid)["RssAnon"].split()[0])


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    out = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/{pid}/fd/{n}"))
    return out


@contextlib.contextmanager
def tmpfs(size: str = "64k", *, nr_inodes: int = 64, ro: bool = False) -> Iterator[pathlib.Path]:
    """A tiny tmpfs of our own on a fresh directory; unmounted and removed on exit."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="agentlatd-hostile-mnt-"))
    mounted = False
    try:
        opts = f"size={size},nr_inodes={nr_inodes},mode=0755" + (",ro" if ro else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "agentlatd-hostile", str(d)],
                       check=True, capture_output=True, timeout=30)
        mounted = True
        yield d
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30, check=False)
        with contextlib.suppress(OSError):
            d.rmdir()


def remount(path: pathlib.Path, mode: str) -> None:
    """Remount our own tmpfs at `path` "ro" or "rw"."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True,
                   capture_output=True, timeout=30)


def fill(path: pathlib.Path) -> pathlib.Path:
    """Fill the filesystem holding `path` until ENOSPC; the filler file is returned."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):  # and the last inodes, if any are left
        for i in range(1000):
            (path / f"filler-{i}").touch()
    return filler


# ---------------------------------------------------------------------------
# the socket, byte by byte


def connect(path: str | os.PathLike[str], timeout: float = 10.0) -> socket.socket:
    """A connected client socket. With the listen backlog (128) full, connect() on
    a socket with a timeout answers EAGAIN at once (AF_UNIX): retry until `timeout`."""
    end = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            return s
        except BlockingIOError:
            s.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.002)
        except BaseException:
            s.close()
            raise


def read_answers(s: socket.socket, want: int, timeout: float = 10.0) -> tuple[list[dict[str, Any]], bool]:
    """Up to `want` answer lines; (answers, the daemon closed the connection)."""
    out: list[dict[str, Any]] = []
    buf = b""
    end = time.monotonic() + timeout
    closed = False
    while len(out) < want and time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = s.recv(1 << 16)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        buf += chunk
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            out.append(json.loads(line))
    return out, closed


def exchange(path: str | os.PathLike[str], data: bytes, want: int | None = None,
             timeout: float = 10.0) -> list[dict[str, Any]]:
    """Send raw bytes on a fresh connection and read `want` answers (default: one per newline)."""
    with connect(path, timeout) as s:
        s.sendall(data)
        got, _ = read_answers(s, data.count(b"\n") if want is None else want, timeout)
    return got


def ping_ms(path: str | os.PathLike[str], timeout: float = 10.0) -> float:
    """Round trip of one ping on a fresh connection, in milliseconds (asserts ok)."""
    t0 = time.monotonic()
    ans = exchange(path, b'{"v":1,"op":"ping","id":"p"}\n', timeout=timeout)
    assert ans and ans[0]["ok"], ans
    return (time.monotonic() - t0) * 1000


def is_error(ans: dict[str, Any], code: str | None = None) -> bool:
    """An error answer with a code and a sentence (and that code, when given)."""
    err = ans.get("error")
    return (ans.get("ok") is False and isinstance(err, dict) and isinstance(err.get("code"), str)
            and isinstance(err.get("message"), str) and len(err["message"]) > 10
            and (code is None or err["code"] == code))


# ---------------------------------------------------------------------------
# another uid, in a forked child


def as_uid(uid: int, gid: int, fn: Callable[[], Any], timeout: float = 30.0,
           groups: tuple[int, ...] = ()) -> Any:
    """Run `fn` in a forked child that dropped to uid/gid (and supplementary `groups`).

    Its JSON-able result comes back through a pipe; an exception in the child
    comes back as {"child_error": repr}. The child never returns into pytest.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            res = fn()
            os.write(w, json.dumps({"result": res}).encode())
            code = 0
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.write(w, json.dumps({"child_error": repr(e)}).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            import select
            rd, _, _ = select.select([r], [], [], max(0.0, end - time.monotonic()))
            if not rd:
                break
            b = os.read(r, 1 << 16)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    raw = b"".join(chunks)
    if not raw:
        raise AssertionError("the child said nothing")
    out = json.loads(raw)
    if "child_error" in out:
        raise AssertionError(f"child failed: {out['child_error']}")
    return out["result"]


def spawn_as(uid: int, argv: list[str]) -> subprocess.Popen[bytes]:
    """A process running as `uid` (setpriv; no supplementary groups)."""
    return subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                             *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for_pid_state(pid: int, states: str, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return False
        if st in states:
            return True
        time.sleep(0.01)
    return False


@contextlib.contextmanager
def scratch_dir(prefix: str = "agentlatd-hostile-") -> Iterator[pathlib.Path]:
    """A fresh directory on tmpfs (/dev/shm) any uid may traverse."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _proc_events() -> bool:
    try:
        ProcEvents(timeout_s=2.0).close()
    except KernelError:
        return False
    return True


# the kernel's process connector (netlink/procevents.py): root, the host's pid and
# network namespaces, CONFIG_PROC_EVENTS
needs_proc_events = pytest.mark.skipif(
    os.geteuid() != 0 or not _proc_events(),
    reason="needs the process connector (root, the host's pid and network namespaces, "
           "CONFIG_PROC_EVENTS)")
