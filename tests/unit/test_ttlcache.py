"""The per-process TTL cache the tenant directory and the site-key lookup share."""

from __future__ import annotations

import pytest

from shards.ttlcache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_exactly_its_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(ttl=1.0, clock=clock)
    assert cache.lookup("a") == (False, None)
    cache.put("a", 7)
    clock.now = 100.999
    assert cache.lookup("a") == (True, 7)
    clock.now = 101.0
    assert cache.lookup("a") == (False, None)


def test_a_negative_answer_is_cached_with_its_own_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str, int | None] = TtlCache(ttl=10.0, clock=clock)
    cache.put("unknown", None, ttl=0.5)
    assert cache.lookup("unknown") == (True, None)  # known to be absent, not a miss
    clock.now += 0.5
    assert cache.lookup("unknown") == (False, None)


def test_the_time_spent_fetching_counts_against_the_ttl() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(ttl=1.0, clock=clock)
    asked_at = clock()
    clock.now += 0.75  # a slow Redis or database read
    cache.put("a", 1, since=asked_at)
    clock.now += 0.25
    assert cache.lookup("a") == (False, None)


def test_discard_and_the_crude_bound() -> None:
    cache: TtlCache[int, int] = TtlCache(ttl=60.0, max_entries=3, clock=Clock())
    for key in range(3):
        cache.put(key, key)
    cache.put(1, 10)  # replacing an entry never clears
    assert len(cache) == 3
    cache.put(3, 3)  # a fourth key: everything goes, then it is kept
    assert len(cache) == 1 and cache.lookup(3) == (True, 3)
    cache.discard(3, 99)
    assert cache.lookup(3) == (False, None)


def test_nonsense_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="ttl"):
        TtlCache(ttl=-1.0)
    with pytest.raises(ValueError, match="max_entries"):
        TtlCache(ttl=1.0, max_entries=0)
