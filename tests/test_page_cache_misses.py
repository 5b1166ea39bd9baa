"""Concurrent misses of one cached page in one process (comments/cache.py), against the harness's
Redis: they go through the Redis election once, the page is filled once, and the requests that
did not fill it wait in the process for its page instead of polling Redis for it."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from comments import cache

pytestmark = pytest.mark.usefixtures("django_db")

MISSES = 8
PAGE = b'{"items": [], "next_cursor": null}'


def test_concurrent_misses_wait_in_the_process_for_one_fill(tenants: dict[str, Any],
                                                             monkeypatch) -> None:
    entry = tenants["a"]
    thread_id = random.randrange(2**40, 2**50)  # a page no other test has cached
    polls: list[int] = []
    polling = cache._wait_for_filler

    def counted_poll(*args: Any) -> tuple[bytes, str]:
        polls.append(1)
        return polling(*args)

    monkeypatch.setattr(cache, "_wait_for_filler", counted_poll)
    fills: list[int] = []

    def fill() -> bytes:
        fills.append(1)
        time.sleep(0.3)  # the others arrive while it is in flight
        return PAGE

    start = threading.Barrier(MISSES)

    def one(_: int) -> tuple[bytes, str]:
        start.wait()
        return cache.cached_page(entry, thread_id, "newest::20", fill)

    with ThreadPoolExecutor(max_workers=MISSES) as pool:
        outcomes = list(pool.map(one, range(MISSES)))
    assert fills == [1]
    assert polls == []  # no request of this process polled Redis for the filler's page
    assert sorted(how for _, how in outcomes) == ["fill"] + ["wait"] * (MISSES - 1)
    assert {page for page, _ in outcomes} == {PAGE}
    # Stored for the next reader, as before.
    assert cache.cached_page(entry, thread_id, "newest::20", fill) == (PAGE, "hit")
    assert fills == [1]
