"""agentlatd.logging_setup: journal priority prefixes when stderr is the journal
stream ($JOURNAL_STREAM = dev:inode of it), timestamped lines otherwise, and
logfmt fields after the message."""

from __future__ import annotations

import logging
import os
import pathlib
import re
import time

from agentlatd import logging_setup
from agentlatd.logging_setup import StructuredFormatter, fields, format_fields, stream_is_journal


def _record(level: int, msg: str, **kw: object) -> logging.LogRecord:
    r = logging.LogRecord("agentlatd.daemon", level, __file__, 1, msg, (), None)
    if kw:
        r.fields = kw
    return r


def test_journal_format_has_priority_prefix_on_every_line() -> None:
    f = StructuredFormatter(journal=True)
    assert f.format(_record(logging.INFO, "tick", changed=3)) == "<6>tick changed=3"
    assert f.format(_record(logging.WARNING, "w")).startswith("<4>")
    assert f.format(_record(logging.ERROR, "e")).startswith("<3>")
    assert f.format(_record(logging.DEBUG, "d")).startswith("<7>")
    two = f.format(_record(logging.ERROR, "line one\nline two"))
    assert two.split("\n") == ["<3>line one", "<3>line two"]


def test_plain_format_has_time_level_and_logger() -> None:
    out = StructuredFormatter(journal=False).format(
        _record(logging.WARNING, "reload refused", key="tuning.rpss"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} WARNING agentlatd\.daemon: "
                        r"reload refused key=tuning\.rpss", out), out


def test_plain_time_stamps_within_one_second_and_across_seconds() -> None:
    """The date and time are made once a second (strftime per record cost a
    registration's log line ~3 us); the milliseconds are every record's own."""
    f = StructuredFormatter(journal=False)
    stamps = []
    for created in (1_800_000_000.0, 1_800_000_000.25, 1_800_000_001.5, 1_800_000_000.75):
        r = _record(logging.INFO, "x")
        r.created, r.msecs = created, (created % 1) * 1000
        stamps.append(f.format(r).split(" ")[0])
    expect = [time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(int(c))) + ms for c, ms in (
        (1_800_000_000, ".000"), (1_800_000_000, ".250"), (1_800_000_001, ".500"),
        (1_800_000_000, ".750"))]
    assert stamps == expect


def test_fields_are_quoted_when_needed() -> None:
    assert format_fields({"a": 1, "b": "two words", "c": 'q"', "d": ""}) == \
        'a=1 b="two words" c="q\\"" d=""'
    assert fields(x=1) == {"fields": {"x": 1}}


def test_journal_stream_detection(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "stream"
    with open(p, "w") as f:
        st = os.fstat(f.fileno())
        assert stream_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stream_is_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stream_is_journal(f, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(f, {})


def test_setup_once_then_only_the_level_changes(tmp_path: pathlib.Path) -> None:
    logger = logging.getLogger(logging_setup.LOGGER)
    saved = (list(logger.handlers), logger.level, logger.propagate, logging_setup._handler)
    logging_setup._handler = None
    for h in list(logger.handlers):
        logger.removeHandler(h)
    try:
        with open(tmp_path / "log", "w") as out:
            logging_setup.setup("warning", stream=out, journal=True)
            logging_setup.setup("debug", stream=out, journal=False)  # level only
            assert len(logger.handlers) == 1
            records: list[logging.LogRecord] = []
            assert logging_setup._handler is not None
            logging_setup._handler.addFilter(lambda r: records.append(r) or True)
            logging.getLogger("agentlatd.x").debug("hello", extra=fields(n=1))
        assert (tmp_path / "log").read_text() == "<7>hello n=1\n"
        # no stack walk for the caller's file and line, no thread or process
        # name: no line prints them (the logging HOWTO's "Optimization")
        assert [(r.lineno, r.threadName, r.processName) for r in records] == [(0, None, None)]
        try:
            logging_setup.set_level("loud")
        except ValueError as e:
            assert "loud" in str(e)
        else:
            raise AssertionError("bad level accepted")
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in saved[0]:
            logger.addHandler(h)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        logging_setup._handler = saved[3]


def test_same_warning_repeats_every_tick() -> None:
    """A persisting condition logged at every tick is said once per window, with a count."""
    import io
    import logging

    from agentlatd.logging_setup import RepeatFilter, StructuredFormatter
    now = [0.0]
    out = io.StringIO()
    h = logging.StreamHandler(out)
    h.setFormatter(StructuredFormatter(journal=True))
    h.addFilter(RepeatFilter(window=300, clock=lambda: now[0]))
    log = logging.getLogger("agentlatd.test-repeat")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(h)
    try:
        for _ in range(300):  # one tick a second for five minutes
            log.warning("home CPU %d is hot but no other home CPU is free", 1)
            log.info("tick")
            now[0] += 1.0
        log.warning("home CPU %d is hot but no other home CPU is free", 2)  # new text: said
        log.warning("home CPU %d is hot but no other home CPU is free", 1)  # window over
    finally:
        log.removeHandler(h)
    lines = out.getvalue().splitlines()
    hot1 = [ln for ln in lines if "CPU 1 is hot" in ln]
    assert hot1 == ["<4>home CPU 1 is hot but no other home CPU is free",
                    "<4>home CPU 1 is hot but no other home CPU is free "
                    "[repeated 299 times in 300 s]"], hot1
    assert sum("CPU 2 is hot" in ln for ln in lines) == 1
    assert sum(ln == "<6>tick" for ln in lines) == 300  # INFO is never dropped
