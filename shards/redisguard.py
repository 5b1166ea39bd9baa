"""Redis that can fail without taking requests down with it.

Every Redis command of this process goes through `GuardedRedis`, the client class django-redis
builds for the Django cache (``REDIS_CLIENT_CLASS``) and hands out from `get_redis_connection`,
so the tenant directory, the page cache, key lookups and anything else share one guard:

- short socket, connect and pool-wait timeouts (settings ``REDIS_TIMEOUT``): a stuck Redis costs a
  command tens of milliseconds, not seconds;
- one wait per request: after a command of a request fails, the rest of that request (for
  ``REDIS_BREAKER_RESET`` seconds at most) skips Redis, so a stuck Redis adds one timeout to a
  request, not one per command (a request asks Redis for its throttle count, key, directory
  entry and page), whether or not the process's breaker has opened yet;
- a circuit breaker per worker process (`shards.breaker`): after ``REDIS_BREAKER_FAILURES``
  consecutive connection errors or timeouts, commands fail at once with `RedisUnavailable` (a
  ``redis.ConnectionError``); the first command after ``REDIS_BREAKER_RESET`` seconds starts a
  background PING (it still fails at once itself), whose success closes the breaker;
- writes that must not be lost while Redis is away (invalidations: a thread's page mark, a
  tenant's new placement, a rotated key) go through `write_or_defer`: kept per process and
  replayed, in the background, as soon as a command succeeds again. They must be idempotent.

Callers that use Redis as a cache treat any ``redis.RedisError`` as a miss. The Django cache API
does that itself (``IGNORE_EXCEPTIONS``): a failed get is a miss, a failed set is dropped.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from django.core.signals import request_started
from django_redis import get_redis_connection
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shards.breaker import CALL, CLOSED, OPEN, PROBE, BreakerSnapshot, CircuitBreaker
from shards.runtime import Conf, Slot, runtime

logger = logging.getLogger("shardsvc.redis")

# Connection errors include redis-py's pool-wait timeout ("No connection available") and LOADING.
_FAILURES = (RedisConnectionError, RedisTimeoutError)
MAX_DEFERRED = 10_000

Observer = Callable[[str], None]  # "error" | "short_circuit"


class RedisUnavailable(RedisConnectionError):
    """Redis is being skipped: its circuit breaker is open after repeated failures, or a command
    of the same request failed a moment ago."""


# When a command of the current request (per greenlet under gevent, per thread or task otherwise)
# last failed. Reset when a request starts: a greenlet serves one keep-alive connection's
# requests one after the other.
_failed_at: ContextVar[float] = ContextVar("shardsvc_redis_failed_at", default=-math.inf)


def forget_request_failure(**kwargs: Any) -> None:
    """`request_started` receiver: a new request gives Redis a fresh chance."""
    _failed_at.set(-math.inf)


request_started.connect(forget_request_failure, dispatch_uid="shards.redisguard.request")


# ----- the breaker of this process ---------------------------------------------------------

_observers: list[Observer] = []


def _build_breaker(conf: Conf) -> CircuitBreaker:
    made = CircuitBreaker(failure_threshold=conf.redis_breaker_failures,
                          reset_after=conf.redis_breaker_reset)
    made.add_listener(_on_state_change)
    return made


_breaker: Slot[CircuitBreaker] = runtime.slot("redis_breaker", _build_breaker)


def get_breaker() -> CircuitBreaker:
    """This process's breaker, built from the runtime registry (shards.runtime) on first use;
    a registry reset (tests, settings changes) makes the next command build a new one."""
    return _breaker.get()


def observe(observer: Observer) -> None:
    """Call `observer("error")` on every failed command and `observer("short_circuit")` on every
    command refused by the open breaker (metrics)."""
    if observer not in _observers:
        _observers.append(observer)


def _emit(event: str) -> None:
    for observer in _observers:
        observer(event)


def _on_state_change(old: str, new: str) -> None:
    if new == OPEN and old == CLOSED:
        logger.warning("Redis breaker open: skipping Redis (caches read the database), probing "
                       "it every %.1f s", get_breaker().reset_after)
    elif new == OPEN:
        logger.info("Redis probe failed: skipping Redis for another %.1f s",
                    get_breaker().reset_after)
    elif new == CLOSED:
        logger.warning("Redis breaker closed: Redis answers again")


def available() -> bool:
    """False while this process skips Redis (breaker open or probing). No I/O in the caller: for
    code that would rather not try, e.g. a throttle that fails open. A due probe is started."""
    permit = get_breaker().permit()
    if permit == PROBE:
        _start_probe()
    return permit == CALL


def snapshot() -> BreakerSnapshot:
    return get_breaker().snapshot()


def guarded(command: Callable[[], Any]) -> Any:
    """Run one Redis round trip under the breaker."""
    breaker = get_breaker()
    if time.monotonic() - _failed_at.get() < breaker.reset_after:
        _emit("short_circuit")
        raise RedisUnavailable("Redis failed earlier in this request: skipped for its rest")
    permit = breaker.permit()
    if permit != CALL:
        if permit == PROBE:
            _start_probe()
        _emit("short_circuit")
        raise RedisUnavailable("Redis is skipped for now after repeated failures")
    return _outcome(breaker, command)


def _outcome(breaker: CircuitBreaker, command: Callable[[], Any]) -> Any:
    try:
        result = command()
    except _FAILURES:
        _failed_at.set(time.monotonic())
        breaker.failure()
        _emit("error")
        raise
    except Exception:
        breaker.success()  # Redis answered (e.g. a script error): it is there
        raise
    # BaseException (a gevent.Timeout cutting the request) reports nothing: a probe claim then
    # lapses after reset_after.
    breaker.success()
    if _deferred.pending:
        _deferred.flush_in_background()
    return result


def _ping() -> object:
    # The base class's method: past the guard, whose probe claim this thread holds.
    return Redis.execute_command(client(), "PING")


def _start_probe() -> None:
    # In the background: no request waits out a timeout to find out whether Redis is back.
    threading.Thread(target=_probe, name="shardsvc-redis-probe", daemon=True).start()


def _probe() -> None:
    """One PING past the breaker; its outcome closes or reopens it."""
    try:
        _outcome(get_breaker(), _ping)
    except RedisError as exc:
        logger.debug("Redis probe failed: %s", exc)


class GuardedRedis(Redis):
    """The redis-py client django-redis builds (``REDIS_CLIENT_CLASS``): every command and
    pipeline under this process's breaker. Pub/sub is not guarded: its users (comments.live_hub,
    sites.blocked) each keep one long-lived subscription and handle its loss themselves."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        return guarded(lambda: super(GuardedRedis, self).execute_command(*args, **options))

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return GuardedPipeline(self.connection_pool, self.response_callbacks, transaction,
                               shard_hint)


class GuardedPipeline(Pipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        return guarded(lambda: super(GuardedPipeline, self).execute(raise_on_error))


def client() -> Redis:
    """The raw client of the default cache (guarded)."""
    return get_redis_connection("default")


# ----- writes that must reach Redis eventually ------------------------------------------------


class DeferredWrites:
    """Idempotent writes that failed, replayed once Redis answers. One entry per key: a newer
    write (higher `rank`, e.g. a version or a WAL position) replaces an older one. Bounded: past
    `max_entries` new keys are dropped (and counted), so an outage cannot grow memory without end.
    """

    def __init__(self, *, max_entries: int = MAX_DEFERRED) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[int, Callable[[], object]]] = {}
        self._lock = threading.Lock()
        self._flushing = False
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._entries)

    def add(self, key: str, write: Callable[[], object], *, rank: int = 0) -> bool:
        """Keep `write` for replay; False if it was dropped (full, or an older rank)."""
        with self._lock:
            current = self._entries.get(key)
            if current is not None and current[0] > rank:
                return False
            if current is None and len(self._entries) >= self.max_entries:
                self.dropped += 1
                return False
            self._entries[key] = (rank, write)
            return True

    def flush(self) -> int:
        """Replay what is pending, oldest first, until one fails; returns how many went."""
        with self._lock:
            batch = list(self._entries.items())
        done = 0
        for key, (_rank, write) in batch:
            try:
                write()
            except RedisError:
                return done  # still away: the rest stays for the next success
            with self._lock:
                # Drop it unless a newer write for the key arrived meanwhile.
                if self._entries.get(key, (None, None))[1] is write:
                    del self._entries[key]
            done += 1
        return done

    def flush_in_background(self) -> None:
        with self._lock:
            if self._flushing:
                return
            self._flushing = True
        # A greenlet under the gevent worker (threading is patched), a thread elsewhere; it
        # needs no tenant context, so the empty context of a new greenlet is fine.
        threading.Thread(target=self._flush_once, name="shardsvc-redis-replay",
                         daemon=True).start()

    def _flush_once(self) -> None:
        try:
            done = self.flush()
            if done:
                logger.info("Redis: replayed %d deferred writes, %d pending", done, self.pending)
        except Exception:
            logger.exception("Redis: replaying deferred writes failed")
        finally:
            with self._lock:
                self._flushing = False


_deferred = DeferredWrites()


def deferred() -> DeferredWrites:
    return _deferred


def write_or_defer(key: str, write: Callable[[], object], *, rank: int = 0) -> bool:
    """Run `write` (Redis commands that raise on failure); if Redis cannot take it now, keep it
    to replay once Redis answers. True if it was written now."""
    try:
        write()
        return True
    except RedisError as exc:
        if not isinstance(exc, RedisUnavailable):
            logger.warning("Redis write %s failed, replayed once Redis answers: %s", key, exc)
        dropped = _deferred.dropped
        _deferred.add(key, write, rank=rank)
        if _deferred.dropped > dropped:
            logger.error("Redis: deferred write %s dropped (%d pending is the bound)",
                         key, _deferred.max_entries)
        return False


def check() -> dict[str, Any]:
    """Readiness of Redis as this process sees it: a PING under the breaker (an open breaker
    answers without I/O) and the breaker's state."""
    entry: dict[str, Any] = {"reachable": False}
    started = time.perf_counter()
    try:
        client().ping()
        entry["reachable"] = True
        entry["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    except RedisError as exc:
        text = str(exc).strip()
        entry["error"] = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".strip()
    state = snapshot()
    entry["breaker"] = state.state
    if state.state == OPEN:
        entry["retry_in_seconds"] = round(state.retry_in, 3)
    entry["deferred_writes"] = _deferred.pending
    return entry
