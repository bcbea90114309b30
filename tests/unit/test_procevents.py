"""The process connector's datagrams (agentlatd/netlink/procevents.py), on recorded ones.

Recorded on Linux 6.18.44 (x86_64), 2026-12-07: a Python process (pid 7640, its parent
7638) subscribed with tag 41, forked a child 7642 that exited with status 3, and started
and joined a thread 7643. Layout: include/uapi/linux/connector.h (struct cn_msg),
include/uapi/linux/cn_proc.h (struct proc_event). A thread's fork names its process's
parent as the parent (cn_proc.c proc_fork_connector: task->real_parent).
"""

from __future__ import annotations

import struct

from agentlatd.netlink import procevents as pe

ACK = bytes.fromhex(
    "4c00000003000000f7060000000000000100000001000000f70600002a0000002800000000000000"
    "00000000b00a14147a120000000000000000000000000000000000000000000000000000")
FORK = bytes.fromhex(
    "4c00000003000000f8060000000000000100000001000000f80600000000000028000000010000000"
    "0000000386c1b147a120000d81d0000d81d0000da1d0000da1d00000000000000000000")
EXIT = bytes.fromhex(
    "4c000000030000001107000000000000010000000100000011070000000000002800000000000080"
    "010000004f902e147a120000da1d0000da1d00000003000011000000d81d0000d81d0000")
THREAD_FORK = bytes.fromhex(
    "4c00000003000000f9060000000000000100000001000000f9060000000000002800000001000000"
    "00000000405f32147a120000d61d0000d61d0000db1d0000d81d00000000000000000000")
THREAD_EXIT = bytes.fromhex(
    "4c0000000300000012070000000000000100000001000000120700000000000028000000000000800"
    "100000029e836147a120000db1d0000d81d000000000000ffffffff0000000000000000")
ALL = (ACK, FORK, EXIT, THREAD_FORK, THREAD_EXIT)


def test_a_process_fork_and_exit_are_events_and_a_thread_is_not() -> None:
    assert pe.parse(FORK) == pe.Fork(parent=7640, child=7642)
    assert pe.parse(EXIT) == pe.Exit(pid=7642)
    assert pe.parse(THREAD_FORK) is None
    assert pe.parse(THREAD_EXIT) is None
    assert pe.parse(ACK) is None


def test_short_or_foreign_datagrams_are_no_events() -> None:
    assert pe.parse(FORK[:60]) is None
    assert pe.parse(b"") is None
    other = FORK[:16] + struct.pack("=I", 7) + FORK[20:]  # another connector index
    assert pe.parse(other) is None


def test_the_subscription_answer_is_matched_by_its_tag() -> None:
    assert pe.ack_error(ACK, 41) == 0
    assert pe.ack_error(ACK, 40) is None  # another listener's answer
    assert pe.ack_error(FORK, 41) is None
    refused = ACK[:52] + struct.pack("=I", 1) + ACK[56:]  # EPERM
    assert pe.ack_error(refused, 41) == 1


def test_the_request_is_what_cn_proc_reads() -> None:
    req = pe.encode_op(pe.PROC_CN_MCAST_LISTEN, 41, 7640)
    length, mtype, _flags, _seq, port = struct.unpack_from("=IHHII", req)
    assert (length, mtype, port) == (len(req), pe.NLMSG_DONE, 7640) and length == 40
    idx, val, _cseq, ack, dlen, _fl = struct.unpack_from("=IIIIHH", req, 16)
    assert (idx, val, ack, dlen) == (1, 1, 41, 4)
    assert struct.unpack_from("=I", req, 36)[0] == pe.PROC_CN_MCAST_LISTEN


def _run_cbpf(prog: list[tuple[int, int, int, int]], pkt: bytes) -> int:
    """The classic BPF subset the filter uses (net/core/filter.c semantics: absolute
    word loads in network byte order, jumps relative to the next instruction)."""
    a = x = pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == 0x20:
            a = struct.unpack_from(">I", pkt, k)[0]
        elif code == 0x07:
            x = a
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x1D:
            pc += jt if a == x else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")


def test_the_socket_filter_keeps_exactly_what_parse_keeps() -> None:
    prog = pe.filter_program()
    for d in ALL:
        kept = _run_cbpf(prog, d) != 0
        assert kept == (pe.parse(d) is not None), d.hex()
    assert _run_cbpf(prog, FORK) and _run_cbpf(prog, EXIT)
