"""The rollback journal: the original value of every knob agentlatd changed.

<state_dir>/journal.json (default /run/agentlatd: tmpfs, cleared at boot exactly
when the kernel forgets the changes too). style.md habit 6: tuned keeps its
originals in memory and a pickle and loses them on a crash; oracle/bpftune
journals and prints its rollback. Here:

- The original of a knob instance (knob, target) is journaled BEFORE its first
  write, and never overwritten afterwards (a later read would return our own
  value). The engine saves once before each batch of writes (complete=false,
  with the values it is about to write) and commits once after.
- Every save is crash-safe: write journal.json.tmp<pid>, fsync it, rename it
  over journal.json, fsync the directory (rename alone is not durable until
  the directory entry is on disk; ext4/xfs data=ordered semantics).
- The commit after a batch whose writes all landed as planned (the common
  case) is not a second full save: commit() overwrites the 5 bytes `false`
  of the header's "complete" with `true ` (still valid JSON) in the file the
  save just renamed into place (same inode, checked), and fsyncs it. Why that
  is as crash-safe as a rename: the 5 bytes sit in the first 512-byte sector
  of the file, a single pwrite(2) that a kill -9 cannot tear (the page cache
  outlives the process) and a sector write a power cut cannot tear; before
  it lands the file says complete=false with every original in it (restored
  at start: the conservative side), after it the file is exactly what a full
  save would have written. Anything else (a write failed or was clamped, an
  entry was dropped, the file was replaced) takes a full save.
- Cost with many entries (1000 agents = 1000+ entries): find() is a dict
  lookup, each entry's JSON line is cached until the entry changes (Entry
  invalidates it on assignment), so a save is a join of cached lines plus one
  write, and a batch costs one save and a 5-byte commit (bench/agents.py).
- "complete": false while a batch is being written. A journal still saying
  false at start means a run died mid-batch (kill -9, OOM, power): the engine
  restores it before anything else (see engine.py for the decision).
- Entries keep write order, one per line, so a damaged file can be salvaged
  line by line. Each entry: knob, target, original, written (what the kernel
  showed after our write, for drift detection; null until known), flags
  ("managed": the kernel owns this IRQ, never retried; "yielded": another
  writer changed it and policy said yield).
- The journal names the root it applies to, the network namespace (on the
  live root: a sysfs path in another namespace is another device) and the
  boot id (a journal from an earlier boot describes kernel state that is gone).

A damaged journal is never silently discarded: load() raises JournalDamaged
naming the file and what is wrong; salvage() renames the file *.corrupt and
returns whatever entries still parse, for the engine to restore.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentlatd.errors import JournalError

VERSION = 1
JOURNAL_NAME = "journal.json"
FLAG_MANAGED = "managed"
FLAG_YIELDED = "yielded"
_FLAGS = (FLAG_MANAGED, FLAG_YIELDED)


class JournalUntrusted(JournalError):
    """A journal file agentlatd will not replay: not written by it, or writable by others.

    Replaying it as root would write whatever values it names (nice -20, a
    namespace sysctl): it is refused whole, never salvaged, and left in place
    for a person to read (`agentlatd rollback --print` prints it, writes nothing).
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        d = os.path.dirname(path) or "."
        super().__init__(
            f"refusing rollback journal {path}: {problem}; inspect it with `agentlatd rollback "
            f"--print --state-dir {d}` (writes nothing) and, if its changes are not yours to "
            f"undo, remove it: rm {path}")


class JournalDamaged(JournalError):
    """The journal file exists but does not parse; salvage() can recover entries."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"rollback journal {path} is damaged: {problem}")


@dataclass(slots=True)
class Entry:
    """One knob instance: its original value and what agentlatd last wrote."""

    knob: str
    target: str
    original: str
    written: str | None = None
    flags: list[str] = field(default_factory=list)
    # this entry's journal line, cached until a field changes (see __setattr__)
    _line: str | None = field(default=None, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "_line":
            try:
                same = bool(object.__getattribute__(self, name) == value)
            except AttributeError:  # __init__
                same = False
            if not same:
                object.__setattr__(self, "_line", None)
        object.__setattr__(self, name, value)

    @property
    def key(self) -> tuple[str, str]:
        return (self.knob, self.target)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def set_flag(self, flag: str) -> None:
        if flag not in self.flags:
            self.flags.append(flag)
            self._line = None

    @property
    def saved(self) -> bool:
        """Unchanged since its journal was last written (its cached line is current)."""
        return self._line is not None

    def line(self) -> str:
        """The entry's JSON line in the journal file (cached)."""
        if self._line is None:
            self._line = json.dumps(self.to_json())
        return self._line

    def to_json(self) -> dict[str, Any]:
        return {"knob": self.knob, "target": self.target, "original": self.original,
                "written": self.written, "flags": list(self.flags),
                "crc": _crc(self.knob, self.target, self.original, self.written, self.flags)}


def _crc(knob: str, target: str, original: str, written: str | None, flags: list[str]) -> int:
    """CRC-32 of an entry's fields. A byte flipped inside a value can still parse
    ("0" -> "4" in an rps_cpus original) and would be restored as a value the
    knob never had; with the checksum such an entry is damaged like any other:
    never written, kept for a person (tests/hostile/test_journal_damage.py)."""
    return zlib.crc32(json.dumps([knob, target, original, written, flags]).encode())


def _entry_from(obj: Any, where: str, *, require_crc: bool = True) -> Entry:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    for k in ("knob", "target", "original"):
        if not isinstance(obj.get(k), str):
            raise ValueError(f"{where}: field {k!r} missing or not a string")
    written = obj.get("written")
    if written is not None and not isinstance(written, str):
        raise ValueError(f"{where}: field 'written' is not a string or null")
    flags = obj.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) and f in _FLAGS for f in flags):
        raise ValueError(f"{where}: bad flags {flags!r}")
    crc = obj.get("crc")
    # absent: not written by agentlatd (parse() refuses such a journal whole,
    # salvage() loses the line); present and wrong: this entry is damaged
    if crc is None and require_crc:
        raise ValueError(f"{where}: no checksum ({obj['knob']} {obj['target']})")
    if crc is not None and crc != _crc(obj["knob"], obj["target"], obj["original"], written, flags):
        raise ValueError(f"{where}: checksum mismatch ({obj['knob']} {obj['target']}): "
                         "a value was changed after it was journaled")
    return Entry(obj["knob"], obj["target"], obj["original"], written, list(flags))


@dataclass(slots=True)
class Journal:
    """The in-memory journal; save() makes it durable."""

    path: str
    root: str
    netns: str = ""
    boot_id: str = ""
    complete: bool = True
    pid: int = 0
    entries: list[Entry] = field(default_factory=list)
    # (knob, target) -> entry; rebuilt when `entries` was replaced or edited
    # behind the journal's back (_idx_of is the list it was built from)
    _idx: dict[tuple[str, str], Entry] = field(default_factory=dict, init=False, repr=False,
                                                compare=False)
    _idx_of: list[Entry] | None = field(default=None, init=False, repr=False, compare=False)
    # where the last save left `false` of "complete" in the file: (offset, inode)
    _commit_at: tuple[int, int] | None = field(default=None, init=False, repr=False,
                                                compare=False)

    # -- queries ---------------------------------------------------------
    def _index(self) -> dict[tuple[str, str], Entry]:
        if self._idx_of is not self.entries or len(self._idx) != len(self.entries):
            self._idx = {e.key: e for e in self.entries}
            self._idx_of = self.entries
        return self._idx

    def find(self, knob: str, target: str) -> Entry | None:
        return self._index().get((knob, target))

    def add(self, knob: str, target: str, original: str) -> Entry:
        """Journal the original of (knob, target); an existing entry is kept as is."""
        idx = self._index()
        e = idx.get((knob, target))
        if e is None:
            e = Entry(knob, target, original)
            self.entries.append(e)
            idx[e.key] = e
        return e

    def remove_entry(self, entry: Entry) -> None:
        self.remove_entries((entry,))

    def remove_entries(self, entries: Iterable[Entry]) -> None:
        """Drop these entries (one pass over the journal, not one per entry)."""
        gone = {id(e) for e in entries}
        if not gone:
            return
        idx = self._index()
        kept = [e for e in self.entries if id(e) not in gone]
        for e in self.entries:
            if id(e) in gone and idx.get(e.key) is e:
                del idx[e.key]
        self.entries[:] = kept

    # -- persistence -----------------------------------------------------
    def dumps(self) -> str:
        return self._dumps()[0]

    def _dumps(self) -> tuple[str, int]:
        """The file's text and the offset of the "complete" value in it."""
        # "complete" comes first, so that commit()'s 5 bytes sit in the first sector
        meta = {"version": VERSION, "complete": self.complete, "root": self.root,
                "netns": self.netns, "boot_id": self.boot_id, "pid": self.pid,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        head = json.dumps(meta)[:-1] + ', "entries": ['
        at = len(head.split('"complete": ', 1)[0].encode()) + len('"complete": ')
        lines = [e.line() for e in self.entries]
        # one entry per line: a damaged file can be salvaged line by line
        return head + "\n" + ",\n".join(lines) + ("\n" if lines else "") + "]}\n", at

    def save(self) -> None:
        """Crash-safe replace of the journal file (tmp, fsync, rename, fsync dir)."""
        self.pid = os.getpid()
        text, at = self._dumps()
        ino = atomic_write(self.path, text.encode())
        self._commit_at = (at, ino) if not self.complete else None

    def commit(self) -> None:
        """Mark the journal complete after a batch whose entries are as last saved.

        The caller guarantees no entry changed since the save() with
        complete=False (the module docstring says why 5 bytes in place are as
        crash-safe as a rename); anything unexpected falls back to save().
        """
        self.complete = True
        at = self._commit_at
        self._commit_at = None
        if at is not None and at[0] // 512 == (at[0] + 4) // 512:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    if os.fstat(fd).st_ino == at[1] and os.pwrite(fd, b"true ", at[0]) == 5:
                        os.fsync(fd)
                        return
                except OSError:
                    pass
                finally:
                    os.close(fd)
        self.save()

    def delete(self) -> None:
        """Remove the journal file (every original restored); durable like save()."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise JournalError(f"cannot remove rollback journal {self.path}: {e.strerror}") from e
        _fsync_dir(os.path.dirname(self.path))


def atomic_write(path: str, data: bytes) -> int:
    """Crash-safe replace of `path` by `data`; returns the new file's inode number."""
    d = os.path.dirname(path) or "."
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        # O_NOFOLLOW: a planted symlink must not redirect a root-owned write
        # 0600: load() refuses a journal others could have written (or read)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise JournalError(f"cannot write rollback journal {path}: {e.strerror}") from e
    _fsync_dir(d)
    return ino


def _fsync_dir(d: str) -> None:
    try:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise JournalError(f"cannot open state directory {d}: {e.strerror}") from e
    try:
        os.fsync(dfd)
    except OSError as e:
        raise JournalError(f"cannot fsync state directory {d}: {e.strerror}") from e
    finally:
        os.close(dfd)


def journal_path(state_dir: str) -> str:
    return os.path.join(state_dir, JOURNAL_NAME)


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


def parse(path: str, text: str, *, check: bool = True) -> Journal:
    """Parse journal text; JournalDamaged (naming `path`) on any problem.

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
    if version != VERSION:
        if isinstance(version, int) and version > VERSION:
            # not damage: a newer agentlatd wrote it; refusing beats guessing
            raise JournalError(f"rollback journal {path} has format version {version}; this "
                               f"agentlatd reads version {VERSION}: roll back with the newer one")
        raise JournalDamaged(path, f"unknown format version {version!r}")
    if not isinstance(obj.get("root"), str):
        raise JournalDamaged(path, "field 'root' missing or not a string")
    entries_raw = obj.get("entries")
    if not isinstance(entries_raw, list):
        raise JournalDamaged(path, "field 'entries' missing or not a list")
    entries: list[Entry] = []
    seen: set[tuple[str, str]] = set()
    unsigned = 0
    for i, raw in enumerate(entries_raw):
        try:
            e = _entry_from(raw, f"entry {i + 1}", require_crc=False)
        except ValueError as err:
            raise JournalDamaged(path, str(err)) from None
        if e.key in seen:
            raise JournalDamaged(path, f"entry {i + 1}: {e.knob} {e.target} appears twice")
        if raw.get("crc") is None:
            unsigned += 1
        seen.add(e.key)
        entries.append(e)
    if unsigned and check:
        raise JournalUntrusted(path, f"{unsigned} of its {len(entries)} entries carry no "
                                     "checksum: agentlatd did not write it")
    complete = obj.get("complete", True)
    pid = obj.get("pid", 0)
    return Journal(path=path, root=obj["root"], netns=str(obj.get("netns", "")),
                   boot_id=str(obj.get("boot_id", "")),
                   complete=complete if isinstance(complete, bool) else False,
                   pid=pid if isinstance(pid, int) else 0, entries=entries)


def load(path: str, *, check: bool = True) -> Journal | None:
    """The journal at `path`, None when there is none; JournalDamaged when it does not
    parse; JournalUntrusted (`check`) when agentlatd did not write it (check_file(),
    an entry without a checksum). check=False only to print it (rollback --print)."""
    text = _read(path, check=check)
    if text is None:
        return None
    return parse(path, text, check=check)


@dataclass(frozen=True, slots=True)
class Salvage:
    """What salvage() recovered from a damaged journal."""

    journal: Journal  # the entries that parsed (complete=False: restore them)
    problem: str  # what was wrong with the file
    kept_as: str  # where the damaged file now lives
    root_known: bool  # the header (root, netns, boot id) parsed
    lines_lost: int  # lines that looked like entries and did not parse


def salvage(path: str, *, default_root: str, move: bool = True) -> Salvage:
    """Recover what still parses from a damaged journal, keeping the file aside.

    The damaged file is renamed <path>.corrupt (.corrupt.1, ... if taken) when
    `move`; nothing is deleted. Entries are read line by line (the format
    writes one per line); the header's root/netns/boot id when its line parses.
    """
    text = _read_lenient(path)
    try:
        parse(path, text, check=False)
        problem = "no problem found on a second read"
    except JournalDamaged as exc:
        problem = exc.problem
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
    entries: list[Entry] = []
    seen: set[tuple[str, str]] = set()
    lost = 0
    for n, line in enumerate(lines[1:], 2):
        s = line.strip().rstrip(",").strip()
        if s in ("", "]}", "]", "}"):
            continue
        try:
            e = _entry_from(json.loads(s), f"line {n}")
        except (json.JSONDecodeError, ValueError):
            lost += 1
            continue
        if e.key in seen:
            continue
        seen.add(e.key)
        entries.append(e)
    root_known = isinstance(meta.get("root"), str)
    j = Journal(path=path, root=meta["root"] if root_known else default_root,
                netns=str(meta.get("netns", "")), boot_id=str(meta.get("boot_id", "")),
                complete=False, entries=entries)
    kept = path
    if move:
        kept = _aside(path, ".corrupt")
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
    _fsync_dir(os.path.dirname(path) or ".")
    return cand


def set_aside(path: str, suffix: str) -> str:
    """Keep a journal that must not be replayed (another boot) under a new name."""
    return _aside(path, suffix)
