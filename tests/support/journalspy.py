"""Count what a call reads of a rollback journal, to pin its complexity without timing.

`CountingList` replaces a Journal's `entries` and counts the list slots read
through it (iteration, indexing, slices, reversed, `in`). `JournalSpy` adds the
fields read of entries other than the caller's own (every Entry attribute but
the _seq a bisect probes) and the walks of Journal.keys() views (asked `in`
they cost nothing; walked they are the journal again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, KeysView
from typing import Any, SupportsIndex, overload

import pytest

from agentlatd.apply.journal import Entry, Journal


class CountingList(list[Entry]):
    """A journal's entry list that counts the elements read through it while `on`."""

    def __init__(self, items: Iterable[Entry]) -> None:
        super().__init__(items)
        self.on = False
        self.reads = 0

    def __iter__(self) -> Iterator[Entry]:
        if self.on:
            self.reads += len(self)
        return super().__iter__()

    def __reversed__(self) -> Iterator[Entry]:
        if self.on:
            self.reads += len(self)
        return super().__reversed__()

    def __contains__(self, x: object) -> bool:
        if self.on:
            self.reads += len(self)
        return super().__contains__(x)

    @overload
    def __getitem__(self, i: SupportsIndex) -> Entry: ...
    @overload
    def __getitem__(self, i: slice) -> list[Entry]: ...
    def __getitem__(self, i: Any) -> Any:
        got = super().__getitem__(i)
        if self.on:
            self.reads += len(got) if isinstance(i, slice) else 1
        return got


class _Keys:
    """A Journal.keys() view that counts walks (and lets `in` through)."""

    def __init__(self, spy: JournalSpy, keys: KeysView[tuple[str, str]]) -> None:
        self._spy, self._keys = spy, keys

    def __contains__(self, k: object) -> bool:
        return k in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if self._spy.on:
            self._spy.key_walks += 1
        return iter(self._keys)


class JournalSpy:
    """Installed on journal `j` (its entries become a CountingList, saved once as a
    compaction before anything is counted); `measure(mine)` counts one call."""

    def __init__(self, j: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
        self.j = j
        self.slots = CountingList(j.entries)
        j.entries = self.slots  # re-indexed once, at the next query
        j.save()  # a new list object: compacted now, not inside a measured call
        self.on = False
        self.key_walks = 0
        self.foreign_fields = 0  # reads of fields of entries not in `mine`
        self.foreign_seq = 0  # reads of their _seq (a bisect's probes)
        self._mine: set[int] = set()
        spy = self
        real_keys = getattr(Journal, "keys", None)

        def keys(self: Journal) -> Any:
            assert real_keys is not None
            return _Keys(spy, real_keys(self))

        def getattribute(self: Entry, name: str) -> Any:
            if spy.on and id(self) not in spy._mine:
                if name == "_seq":
                    spy.foreign_seq += 1
                elif not name.startswith("__"):
                    spy.foreign_fields += 1
            return object.__getattribute__(self, name)

        if real_keys is not None:
            monkeypatch.setattr(Journal, "keys", keys)
        monkeypatch.setattr(Entry, "__getattribute__", getattribute)

    @contextlib.contextmanager
    def measure(self, mine: Iterable[Entry]) -> Iterator[None]:
        self._mine = {id(e) for e in mine}
        self.slots.reads = self.key_walks = self.foreign_fields = self.foreign_seq = 0
        self.on = self.slots.on = True
        try:
            yield
        finally:
            self.on = self.slots.on = False
