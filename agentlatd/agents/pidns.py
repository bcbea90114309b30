"""PID namespaces: what a pid in a request means when the client is in another one.

Kernel files (Documentation/filesystems/proc.rst, man 7 pid_namespaces):
  proc/PID/ns/pid    a symlink "pid:[<inode>]" naming the process's PID namespace
  proc/PID/status    "NSpid:" the process's pid in each PID namespace it is
                     visible in, from the reader's (here: the daemon's) outermost
                     to its own innermost (4.1+)

SO_PEERCRED's pid is translated by the kernel into the daemon's namespace
(net/core/sock.c cred_to_ucred() uses pid_vnr() in the reader's namespace), so
a client that names no pid is always identified right. A pid IN a request is
the client's own view: inside a container, `"pid": 1` is the container's
init, not the host's. It is translated here: the process whose innermost
NSpid entry is that pid and whose PID namespace is the client's own. A pid
that names no process of the client's own namespace (one in a namespace nested
below it, or none at all) is refused, never guessed.
"""

from __future__ import annotations

from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root


def parse_nspid(status: str) -> tuple[int, ...]:
    """The NSpid: field of proc/PID/status (outermost first); () when absent."""
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            try:
                return tuple(int(x) for x in line.split()[1:])
            except ValueError:
                return ()
    return ()


def ns_of(root: Root, pid: int | str) -> str:
    """The PID namespace of `pid` ("pid:[4026531836]"; "" when unreadable)."""
    return root.readlink(f"proc/{pid}/ns/pid")


def same_ns_as_daemon(root: Root, pid: int) -> bool:
    """Whether process `pid` is in the daemon's own PID namespace (unreadable: assumed so)."""
    mine, theirs = ns_of(root, "self"), ns_of(root, pid)
    return not mine or not theirs or mine == theirs


def translate(root: Root, peer_pid: int, pid: int) -> int | None:
    """The daemon-namespace pid of `pid` as seen from the namespace of `peer_pid`.

    `peer_pid` is SO_PEERCRED's (already the daemon's view). The peer's own
    namespace: `pid` unchanged. Otherwise the process of the peer's namespace
    whose innermost NSpid is `pid`; None when there is none.
    """
    if same_ns_as_daemon(root, peer_pid):
        return pid
    ns = ns_of(root, peer_pid)
    try:
        depth = len(parse_nspid(root.read_text(f"proc/{peer_pid}/status", "process")))
    except KernelError:
        return None
    if depth < 2:
        return None
    for name in root.listdir("proc"):
        if not name.isdigit():
            continue
        try:
            nspid = parse_nspid(root.read_text(f"proc/{name}/status", "process"))
        except KernelError:
            continue  # exited meanwhile
        if len(nspid) == depth and nspid[-1] == pid and nspid[0] == int(name) \
                and ns_of(root, name) == ns:
            return int(name)
    return None
