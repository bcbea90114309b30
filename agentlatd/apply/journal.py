"""The rollback journal: the original value of every knob agentlatd changed.

<state_dir>/journal.json (default /run/agentlatd: tmpfs, cleared at boot exactly
when the kernel forgets the changes too) and its append log journal.json.log.
style.md habit 6: tuned keeps its originals in memory and a pickle and loses
them on a crash; oracle/bpftune journals and prints its rollback. Here:

- The original of a knob instance (knob, target) is journaled BEFORE its first
  write, and never overwritten afterwards (a later read would return our own
  value). The engine saves once before each batch of writes (complete=false,
  with the values it is about to write) and commits once after.
- Storage is a snapshot plus an append log, so that the cost of a save is
  the entries that changed, not the journal: with 1000 agents a full rewrite
  was ~150 KB per registration (bench/agents.py: register p99 0.93 ms).
    journal.json      the snapshot: a header line ("gen", root, network
                      namespace, boot id, "complete") and one entry per line,
                      written crash-safe (tmp, fsync, rename, fsync the
                      directory: rename alone is not durable until the
                      directory entry is on disk).
    journal.json.log  records appended since that snapshot, one JSON line
                      each: an entry (its whole new state), {"del": [knob,
                      target]} or {"complete": bool, "pid": N}; the first line
                      names the snapshot's "gen" it continues.
  save() appends one line per changed entry, removed entry and state change
  in ONE write(2), then fdatasync()s it, before returning: the engine writes
  no knob before save() returns, so every original is durable before the
  write it guards (the log's fd stays open between appends). Why sync at all
  when every knob journaled is kernel state a reboot resets: on tmpfs (/run,
  the default) fdatasync costs ~1 us, and on a disk-backed state_dir a power
  cut could otherwise leave a log ending in zeros, which load() calls damaged
  and salvage() restores before any boot-id check. Nothing changed: nothing
  is written at all. When the log
  holds more than 64 + 2 x entries records, the next save() is a compaction:
  a new snapshot with a new random gen, then the log is unlinked. A crash
  between the two leaves a log naming the old gen, which load() ignores (its
  records are all in the new snapshot); a crash in the middle of an append
  leaves a last line without its newline, which load() ignores too (the
  write it would have guarded never ran) and the next save() compacts over.
- Every entry and record carries a CRC-32: a byte flipped inside a value can
  still parse ("0" -> "4" in an rps_cpus original) and would be restored as a
  value the knob never had; with the checksum such a line is damaged like any
  other: never written, kept for a person (tests/hostile/test_journal_damage.py).
- Device knobs carry the identity of the device they were journaled for
  (identity.DeviceId: name, ifindex, network namespace, bus path, permanent
  address): the engine never restores an original onto another device that
  took the name.
- "complete": false while a batch is being written. A journal still saying
  false at start means a run died mid-batch (kill -9, OOM, power): the engine
  restores it before anything else (see engine.py for the decision).
- The journal names the root it applies to, the network namespace (on the
  live root: a sysfs path in another namespace is another device) and the
  boot id (a journal from an earlier boot describes kernel state that is gone).
- Format version 1 (one JSON document, no append log, no device identities)
  is read and migrated: its entries are restored by device name, as the
  agentlatd that wrote it would have, and the next save writes version 2.

A damaged journal is never silently discarded: journal_read.load() raises
JournalDamaged naming the file and what is wrong; journal_salvage.salvage()
renames the files *.corrupt and returns whatever entries still parse, for the
engine to restore.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import operator
import os
import time
import zlib
from collections.abc import Iterable, KeysView
from dataclasses import dataclass, field
from typing import Any

from agentlatd.apply.identity import DeviceId
from agentlatd.errors import JournalError
from agentlatd.kernel.targets import KIND, TaskTarget

VERSION = 2
JOURNAL_NAME = "journal.json"
LOG_SUFFIX = ".log"
FLAG_MANAGED = "managed"
FLAG_YIELDED = "yielded"
# a process an agent forked, which inherited what agentlatd wrote on the agent
# (agents/forks.py): agentlatd never wrote it, so its restore gives the original
# only to threads that still show "written" (Knob.restore_inherited), and drift
# is the process's own choice, never another writer's
FLAG_INHERITED = "inherited"
_FLAGS = (FLAG_MANAGED, FLAG_YIELDED, FLAG_INHERITED)
COMPACT_SLACK = 64  # log records beyond 2 x entries before a compaction
# knobs whose target names a thread, "<pid>:<starttime>:<tid>": their entries are
# also indexed by process (Journal.of_process), so that an agent's unregister or
# exit finds its own entries without reading every other agent's
_PER_PROCESS = frozenset(k for k, kind in KIND.items() if kind is TaskTarget)


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


@dataclass(slots=True, init=False)
class Entry:
    """One knob instance: its original value and what agentlatd last wrote."""

    knob: str
    target: str
    original: str
    written: str | None = None
    flags: list[str] = field(default_factory=list)
    device: DeviceId | None = None  # the device a device knob's original belongs to
    # this entry's journal line, cached until a field changes (see __setattr__)
    _line: str | None = field(default=None, init=False, repr=False, compare=False)
    # the journal that persists it: told when the entry changes
    _owner: Journal | None = field(default=None, init=False, repr=False, compare=False)
    _on_disk: bool = field(default=False, init=False, repr=False, compare=False)
    # its place in the journal's order: increasing along Journal.entries (the
    # journal sets it when it adds the entry or rebuilds its index)
    _seq: int = field(default=0, init=False, repr=False, compare=False)

    def __init__(self, knob: str, target: str, original: str, written: str | None = None,
                 flags: list[str] | None = None, device: DeviceId | None = None) -> None:
        # plain stores: a new entry has no line to drop and no journal to tell
        # (through __setattr__, each unset slot was an AttributeError caught:
        # six per entry, per registration and per entry of a journal replayed)
        put = object.__setattr__
        put(self, "knob", knob)
        put(self, "target", target)
        put(self, "original", original)
        put(self, "written", written)
        put(self, "flags", [] if flags is None else flags)
        put(self, "device", device)
        put(self, "_line", None)
        put(self, "_owner", None)
        put(self, "_on_disk", False)
        put(self, "_seq", 0)

    def __setattr__(self, name: str, value: Any) -> None:
        if name[0] != "_" and object.__getattribute__(self, name) != value:
            self._changed()
        object.__setattr__(self, name, value)

    def _changed(self) -> None:
        object.__setattr__(self, "_line", None)
        owner = self._owner
        if owner is not None:
            owner._dirty[id(self)] = self

    @property
    def key(self) -> tuple[str, str]:
        return (self.knob, self.target)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def set_flag(self, flag: str) -> None:
        if flag not in self.flags:
            self.flags.append(flag)
            self._changed()

    @property
    def saved(self) -> bool:
        """Unchanged since its journal line was last made (its cached line is current)."""
        return self._line is not None

    def line(self) -> str:
        """The entry's JSON line in the journal (cached)."""
        if self._line is None:
            self._line = json.dumps(self.to_json())
        return self._line

    def to_json(self) -> dict[str, Any]:
        dev = self.device.to_json() if self.device is not None else None
        out: dict[str, Any] = {"knob": self.knob, "target": self.target,
                               "original": self.original,
               "written": self.written, "flags": list(self.flags)}
        if dev is not None:
            out["device"] = dev
        out["crc"] = _crc(self.knob, self.target, self.original, self.written, self.flags, dev)
        return out


def _crc(knob: str, target: str, original: str, written: str | None, flags: list[str],
         device: dict[str, Any] | None = None) -> int:
    """CRC-32 of an entry's fields (without a device: the same sum format 1 wrote)."""
    fields: list[Any] = [knob, target, original, written, flags]
    if device is not None:
        fields.append(device)
    return zlib.crc32(json.dumps(fields).encode())


def record_crc(obj: dict[str, Any]) -> int:
    return zlib.crc32(json.dumps({k: v for k, v in obj.items() if k != "crc"},
                                 sort_keys=True).encode())


def _record(obj: dict[str, Any]) -> str:
    obj["crc"] = record_crc(obj)
    return json.dumps(obj)


def entry_from(obj: Any, where: str, *, require_crc: bool = True) -> Entry:
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
    dev_raw = obj.get("device")
    device = None
    if dev_raw is not None:
        try:
            device = DeviceId.from_json(dev_raw)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    crc = obj.get("crc")
    # absent: not written by agentlatd (parse() refuses such a journal whole,
    # salvage() loses the line); present and wrong: this entry is damaged
    if crc is None and require_crc:
        raise ValueError(f"{where}: no checksum ({obj['knob']} {obj['target']})")
    if crc is not None and crc != _crc(obj["knob"], obj["target"], obj["original"], written,
                                       flags, dev_raw):
        raise ValueError(f"{where}: checksum mismatch ({obj['knob']} {obj['target']}): "
                         "a value was changed after it was journaled")
    return Entry(obj["knob"], obj["target"], obj["original"], written, list(flags), device)


def cookie(v: Any) -> int:
    """A header's netns_cookie: a JSON integer in 1..2^64-1, else unknown (0)."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 1 << 64:
        return 0
    return v


_seq_of = operator.attrgetter("_seq")


def _process_of(target: str) -> str:
    """The "<pid>:<starttime>:" a task target starts with (the index's key; a
    target that is no thread lands under a key no process asks for)."""
    return target[:target.rfind(":") + 1]


def _new_gen() -> int:
    # random, not a counter: a log left behind by a deleted journal must never
    # match the snapshot of a later one
    return int.from_bytes(os.urandom(6), "big") or 1


class _LogFile:
    """The append log's fd, held between appends; closed with its journal object."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


@dataclass(slots=True)
class Journal:
    """The in-memory journal; save() makes it durable."""

    path: str
    root: str
    netns: str = ""
    boot_id: str = ""
    complete: bool = True
    # the cookie of the namespace `netns` names (sample/namespaces.py: its inode
    # number is reused by later namespaces, the cookie never); 0: unknown
    netns_cookie: int = 0
    pid: int = 0
    entries: list[Entry] = field(default_factory=list)
    migrated_from: int = 0  # the format version it was read from, when older
    # (knob, target) -> entry; rebuilt when `entries` was replaced or edited
    # behind the journal's back (_idx_of is the list it was built from)
    _idx: dict[tuple[str, str], Entry] = field(default_factory=dict, init=False, repr=False,
                                                compare=False)
    _idx_of: list[Entry] | None = field(default=None, init=False, repr=False, compare=False)
    # task entries by process ("<pid>:<starttime>:" -> {id(entry): entry}), rebuilt
    # with _idx; the next Entry._seq to hand out
    _procs: dict[str, dict[int, Entry]] = field(default_factory=dict, init=False, repr=False,
                                                compare=False)
    _next_seq: int = field(default=0, init=False, repr=False, compare=False)
    # -- what is on disk: the snapshot's gen (None: nothing of ours, the next
    # save is a full snapshot), the log's record count and whether it exists
    _gen: int | None = field(default=None, init=False, repr=False, compare=False)
    _log_records: int = field(default=0, init=False, repr=False, compare=False)
    _log_exists: bool = field(default=False, init=False, repr=False, compare=False)
    _log: _LogFile | None = field(default=None, init=False, repr=False, compare=False)
    _disk_state: tuple[bool, int] = field(default=(True, 0), init=False, repr=False,
                                          compare=False)
    _dirty: dict[int, Entry] = field(default_factory=dict, init=False, repr=False,
                                     compare=False)
    _removed: dict[tuple[str, str], None] = field(default_factory=dict, init=False, repr=False,
                                                  compare=False)
    _disk_entries: list[Entry] | None = field(default=None, init=False, repr=False,
                                              compare=False)
    writes: int = field(default=0, init=False, compare=False)  # appends + snapshots made

    def __post_init__(self) -> None:
        for e in self.entries:
            e._owner = self

    def adopt(self, entries: list[Entry]) -> None:
        """Take `entries` (read from files) as the journal's own."""
        self.entries = entries
        self.__post_init__()

    def resume_files(self, gen: int, log_exists: bool, records: int) -> None:
        """The files on disk are exactly as this format writes them (snapshot `gen`,
        its log with `records` records, or none): the next save() appends to them."""
        self._gen = gen
        self._log_exists = log_exists
        self._log_records = records
        self._mark_on_disk()

    # -- queries ---------------------------------------------------------
    def _index(self) -> dict[tuple[str, str], Entry]:
        if self._idx_of is not self.entries or len(self._idx) != len(self.entries):
            self._reindex()
        return self._idx

    def _reindex(self) -> None:
        """Rebuild the indexes from `entries` (replaced or edited behind our back,
        or just loaded): O(journal), once per such edit, never per query."""
        idx: dict[tuple[str, str], Entry] = {}
        procs: dict[str, dict[int, Entry]] = {}
        for n, e in enumerate(self.entries):
            e._seq = n
            idx[e.key] = e
            if e.knob in _PER_PROCESS:
                procs.setdefault(_process_of(e.target), {})[id(e)] = e
        self._idx, self._idx_of, self._procs = idx, self.entries, procs
        self._next_seq = len(self.entries)

    def find(self, knob: str, target: str) -> Entry | None:
        return self._index().get((knob, target))

    def keys(self) -> KeysView[tuple[str, str]]:
        """Every (knob, target) journaled: a live view, O(1) to ask `in`."""
        return self._index().keys()

    def of_process(self, pid: int, starttime: int) -> list[Entry]:
        """The task entries whose target starts "<pid>:<starttime>:", in journal
        order: O(those entries), whatever the journal holds besides. The caller
        still checks each target is a thread (agents/threads.py belongs)."""
        self._index()
        group = self._procs.get(f"{pid}:{starttime}:")
        return sorted(group.values(), key=_seq_of) if group else []

    def ordered(self, entries: Iterable[Entry]) -> list[Entry]:
        """These entries of this journal in journal order (oldest first)."""
        self._index()
        return sorted(entries, key=_seq_of)

    def add(self, knob: str, target: str, original: str,
            device: DeviceId | None = None) -> Entry:
        """Journal the original of (knob, target); an existing entry is kept as is."""
        idx = self._index()
        e = idx.get((knob, target))
        if e is None:
            e = Entry(knob, target, original, device=device)
            e._owner = self
            e._seq = self._next_seq
            self._next_seq += 1
            self._dirty[id(e)] = e
            self.entries.append(e)
            idx[e.key] = e
            if knob in _PER_PROCESS:
                self._procs.setdefault(_process_of(target), {})[id(e)] = e
        return e

    def remove_entry(self, entry: Entry) -> None:
        self.remove_entries((entry,))

    def remove_entries(self, entries: Iterable[Entry]) -> None:
        """Drop these entries (those of this journal; others are ignored).

        O(these entries) in Python: each is found in `entries` by its _seq
        (bisect) and each run of neighbours goes in one `del` (what is left is
        list_ass_slice's memmove of the pointers after it), so an agent's
        unregister does not walk every other agent's entries."""
        idx = self._index()
        gone = [e for e in {id(e): e for e in entries}.values() if idx.get(e.key) is e]
        if not gone:
            return
        for e in gone:
            del idx[e.key]
            if e.knob in _PER_PROCESS:
                pre = _process_of(e.target)
                group = self._procs.get(pre)
                if group is not None:
                    group.pop(id(e), None)
                    if not group:
                        del self._procs[pre]
            self._dirty.pop(id(e), None)
            if e._on_disk:
                self._removed[e.key] = None
                e._on_disk = False
            e._owner = None
        self._cut(sorted(gone, key=_seq_of))

    def _cut(self, gone: list[Entry]) -> None:
        """Delete `gone` (journal entries, in _seq order) from `entries`, in place."""
        lst = self.entries
        runs: list[tuple[int, int]] = []  # [start, end) slices, ascending
        i = -1
        for e in gone:
            if i + 1 < len(lst) and lst[i + 1] is e:
                i += 1  # the next entry of the same run: no search
            else:
                i = bisect.bisect_left(lst, e._seq, key=_seq_of)
                if i >= len(lst) or lst[i] is not e:
                    # `entries` reordered behind the journal's back: _seq says
                    # nothing; one pass, and the order is renumbered
                    ids = {id(x) for x in gone}
                    lst[:] = [x for x in lst if id(x) not in ids]
                    self._reindex()
                    return
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        for start, end in reversed(runs):
            del lst[start:end]

    # -- the whole journal as one document -------------------------------
    def to_json(self) -> dict[str, Any]:
        """The journal's content, as the snapshot's header and entries say it."""
        out: dict[str, Any] = {"version": VERSION, "complete": self.complete,
                               "root": self.root, "netns": self.netns}
        if self.netns_cookie:
            out["netns_cookie"] = self.netns_cookie
        out |= {"boot_id": self.boot_id, "pid": self.pid,
                "entries": [e.to_json() for e in self.entries]}
        return out

    def dumps(self, gen: int = 0) -> str:
        # "complete" first: a person reading the file sees it at once
        meta: dict[str, Any] = {"version": VERSION, "complete": self.complete, "gen": gen,
                                "root": self.root, "netns": self.netns}
        if self.netns_cookie:
            meta["netns_cookie"] = self.netns_cookie
        meta |= {"boot_id": self.boot_id, "pid": self.pid,
                 "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        head = json.dumps(meta)[:-1] + ', "entries": ['
        lines = [e.line() for e in self.entries]
        # one entry per line: a damaged file can be salvaged line by line
        return head + "\n" + ",\n".join(lines) + ("\n" if lines else "") + "]}\n"

    # -- persistence -----------------------------------------------------
    @property
    def log_path(self) -> str:
        return self.path + LOG_SUFFIX

    def save(self) -> None:
        """Make every change since the last save durable (append, or compact).

        Returns only when the changes are on disk: the engine writes no knob
        before that. Nothing changed: nothing written.
        """
        self.pid = os.getpid()
        if (self._gen is None or self._disk_entries is not self.entries
                or self._idx_of is not self.entries or len(self._idx) != len(self.entries)):
            self.compact()  # first save, or `entries` edited behind the journal's back
            return
        lines = [_record({"del": list(k)}) for k in self._removed]
        # in the order they were first changed: new entries in the order they
        # were added (replay appends them), the others replace theirs in place
        lines += [e.line() for e in self._dirty.values()]
        state = (self.complete, self.pid)
        if state != self._disk_state:
            lines.append(_record({"complete": self.complete, "pid": self.pid}))
        if not lines:
            return
        if self._log_records + len(lines) > COMPACT_SLACK + 2 * len(self.entries):
            self.compact()
            return
        self._append(lines)
        for e in self._dirty.values():
            e._on_disk = True
        self._dirty.clear()
        self._removed.clear()
        self._disk_state = state

    def commit(self) -> None:
        """Mark the journal complete after a batch (one small append)."""
        self.complete = True
        self.save()

    def _append(self, lines: list[str]) -> None:
        creating = not self._log_exists
        data = "".join(ln + "\n" for ln in lines)
        if creating:
            data = _record({"log": self._gen}) + "\n" + data
        raw = data.encode()
        log = self._open_log(creating)
        if log is None:
            self.compact()  # a log we did not write: start over from a snapshot
            return
        try:
            size = os.fstat(log.fd).st_size
            try:
                view = memoryview(raw)
                while view:
                    n = os.write(log.fd, view)
                    view = view[n:]
                os.fdatasync(log.fd)
            except OSError as e:
                # a short write (ENOSPC half way) must not leave half a line
                # for the next append to run into
                with contextlib.suppress(OSError):
                    os.ftruncate(log.fd, size)
                raise JournalError(f"cannot write rollback journal {self.log_path}: "
                                   f"{e.strerror}") from e
        except BaseException:
            self._close_log()  # the next append opens the file by its path again
            raise
        if creating:
            fsync_dir(os.path.dirname(self.log_path) or ".")
            self._log_exists = True
        self._log_records += len(lines)
        self.writes += 1

    def _open_log(self, creating: bool) -> _LogFile | None:
        """The log, open for appends (None: `creating` and a file is there already).

        The fd stays open from one append to the next: open and close were
        two of the five syscalls of an append (bench/agents.py: two appends
        per registration). A log unlinked or replaced behind our back (st_nlink
        0) is opened by its path again, as every append did before.
        """
        log = self._log
        if log is not None and not creating:
            try:
                if os.fstat(log.fd).st_nlink > 0:
                    return log
            except OSError:
                pass
        self._close_log()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        flags |= (os.O_CREAT | os.O_EXCL) if creating else 0
        try:
            fd = os.open(self.log_path, flags, 0o600)
        except FileExistsError:
            return None
        except OSError as e:
            raise JournalError(f"cannot write rollback journal {self.log_path}: "
                               f"{e.strerror}") from e
        self._log = _LogFile(fd)
        return self._log

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def compact(self) -> None:
        """Crash-safe replace of the snapshot by the whole journal; the log goes."""
        self.pid = os.getpid()
        gen = _new_gen()
        atomic_write(self.path, self.dumps(gen).encode())
        self.writes += 1
        self._close_log()
        with contextlib.suppress(FileNotFoundError):
            # a crash before this unlink leaves a log of the old gen: ignored by load()
            os.unlink(self.log_path)
        self._gen = gen
        self._log_exists = False
        self._log_records = 0
        self._mark_on_disk()

    def _mark_on_disk(self) -> None:
        for e in self.entries:
            e._owner = self
            e._on_disk = True
        self._dirty.clear()
        self._removed.clear()
        self._disk_entries = self.entries
        self._disk_state = (self.complete, self.pid)
        self._index()

    def delete(self) -> None:
        """Remove the journal files (every original restored); durable like save()."""
        try:
            # the snapshot first: a log without its snapshot is never read
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise JournalError(f"cannot remove rollback journal {self.path}: {e.strerror}") from e
        self._close_log()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)
        fsync_dir(os.path.dirname(self.path) or ".")
        self._gen = None
        self._log_exists = False
        self._log_records = 0


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
    fsync_dir(d)
    return ino


def fsync_dir(d: str) -> None:
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
