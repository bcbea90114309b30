"""Process forks and exits as they happen: the kernel's process connector.

drivers/connector/cn_proc.c, include/uapi/linux/cn_proc.h, include/uapi/linux/connector.h
(checked against Linux 6.x; the layout has not changed since 2.6.15):

  socket    AF_NETLINK, SOCK_DGRAM, NETLINK_CONNECTOR (11), bound to group CN_IDX_PROC (1)
  subscribe nlmsghdr + struct cn_msg { u32 idx = CN_IDX_PROC, val = CN_VAL_PROC; u32 seq,
            ack; u16 len = 4, flags } + enum proc_cn_mcast_op PROC_CN_MCAST_LISTEN (1).
            cn_proc_mcast_ctl answers with a PROC_EVENT_NONE event whose cn_msg has
            our ack + 1 (not our seq: since 6.x send_msg() puts a per-CPU count there,
            observed on 6.18), and err (u32 at the event data) = EPERM without
            CAP_NET_ADMIN; from a process outside the initial user and pid namespaces it
            returns without an answer, as does a kernel without CONFIG_PROC_EVENTS (no
            callback on the index): no answer within START_TIMEOUT_S = unavailable
  event     nlmsghdr (16) + cn_msg (20) + struct proc_event { u32 what; u32 cpu;
            u64 timestamp_ns; union event_data } at offset 36, the data at 52:
              PROC_EVENT_FORK 0x1         parent_pid, parent_tgid, child_pid, child_tgid
              PROC_EVENT_EXIT 0x80000000  process_pid, process_tgid, exit_code, ...
            pids as the initial pid namespace sees them; one event per datagram

Why: an agent's forked processes inherit what agentlatd wrote on the forking thread
(affinity, nice, ioprio), and when the agent exits the kernel re-parents them, so
nothing under /proc links them to it any more. The tick listed each agent's
descendants (64 agents a tick: every 16 s at 1000 agents), and a process forked
since the agent's last listing kept nice 10 / ioprio be7 / the home CPU for good.
The fork event is queued on this socket inside fork() itself (kernel/fork.c
copy_process -> proc_fork_connector), before the parent can run again, so the
daemon, which reads the queue before it handles an exit (learnt from the
parent's pidfd), reads it first.

A classic BPF filter on the socket keeps only new processes (FORK with child_pid ==
child_tgid) and ends of processes (EXIT with process_pid == process_tgid): threads,
exec, uid and comm events never reach the daemon. A full receive queue drops events
(ENOBUFS on the next read): `lost` says so, and the caller lists the agents'
descendants instead for that tick.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from agentlatd.errors import KernelError

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_NONE = 0x0
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXIT = 0x80000000
NLMSG_DONE = 3
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33

START_TIMEOUT_S = 1.0  # the subscription's answer: microseconds where there is one
RCVBUF = 4 << 20  # doubled by the kernel: 8 MiB, 10082 queued events here (~830 B each)
MAX_DRAIN = 16384  # datagrams per drain(): a fork storm cannot hold the loop for long
_DGRAM = 256  # an event is 76 bytes (proc_event is 40)

_NLH = struct.Struct("=IHHII")
_CN = struct.Struct("=IIIIHH")
_EV = struct.Struct("=IIQ")
_EVENT_AT = _NLH.size + _CN.size  # 36
_DATA_AT = _EVENT_AT + _EV.size  # 52
# what parse() reads, in one call: cn_msg idx and val, proc_event what, 4 ids
_ONE = struct.Struct("=16xII12xI12xiiii")
CONTEXT = "proc-connector"


@dataclass(frozen=True, slots=True)
class Fork:
    parent: int  # the forking process (its tgid)
    child: int  # the new process


@dataclass(frozen=True, slots=True)
class Exit:
    pid: int  # a process that ended (its last thread or its leader)


Event = Fork | Exit


@dataclass(frozen=True, slots=True)
class Drained:
    events: tuple[Event, ...]  # in the order the kernel sent them
    lost: bool  # the queue overflowed since the last drain: events are missing
    more: bool = False  # the drain stopped at its limit: datagrams may be left


def encode_op(op: int, tag: int, port: int) -> bytes:
    """A subscription request; its answer carries `tag` + 1 as its cn_msg ack."""
    body = _CN.pack(CN_IDX_PROC, CN_VAL_PROC, 0, tag, 4, 0) + struct.pack("=I", op)
    return _NLH.pack(_NLH.size + len(body), NLMSG_DONE, 0, 0, port) + body


def parse(data: bytes | bytearray | memoryview, n: int | None = None) -> Event | None:
    """One datagram (its first `n` bytes); None for anything but a process fork or
    exit, or a short one."""
    if (len(data) if n is None else n) < _ONE.size:
        return None
    idx, val, what, a, b, c, d = _ONE.unpack_from(data)
    if idx != CN_IDX_PROC or val != CN_VAL_PROC:
        return None
    if what == PROC_EVENT_FORK and c == d > 0:
        return Fork(parent=b, child=d)
    if what == PROC_EVENT_EXIT and a == b > 0:
        return Exit(pid=b)
    return None


def ack_error(data: bytes, tag: int) -> int | None:
    """The answer to the request sent with `tag`: its errno (0 = listening); None
    when the datagram is something else (another listener's answer, an event)."""
    if len(data) < _DATA_AT + 4:
        return None
    idx, val, _seq, cack = struct.unpack_from("=IIII", data, _NLH.size)
    what = struct.unpack_from("=I", data, _EVENT_AT)[0]
    if (idx, val, what) != (CN_IDX_PROC, CN_VAL_PROC, PROC_EVENT_NONE) \
            or cack != (tag + 1) & 0xFFFFFFFF:
        return None
    return int(struct.unpack_from("=I", data, _DATA_AT)[0])


def _be(v: int) -> int:
    """A 32-bit constant as BPF_LD|BPF_W|BPF_ABS loads it (network byte order)."""
    return int.from_bytes(struct.pack("=I", v), "big")


def filter_program() -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k): accept a process's fork or exit, drop every other datagram."""
    ld_w, tax, jeq_k, jeq_x, ret_k = 0x20, 0x07, 0x15, 0x1D, 0x06
    return [
        (ld_w, 0, 0, _EVENT_AT),          # 0  A = what
        (jeq_k, 0, 4, _be(PROC_EVENT_FORK)),  # 1  fork? else 6
        (ld_w, 0, 0, _DATA_AT + 8),       # 2  A = child_pid
        (tax, 0, 0, 0),                   # 3  X = A
        (ld_w, 0, 0, _DATA_AT + 12),      # 4  A = child_tgid
        (jeq_x, 5, 6, 0),                 # 5  a process (not a thread): 11, else 12
        (jeq_k, 0, 5, _be(PROC_EVENT_EXIT)),  # 6  exit? else 12
        (ld_w, 0, 0, _DATA_AT),           # 7  A = process_pid
        (tax, 0, 0, 0),                   # 8  X = A
        (ld_w, 0, 0, _DATA_AT + 4),       # 9  A = process_tgid
        (jeq_x, 0, 1, 0),                 # 10 the process's end: 11, else 12
        (ret_k, 0, 0, 0xFFFFFFFF),        # 11 accept
        (ret_k, 0, 0, 0),                 # 12 drop
    ]


def _attach_filter(s: socket.socket) -> None:
    prog = filter_program()
    insns = (ctypes.c_uint8 * (8 * len(prog))).from_buffer_copy(
        b"".join(struct.pack("=HBBI", *i) for i in prog))
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(insns))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class ProcEvents:
    """A subscription to the process connector, read without blocking by drain()."""

    def __init__(self, timeout_s: float = START_TIMEOUT_S) -> None:
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as e:
            raise KernelError("socket", "netlink connector", e.errno or errno.EIO,
                              CONTEXT) from None
        try:
            self._subscribe(s, timeout_s)
            _attach_filter(s)
        except OSError as e:
            s.close()
            raise KernelError("subscribe", "netlink connector", e.errno or errno.EIO,
                              CONTEXT) from None
        except BaseException:
            s.close()
            raise
        s.setblocking(False)
        self.sock: socket.socket | None = s
        self._buf = bytearray(_DGRAM)  # each datagram read into it, none allocated

    @staticmethod
    def _subscribe(s: socket.socket, timeout_s: float) -> None:
        s.bind((0, CN_IDX_PROC))
        # connected to the kernel (port 0): the kernel refuses any other socket's
        # unicast to ours (net/netlink/af_netlink.c netlink_getsockbyportid,
        # ECONNREFUSED). Without CAP_NET_ADMIN a sender is refused anyway (EPERM:
        # no NL_CFG_F_NONROOT_SEND); this keeps other privileged processes from
        # filling the queue (our port is in /proc/net/netlink) and forcing the
        # listing. The group's multicast, which only the kernel sends, arrives.
        s.connect((0, 0))
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:  # without CAP_NET_ADMIN: up to net.core.rmem_max
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        tag = int.from_bytes(os.urandom(4), "little")
        s.send(encode_op(PROC_CN_MCAST_LISTEN, tag, s.getsockname()[0]))
        end = time.monotonic() + timeout_s
        while True:
            left = end - time.monotonic()
            if left <= 0 or not select.select([s], [], [], left)[0]:
                # no answer: outside the initial pid/user namespace, or no CONFIG_PROC_EVENTS
                raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
            try:
                data, (sender, _groups) = s.recvfrom(_DGRAM)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    continue  # other processes' events filled the queue meanwhile
                raise
            if sender != 0:
                continue  # only the kernel's datagrams count
            err = ack_error(data, tag)
            if err is None:
                continue
            if err:
                raise OSError(err, os.strerror(err))
            return

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def drain(self, limit: int = MAX_DRAIN) -> Drained:
        """The events queued since the last drain (at most `limit` datagrams), in order."""
        s = self.sock
        if s is None:
            return Drained((), False)
        out: list[Event] = []
        lost = False
        more = True
        buf = self._buf
        for _ in range(limit):
            try:
                n, (sender, _groups) = s.recvfrom_into(buf)
            except BlockingIOError:
                more = False
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    lost = True  # reported once per overflow; the queue reads on
                    continue
                raise KernelError("recv", "netlink connector", e.errno or errno.EIO,
                                  CONTEXT) from None
            if sender != 0:
                continue  # only the kernel: the group has no NL_CFG_F_NONROOT_SEND
            ev = parse(buf, n)
            if ev is not None:
                out.append(ev)
        return Drained(tuple(out), lost, more)

    def close(self) -> None:
        s, self.sock = self.sock, None
        if s is None:
            return
        # the kernel builds events only while it counts a listener
        with contextlib.suppress(OSError):
            s.send(encode_op(PROC_CN_MCAST_IGNORE, 0, s.getsockname()[0]))
        s.close()
