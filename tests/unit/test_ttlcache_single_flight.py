"""Single-flight fills of the TTL cache (shards/ttlcache.py): one fill per key at a time, the
other callers wait for it or, within a bound, answer with the value that just expired."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from shards.ttlcache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class GatedFill:
    """A fill that blocks until released, counting its calls: a slow Redis or database read."""

    def __init__(self, value: object = "fresh") -> None:
        self.value = value
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = False

    def __call__(self) -> object:
        self.calls += 1
        self.started.set()
        assert self.release.wait(10), "the test never released the fill"
        if self.fail:
            raise ConnectionError("the database went away")
        return self.value


def test_concurrent_misses_run_one_fill_and_share_its_value() -> None:
    cache: TtlCache[str, object] = TtlCache(ttl=1.0, clock=Clock())
    fill = GatedFill()
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(cache.get_or_fill, "t", fill)
        assert fill.started.wait(10)
        others = [pool.submit(cache.get_or_fill, "t", fill) for _ in range(7)]
        fill.release.set()
        results = [first.result(10)] + [f.result(10) for f in others]
    assert results == ["fresh"] * 8
    assert fill.calls == 1
    assert cache.fills == 1
    assert cache.lookup("t") == (True, "fresh")


def test_an_unexpired_entry_is_answered_without_a_fill() -> None:
    cache: TtlCache[str, object] = TtlCache(ttl=1.0, clock=Clock())
    cache.put("t", "kept")
    assert cache.get_or_fill("t", lambda: pytest.fail("filled a live entry")) == "kept"
    assert cache.fills == 0


def test_the_expired_value_is_used_within_the_stale_bound_while_a_fill_runs() -> None:
    clock = Clock()
    cache: TtlCache[str, object] = TtlCache(ttl=1.0, clock=clock)
    cache.put("t", "old")
    clock.now += 1.5  # expired half a second ago
    fill = GatedFill("new")
    with ThreadPoolExecutor(max_workers=2) as pool:
        filler = pool.submit(cache.get_or_fill, "t", fill, stale_for=1.0)
        assert fill.started.wait(10)
        # Returns at once: the fill is still blocked.
        assert cache.get_or_fill("t", fill, stale_for=1.0) == "old"
        fill.release.set()
        assert filler.result(10) == "new"
    assert fill.calls == 1
    assert cache.get_or_fill("t", fill, stale_for=1.0) == "new"


def test_past_the_stale_bound_callers_wait_for_the_fill() -> None:
    clock = Clock()
    cache: TtlCache[str, object] = TtlCache(ttl=1.0, clock=clock)
    cache.put("t", "old")
    clock.now += 3.0  # expired two seconds ago: too old to serve
    fill = GatedFill("new")
    with ThreadPoolExecutor(max_workers=2) as pool:
        filler = pool.submit(cache.get_or_fill, "t", fill, stale_for=1.0)
        assert fill.started.wait(10)
        waiter = pool.submit(cache.get_or_fill, "t", fill, stale_for=1.0)
        fill.release.set()
        assert waiter.result(10) == "new"
        assert filler.result(10) == "new"
    assert fill.calls == 1


def test_an_expired_negative_answer_is_never_served_stale() -> None:
    clock = Clock()
    cache: TtlCache[str, object | None] = TtlCache(ttl=1.0, clock=clock)
    cache.put("t", None)
    clock.now += 1.1
    fill = GatedFill("created meanwhile")
    with ThreadPoolExecutor(max_workers=2) as pool:
        filler = pool.submit(cache.get_or_fill, "t", fill, stale_for=10.0)
        assert fill.started.wait(10)
        waiter = pool.submit(cache.get_or_fill, "t", fill, stale_for=10.0)
        fill.release.set()
        assert waiter.result(10) == "created meanwhile"
        filler.result(10)


def test_a_failed_fill_raises_to_its_caller_and_a_waiter_fills_itself() -> None:
    cache: TtlCache[str, object] = TtlCache(ttl=1.0, clock=Clock())
    failing = GatedFill()
    failing.fail = True
    with ThreadPoolExecutor(max_workers=2) as pool:
        filler = pool.submit(cache.get_or_fill, "t", failing)
        assert failing.started.wait(10)
        waiter = pool.submit(cache.get_or_fill, "t", lambda: "own read")
        failing.release.set()
        with pytest.raises(ConnectionError):
            filler.result(10)
        assert waiter.result(10) == "own read"
    assert cache.lookup("t") == (True, "own read")
    # Nothing of the failed fill is left behind: the next miss fills normally.
    cache.discard("t")
    assert cache.get_or_fill("t", lambda: "later") == "later"


def test_a_stuck_fill_delays_the_others_only_up_to_the_wait_bound() -> None:
    cache: TtlCache[str, object] = TtlCache(ttl=1.0, clock=Clock())
    stuck = GatedFill("late")
    with ThreadPoolExecutor(max_workers=2) as pool:
        filler = pool.submit(cache.get_or_fill, "t", stuck)
        assert stuck.started.wait(10)
        # The stuck fill is still blocked when the waiter gives up and reads for itself.
        assert cache.get_or_fill("t", lambda: "own read", wait=0.05) == "own read"
        assert not stuck.release.is_set()
        stuck.release.set()
        assert filler.result(10) == "late"


def test_the_ttl_of_a_fill_can_depend_on_its_value() -> None:
    clock = Clock()
    cache: TtlCache[str, object | None] = TtlCache(ttl=10.0, clock=clock)

    def ttl_of(value: object | None) -> float:
        return 10.0 if value is not None else 0.5

    assert cache.get_or_fill("gone", lambda: None, ttl_of=ttl_of) is None
    clock.now += 0.5
    assert cache.lookup("gone") == (False, None)
    assert cache.get_or_fill("here", lambda: 1, ttl_of=ttl_of) == 1
    clock.now += 9.9
    assert cache.lookup("here") == (True, 1)
