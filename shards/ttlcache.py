"""A small per-process cache whose entries expire: the tenant directory and the site-key lookup
keep their answers here for a second or a few, in front of Redis and the control database.

Entries (negative answers too: the value may be None) expire `ttl` seconds after they were put,
by the monotonic clock. Reads take no lock (a dict read is atomic, and each entry is an
immutable (expiry, value) pair replaced whole); writes do. Bounded crudely: past `max_entries`
everything is dropped, which only costs the next reads a trip to Redis.

`get_or_fill` is single-flight: when an entry is missing or expired, one caller per key (per
process) fills it; the others wait for that fill, bounded by `wait`, or, within `stale_for`
seconds of the expiry, answer with the expired value at once. Without it every request in flight
when a hot entry expires goes to Redis, and when Redis has lost it too, to the database.

Primitives come from ``threading`` when they are created (the lock with the cache, an event per
fill), not at import: under gunicorn's gevent worker ``gevent.monkey.patch_all()`` has replaced
them by then, so a waiter yields to other greenlets instead of blocking the worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# How long a caller waits for another caller's fill of the same key before filling it itself.
DEFAULT_WAIT = 2.0


class _Flight(Generic[V]):
    """One fill in progress: its waiters take its value once `done` is set, if it has one."""

    __slots__ = ("done", "filled", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.filled = False
        self.value: V | None = None


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
        # key -> its fill in progress
        self._flights: dict[K, _Flight[V]] = {}
        self.fills = 0  # fills run by get_or_fill: what single-flight keeps low

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

    def get_or_fill(self, key: K, fill: Callable[[], V], *,
                    ttl_of: Callable[[V], float] | None = None, stale_for: float = 0.0,
                    wait: float = DEFAULT_WAIT) -> V:
        """The unexpired value of `key`, else one filled by `fill()` (kept for `ttl_of(value)`
        seconds, the cache's ttl unless given), with at most one fill of a key running at a
        time. Meanwhile other callers answer with the expired value if it expired less than
        `stale_for` seconds ago (never an expired None: a negative answer is not reused, so a
        key created meanwhile is found by the fill), else wait for the fill up to `wait`
        seconds; a fill that fails (raises: the exception goes to its caller) or outlasts
        `wait` lets them fill it themselves, so a stuck fill delays callers by at most `wait`."""
        hit = self._entries.get(key)
        now = self.clock()
        if hit is not None and hit[0] > now:
            return hit[1]
        with self._lock:
            flight = self._flights.get(key)
            mine = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not mine:
            if hit is not None and hit[1] is not None and now < hit[0] + stale_for:
                return hit[1]
            if flight.done.wait(wait) and flight.filled:
                return flight.value  # type: ignore[return-value]  # filled: a V
            return self._fill(key, fill, ttl_of, self.clock())
        try:
            flight.value = self._fill(key, fill, ttl_of, now)
            flight.filled = True
            return flight.value
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.set()

    def _fill(self, key: K, fill: Callable[[], V], ttl_of: Callable[[V], float] | None,
              since: float) -> V:
        self.fills += 1
        value = fill()
        self.put(key, value, ttl=None if ttl_of is None else ttl_of(value), since=since)
        return value

    def discard(self, *keys: K) -> None:
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
