"""Structured logs on stderr, with levels the journal understands.

sd-daemon(3): a service's stderr line that starts with "<N>" (N a syslog
priority, 3 = err ... 7 = debug) is stored by journald at that priority
(SyslogLevelPrefix=yes, the default) and the prefix is removed. journald
also stamps the time, unit and pid, so under systemd a line is just

    <6>tick applied changed=3 failed=0 agents=2

and `journalctl -u agentlatd -p warning` filters by level. systemd says a
stream is the journal by setting $JOURNAL_STREAM to "<dev>:<inode>" of it
(systemd.exec(5)); we compare that with fstat(stderr), so a daemon started
by hand, or under a test, prints plain timestamped lines instead:

    2025-01-02T03:04:05.678 INFO  agentlatd.daemon: tick applied changed=3

Fields are logfmt key=value pairs after the message (values with spaces,
quotes or "=" are quoted), passed as extra=fields(key=value, ...), so a log
line is greppable by key without a JSON parser. Multi-line messages
(tracebacks) repeat the priority prefix on every line: journald splits a
stream at newlines, and a bare continuation line would land at the default
priority.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

LOGGER = "agentlatd"

LEVELS: Mapping[str, int] = {"debug": logging.DEBUG, "info": logging.INFO,
                             "warning": logging.WARNING, "error": logging.ERROR}

# syslog(3) priorities (sd-daemon.h SD_ERR .. SD_DEBUG)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


def fields(**kw: Any) -> dict[str, Any]:
    """extra= for a log call: log.info("applied", extra=fields(changed=3))."""
    return {"fields": kw}


def _value(v: Any) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\t\n\\'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


def format_fields(kw: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in kw.items())


def priority(levelno: int) -> int:
    for lvl in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= lvl:
            return _PRIORITY[lvl]
    return _PRIORITY[logging.DEBUG]


class StructuredFormatter(logging.Formatter):
    """message + logfmt fields; journal=True: "<N>" prefix per line, no time stamp."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal
        self._second = -1  # the second _stamp was made for: strftime once a second
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        kw = getattr(record, "fields", None)
        if isinstance(kw, Mapping) and kw:
            msg = f"{msg} {format_fields(kw)}"
        if record.exc_info:
            msg = f"{msg}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            msg = f"{msg}\n{self.formatStack(record.stack_info)}"
        if self.journal:
            p = f"<{priority(record.levelno)}>"
            return "\n".join(p + line for line in msg.split("\n"))
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
        return f"{self._stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.name}: {msg}"


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd connected ($JOURNAL_STREAM)."""
    env = os.environ if environ is None else environ
    raw = env.get("JOURNAL_STREAM", "")
    dev, _, ino = raw.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class RepeatFilter(logging.Filter):
    """Says a repeated WARNING or ERROR once per `window` seconds, not every tick.

    A condition that persists (a hot home CPU with nowhere to go, a knob the kernel keeps
    refusing) is re-detected at every tick; the first line says it, the same line again
    within `window` is counted and dropped, and the next one let through carries the
    count ("... [repeated 299 times in 300 s]"). Keyed by logger, level and the formatted
    message, so a changed value is a new line. INFO and DEBUG pass untouched.
    """

    def __init__(self, window: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        first, dropped = self._seen.get(key, (-self.window - 1.0, 0))
        if now - first < self.window:
            self._seen[key] = (first, dropped + 1)
            return False
        if len(self._seen) > 4096:  # bounded: forget lines older than the window
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
        self._seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.getMessage()} [repeated {dropped} times in {now - first:.0f} s]"
            record.args = None
        return True


_handler: logging.Handler | None = None


def setup(level: str = "info", *, stream: TextIO | None = None,
          journal: bool | None = None) -> logging.Logger:
    """Configure the "agentlatd" logger once (later calls only change the level).

    level: a policy daemon.log_level value. journal: None = detect from
    $JOURNAL_STREAM. Returns the logger.
    """
    global _handler
    logger = logging.getLogger(LOGGER)
    if _handler is None:
        # what a record would carry that no line of ours prints (journald stamps
        # the pid and time itself): the caller's file and line (a walk up the
        # stack per record), the thread's and process's names. The logging
        # HOWTO's "Optimization" table names these switches. Each registration
        # logs one INFO line (the default level), which cost the main loop
        # ~36 us of its ~430 (bench/agents.py at log_level "info")
        logging._srcfile = None
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
        out = stream if stream is not None else sys.stderr
        h = logging.StreamHandler(out)
        h.setFormatter(StructuredFormatter(stream_is_journal(out) if journal is None else journal))
        h.addFilter(RepeatFilter())
        logger.addHandler(h)
        logger.propagate = False
        _handler = h
    set_level(level)
    return logger


def set_level(level: str) -> None:
    """Change the level (SIGHUP reload of daemon.log_level)."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    logging.getLogger(LOGGER).setLevel(LEVELS[level])
