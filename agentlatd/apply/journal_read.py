"""Reading the rollback journal back (its format: apply/journal.py): the files'
trust checks, the snapshot's parse with format 1's migration, and the replay of
its append log.

load() returns None when there is no journal, the Journal otherwise; a file
that does not parse raises JournalDamaged naming it and what is wrong (never a
silent discard: apply/journal_salvage.py recovers what it can), and one that
agentlatd did not write (not a regular file, another owner, writable by
others, an entry without a checksum) raises JournalUntrusted: it is never
replayed as root.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

from agentlatd.apply.journal import (
    LOG_SUFFIX,
    VERSION,
    Entry,
    Journal,
    JournalDamaged,
    JournalUntrusted,
    cookie,
    entry_from,
    record_crc,
)
from agentlatd.errors import JournalError


def check_file(path: str, st: os.stat_result) -> None:
    """JournalUntrusted unless `st` (the opened journal's fstat) is a regular file
    that only agentlatd's own uid could have written: owned by it, no group or
    world write bit."""
    if not stat.S_ISREG(st.st_mode):
        raise JournalUntrusted(path, "it is not a regular file")
    if st.st_uid != os.geteuid():
        raise JournalUntrusted(path, f"it is owned by uid {st.st_uid}, not "
                                     f"{'root' if os.geteuid() == 0 else os.geteuid()}: "
                                     "agentlatd did not write it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        # readable by others leaks nothing worth hiding (original knob values);
        # writable by others is what would let them choose what root replays
        raise JournalUntrusted(path, f"its mode is {stat.S_IMODE(st.st_mode):04o}: "
                                     f"{'world' if st.st_mode & stat.S_IWOTH else 'group'}-"
                                     "writable, so another user may have written it "
                                     "(agentlatd writes it 0600)")


def _read(path: str, *, check: bool = True) -> str | None:
    try:
        # O_NOFOLLOW: a symlink planted at journal.json is refused (ELOOP), not read
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise JournalUntrusted(path, "it is a symbolic link") from None
        raise JournalError(f"cannot read rollback journal {path}: {e.strerror}") from e
    try:
        if check:
            check_file(path, os.fstat(fd))
        with open(fd, "rb", closefd=False) as f:
            raw = f.read()
    except OSError as e:
        raise JournalError(f"cannot read rollback journal {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JournalDamaged(path, f"not UTF-8 text (byte {e.start})") from None


def parse(path: str, text: str, log: str | None = None, *, check: bool = True) -> Journal:
    """Parse a snapshot's text and its log's (None: no log); JournalDamaged
    (naming `path`) on any problem.

    `check`: an entry without a checksum makes it JournalUntrusted (agentlatd
    writes one for every entry; a file without is someone else's)."""
    if not text.strip():
        raise JournalDamaged(path, "the file is empty")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "truncated" if exc.pos >= len(text.rstrip()) else "not valid JSON"
        raise JournalDamaged(path, f"{what} (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    if not isinstance(obj, dict):
        raise JournalDamaged(path, "expected a JSON object at the top")
    version = obj.get("version")
    if version not in (1, VERSION):
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            # not damage: a newer agentlatd wrote it; refusing beats guessing
            raise JournalError(f"rollback journal {path} has format version {version}; this "
                               f"agentlatd reads versions 1 and {VERSION}: roll back with the "
                               "newer one")
        raise JournalDamaged(path, f"unknown format version {version!r}")
    if not isinstance(obj.get("root"), str):
        raise JournalDamaged(path, "field 'root' missing or not a string")
    entries_raw = obj.get("entries")
    if not isinstance(entries_raw, list):
        raise JournalDamaged(path, "field 'entries' missing or not a list")
    entries: dict[tuple[str, str], Entry] = {}
    unsigned = 0
    for i, raw in enumerate(entries_raw):
        try:
            e = entry_from(raw, f"entry {i + 1}", require_crc=False)
            if version == 1 and e.device is not None:
                raise ValueError(f"entry {i + 1}: a device identity in a format 1 journal")
        except ValueError as err:
            raise JournalDamaged(path, str(err)) from None
        if e.key in entries:
            raise JournalDamaged(path, f"entry {i + 1}: {e.knob} {e.target} appears twice")
        if raw.get("crc") is None:
            unsigned += 1
        entries[e.key] = e
    if unsigned and check:
        raise JournalUntrusted(path, f"{unsigned} of its {len(entries)} entries carry no "
                                     "checksum: agentlatd did not write it")
    complete = obj.get("complete", True)
    pid = obj.get("pid", 0)
    gen = obj.get("gen", 0)
    j = Journal(path=path, root=obj["root"], netns=str(obj.get("netns", "")),
                netns_cookie=cookie(obj.get("netns_cookie")),
                boot_id=str(obj.get("boot_id", "")),
                complete=complete if isinstance(complete, bool) else False,
                pid=pid if isinstance(pid, int) else 0,
                migrated_from=1 if version == 1 else 0)
    records = 0
    torn = False
    log_ours = False
    if version == VERSION and isinstance(gen, int) and gen > 0 and log is not None:
        records, torn, log_ours = _replay(path + LOG_SUFFIX, log, gen, entries, j)
    j.adopt(list(entries.values()))
    if version == VERSION and isinstance(gen, int) and gen > 0 and not torn:
        j.resume_files(gen, log_ours, records)
    return j


def _replay(lpath: str, log: str, gen: int, entries: dict[tuple[str, str], Entry],
            j: Journal) -> tuple[int, bool, bool]:
    """Apply the log's records to `entries` and `j`; (records, torn tail, log is this gen's)."""
    lines = log.split("\n")
    torn = lines[-1] != ""  # the last append did not finish: its write never ran
    lines = lines[:-1]
    if not lines:
        return 0, torn, False
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError:
        raise JournalDamaged(lpath, "line 1: not valid JSON") from None
    if not isinstance(head, dict) or head.get("crc") != record_crc(head):
        raise JournalDamaged(lpath, "line 1: not a log header or checksum mismatch")
    if head.get("log") != gen:
        return 0, True, False  # an older snapshot's log: every record is in the snapshot
    for n, ln in enumerate(lines[1:], 2):
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError:
            raise JournalDamaged(lpath, f"line {n}: not valid JSON") from None
        apply_record(lpath, n, obj, entries, j)
    return len(lines) - 1, torn, True


def apply_record(lpath: str, n: int, obj: Any, entries: dict[tuple[str, str], Entry],
                  j: Journal) -> None:
    where = f"line {n}"
    if isinstance(obj, dict) and "knob" in obj:
        try:
            e = entry_from(obj, where)
        except ValueError as err:
            raise JournalDamaged(lpath, str(err)) from None
        old = entries.get(e.key)
        if old is None:
            entries[e.key] = e
        else:  # in place: the entry keeps its position (restore order)
            old.original, old.written, old.flags, old.device = (e.original, e.written,
                                                                 e.flags, e.device)
        return
    if not isinstance(obj, dict) or obj.get("crc") != record_crc(obj):
        raise JournalDamaged(lpath, f"{where}: not a record or checksum mismatch")
    if "del" in obj:
        k = obj["del"]
        if not (isinstance(k, list) and len(k) == 2 and all(isinstance(x, str) for x in k)):
            raise JournalDamaged(lpath, f"{where}: bad del record")
        entries.pop((k[0], k[1]), None)
    elif isinstance(obj.get("complete"), bool) and isinstance(obj.get("pid"), int):
        j.complete, j.pid = obj["complete"], obj["pid"]
    else:
        raise JournalDamaged(lpath, f"{where}: unknown record")


def load(path: str, *, check: bool = True) -> Journal | None:
    """The journal at `path`, None when there is none; JournalDamaged when it does not
    parse; JournalUntrusted (`check`) when agentlatd did not write it (check_file(),
    an entry without a checksum). check=False only to print it (rollback --print)."""
    text = _read(path, check=check)
    if text is None:
        return None
    return parse(path, text, _read(path + LOG_SUFFIX, check=check), check=check)


def read_json(path: str) -> dict[str, Any] | None:
    """The journal's content as one document (snapshot and log), None when there is none."""
    j = load(path)
    return j.to_json() if j is not None else None
