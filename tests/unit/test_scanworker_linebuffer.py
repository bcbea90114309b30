"""The scan worker's reply buffer (agents/scanworker.py LineBuffer), over real pipes.

It replaced os.read(fd, 64 KiB) into a bytearray, whose allocate-then-shrink
per read grew the daemon's heap under bench/soak.py's churn; what it must keep
is the line splitting: a line over several reads, a line longer than the
buffer, bytes after a line kept for the next, and a clear() that gives back
what a long reply grew.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agentlatd.agents.scanworker import LineBuffer


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    os.close(r)
    os.close(w)


def _drain(buf: LineBuffer, r: int) -> None:
    while True:
        try:
            if not buf.fill(r):
                return
        except BlockingIOError:
            return


def test_a_line_written_in_pieces_comes_out_whole(pipe: tuple[int, int]) -> None:
    r, w = pipe
    buf = LineBuffer(16)
    os.write(w, b'{"a": ')
    _drain(buf, r)
    assert buf.line() is None and len(buf) == 6
    os.write(w, b'1}\n')
    _drain(buf, r)
    assert buf.line() == b'{"a": 1}\n'
    assert len(buf) == 0 and buf.line() is None


def test_a_line_longer_than_the_buffer_grows_it_and_clear_gives_it_back(
        pipe: tuple[int, int]) -> None:
    r, w = pipe
    buf = LineBuffer(8)
    long = b"x" * 5000 + b"\n"
    os.write(w, long)
    _drain(buf, r)
    assert buf.line() == long
    buf.clear()
    assert len(buf._buf) == 8  # a hostile child's long reply is not kept for ever


def test_bytes_after_a_line_stay_for_the_next(pipe: tuple[int, int]) -> None:
    r, w = pipe
    buf = LineBuffer(64)
    os.write(w, b"one\ntwo\nthr")
    _drain(buf, r)
    assert buf.line() == b"one\n"
    assert buf.line() == b"two\n"
    assert buf.line() is None and len(buf) == 3
    os.write(w, b"ee\n")
    _drain(buf, r)
    assert buf.line() == b"three\n"


def test_end_of_file_reads_zero() -> None:
    r, w = os.pipe()
    os.close(w)
    try:
        assert LineBuffer().fill(r) == 0
    finally:
        os.close(r)
