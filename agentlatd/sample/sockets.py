"""Which network devices an agent's traffic arrives on: its sockets and the routes.

Kernel files (Documentation/filesystems/proc.rst, Documentation/networking/
proc_net_tcp.rst; net/ipv4/tcp_ipv4.c, net/ipv4/udp.c, net/ipv4/fib_trie.c
fib_route_seq_show, net/ipv6/route.c ipv6_route_native_seq_show):

  proc/PID/fd/N          symlink "socket:[INODE]" for a socket
  proc/net/{tcp,udp}     one socket per line of the READER's network namespace:
                         "sl local rem st ... uid timeout inode ...", IPv4
                         addresses as the raw __be32 printed with %08X, i.e.
                         in host byte order ("0100007F" is 127.0.0.1 on x86)
  proc/net/{tcp6,udp6}   the same with 128-bit addresses as four such words
  proc/net/route         IPv4 main table: Iface Destination Gateway Flags
                         RefCnt Use Metric Mask ..., hex as above
  proc/net/ipv6_route    "dest plen src splen nexthop metric ref use flags dev",
                         addresses in network order, plen in hex; every table,
                         the local one included (RTF_LOCAL = 0x80000000)
  proc/net/fib_trie      the IPv4 tries; "|-- ADDR" then "/N scope TYPE" lines:
                         TYPE LOCAL = an address of this host (127.0.0.0/8,
                         its own addresses), which the local table routes
                         through lo and proc/net/route does not show

A socket appears in proc/net/* of the namespace it was created in, whichever
thread holds it, so reading agentlatd's OWN proc/net/* and matching the
agent's socket inodes keeps exactly the sockets whose devices are the ones
agentlatd sees in its sys/class/net; sockets of other namespaces (a tool
server thread that setns()'d elsewhere) do not match and are ignored.

A socket's device: the route to its peer (connected TCP/UDP), else the route
to its own bound address (the prefix route of the subnet the address is on),
else unknown (a wildcard listener can receive on any device). An address of
this host itself (loopback, or the host's own address) is received on lo,
as the local table routes it. Otherwise longest prefix wins, then the lowest
metric; an exact tie between different devices, a link-local IPv6 peer (the
scope id is not in these files) and a best route that drops the packet
(RTF_REJECT: unreachable/prohibit; a blackhole, Iface "*") are unknown rather
than guessed. Only the main table is in proc/net/route: policy routing (ip
rule) is not followed -- the agent can name its devices at registration
instead (docs/protocol.md, `devices`).

parse_* take text (pure); read_* do the IO through Root.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Container, Iterable
from dataclasses import dataclass

from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address

SOCKET_FILES = ("tcp", "tcp6", "udp", "udp6")
TCP_LISTEN = 0x0A
RTF_UP = 0x0001
RTF_REJECT = 0x0200
RTF_LOCAL = 0x80000000
LOOPBACK = "lo"
DROP = ""  # the device of a route that drops the packet (reject, blackhole)
MAX_FDS = 4096  # descriptors looked at per process and scan (read_socket_inodes)


@dataclass(frozen=True, slots=True)
class Sock:
    proto: str  # "tcp" | "udp" (v4 or v6 alike)
    local: Addr
    remote: Addr
    remote_port: int
    state: int
    inode: int
    local_port: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    net: ipaddress.IPv4Network | ipaddress.IPv6Network
    dev: str  # DROP for a route that drops the packet
    metric: int
    local: bool = False  # an address of this host (IPv6 RTF_LOCAL), received on lo


def _hex_words(h: str) -> bytes:
    """The bytes of an address printed as 32-bit words in host order."""
    raw = bytes.fromhex(h)
    if sys.byteorder == "big":
        return raw
    return b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))


def _addr(h: str) -> Addr:
    b = _hex_words(h)
    if len(b) == 4:
        return ipaddress.IPv4Address(b)
    a6 = ipaddress.IPv6Address(b)
    # an IPv4 peer of a dual-stack socket (::ffff:a.b.c.d) routes as IPv4
    return a6.ipv4_mapped or a6


def parse_sockets(text: str, proto: str, want: Container[int] | None = None) -> list[Sock]:
    """proc/net/{tcp,tcp6,udp,udp6} text; malformed lines are skipped. `want`: only
    the sockets with these inodes (a host's table can hold 10^5 lines; the
    addresses of the rest are not parsed)."""
    out: list[Sock] = []
    for line in text.splitlines()[1:]:
        f = line.split(None, 10)
        if len(f) < 10:
            continue
        try:
            if want is not None and int(f[9]) not in want:
                continue
            lh, _, lp = f[1].partition(":")
            rh, _, rp = f[2].partition(":")
            out.append(Sock(proto, _addr(lh), _addr(rh), int(rp, 16), int(f[3], 16), int(f[9]),
                            int(lp, 16)))
        except ValueError:
            continue
    return out


def parse_route(text: str) -> list[Route]:
    """proc/net/route: the IPv4 main table (up routes; reject and blackhole ones as DROP)."""
    out: list[Route] = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            flags = int(f[3], 16)
            if not flags & RTF_UP:
                continue
            dest = ipaddress.IPv4Address(_hex_words(f[1]))
            mask = ipaddress.IPv4Address(_hex_words(f[7]))
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
            dev = DROP if flags & RTF_REJECT or f[0] == "*" else f[0]
            out.append(Route(net, dev, int(f[6])))
        except ValueError:
            continue
    return out


def parse_fib_trie_local(text: str) -> list[ipaddress.IPv4Network]:
    """proc/net/fib_trie: the networks of type LOCAL (addresses of this host)."""
    out: set[ipaddress.IPv4Network] = set()
    addr = ""
    for line in text.splitlines():
        t = line.split()
        if len(t) >= 2 and t[0] == "|--":
            addr = t[1]
        elif len(t) >= 3 and t[0].startswith("/") and t[-1] == "LOCAL" and addr:
            try:
                out.add(ipaddress.IPv4Network(f"{addr}{t[0]}", strict=False))
            except ValueError:
                continue
    return sorted(out)


def parse_ipv6_route(text: str) -> list[Route]:
    """proc/net/ipv6_route (every table the kernel dumps; up routes; reject ones as
    DROP; a local route -- an address of this host -- as lo, where it is received)."""
    out: list[Route] = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10:
            continue
        try:
            flags = int(f[8], 16)
            # reject routes (unreachable, prohibit, blackhole) print without RTF_UP
            if not flags & (RTF_UP | RTF_REJECT):
                continue
            net = ipaddress.IPv6Network((ipaddress.IPv6Address(bytes.fromhex(f[0])), int(f[1], 16)),
                                        strict=False)
            if flags & RTF_LOCAL:
                out.append(Route(net, LOOPBACK, int(f[5], 16), local=True))
            else:
                out.append(Route(net, DROP if flags & RTF_REJECT else f[9], int(f[5], 16)))
        except ValueError:
            continue
    return out


def route_dev(addr: Addr, routes: Iterable[Route],
              local: Iterable[ipaddress.IPv4Network] = (), *, bound: bool = False) -> str | None:
    """The device `addr` is reached through (module docstring), None when unknown
    or ambiguous. `local`: this host's own IPv4 networks (parse_fib_trie_local).

    bound: `addr` is a socket's own bound address, which is always one of this
    host's: what matters is the device whose subnet it is on (where peers send
    to it), so the local routes are skipped -- except for loopback addresses."""
    if addr.is_unspecified or (isinstance(addr, ipaddress.IPv6Address) and addr.is_link_local):
        return None
    if addr.is_loopback:
        return LOOPBACK
    if not bound and isinstance(addr, ipaddress.IPv4Address) and any(addr in n for n in local):
        return LOOPBACK
    best: tuple[int, int] | None = None
    devs: set[str] = set()
    for r in routes:
        if r.net.version != addr.version or addr not in r.net or (bound and r.local):
            continue
        key = (-r.net.prefixlen, r.metric)
        if best is None or key < best:
            best, devs = key, {r.dev}
        elif key == best:
            devs.add(r.dev)
    dev = next(iter(devs)) if len(devs) == 1 else None
    return dev or None  # DROP: the packet goes nowhere


def sock_dev(s: Sock, routes: Iterable[Route],
             local: Iterable[ipaddress.IPv4Network] = ()) -> str | None:
    """The device `s` receives on (module docstring), None when unknown."""
    rs, ls = list(routes), list(local)
    if not s.remote.is_unspecified:
        return route_dev(s.remote, rs, ls)
    if s.proto == "tcp" and s.state != TCP_LISTEN:
        return None  # a closing TCP socket without a peer
    return route_dev(s.local, rs, ls, bound=True)


@dataclass(frozen=True, slots=True)
class NetView:
    """agentlatd's own namespace: its sockets by inode, its routes, its own addresses."""

    socks: dict[int, Sock]
    routes: tuple[Route, ...]
    local: tuple[ipaddress.IPv4Network, ...] = ()


def read_net_view(root: Root, want: Container[int] | None = None) -> NetView:
    """proc/net/* of the reading thread's namespace (missing files = empty);
    `want`: only these socket inodes (parse_sockets)."""
    socks: dict[int, Sock] = {}
    for name in SOCKET_FILES:
        text = root.read_optional(f"proc/net/{name}")
        for s in parse_sockets(text, name.rstrip("6"), want):
            if s.inode:
                socks[s.inode] = s
    routes = parse_route(root.read_optional("proc/net/route"))
    routes += parse_ipv6_route(root.read_optional("proc/net/ipv6_route"))
    local = parse_fib_trie_local(root.read_optional("proc/net/fib_trie"))
    return NetView(socks, tuple(routes), tuple(local))


def read_socket_inodes(root: Root, pid: int, max_fds: int = MAX_FDS) -> set[int]:
    """Inodes of the sockets process `pid` holds (its fd table, shared by its threads).

    A vanished process has none; an fd closed between listing and readlink is
    skipped. At most `max_fds` descriptors are looked at: an agent holding
    10^5 files must not make every scan 10^5 readlinks.
    """
    out: set[int] = set()
    try:
        fds = root.listdir(f"proc/{pid}/fd")
    except KernelError:
        return out  # EACCES: not ours to read (no CAP_SYS_PTRACE over it)
    for fd in fds[:max_fds]:
        link = root.readlink(f"proc/{pid}/fd/{fd}")
        if link.startswith("socket:[") and link.endswith("]"):
            try:
                out.add(int(link[8:-1]))
            except ValueError:
                continue
    return out


def devices_of(inodes: Iterable[int], view: NetView) -> set[str]:
    """The devices the sockets `inodes` receive on, of those in `view`'s namespace."""
    out: set[str] = set()
    for ino in inodes:
        s = view.socks.get(ino)
        if s is None:
            continue
        dev = sock_dev(s, view.routes, view.local)
        if dev is not None:
            out.add(dev)
    return out
