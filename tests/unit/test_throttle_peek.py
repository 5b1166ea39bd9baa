"""The failed-check counter read with one cache GET (sites/throttle.py) reads exactly the counter
django-ratelimit increments, on an in-memory cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import caches
from django.http import HttpRequest
from django.test import RequestFactory, override_settings
from django_ratelimit import core as ratelimit_core

from sites import throttle

RATE = "3/m"


@pytest.fixture
def memory_cache() -> Iterator[None]:
    with override_settings(
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                            "LOCATION": "throttle-peek"}},
        RATELIMIT_ENABLE=True, THROTTLE_AUTH_FAILURES=RATE,
    ):
        caches["default"].clear()
        yield


def from_address(address: str) -> HttpRequest:
    return RequestFactory().get("/api/sites/acme/threads/1", REMOTE_ADDR=address)


@pytest.mark.usefixtures("memory_cache")
def test_the_peek_reads_the_counter_ratelimit_increments() -> None:
    request = from_address("192.0.2.10")
    usage = throttle._peek_by_address(request, throttle.AUTH_FAILURES, RATE)
    assert usage is not None and usage["count"] == 0
    throttle.count_failed_check(request)
    throttle.count_failed_check(from_address("192.0.2.10"))
    usage = throttle._peek_by_address(request, throttle.AUTH_FAILURES, RATE)
    assert usage is not None
    assert (usage["count"], usage["limit"]) == (2, 3)
    assert 0 <= usage["time_left"] <= 60
    # Another address has its own counter.
    other = throttle._peek_by_address(from_address("192.0.2.11"), throttle.AUTH_FAILURES, RATE)
    assert other is not None and other["count"] == 0


@pytest.mark.usefixtures("memory_cache")
def test_a_client_is_refused_once_its_failures_reach_the_limit() -> None:
    for _ in range(3):
        throttle.refuse_failing_client(from_address("192.0.2.20"))  # under the limit: passes
        throttle.count_failed_check(from_address("192.0.2.20"))
    with pytest.raises(throttle.Throttled):
        throttle.refuse_failing_client(from_address("192.0.2.20"))


@pytest.mark.usefixtures("memory_cache")
def test_checking_a_clean_address_stores_nothing() -> None:
    throttle.refuse_failing_client(from_address("192.0.2.30"))
    assert caches["default"]._cache == {}  # type: ignore[attr-defined]  # locmem's own dict


def test_the_peek_is_off_when_throttling_is() -> None:
    with override_settings(RATELIMIT_ENABLE=False):
        assert throttle._peek_by_address(from_address("192.0.2.40"), throttle.AUTH_FAILURES,
                                         RATE) is None
    assert throttle._peek_by_address(from_address("192.0.2.40"), throttle.AUTH_FAILURES,
                                     None) is None


@pytest.mark.parametrize("address", ["192.0.2.50", "2001:db8:1:2:3:4:5:6", "::ffff:192.0.2.51"])
def test_the_remembered_client_address_is_django_ratelimits(address: str) -> None:
    request = from_address(address)
    assert throttle._client_address(request) == ratelimit_core._get_ip(request)
    with override_settings(RATELIMIT_IPV6_MASK=128, RATELIMIT_IPV4_MASK=24):
        assert throttle._client_address(request) == ratelimit_core._get_ip(request)


def test_the_remembered_counter_key_is_django_ratelimits() -> None:
    key, limit, window, period = throttle._counter(throttle.AUTH_FAILURES, "192.0.2.60", RATE)
    assert (limit, period) == (3, 60)
    assert key == ratelimit_core._make_cache_key(throttle.AUTH_FAILURES, window, RATE,
                                                 "192.0.2.60", ratelimit_core.ALL)
