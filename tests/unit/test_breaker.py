"""The Redis circuit breaker (shards/breaker.py) and the guard around Redis commands
(shards/redisguard.py), with a fake clock and stand-in commands: no Redis server.
tests/test_redis_outage.py drives the real service with Redis paused and stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.signals import request_started
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shards import redisguard
from shards.breaker import CALL, CLOSED, HALF_OPEN, OPEN, PROBE, REFUSE, CircuitBreaker
from shards.runtime import runtime
from tests.client import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_breaker(threshold: int = 3, reset: float = 1.0) -> tuple[CircuitBreaker, FakeClock,
                                                                    list[tuple[str, str]]]:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=threshold, reset_after=reset, clock=clock)
    changes: list[tuple[str, str]] = []
    breaker.add_listener(lambda old, new: changes.append((old, new)))
    return breaker, clock, changes


def test_breaker_opens_after_consecutive_failures_only() -> None:
    breaker, _, changes = make_breaker(threshold=3)
    breaker.failure()
    breaker.failure()
    breaker.success()  # the run is broken: counting starts again
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN
    assert not breaker.allow()
    assert changes == [(CLOSED, OPEN)]


def test_open_breaker_lets_one_probe_through_after_the_reset_period() -> None:
    breaker, clock, changes = make_breaker(threshold=1, reset=2.0)
    breaker.failure()
    clock.now += 1.9
    assert not breaker.allow()
    assert breaker.snapshot().retry_in == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.allow()  # the probe
    assert breaker.state == HALF_OPEN
    assert not breaker.allow() and not breaker.allow()  # everyone else still waits
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow()
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_permit_names_the_probe() -> None:
    breaker, clock, _ = make_breaker(threshold=1, reset=1.0)
    assert breaker.permit() == CALL
    breaker.failure()
    assert breaker.permit() == REFUSE
    clock.now += 1.0
    assert [breaker.permit(), breaker.permit()] == [PROBE, REFUSE]


def test_a_failed_probe_opens_the_breaker_for_another_period() -> None:
    breaker, clock, _ = make_breaker(threshold=3, reset=1.0)
    for _ in range(3):
        breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.failure()  # one failure is enough in half-open
    assert breaker.state == OPEN
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.01
    assert breaker.allow()


def test_a_probe_that_never_reports_is_replaced() -> None:
    breaker, clock, _ = make_breaker(threshold=1, reset=1.0)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()  # this probe's caller is cancelled and never reports
    clock.now += 0.5
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()


def test_late_failures_of_calls_started_before_opening_do_not_extend_the_period() -> None:
    breaker, clock, _ = make_breaker(threshold=1, reset=1.0)
    breaker.failure()
    clock.now += 0.8
    breaker.failure()
    clock.now += 0.2
    assert breaker.allow()


def test_breaker_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_after=0)


@pytest.fixture
def local_breaker() -> Iterator[CircuitBreaker]:
    """This process's Redis guard with a breaker of its own for one test."""
    breaker = CircuitBreaker(failure_threshold=2, reset_after=60.0)
    with runtime.injected("redis_breaker", breaker):
        yield breaker


def test_guarded_commands_trip_the_breaker_and_then_skip_redis(local_breaker) -> None:
    calls = []

    def timing_out() -> None:
        calls.append(1)
        raise RedisTimeoutError("Timeout reading from socket")

    for _ in range(2):
        request_started.send(sender=None)  # each failure in a request of its own
        with pytest.raises(RedisTimeoutError):
            redisguard.guarded(timing_out)
    assert local_breaker.state == OPEN
    request_started.send(sender=None)
    with pytest.raises(redisguard.RedisUnavailable):
        redisguard.guarded(timing_out)
    assert len(calls) == 2  # the third never reached Redis
    assert isinstance(redisguard.RedisUnavailable(), RedisConnectionError)  # caches catch it
    assert not redisguard.available()


def test_a_request_waits_for_a_failing_redis_once(local_breaker) -> None:
    calls = []

    def timing_out() -> None:
        calls.append(1)
        raise RedisTimeoutError("Timeout reading from socket")

    request_started.send(sender=None)
    with pytest.raises(RedisTimeoutError):
        redisguard.guarded(timing_out)
    # The breaker (threshold 2) is still closed, yet the rest of this request skips Redis.
    assert local_breaker.state == CLOSED
    for _ in range(3):
        with pytest.raises(redisguard.RedisUnavailable):
            redisguard.guarded(timing_out)
    assert len(calls) == 1
    # The next request tries Redis again.
    request_started.send(sender=None)
    assert redisguard.guarded(lambda: "through") == "through"


def test_a_due_probe_runs_in_the_background_and_closes_the_breaker(local_breaker,
                                                                  monkeypatch) -> None:
    pings = []
    monkeypatch.setattr(redisguard, "_ping", lambda: pings.append(1) or "PONG")
    local_breaker.reset_after = 0.05
    for _ in range(2):
        local_breaker.failure()
    wait_until(lambda: local_breaker.snapshot().retry_in == 0, timeout=5, interval=0.01,
               what="the reset period to pass")
    command = []
    # The caller that finds the probe due is not the probe: it fails at once, no Redis wait.
    with pytest.raises(redisguard.RedisUnavailable):
        redisguard.guarded(lambda: command.append(1))
    wait_until(lambda: local_breaker.state == CLOSED, timeout=5, interval=0.01,
               what="the background probe to close the breaker")
    assert pings == [1] and command == []
    assert redisguard.guarded(lambda: "through") == "through"


def test_an_answer_from_redis_counts_as_success_even_when_it_is_an_error(local_breaker) -> None:
    local_breaker.failure()

    def script_error() -> None:
        raise ResponseError("ERR unknown command")

    with pytest.raises(ResponseError):
        redisguard.guarded(script_error)
    assert local_breaker.snapshot().consecutive_failures == 0


def test_deferred_writes_keep_the_newest_per_key_and_stay_bounded() -> None:
    writes = redisguard.DeferredWrites(max_entries=2)
    done: list[str] = []
    assert writes.add("mark:1", lambda: done.append("mark:1@5"), rank=5)
    assert not writes.add("mark:1", lambda: done.append("mark:1@3"), rank=3)  # older
    assert writes.add("mark:1", lambda: done.append("mark:1@7"), rank=7)
    assert writes.add("key:a", lambda: done.append("key:a"))
    assert not writes.add("key:b", lambda: done.append("key:b"))  # full
    assert (writes.pending, writes.dropped) == (2, 1)
    assert writes.flush() == 2
    assert done == ["mark:1@7", "key:a"] and writes.pending == 0


def test_a_flush_stops_at_the_first_failure_and_keeps_the_rest() -> None:
    writes = redisguard.DeferredWrites()
    done: list[str] = []
    failing = True

    def flaky() -> None:
        if failing:
            raise redisguard.RedisUnavailable("still away")
        done.append("b")

    writes.add("a", lambda: done.append("a"))
    writes.add("b", flaky)
    writes.add("c", lambda: done.append("c"))
    assert writes.flush() == 1
    assert done == ["a"] and writes.pending == 2
    failing = False
    assert writes.flush() == 2
    assert done == ["a", "b", "c"] and writes.pending == 0


def test_write_or_defer_keeps_what_redis_could_not_take(local_breaker) -> None:
    writes = redisguard.deferred()
    before = writes.pending
    attempts = []

    def write() -> None:
        attempts.append(1)
        raise RedisConnectionError("Connection refused")

    try:
        assert not redisguard.write_or_defer("test:write-or-defer", write)
        assert writes.pending == before + 1 and attempts == [1]
    finally:
        writes._entries.pop("test:write-or-defer", None)
