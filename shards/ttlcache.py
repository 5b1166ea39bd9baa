"""A small per-process cache whose entries expire: the tenant directory and the site-key lookup
keep their answers here for a second or a few, in front of Redis and the control database.

Entries (negative answers too: the value may be None) expire `ttl` seconds after they were put,
by the monotonic clock. Reads take no lock (a dict read is atomic, and each entry is an
immutable (expiry, value) pair replaced whole); writes do. Bounded crudely: past `max_entries`
everything is dropped, which only costs the next reads a trip to Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class TtlCache(Generic[K, V]):
    def __init__(self, *, ttl: float, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 0:
            raise ValueError(f"ttl must be 0 or more seconds, got {ttl!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries!r}")
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: K) -> tuple[bool, V | None]:
        """(True, value) while `key` holds an unexpired entry, else (False, None)."""
        hit = self._entries.get(key)
        if hit is None or hit[0] <= self.clock():
            return False, None
        return True, hit[1]

    def put(self, key: K, value: V, *, ttl: float | None = None,
            since: float | None = None) -> None:
        """Keep `value` for `ttl` seconds (the cache's own ttl unless given) from `since`: when
        the value was read, by this cache's clock (now unless given), so that the time spent
        fetching it counts against its ttl."""
        start = self.clock() if since is None else since
        expires = start + (self.ttl if ttl is None else ttl)
        with self._lock:
            if len(self._entries) >= self.max_entries and key not in self._entries:
                self._entries.clear()
            self._entries[key] = (expires, value)

    def discard(self, *keys: K) -> None:
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
