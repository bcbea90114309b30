"""What chain discovery reads: network namespaces, their socket tables and addresses, fd links.

Kernel files (Documentation/filesystems/proc.rst; man 7 namespaces; fs/proc/
proc_net.c get_proc_task_net; net/ipv6/addrconf.c if6_seq_show):

  proc/PID/ns/net            symlink "net:[INODE]": the network namespace of
                             PID's main thread; the inode names the namespace
  proc/PID/net/{tcp,udp}[6]  the socket tables of THAT namespace (proc_net.c
                             takes the task's nsproxy), so one process per
                             namespace is enough to read every namespace's
                             sockets without entering it (no setns)
  proc/PID/net/fib_trie      that namespace's IPv4 addresses (type LOCAL)
  proc/PID/net/if_inet6      that namespace's IPv6 addresses, one per line:
                             "ADDR(32 hex) IFINDEX PLEN SCOPE FLAGS IFNAME"
  proc/PID/fd/N              symlink "socket:[INODE]", "pipe:[INODE]" (both
                             ends of an anonymous pipe show the same inode)

parse_* take text (pure); read_* do the IO through Root.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass

from agentlatd.errors import KernelError
from agentlatd.sample.sockets import (
    MAX_FDS,
    SOCKET_FILES,
    Sock,
    parse_fib_trie_local,
    parse_sockets,
)
from agentlatd.sysfs.root import Root

MAX_SOCKETS = 65536  # lines parsed per namespace and file: a host with 10^6 sockets stays bounded


def parse_ns_link(link: str, kind: str = "net") -> int | None:
    """"net:[4026531840]" -> 4026531840; None for anything else."""
    pre = f"{kind}:["
    if not (link.startswith(pre) and link.endswith("]")):
        return None
    body = link[len(pre):-1]
    return int(body) if body.isdigit() else None


def read_net_ns(root: Root, pid: int) -> int | None:
    """The network namespace (inode) of `pid`, None when it is gone or not ours to read."""
    return parse_ns_link(root.readlink(f"proc/{pid}/ns/net"))


def parse_if_inet6(text: str) -> frozenset[ipaddress.IPv6Address]:
    """proc/net/if_inet6: the namespace's IPv6 addresses (malformed lines skipped)."""
    out: set[ipaddress.IPv6Address] = set()
    for line in text.splitlines():
        f = line.split()
        if not f or len(f[0]) != 32:
            continue
        try:
            out.add(ipaddress.IPv6Address(bytes.fromhex(f[0])))
        except ValueError:
            continue
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class NsTable:
    """One network namespace: its sockets and its own addresses."""

    ns: int
    reader: int  # the pid whose proc/PID/net was read
    socks: tuple[Sock, ...]
    local4: tuple[ipaddress.IPv4Network, ...] = ()
    local6: frozenset[ipaddress.IPv6Address] = frozenset()


UDP_FILES = ("udp", "udp6")
TCP_FILES = ("tcp", "tcp6")


def read_ns_table(root: Root, ns: int, pid: int, max_lines: int = MAX_SOCKETS,
                  files: tuple[str, ...] = SOCKET_FILES) -> NsTable:
    """The socket tables `files` and addresses of `pid`'s namespace (files that
    vanish = empty).

    Cost: proc/net/tcp walks every bucket of the kernel's established hash
    (tcp_seq_start -> established_get_first, net/ipv4/tcp_ipv4.c), whatever the
    namespace holds: ~2-4 ms of CPU per read with 262144 buckets (a 2-CPU VM's
    default) even when it prints one line; proc/net/udp prints in ~0.05 ms.
    So the scanner reads the TCP files only of the namespaces that matter."""
    socks: list[Sock] = []
    for name in files:
        try:
            text = root.read_text(f"proc/{pid}/net/{name}")
        except KernelError:
            continue
        if text.count("\n") > max_lines + 1:
            text = "\n".join(text.split("\n", max_lines + 1)[:max_lines + 1])
        socks += [s for s in parse_sockets(text, name.rstrip("6")) if s.inode]
    local4: list[ipaddress.IPv4Network] = []
    local6: frozenset[ipaddress.IPv6Address] = frozenset()
    with contextlib.suppress(KernelError):
        local4 = parse_fib_trie_local(root.read_text(f"proc/{pid}/net/fib_trie"))
    with contextlib.suppress(KernelError):
        local6 = parse_if_inet6(root.read_text(f"proc/{pid}/net/if_inet6"))
    return NsTable(ns, pid, tuple(socks), tuple(local4), local6)


def read_tcp(root: Root, pid: int, max_lines: int = MAX_SOCKETS) -> list[Sock]:
    """The TCP sockets of `pid`'s namespace (read_ns_table has the cost)."""
    return list(read_ns_table(root, 0, pid, max_lines, TCP_FILES).socks)


@dataclass(frozen=True, slots=True)
class FdLinks:
    """The sockets and pipes a process holds (its fd table, shared by its threads)."""

    sockets: frozenset[int]
    pipes: frozenset[int]
    truncated: bool = False  # more than max_fds descriptors: the rest were not looked at
    looked: int = 0  # descriptors looked at (the cost of the read)


NO_LINKS = FdLinks(frozenset(), frozenset())


def parse_fd_link(link: str) -> tuple[str, int] | None:
    """("socket", INODE) or ("pipe", INODE) from an fd symlink's target; None otherwise."""
    for kind in ("socket", "pipe"):
        pre = f"{kind}:["
        if link.startswith(pre) and link.endswith("]"):
            body = link[len(pre):-1]
            return (kind, int(body)) if body.isdigit() else None
    return None


def read_fd_links(root: Root, pid: int, max_fds: int = MAX_FDS) -> FdLinks:
    """Sockets and pipes of `pid`, at most `max_fds` descriptors looked at (an fd
    closed between listing and readlink is skipped; EACCES = none)."""
    try:
        fds = root.listdir(f"proc/{pid}/fd")
    except KernelError:
        return NO_LINKS
    socks: set[int] = set()
    pipes: set[int] = set()
    for fd in fds[:max_fds]:
        got = parse_fd_link(root.readlink(f"proc/{pid}/fd/{fd}"))
        if got is None:
            continue
        (socks if got[0] == "socket" else pipes).add(got[1])
    return FdLinks(frozenset(socks), frozenset(pipes), len(fds) > max_fds, min(len(fds), max_fds))


