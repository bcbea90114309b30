"""The step ring: a memfd an agent writes one record per step into, with no system call.

Format (docs/protocol.md "Step markers", the reference for C/Go/Rust
writers): a 64-byte header then `capacity` 48-byte records, little-endian.

    header  0 magic u64 (RING_MAGIC)   8 version u32   12 record_size u32
           16 capacity u32 (2^k)       20 header_size u32
           24 pid u32 (the writer's tgid) 28 clock u32 (1 = CLOCK_MONOTONIC)
           32 head u64 (records claimed; a hint)   40..63 zero
    record  0 commit u64 (0 = empty or being written, else seq + 1)
            8 step u64   16 start_ns u64   24 end_ns u64
           32 tid u32    36 flags u32 (bit 0: the step raised)   40 zero u64

Record `seq` lives in slot seq & (capacity - 1). A writer claims seq (an
atomic fetch-add on head), stores commit = 0, the fields, then commit =
seq + 1 (a release store). A reader loads commit, the fields, commit again,
and keeps the record when both loads are equal, non-zero, and name that
slot: a torn or overwritten record fails one of the three.

Why a memfd found through /proc rather than a file in the daemon's runtime
directory or one passed over the socket: the agent needs no permission in
/run/agentlatd, no protocol change and no registration (a C agent started by
`agentlatd exec` writes one as well as a Python Client does), there is no
file left behind when the process dies, and readers are the root daemon and
`agentlatd trace`, which open /proc/PID/fd/N (ptrace read access). The name
"agentlatd-steps" and the header's pid (a fork's child inherits the fd, not
the writer role) identify it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
import zlib
from dataclasses import dataclass

from agentlatd.sysfs.root import Root

RING_MAGIC = int.from_bytes(b"agstepr1", "little")
VERSION = 1
HEADER = struct.Struct("<QIIIIII")  # magic version record_size capacity header_size pid clock
HEADER_SIZE = 64
HEAD_OFF = 32
RECORD = struct.Struct("<QQQQIIQ")  # commit step start end tid flags zero
RECORD_SIZE = RECORD.size  # 48
FIELDS = struct.Struct("<QQQII")  # after the commit word
COMMIT = struct.Struct("<Q")
CLOCK_MONOTONIC = 1
MEMFD_NAME = "agentlatd-steps"
DEFAULT_CAPACITY = 4096
FLAG_RAISED = 1
assert RECORD_SIZE == 48
_NATIVE_LE = sys.byteorder == "little"
_REC0 = HEADER_SIZE // 8  # u64 index of record 0
_RECQ = RECORD_SIZE // 8  # u64s per record
_HEADQ = HEAD_OFF // 8
assert (_REC0, _RECQ, _HEADQ) == (8, 6, 4)  # RingWriter.write spells them as literals


@dataclass(frozen=True, slots=True)
class StepRecord:
    seq: int
    step: int
    tid: int
    start_ns: int
    end_ns: int
    flags: int = 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class RingHeader:
    version: int
    record_size: int
    capacity: int
    header_size: int
    pid: int
    clock: int
    head: int


class RingFormatError(ValueError):
    """Not a step ring, or a version this reader does not know."""


def step_key(step_id: object, seq: int) -> int:
    """The u64 a step id is stored as: an int as is (mod 2^64), None as its sequence
    number, anything else as the CRC-32 of its str() (stable across processes, unlike hash())."""
    if step_id is None:
        return seq
    if isinstance(step_id, int):
        return step_id & 0xFFFF_FFFF_FFFF_FFFF
    return zlib.crc32(str(step_id).encode())


def parse_header(buf: bytes | bytearray | memoryview | mmap.mmap) -> RingHeader:
    if len(buf) < HEADER_SIZE:
        raise RingFormatError(f"step ring too small ({len(buf)} bytes)")
    magic, ver, rsize, cap, hsize, pid, clock = HEADER.unpack_from(buf, 0)
    if magic != RING_MAGIC:
        raise RingFormatError("not a step ring (bad magic)")
    if ver != VERSION:
        raise RingFormatError(f"step ring version {ver} (this reader knows {VERSION})")
    if rsize < RECORD_SIZE or hsize < HEADER_SIZE or cap == 0 or cap & (cap - 1):
        raise RingFormatError(f"step ring geometry: record {rsize}, header {hsize}, capacity {cap}")
    if len(buf) < hsize + cap * rsize:
        raise RingFormatError(f"step ring truncated: {len(buf)} < {hsize + cap * rsize} bytes")
    (head,) = COMMIT.unpack_from(buf, HEAD_OFF)
    return RingHeader(ver, rsize, cap, hsize, pid, clock, head)


def parse_records(buf: bytes | bytearray | memoryview | mmap.mmap, after: int = -1) -> list[StepRecord]:
    """Committed records with seq > `after`, by seq. On a live mapping each record is read
    commit, fields, commit (kept only when the two commit loads agree): a torn one is skipped."""
    h = parse_header(buf)
    mask = h.capacity - 1
    out: list[StepRecord] = []
    cu = COMMIT.unpack_from
    fu = FIELDS.unpack_from
    for slot in range(h.capacity):
        off = h.header_size + slot * h.record_size
        (c1,) = cu(buf, off)
        if c1 == 0 or c1 - 1 <= after or (c1 - 1) & mask != slot:
            continue
        step, start, end, tid, flags = fu(buf, off + 8)
        (c2,) = cu(buf, off)
        if c2 != c1 or end < start:
            continue
        out.append(StepRecord(c1 - 1, step, tid, start, end, flags))
    out.sort(key=lambda r: r.seq)
    return out


def new_ring(buf: mmap.mmap, capacity: int, pid: int) -> None:
    """Write a fresh header into `buf` (zeroed, header + capacity records long)."""
    HEADER.pack_into(buf, 0, RING_MAGIC, VERSION, RECORD_SIZE, capacity, HEADER_SIZE, pid,
                     CLOCK_MONOTONIC)


class RingWriter:
    """This process's ring (a memfd mapped shared). `write` is the hot path: six
    stores into a u64 view of the mapping, no system call, no allocation but ints.

    Why a memoryview cast to u64 rather than struct.pack_into: each pack_into
    parses its arguments and takes the buffer anew (~0.4-0.6 us on the 2-core
    CI machine, four per record), an item store on a cast view is ~0.05 us
    (bench/agents.py step_ns; tests/unit/test_step_ring.py checks the bytes)."""

    # claim, mask and words are public: the Python client inlines write() into its
    # step's __exit__ (agentlatd/client.py _Step), with the same stores in the same order
    __slots__ = ("capacity", "claim", "fd", "mask", "mm", "pid", "words")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        import itertools

        if capacity < 2 or capacity & (capacity - 1):
            raise ValueError(f"step ring capacity must be a power of two >= 2, not {capacity}")
        self.capacity = capacity
        self.pid = os.getpid()
        self.fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
        size = HEADER_SIZE + capacity * RECORD_SIZE
        try:
            os.ftruncate(self.fd, size)
            self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(self.fd)
            raise
        new_ring(self.mm, capacity, self.pid)
        self.mask = capacity - 1
        # native u64 items: the format is little-endian, so a big-endian host
        # takes the struct path (write_packed)
        self.words: memoryview | None = memoryview(self.mm).cast("Q") if _NATIVE_LE else None
        # next() on itertools.count is one C call: atomic under the GIL, so two Python
        # threads never claim the same seq
        self.claim = itertools.count().__next__

    def write(self, step_id: object, tid: int, start_ns: int, end_ns: int, flags: int = 0) -> int:
        seq = self.claim()
        q = self.words
        if q is None:
            return self._write_packed(seq, step_id, tid, start_ns, end_ns, flags)
        i = 8 + (seq & self.mask) * 6  # _REC0, _RECQ as literals: no global look-up
        k = step_id
        if k is None:
            k = seq
        elif k.__class__ is not int or not 0 <= k <= 0xFFFF_FFFF_FFFF_FFFF:
            k = step_key(k, seq)  # str, negative or wide ints: rare, and a call
        q[i] = 0
        q[i + 1] = k
        q[i + 2] = start_ns
        q[i + 3] = end_ns
        q[i + 4] = tid | flags << 32
        q[i] = seq + 1
        q[4] = seq + 1  # _HEADQ
        return seq

    def _write_packed(self, seq: int, step_id: object, tid: int, start_ns: int, end_ns: int,
                      flags: int) -> int:
        off = HEADER_SIZE + (seq & self.mask) * RECORD_SIZE
        mm = self.mm
        COMMIT.pack_into(mm, off, 0)
        FIELDS.pack_into(mm, off + 8, step_key(step_id, seq), start_ns, end_ns, tid, flags)
        COMMIT.pack_into(mm, off, seq + 1)
        COMMIT.pack_into(mm, HEAD_OFF, seq + 1)
        return seq

    def close(self) -> None:
        q, self.words = self.words, None
        if q is not None:
            q.release()
        with contextlib.suppress(BufferError, ValueError):
            self.mm.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


# -- finding and reading another process's ring (the IO end) -----------------

def find_ring(root: Root, pid: int) -> str | None:
    """The kernel path (proc/PID/fd/N) of `pid`'s step ring, or None."""
    want = f"/memfd:{MEMFD_NAME} (deleted)"
    for name in root.listdir(f"proc/{pid}/fd"):
        try:
            if os.readlink(root.path(f"proc/{pid}/fd/{name}")) == want:
                return f"proc/{pid}/fd/{name}"
        except OSError:
            continue
    return None


class RingReader:
    """A read-only mapping of another process's ring; `read()` returns the records new
    since the last call (and counts those overwritten before they were read)."""

    def __init__(self, root: Root, pid: int, rel: str, *, from_now: bool = False) -> None:
        self.pid = pid
        fd = os.open(root.path(rel), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        self._q: memoryview | None = None  # read_new()'s u64 view, made on first use
        self.header = parse_header(self.mm)
        if self.header.pid != pid:
            self.close()
            raise RingFormatError(f"the step ring in {rel} is process {self.header.pid}'s "
                                  "(inherited across fork)")
        # from_now: only steps that end after this (head is a hint: a record
        # claimed but not yet committed may still come, and is read then)
        self.last = self.header.head - 1 if from_now else -1
        self.missed = 0

    @classmethod
    def open(cls, root: Root, pid: int, *, from_now: bool = False) -> RingReader | None:
        rel = find_ring(root, pid)
        if rel is None:
            return None
        try:
            return cls(root, pid, rel, from_now=from_now)
        except (OSError, RingFormatError):
            return None

    def read(self) -> list[StepRecord]:
        recs = parse_records(self.mm, self.last)
        if recs:
            first = recs[0].seq
            if first > self.last + 1:
                self.missed += first - self.last - 1
            self.last = recs[-1].seq
        return recs

    def read_new(self, limit: int) -> list[StepRecord]:
        """The records committed since the last call, at most the newest `limit` of
        them (the older ones count as missed): O(new records), not O(capacity),
        for a reader that polls many rings (the daemon's slowest-steps view).
        Starts from the header's head, the writer's hint; a record claimed but
        not yet committed is left for the next call unless newer ones are done."""
        if not _NATIVE_LE:
            return self.read()[-limit:]
        q = self._q
        if q is None:
            q = self._q = memoryview(self.mm).cast("Q")
        head = q[HEAD_OFF // 8]
        h = self.header
        first = max(self.last + 1, head - h.capacity, head - limit)
        if first > self.last + 1:
            self.missed += first - self.last - 1
        mask = h.capacity - 1
        base = h.header_size // 8
        stride = h.record_size // 8
        out: list[StepRecord] = []
        last = self.last
        for seq in range(first, head):
            i = base + (seq & mask) * stride
            c1 = q[i]
            if c1 != seq + 1:
                continue  # being written (or overwritten already): skipped
            step, start, end, tf = q[i + 1], q[i + 2], q[i + 3], q[i + 4]
            if q[i] != c1 or end < start:
                continue
            out.append(StepRecord(seq, step, tf & 0xFFFF_FFFF, start, end, tf >> 32))
            last = seq
        self.last = last  # uncommitted records after it are read next time
        return out

    def close(self) -> None:
        q, self._q = self._q, None
        if q is not None:
            q.release()
        with contextlib.suppress(BufferError, ValueError):
            self.mm.close()
