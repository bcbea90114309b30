"""Whether a network namespace still exists, from what holds it (proc(5), namespaces(7)).

A namespace lives while something refers to it (namespaces(7), "The /proc/
[pid]/ns/ directory" and "Namespace lifetime"): a task in it, an open fd on an
nsfs file, or a bind mount of one (`ip netns add` mounts it on
/run/netns/NAME). Its identity is the link text "net:[INODE]" of
proc/PID/ns/net. Kernel files:

  proc/PID/task/TID/ns/net  "net:[4026531840]": the thread's namespace
  proc/PID/fd/N             the same text for an fd opened on an nsfs file
  proc/PID/mountinfo        an nsfs bind mount: field 4 (root) is
                            "net:[INODE]", the filesystem type "nsfs"
                            (Documentation/filesystems/proc.rst 3.5)

Only what this process can see counts: a namespace held only from another
PID namespace is reported gone, and agentlatd could not enter it anyway.

The inode number is not an identity over time: a namespace's nsfs inode is
freed with it and handed to the next namespace made (fs/nsfs.c, the proc
inum IDA: lowest free number first), which on a Kubernetes node is the next
pod's. The cookie is (SO_NETNS_COOKIE, Linux 5.14, net/core/net_namespace.c:
a 64-bit counter, never reused while the system runs): a journal records
both, and a holder of the inode counts only when its namespace has the
journal's cookie.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator

from agentlatd.sysfs.netns import in_netns
from agentlatd.sysfs.root import Root

SO_NETNS_COOKIE = 71  # include/uapi/asm-generic/socket.h


def own_netns_cookie() -> int:
    """The calling thread's network namespace cookie; 0 when the kernel has none."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:  # ENOPROTOOPT before 5.14
        return 0
    return int(struct.unpack("=Q", raw)[0]) if len(raw) == 8 else 0


def netns_cookie_at(path: str) -> int:
    """The cookie of the network namespace nsfs file `path` names (proc/PID/ns/net,
    an fd on one, a bind mount): read from a socket made inside it by a thread
    that enters it and ends (setns(2) moves only the calling thread). 0 when it
    cannot be entered (no CAP_SYS_ADMIN, gone meanwhile) or has no cookie."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return in_netns(fd, own_netns_cookie)
    except OSError:
        return 0
    finally:
        os.close(fd)


def nsfs_mount_points(text: str, ident: str) -> list[str]:
    """Mount points (field 5) of the nsfs bind mounts of `ident` in one mountinfo text."""
    out: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5 or fields[3] != ident:
            continue
        if line.split(" - ", 1)[1].split()[0:1] == ["nsfs"]:
            out.append(fields[4])
    return out


def netns_holders(root: Root, ident: str) -> Iterator[str]:
    """Kernel paths of what holds network namespace `ident` ("net:[N]"), as found:
    a task's proc/PID/ns/net, an fd, or a bind mount (seen through its process's
    root); each opens onto the namespace."""
    pids = [p for p in root.listdir("proc") if p.isdigit()]
    seen_mnt: set[str] = set()
    for pid in pids:
        if root.readlink(f"proc/{pid}/ns/net") == ident:
            yield f"proc/{pid}/ns/net"
        for tid in root.listdir(f"proc/{pid}/task"):
            if tid != pid and root.readlink(f"proc/{pid}/task/{tid}/ns/net") == ident:
                yield f"proc/{pid}/task/{tid}/ns/net"
        for fd in root.listdir(f"proc/{pid}/fd"):
            if root.readlink(f"proc/{pid}/fd/{fd}") == ident:
                yield f"proc/{pid}/fd/{fd}"
        mnt = root.readlink(f"proc/{pid}/ns/mnt")
        if mnt and mnt not in seen_mnt:
            seen_mnt.add(mnt)
            for point in nsfs_mount_points(root.read_optional(f"proc/{pid}/mountinfo"), ident):
                yield f"proc/{pid}/root/{point.lstrip('/')}"


def netns_in_use(root: Root, ident: str, cookie: int = 0) -> bool:
    """Whether network namespace `ident` ("net:[N]") is held by anything visible here.

    With `cookie` (the journal's): only a holder whose namespace has that cookie
    counts; one whose cookie cannot be read counts too (in use is the safe
    answer: the journal is then refused, never applied to another namespace)."""
    for rel in netns_holders(root, ident):
        if not cookie:
            return True
        with contextlib.suppress(ValueError):
            got = netns_cookie_at(root.path(rel))
            if got in (0, cookie):
                return True
    return False


def journal_netns_gone(root: Root, ident: str, cookie: int, own: str) -> bool:
    """Whether a journal's network namespace (`ident`, with `cookie`; 0: unknown) no
    longer exists, seen from a process in namespace `own`: another inode number
    that nothing visible here holds with that cookie, or our own inode number
    under another cookie (the journal's namespace died and its number was
    handed to ours)."""
    if ident != own:
        return not netns_in_use(root, ident, cookie)
    mine = own_netns_cookie()
    return bool(cookie and mine and cookie != mine)
