"""A throttle check made with the request's own Redis read (sites/throttle.py): deferred only for
reads, settled from the value read or, when nothing was read, by a GET before the answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import caches
from django.http import HttpRequest
from django.test import RequestFactory, override_settings

from sites import throttle

RATE = "3/m"


@pytest.fixture
def memory_cache() -> Iterator[None]:
    with override_settings(
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                            "LOCATION": "throttle-deferred"}},
        RATELIMIT_ENABLE=True, THROTTLE_AUTH_FAILURES=RATE,
    ):
        caches["default"].clear()
        yield


def read_from(address: str, method: str = "GET") -> HttpRequest:
    factory = RequestFactory()
    make = factory.get if method == "GET" else factory.post
    return make("/api/sites/acme/threads/1/comments", REMOTE_ADDR=address)


def block(address: str) -> None:
    for _ in range(3):
        throttle.count_failed_check(read_from(address))


@pytest.mark.usefixtures("memory_cache")
def test_a_deferred_read_settles_from_the_value_read_with_the_page() -> None:
    block("192.0.2.50")
    request = read_from("192.0.2.50")
    throttle.defer_failing_client_check(request)
    check = throttle.deferred_read(request)
    assert check is not None
    # The key is the counter's as stored (the cache's prefix and version applied): the one
    # the failed checks counted under.
    assert check.key in caches["default"]._cache  # type: ignore[attr-defined]  # locmem's dict
    with pytest.raises(throttle.Throttled):
        check.settle(b"3")
    assert throttle.deferred_read(request) is None  # settled: nothing left to read
    throttle.settle_deferred(request)  # and nothing left to check


@pytest.mark.usefixtures("memory_cache")
def test_under_the_limit_or_with_no_count_the_read_goes_on() -> None:
    for raw in (None, b"0", b"2"):
        request = read_from("192.0.2.51")
        throttle.defer_failing_client_check(request)
        check = throttle.deferred_read(request)
        assert check is not None
        check.settle(raw)
        assert throttle.deferred_read(request) is None


@pytest.mark.usefixtures("memory_cache")
def test_a_failed_read_fails_open_once_and_is_not_tried_again() -> None:
    block("192.0.2.52")
    request = read_from("192.0.2.52")
    throttle.defer_failing_client_check(request)
    check = throttle.deferred_read(request)
    assert check is not None
    check.settle(None, unavailable=True)  # as a failed GET: not throttled
    throttle.settle_deferred(request)  # no second read of a Redis that just failed


@pytest.mark.usefixtures("memory_cache")
def test_a_check_nothing_read_is_made_before_the_answer() -> None:
    block("192.0.2.53")
    request = read_from("192.0.2.53")
    throttle.defer_failing_client_check(request)  # no exception yet: nothing was read
    with pytest.raises(throttle.Throttled):
        throttle.settle_deferred(request)


@pytest.mark.usefixtures("memory_cache")
def test_a_write_is_never_deferred() -> None:
    block("192.0.2.54")
    with pytest.raises(throttle.Throttled):
        throttle.defer_failing_client_check(read_from("192.0.2.54", "POST"))


@pytest.mark.usefixtures("memory_cache")
def test_a_request_that_was_not_deferred_has_nothing_to_read() -> None:
    request = read_from("192.0.2.55")
    assert throttle.deferred_read(request) is None
    throttle.refuse_failing_client(request)
    throttle.defer_failing_client_check(request)  # already checked: stays checked
    assert throttle.deferred_read(request) is None


def test_with_throttling_off_nothing_is_deferred() -> None:
    with override_settings(RATELIMIT_ENABLE=False):
        request = read_from("192.0.2.56")
        throttle.defer_failing_client_check(request)
        assert throttle.deferred_read(request) is None
