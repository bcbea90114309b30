"""Generic netlink transport: one blocking NETLINK_GENERIC socket, optionally in a
named network namespace, carrying pyroute2 genlmsg messages.

include/uapi/linux/netlink.h (nlmsghdr, NLMSG_ERROR/DONE, extended ACK TLVs),
include/uapi/linux/genetlink.h (CTRL_CMD_GETFAMILY, CTRL_CMD_GETPOLICY),
Documentation/userspace-api/netlink/intro.rst.

Messages are pyroute2 classes (genlmsg, nla, ctrlmsg: they encode and decode);
the send/receive loop is here, not pyroute2's GenericNetlinkSocket, because the
0.9.7 sync socket runs its own asyncio loop on every call: called from a
coroutine it fails with "RuntimeError: This event loop is already running"
(checked on this host), it warns or fails when used from a thread other than
the one that made it (_check_tid), and its netns= support forks a child that
*creates* a missing namespace by default (flags=os.O_CREAT). A daemon must be
free to call these from any thread or loop, and must never create namespaces.

Network namespaces. netns=None: the socket lives in the caller's namespace, so
`ip netns exec NS agentlatd ...` needs nothing special. netns="NAME" (or an
absolute path to a namespace file): NAME is iproute2's /run/netns/NAME bind
mount (ip-netns(8)); the socket is created in a short-lived helper thread (sysfs/netns.py) that
setns(CLONE_NEWNET)s into it and exits. A socket stays in the namespace it was
created in (sock_net(), used by genetlink for every lookup, including the
ethtool header's device name), setns() changes only the calling thread, and
that thread ends right away: the process's own namespace is never touched. A
missing namespace is an error (GONE), never created.

Every failure becomes NetlinkError, a KernelError with context "netlink" (so
EOPNOTSUPP -> ErrClass.UNSUPPORTED) that also carries the kernel's extended ACK
message ("unsupported parameter", "missing attribute 2") when it sent one.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agentlatd.errors import KernelError
from agentlatd.sysfs.netns import in_netns

# include/uapi/linux/netlink.h
NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED = 0x100  # in an ACK: the request echo is only its header
NLM_F_ACK_TLVS = 0x200  # in an ACK: extended-ACK TLVs follow
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_MISS_TYPE = 5
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
# include/uapi/linux/genetlink.h
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_CMD_GETPOLICY = 10  # 5.8; per-op filter (CTRL_ATTR_OP) 5.12

NETNS_DIR = "/run/netns"  # iproute2 NETNS_RUN_DIR (ip-netns(8))
CONTEXT = "netlink"
_HDR = struct.Struct("=IHHII")  # struct nlmsghdr
_RECV = 1 << 18


def _ctrlmsg() -> Any:
    """A control-family message. pyroute2 is imported here, not at the top: its
    package imports all of itself (asyncio, NDB, IPDB, conntrack: ~130 ms), and
    sock_diag (unix_diag.py, imported by every command through the chain
    scanner) needs none of it."""
    from pyroute2.netlink import ctrlmsg

    return ctrlmsg()


class NetlinkError(KernelError):
    """A netlink request the kernel refused (or that never got an answer).

    errno and errclass as for any KernelError; extack is the kernel's extended
    ACK message, "" when it sent none.
    """

    def __init__(self, op: str, target: str, err: int, extack: str = "",
                 value: str | None = None) -> None:
        self.extack = extack
        super().__init__(op, target, err, CONTEXT, value)

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}: kernel says {self.extack!r}" if self.extack else base


@dataclass(frozen=True, slots=True)
class Family:
    """A resolved generic netlink family: its id and the commands it has."""

    name: str
    id: int
    version: int
    ops: frozenset[int]

    def has(self, cmd: int) -> bool:
        return cmd in self.ops


def where(target: str, netns: str | None) -> str:
    """The target as error messages name it: 'veth0' or 'veth0 (netns ns1)'."""
    return target if netns is None else f"{target} (netns {netns})"


def netns_path(netns: str) -> str:
    """The namespace file for `netns`: a name under /run/netns or an absolute path."""
    if not netns or "\0" in netns:
        raise ValueError(f"bad network namespace name {netns!r}")
    if netns.startswith("/"):
        return netns
    if "/" in netns or netns in (".", ".."):
        raise ValueError(f"bad network namespace name {netns!r}")
    return f"{NETNS_DIR}/{netns}"


def _new_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)


def open_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_GENERIC socket in the caller's namespace or in `netns`."""
    if netns is None:
        try:
            return _new_socket()
        except OSError as e:
            raise NetlinkError("socket", "NETLINK_GENERIC", e.errno or errno.EIO) from e
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetlinkError("open netns", path, e.errno or errno.EIO) from e
    try:
        return in_netns(fd, _new_socket)
    except OSError as e:
        raise NetlinkError("setns", path, e.errno or errno.EIO) from e
    finally:
        os.close(fd)


def iter_attrs(buf: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type without flag bits, payload) for each netlink attribute in buf[offset:]."""
    while offset + 4 <= len(buf):
        ln, typ = struct.unpack_from("=HH", buf, offset)
        if ln < 4 or offset + ln > len(buf):
            return
        yield typ & NLA_TYPE_MASK, bytes(buf[offset + 4:offset + ln])
        offset += (ln + 3) & ~3


def _extack(chunk: bytes, flags: int, tlv_at: int) -> str:
    if not flags & NLM_F_ACK_TLVS:
        return ""
    parts = []
    for typ, val in iter_attrs(chunk, tlv_at):
        if typ == NLMSGERR_ATTR_MSG:
            parts.append(val.split(b"\0", 1)[0].decode("utf-8", "replace"))
        elif typ == NLMSGERR_ATTR_MISS_TYPE and len(val) >= 4:
            parts.append(f"missing attribute {struct.unpack_from('=I', val)[0]}")
    return "; ".join(parts)


def _policy_num(name: str) -> int:
    """pyroute2 names policy nests 'POLICY(10)', 'ATTR(5)', 'OP(14)'."""
    return int(name[name.index("(") + 1:-1])


class GenlSocket:
    """A blocking generic netlink socket; use as a context manager.

    netns: None = the caller's namespace; else a /run/netns name or a path.
    timeout: seconds to wait for each answer (a missing answer is EAGAIN).
    """

    def __init__(self, netns: str | None = None, timeout: float = 5.0) -> None:
        self.netns = netns
        self._seq = 0
        self._sock = open_socket(netns)
        try:
            self._sock.settimeout(timeout)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self._sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._sock.bind((0, 0))
        except OSError as e:
            self._sock.close()
            raise NetlinkError("socket", "NETLINK_GENERIC", e.errno or errno.EIO) from e

    def __enter__(self) -> GenlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # -- requests ---------------------------------------------------------
    def request(self, msg: Any, msg_type: int, *, op: str, target: str,
                dump: bool = False) -> list[Any]:
        """Send pyroute2 message `msg` (cmd and attrs filled in) to family id
        `msg_type`; return the decoded replies (instances of type(msg)).

        A do-request asks for an ACK, so an error and a success both end it;
        a dump ends at NLMSG_DONE.
        """
        self._seq = (self._seq % 0x7FFFFFFF) + 1
        seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        who = where(target, self.netns)
        try:
            self._sock.sendto(bytes(msg.data), (0, 0))
        except OSError as e:
            raise NetlinkError(op, who, e.errno or errno.EIO) from e
        out: list[Any] = []
        cls = type(msg)
        while True:
            try:
                data = self._sock.recv(_RECV)
            except TimeoutError as e:
                raise NetlinkError(op, who, errno.EAGAIN, "no answer from the kernel") from e
            except OSError as e:
                raise NetlinkError(op, who, e.errno or errno.EIO) from e
            off = 0
            while off + _HDR.size <= len(data):
                ln, typ, flags, mseq, _pid = _HDR.unpack_from(data, off)
                if ln < _HDR.size or off + ln > len(data):
                    raise NetlinkError(op, who, errno.EIO, f"truncated netlink message ({ln} bytes)")
                chunk = data[off:off + ln]
                off += (ln + 3) & ~3
                if mseq != seq:
                    continue  # a late answer to an earlier request on this socket
                if typ == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", chunk, 16)
                    if err == 0:
                        return out  # the ACK of a do-request
                    echo = 16 if flags & NLM_F_CAPPED else struct.unpack_from("=I", chunk, 20)[0]
                    tlv_at = 20 + ((echo + 3) & ~3)
                    raise NetlinkError(op, who, -err, _extack(chunk, flags, tlv_at))
                if typ == NLMSG_DONE:
                    err = struct.unpack_from("=i", chunk, 16)[0] if ln >= 20 else 0
                    if err:
                        raise NetlinkError(op, who, -err, _extack(chunk, flags, 20))
                    return out
                reply = cls(chunk)
                reply.decode()
                out.append(reply)

    # -- the control family ---------------------------------------------
    def family(self, name: str) -> Family:
        """Resolve family `name` (CTRL_CMD_GETFAMILY). A family the kernel lacks
        raises NetlinkError(EOPNOTSUPP): callers fall back (sysfs, ioctl) on it."""
        msg = _ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETFAMILY
        msg["version"] = 1
        msg["attrs"].append(["CTRL_ATTR_FAMILY_NAME", name])
        try:
            (reply, *_) = self.request(msg, GENL_ID_CTRL, op="genl getfamily", target=name)
        except NetlinkError as e:
            if e.errno == errno.ENOENT:
                raise NetlinkError("genl getfamily", where(name, self.netns), errno.EOPNOTSUPP,
                                   f"this kernel has no {name!r} generic netlink family") from e
            raise
        except ValueError as e:  # no reply at all, only the ACK
            raise NetlinkError("genl getfamily", where(name, self.netns), errno.EIO,
                               "no family description in the reply") from e
        ops = frozenset(o.get_attr("CTRL_ATTR_OP_ID") for o in reply.get_attr("CTRL_ATTR_OPS") or ())
        return Family(name, reply.get_attr("CTRL_ATTR_FAMILY_ID"),
                      reply.get_attr("CTRL_ATTR_VERSION") or 0, ops)

    def op_attrs(self, family: Family, cmd: int) -> frozenset[int] | None:
        """Top-level attribute ids the do-policy of `cmd` accepts
        (CTRL_CMD_GETPOLICY with CTRL_ATTR_OP), or None where the kernel cannot
        say (before 5.12): then the request itself is the test."""
        msg = _ctrlmsg()
        msg["cmd"] = CTRL_CMD_GETPOLICY
        msg["version"] = 1
        msg["attrs"].append(["CTRL_ATTR_FAMILY_ID", family.id])
        msg["attrs"].append(["CTRL_ATTR_OP", cmd])
        try:
            replies = self.request(msg, GENL_ID_CTRL, op="genl getpolicy",
                                   target=f"{family.name} op {cmd}", dump=True)
        except NetlinkError:
            return None
        do_idx: int | None = None
        policies: dict[int, set[int]] = {}
        for r in replies:
            opp = r.get_attr("CTRL_ATTR_OP_POLICY")
            if opp is not None:
                for _name, nest in opp["attrs"]:
                    idx = nest.get_attr("CTRL_ATTR_POLICY_DO")
                    if idx is not None:
                        do_idx = idx
            pol = r.get_attr("CTRL_ATTR_POLICY")
            if pol is not None:
                for pname, attrs in pol["attrs"]:
                    got = policies.setdefault(_policy_num(pname), set())
                    got.update(_policy_num(aname) for aname, _v in attrs["attrs"])
        if do_idx is None:
            return None
        return frozenset(policies.get(do_idx, ()))


__all__ = [
    "CONTEXT",
    "Family",
    "GenlSocket",
    "NetlinkError",
    "iter_attrs",
    "netns_path",
    "open_socket",
    "where",
]
