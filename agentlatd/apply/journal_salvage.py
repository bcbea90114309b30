"""A damaged rollback journal (apply/journal_read.py raised JournalDamaged):
what still parses is recovered for the engine to restore, and the files are
kept aside for a person, never deleted. And a journal that must not be
replayed (another boot's) is set aside the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from agentlatd.apply.journal import (
    LOG_SUFFIX,
    Entry,
    Journal,
    JournalDamaged,
    cookie,
    entry_from,
    fsync_dir,
)
from agentlatd.apply.journal_read import apply_record, parse
from agentlatd.errors import JournalError


@dataclass(frozen=True, slots=True)
class Salvage:
    """What salvage() recovered from a damaged journal."""

    journal: Journal  # the entries that parsed (complete=False: restore them)
    problem: str  # what was wrong with the file
    kept_as: str  # where the damaged file now lives
    root_known: bool  # the header (root, netns, boot id) parsed
    lines_lost: int  # lines that looked like entries and did not parse


def salvage(path: str, *, default_root: str, move: bool = True) -> Salvage:
    """Recover what still parses from a damaged journal, keeping the files aside.

    The damaged file is renamed <path>.corrupt (.corrupt.1, ... if taken) when
    `move`, its log <path>.log.corrupt; nothing is deleted. Entries are read
    line by line (the format writes one per line), then the log's records
    that parse, in order; the header's root/netns/boot id when its line parses.
    """
    text = _read_lenient(path)
    log_text = _read_lenient(path + LOG_SUFFIX) if os.path.lexists(path + LOG_SUFFIX) else None
    try:
        parse(path, text, log_text, check=False)
        problem = "no problem found on a second read"
    except JournalDamaged as exc:
        problem = exc.problem if exc.path == path else f"{exc.path}: {exc.problem}"
    lines = text.splitlines()
    meta: dict[str, Any] = {}
    if lines:
        head = lines[0].strip()
        for attempt in (head + "]}", head):
            try:
                m = json.loads(attempt)
            except json.JSONDecodeError:
                continue
            if isinstance(m, dict):
                meta = m
                break
    entries: dict[tuple[str, str], Entry] = {}
    lost = 0
    for n, line in enumerate(lines[1:], 2):
        s = line.strip().rstrip(",").strip()
        if s in ("", "]}", "]", "}"):
            continue
        try:
            e = entry_from(json.loads(s), f"line {n}")
        except (json.JSONDecodeError, ValueError):
            lost += 1
            continue
        entries.setdefault(e.key, e)
    root_known = isinstance(meta.get("root"), str)
    j = Journal(path=path, root=meta["root"] if root_known else default_root,
                netns=str(meta.get("netns", "")), boot_id=str(meta.get("boot_id", "")),
                netns_cookie=cookie(meta.get("netns_cookie")), complete=False)
    gen = meta.get("gen")
    if log_text is not None and isinstance(gen, int) and gen > 0:
        log_lines = log_text.split("\n")
        try:
            head_ok = json.loads(log_lines[0]).get("log") == gen
        except (json.JSONDecodeError, AttributeError):
            head_ok = True  # a damaged header: the records may still be this gen's
        for n, ln in enumerate(log_lines[1:] if head_ok else [], 2):
            if not ln.strip():
                continue
            try:
                apply_record(path + LOG_SUFFIX, n, json.loads(ln), entries, j)
            except (json.JSONDecodeError, JournalDamaged):
                lost += 1
    j.complete = False
    j.adopt(list(entries.values()))
    kept = path
    if move:
        kept = _aside(path, ".corrupt")
        if log_text is not None:
            _aside(path + LOG_SUFFIX, ".corrupt")
    return Salvage(j, problem, kept, root_known, lost)


def _read_lenient(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        with open(fd, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        raise JournalError(f"cannot read rollback journal {path}: {e.strerror}") from e


def _aside(path: str, suffix: str) -> str:
    """Rename `path` to path+suffix (or +suffix.N if taken); return the new name."""
    cand = path + suffix
    n = 0
    while os.path.lexists(cand):
        n += 1
        cand = f"{path}{suffix}.{n}"
    try:
        os.rename(path, cand)
    except OSError as e:
        raise JournalError(f"cannot move damaged journal {path} aside: {e.strerror}") from e
    fsync_dir(os.path.dirname(path) or ".")
    return cand


def set_aside(path: str, suffix: str) -> str:
    """Keep a journal that must not be replayed (another boot) under a new name."""
    kept = _aside(path, suffix)
    if os.path.lexists(path + LOG_SUFFIX):
        _aside(path + LOG_SUFFIX, suffix)
    return kept
