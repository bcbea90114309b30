"""The floor of a registration round trip on this machine: a minimal server that
makes only the system calls one agentlatd registration makes, in Python, with no
daemon around it (bench/agents.py --floor runs it beside the daemon, in the same run).

Per "register" line, as `strace -p <agentlatd>` showed for one registration of a
one-thread process (pid 12021, 1000 agents registered):

    pidfd_open; read proc/PID/stat, proc/PID/status; sched_getaffinity, getpriority,
    ioprio_get (here: a second getpriority); read proc/PID/cgroup; list proc/PID/task;
    read proc/PID/stat; sched_getaffinity; append a journal line + fdatasync; read
    proc/PID/stat; sched_setaffinity; sched_getaffinity

then one JSON answer line. "unregister" puts the affinity back the same way. No
policy, no checks, no engine: what is left of the daemon's time above this is
agentlatd's own work (decode, identity and permission checks, placement, the
engine batch, the answer, the loop). Not agentlatd, and never used by it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        os.read(fd, 65536)  # agentlatd's Root reads to EOF
    finally:
        os.close(fd)
    return data


def _register(pid: int, jfd: int, orig: dict[int, set[int]]) -> dict[str, Any]:
    pfd = os.pidfd_open(pid)
    try:
        _read(f"/proc/{pid}/stat")
        _read(f"/proc/{pid}/status")
        orig[pid] = os.sched_getaffinity(pid)
        os.getpriority(os.PRIO_PROCESS, pid)
        os.getpriority(os.PRIO_PROCESS, pid)
        _read(f"/proc/{pid}/cgroup")
        os.listdir(f"/proc/{pid}/task")
        _read(f"/proc/{pid}/stat")
        os.sched_getaffinity(pid)
        os.write(jfd, json.dumps({"knob": "task.affinity", "target": f"{pid}:0:{pid}",
                                  "original": sorted(orig[pid]), "written": [1]}).encode()
                 + b"\n")
        os.fdatasync(jfd)
        _read(f"/proc/{pid}/stat")
        os.sched_setaffinity(pid, {1})
        os.sched_getaffinity(pid)
    finally:
        os.close(pfd)
    return {"pid": pid, "state": "placed", "home_cpus": "1"}


def serve(listener: socket.socket, journal: str) -> None:
    """Answer each client's lines until it closes, one client at a time, until killed."""
    jfd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    orig: dict[int, set[int]] = {}
    while True:
        c, _ = listener.accept()
        buf = b""
        while data := c.recv(65536):
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                res: dict[str, Any] = {}
                if req["op"] == "register" and req["pid"] not in orig:
                    res = _register(req["pid"], jfd, orig)
                elif req["op"] == "unregister":
                    _read(f"/proc/{req['pid']}/stat")
                    os.sched_setaffinity(req["pid"], orig.pop(req["pid"]))
                c.sendall(json.dumps({"v": 1, "id": req.get("id"), "ok": True,
                                      "result": res}, separators=(",", ":")).encode() + b"\n")
        c.close()


@contextmanager
def floor_server() -> Iterator[str]:
    """A forked floor server (it keeps the caller's scheduling class), listening
    before the fork; yields its socket path."""
    d = tempfile.mkdtemp(prefix="agentlatd-floor-",
                         dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = os.path.join(d, "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, until the parent kills it
        try:
            serve(listener, os.path.join(d, "journal"))
        finally:
            os._exit(1)
    listener.close()
    try:
        yield path
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        shutil.rmtree(d, ignore_errors=True)
