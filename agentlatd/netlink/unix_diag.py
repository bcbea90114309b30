"""The peer of a Unix socket: sock_diag UNIX_DIAG_PEER (NETLINK_SOCK_DIAG).

include/uapi/linux/sock_diag.h, include/uapi/linux/unix_diag.h, net/unix/diag.c
(unix_diag_get_exact, sk_diag_dump_peer; checked against Linux 6.x):

  request   nlmsghdr(type SOCK_DIAG_BY_FAMILY = 20, flags NLM_F_REQUEST) +
            struct unix_diag_req { u8 sdiag_family = AF_UNIX; u8 sdiag_protocol = 0;
            u16 pad; u32 udiag_states; u32 udiag_ino; u32 udiag_show;
            u32 udiag_cookie[2] }: without NLM_F_DUMP the kernel looks the one
            socket up by inode (unix_lookup_by_ino) -- no dump of the host's
            thousands of Unix sockets; cookie ~0,~0 = INET_DIAG_NOCOOKIE
  answer    nlmsghdr + struct unix_diag_msg { u8 family, type, state, pad;
            u32 udiag_ino; u32 udiag_cookie[2] } + attributes:
            UNIX_DIAG_NAME (0, the bound path; a leading NUL = abstract),
            UNIX_DIAG_PEER (2, u32 inode of the connected peer)
            or NLMSG_ERROR with -ENOENT when there is no such socket

/proc/net/unix has no peer column: this is how `ss -xp` pairs the two ends.
The lookup is in the network namespace of the asking socket (sock_net):
Unix sockets created in another namespace are not found (docs/protocol.md).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_PEER = 0x04
UNIX_DIAG_NAME = 0
UNIX_DIAG_PEER = 2
NOCOOKIE = 0xFFFFFFFF

_HDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBHIIIII")
_MSG = struct.Struct("=BBBBIII")
_ATTR = struct.Struct("=HH")


@dataclass(frozen=True, slots=True)
class UnixPeer:
    inode: int
    peer: int | None  # the connected peer's inode
    name: str  # the bound path ("@name" for an abstract one), "" when unbound


def encode_request(inode: int, seq: int) -> bytes:
    body = _REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, inode, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER,
                     NOCOOKIE, NOCOOKIE)
    return _HDR.pack(_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body


def parse_answer(data: bytes) -> UnixPeer | None:
    """One answer datagram; None for an error (the socket is gone) or a malformed one."""
    if len(data) < _HDR.size:
        return None
    length, mtype, _flags, _seq, _pid = _HDR.unpack_from(data)
    if mtype != SOCK_DIAG_BY_FAMILY or length > len(data) or length < _HDR.size + _MSG.size:
        return None
    _fam, _typ, _state, _pad, ino, _c0, _c1 = _MSG.unpack_from(data, _HDR.size)
    off = _HDR.size + _MSG.size
    peer: int | None = None
    name = ""
    while off + _ATTR.size <= length:
        alen, atype = _ATTR.unpack_from(data, off)
        if alen < _ATTR.size or off + alen > length:
            break
        val = data[off + _ATTR.size:off + alen]
        if atype == UNIX_DIAG_PEER and len(val) >= 4:
            peer = struct.unpack_from("=I", val)[0] or None
        elif atype == UNIX_DIAG_NAME:
            name = ("@" + val[1:].decode("utf-8", "replace") if val[:1] == b"\0"
                    else val.rstrip(b"\0").decode("utf-8", "replace"))
        off += (alen + 3) & ~3
    return UnixPeer(ino, peer, name)


def unix_peers(inodes: Iterable[int], timeout: float = 1.0) -> dict[int, UnixPeer]:
    """inode -> UnixPeer for each of `inodes` that is a Unix socket of this namespace.

    One exact lookup per inode on one netlink socket; an inode that is not a
    Unix socket here (a TCP socket, gone, another namespace) is left out.
    OSError when sock_diag is unavailable (no CONFIG_UNIX_DIAG: EINVAL or
    EPROTONOSUPPORT at socket() or ENOENT for every lookup)."""
    out: dict[int, UnixPeer] = {}
    todo = list(inodes)
    if not todo:
        return out
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG) as s:
        s.settimeout(timeout)
        s.bind((0, 0))
        for seq, ino in enumerate(todo, 1):
            if not 0 < ino <= 0xFFFFFFFF:
                continue
            s.send(encode_request(ino, seq))
            data = s.recv(65536)
            got = parse_answer(data)
            if got is None:
                if len(data) >= _HDR.size + 4 and _HDR.unpack_from(data)[1] == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, _HDR.size)[0]
                    if err not in (0, errno.ENOENT):
                        raise OSError(err, f"sock_diag of Unix socket {ino}: {errno.errorcode.get(err, err)}")
                continue
            if got.inode == ino:
                out[ino] = got
    return out
