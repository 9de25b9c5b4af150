"""Named caches: every answer a process keeps instead of asking again, in one kind of object.

A ``Cache`` maps a key to an answer and the *version* it was computed at (for most, the stamps of
the run files it was read from: ``tina_core.rundir.RunFiles``); ``get`` gives the answer only while
the version is the same, so nothing is ever invalidated by hand. Each cache has a name, a bound
(the most recently used are kept), and is listed in ARCHITECTURE.md ("A cockpit refresh") with the
benchmark figure that justifies it. ``clear_all()`` empties every cache of the process;
``switch_off(name)`` makes one answer nothing, which is how the benchmarks measure what it saves
(``bench/tui.py --without NAME``).
"""

from __future__ import annotations

import collections
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ANY = object()  # a version that matches whatever an entry was stored with (see Cache.get)

_ALL: "weakref.WeakSet[Cache]" = weakref.WeakSet()
_OFF: set[str] = set()


@dataclass(frozen=True)
class Entry(Generic[V]):
    version: Hashable
    value: V
    made: float   # time.monotonic() when computed
    took: float   # seconds the computation took


class Cache(Generic[K, V]):
    """Answers by key, each valid for one version; at most ``size`` of them (None: no bound)."""

    def __init__(self, name: str, size: int | None) -> None:
        self.name, self.size = name, size
        self._entries: collections.OrderedDict[K, Entry[V]] = collections.OrderedDict()
        _ALL.add(self)

    def get(self, key: K, version: Hashable = ANY) -> Entry[V] | None:
        """The entry for ``key`` if it was stored at ``version`` (any version with ``ANY``)."""
        entry = self._entries.get(key)
        if entry is None or self.name in _OFF or (version is not ANY and entry.version != version):
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: K, version: Hashable, value: V, took: float = 0.0) -> V:
        if self.name not in _OFF:
            self._entries[key] = Entry(version, value, time.monotonic(), took)
            self._entries.move_to_end(key)
            while self.size is not None and len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def fetch(self, key: K, version: Hashable, compute: Callable[[], V]) -> V:
        """The answer kept for ``key`` at ``version``, else ``compute()``'s (kept)."""
        entry = self.get(key, version)
        if entry is not None:
            return entry.value
        started = time.monotonic()
        value = compute()
        return self.put(key, version, value, time.monotonic() - started)

    def clear(self, where: Callable[[K], bool] | None = None) -> None:
        """Forget every entry (those whose key satisfies ``where``)."""
        if where is None:
            self._entries.clear()
        else:
            for key in [k for k in self._entries if where(k)]:
                del self._entries[key]

    def keys(self) -> list[K]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Cache({self.name!r}, {len(self)}/{self.size or 'unbounded'})"


def caches() -> Iterator[Cache]:
    """Every cache alive in this process."""
    return iter(list(_ALL))


def clear_all() -> None:
    """Forget every answer this process keeps."""
    for cache in caches():
        cache.clear()


def switch_off(*names: str) -> None:
    """Make the named caches keep and give nothing (for measuring what each one saves)."""
    _OFF.update(names)
    for cache in caches():
        if cache.name in _OFF:
            cache.clear()
