"""The step ring (agentlatd/steps/ring.py): the format docs/protocol.md documents, written by
RingWriter and read back through /proc/PID/fd like the daemon and `trace --slow-steps` do."""

from __future__ import annotations

import os
import struct
import threading

import pytest

from agentlatd.steps import ring
from agentlatd.sysfs.root import Root

HOST = Root("/")


def test_header_and_record_layout_as_documented() -> None:
    w = ring.RingWriter(8)
    try:
        seq = w.write(48213, 777, 1_000, 5_900_000, 0)
        buf = bytes(w.mm)
        _magic, ver, rsize, cap, hsize, pid, clock = struct.unpack_from("<QIIIIII", buf, 0)
        assert buf[:8] == b"agstepr1" and ver == 1 and rsize == 48 and cap == 8 and hsize == 64
        assert pid == os.getpid() and clock == 1
        assert struct.unpack_from("<Q", buf, 32)[0] == 1  # head
        assert buf[40:64] == bytes(24)
        commit, step, start, end, tid, flags, zero = struct.unpack_from("<QQQQIIQ", buf, 64)
        assert (seq, commit, step, start, end, tid, flags, zero) == (0, 1, 48213, 1_000, 5_900_000,
                                                                     777, 0, 0)
    finally:
        w.close()


def test_read_through_proc_fd_new_records_only() -> None:
    w = ring.RingWriter(16)
    try:
        rel = ring.find_ring(HOST, os.getpid())
        assert rel is not None and rel.startswith(f"proc/{os.getpid()}/fd/")
        r = ring.RingReader.open(HOST, os.getpid())
        assert r is not None
        w.write("plan", 5, 10, 20)
        w.write(None, 5, 30, 45, ring.FLAG_RAISED)
        got = r.read()
        assert [(x.seq, x.tid, x.start_ns, x.duration_ns, x.flags) for x in got] == [
            (0, 5, 10, 10, 0), (1, 5, 30, 15, 1)]
        assert got[0].step == ring.step_key("plan", 0) and got[1].step == 1  # None -> its seq
        assert r.read() == []
        w.write(7, 6, 50, 60)
        assert [x.seq for x in r.read()] == [2]
        r.close()
    finally:
        w.close()


def test_wraparound_keeps_the_newest_and_counts_the_missed() -> None:
    w = ring.RingWriter(4)
    try:
        r = ring.RingReader.open(HOST, os.getpid())
        assert r is not None
        for i in range(10):
            w.write(i, 1, i * 10, i * 10 + 5)
        got = r.read()
        assert [x.seq for x in got] == [6, 7, 8, 9] and [x.step for x in got] == [6, 7, 8, 9]
        assert r.missed == 6
        r.close()
    finally:
        w.close()


def test_torn_or_misplaced_record_is_skipped() -> None:
    buf = bytearray(64 + 4 * 48)
    struct.pack_into("<QIIIIII", buf, 0, ring.RING_MAGIC, 1, 48, 4, 64, 1, 1)
    struct.pack_into("<QQQQIIQ", buf, 64, 1, 9, 100, 200, 3, 0, 0)  # seq 0 in slot 0: good
    struct.pack_into("<QQQQIIQ", buf, 64 + 48, 0, 9, 100, 200, 3, 0, 0)  # being written
    struct.pack_into("<QQQQIIQ", buf, 64 + 96, 2, 9, 100, 200, 3, 0, 0)  # seq 1 is not slot 2's
    struct.pack_into("<QQQQIIQ", buf, 64 + 144, 4, 9, 300, 200, 3, 0, 0)  # end < start
    assert [r.seq for r in ring.parse_records(buf)] == [0]


@pytest.mark.parametrize("mutate,msg", [
    (lambda b: b.__setitem__(slice(0, 8), b"notaring"), "magic"),
    (lambda b: struct.pack_into("<I", b, 8, 9), "version 9"),
    (lambda b: struct.pack_into("<I", b, 16, 3), "capacity 3"),
])
def test_bad_ring_is_refused_with_a_reason(mutate: object, msg: str) -> None:
    buf = bytearray(64 + 4 * 48)
    struct.pack_into("<QIIIIII", buf, 0, ring.RING_MAGIC, 1, 48, 4, 64, 1, 1)
    mutate(buf)  # type: ignore[operator]
    with pytest.raises(ring.RingFormatError, match=msg):
        ring.parse_header(buf)


def test_threads_never_share_a_seq() -> None:
    w = ring.RingWriter(1 << 14)
    try:
        def work(tid: int) -> None:
            for i in range(2000):
                w.write(i, tid, i, i + 1)

        ts = [threading.Thread(target=work, args=(t,)) for t in (1, 2, 3, 4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        recs = ring.parse_records(w.mm)
        assert len(recs) == 8000 and len({r.seq for r in recs}) == 8000
        assert sorted(sum(1 for r in recs if r.tid == t) for t in (1, 2, 3, 4)) == [2000] * 4
    finally:
        w.close()


def test_forked_child_ring_names_the_parent() -> None:
    """The child inherits the memfd (fork keeps fds): the header's pid tells the reader
    the ring is not the child's."""
    w = ring.RingWriter(4)
    try:
        r_fd, w_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # wait until the parent has looked, then leave
            os.read(r_fd, 1)
            os._exit(0)
        try:
            rel = ring.find_ring(HOST, pid)
            assert rel is not None
            with pytest.raises(ring.RingFormatError, match="fork"):
                ring.RingReader(HOST, pid, rel)
            assert ring.RingReader.open(HOST, pid) is None
        finally:
            os.write(w_fd, b"x")
            os.waitpid(pid, 0)
            os.close(r_fd)
            os.close(w_fd)
    finally:
        w.close()


@pytest.mark.parametrize("step_id", [0, 7, 2**64 - 1, 2**64, -1, None, "plan", 1.5, True])
def test_step_ids_stored_as_documented(step_id: object) -> None:
    """The writer's fast path (u64 stores, falling back on anything not a u64 int) stores
    what step_key() documents for every kind of id."""
    w = ring.RingWriter(4)
    try:
        w.write("x", 1, 0, 1)
        seq = w.write(step_id, 9, 10, 20, ring.FLAG_RAISED)
        rec = ring.parse_records(w.mm)[-1]
        assert (rec.seq, rec.step, rec.tid, rec.flags) == (seq, ring.step_key(step_id, seq), 9,
                                                           ring.FLAG_RAISED)
    finally:
        w.close()


def test_close_unmaps_the_ring() -> None:
    """close() releases the writer's view first, so the mapping really goes (an exported
    buffer would make mmap.close() fail, silently suppressed)."""
    w = ring.RingWriter(4)
    w.write(1, 1, 1, 2)
    mm = w.mm
    w.close()
    assert mm.closed


def test_client_in_forked_child_records_the_childs_tid() -> None:
    """Regression (stale tid after fork): the client cached the kernel tid per
    threading.get_ident(), which a forked child's main thread keeps, so a Client created
    in the child wrote the parent's tid into every record."""
    import warnings

    from agentlatd.client import Client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no daemon
        parent = Client("fork-parent", socket="/nonexistent/agentlatd.sock", background=False)
        with parent.step(1):
            pass
        r_fd, w_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r_fd)
                child = Client("fork-child", socket="/nonexistent/agentlatd.sock",
                               background=False)
                with child.step(2):
                    pass
                assert child.ring is not None
                recs = ring.parse_records(child.ring.mm)
                os.write(w_fd, str(recs[0].tid).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w_fd)
        try:
            got = os.read(r_fd, 64)
        finally:
            os.close(r_fd)
            _, status = os.waitpid(pid, 0)
            parent.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(got) == pid


def test_read_new_reads_only_new_records_up_to_a_limit() -> None:
    """The daemon's incremental read: from the header's head, O(new records); past the
    limit or the capacity, the older records count as missed."""
    w = ring.RingWriter(8)
    try:
        r = ring.RingReader.open(HOST, os.getpid())
        assert r is not None
        w.write(None, 5, 10, 20)
        w.write("plan", 6, 30, 45, ring.FLAG_RAISED)
        got = r.read_new(100)
        assert [(x.seq, x.step, x.tid, x.start_ns, x.end_ns, x.flags) for x in got] == [
            (0, 0, 5, 10, 20, 0), (1, ring.step_key("plan", 1), 6, 30, 45, 1)]
        assert r.read_new(100) == []
        for i in range(5):
            w.write(i, 1, i, i + 1)
        assert [x.seq for x in r.read_new(2)] == [5, 6] and r.missed == 3
        for i in range(20):
            w.write(i, 1, i, i + 1)
        assert [x.seq for x in r.read_new(100)] == list(range(19, 27)) and r.missed == 15
        r.close()
    finally:
        w.close()


def test_read_new_leaves_a_record_being_written_for_the_next_call() -> None:
    w = ring.RingWriter(8)
    try:
        r = ring.RingReader.open(HOST, os.getpid())
        assert r is not None
        w.write(1, 1, 1, 2)
        seq = w.write(2, 1, 3, 4)
        q = memoryview(w.mm).cast("Q")
        off = (64 + seq * 48) // 8
        q[off] = 0  # claimed, not yet committed
        assert [x.seq for x in r.read_new(100)] == [0]
        q[off] = seq + 1  # now committed
        assert [x.seq for x in r.read_new(100)] == [1]
        q.release()
        r.close()
    finally:
        w.close()


def test_client_step_writes_the_documented_record() -> None:
    """The client's step inlines RingWriter.write: the same record, flags and head, read
    back by the reader; an exception in the step sets the raised flag."""
    import warnings

    from agentlatd.client import Client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no daemon
        c = Client("inline", socket="/nonexistent/agentlatd.sock", background=False)
    c._conn = object()  # type: ignore[assignment]  # the registered path (_Step), no socket
    try:
        with c.step(48213):
            pass
        with pytest.raises(KeyError), c.step("plan"):
            raise KeyError("x")
        with c.step(None):
            pass
        c._conn = None
        with c.step(7):  # no daemon: RingWriter.write itself, sharing the seq counter
            pass
        assert c.ring is not None
        recs = ring.parse_records(c.ring.mm)
        tid = threading.get_native_id()
        assert [(r.seq, r.step, r.tid, r.flags) for r in recs] == [
            (0, 48213, tid, 0), (1, ring.step_key("plan", 1), tid, ring.FLAG_RAISED),
            (2, 2, tid, 0), (3, 7, tid, 0)]
        assert all(r.end_ns >= r.start_ns > 0 for r in recs)
        assert ring.parse_header(c.ring.mm).head == 4
        assert len(c._samples) == 3
    finally:
        c._conn = None
        c.close()
