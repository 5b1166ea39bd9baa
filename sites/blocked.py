"""Client addresses blocked for failed credential checks, known to every worker without a Redis
read per request.

An address is blocked once its failed-check counter (sites.throttle) reaches the limit. The
worker that counts that failure announces it, in one round trip: the address goes into a sorted
set (its score: the end of the counter's window) and onto a channel. Every worker subscribes to
the channel, reads the sorted set once its subscription is confirmed (so nothing announced
before falls between the two), and before each check reads whatever has arrived since, without
waiting. Redis writes a publication to its subscribers' sockets before it answers the publisher,
so a client told of its last failed check that comes straight back, to any worker of any host,
finds its address blocked there.

The workers' view is trusted only while its subscription is known to be live: confirmed, its
sorted set read, and its PING (sent at most every PING_EVERY seconds by the checks themselves)
answered within TRUST_FOR seconds. Otherwise (Redis away, a reconnection not yet confirmed, a
worker idle for longer than that) `check` says so, and the caller reads the counter from Redis
as before. A blocked address stays blocked in a worker until its window ends, even if Redis
loses the counter meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis, RedisError
from redis.client import PubSub

logger = logging.getLogger("shardsvc.throttle")

PING_EVERY = 1.0
TRUST_FOR = 3.0
CONNECT_EVERY = 1.0  # between attempts to subscribe, while Redis does not answer
_PRUNE_AT = 4096  # entries of ended windows are dropped when the table grows past this


class _Subscription(PubSub):
    """redis-py's subscription, which re-subscribes by itself after a reconnection: this one
    also says that it did, since announcements made while it was away are lost."""

    reconnected = False

    def on_connect(self, connection: Any) -> None:
        self.reconnected = True
        super().on_connect(connection)


def announce(client: Redis, key: str, address: str, until: int, keep_for: int) -> None:
    """Tell every worker that `address` is blocked until `until` (Unix time): one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.zadd(key, {address: until})
    pipe.zremrangebyscore(key, "-inf", int(time.time()))
    pipe.expire(key, keep_for)
    pipe.publish(key, f"{until} {address}")
    pipe.execute()


class BlockedAddresses:
    """One process's view of the blocked addresses behind `key` (sorted set and channel)."""

    def __init__(self, client: Callable[[], Redis], key: str,
                 can_connect: Callable[[], bool] = lambda: True) -> None:
        self._client = client
        self.key = key
        self._can_connect = can_connect
        self._until: dict[str, float] = {}
        self._subscription: _Subscription | None = None
        self._synced = False
        self._last_pong = -TRUST_FOR
        self._last_ping = -PING_EVERY
        self._last_attempt = -CONNECT_EVERY
        self._lock = threading.Lock()  # one reader of the subscription at a time
        self.pid = os.getpid()  # a forked child builds its own: the subscription is a socket

    def check(self, address: str) -> float | None:
        """When `address` is blocked until (Unix time; 0.0: not blocked), or None when this
        process's view cannot be trusted now: ask Redis."""
        with self._lock:
            if not self._refresh(time.monotonic()):
                return None
        until = self._until.get(address, 0.0)
        return until if until > time.time() else 0.0

    def note(self, address: str, until: float) -> None:
        """An address this process just blocked (its own announcement arrives later)."""
        self._until[address] = max(until, self._until.get(address, 0.0))
        self._prune()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _refresh(self, now: float) -> bool:
        if self._subscription is None and not self._subscribe(now):
            return False
        subscription = self._subscription
        assert subscription is not None
        try:
            while (message := subscription.get_message(timeout=0.0)) is not None:
                self._note_reconnection(subscription)  # before its confirmation is handled
                self._handle(message, now)
            self._note_reconnection(subscription)
            if now - self._last_ping >= PING_EVERY:
                self._last_ping = now
                subscription.ping()
        except (RedisError, OSError) as exc:
            logger.warning("blocked addresses: subscription lost, reading counters: %s", exc)
            self._drop()
            return False
        return self._synced and now - self._last_pong < TRUST_FOR

    def _note_reconnection(self, subscription: _Subscription) -> None:
        if subscription.reconnected:
            subscription.reconnected = False
            self._synced = False  # until the new subscription is confirmed and its set read

    def _subscribe(self, now: float) -> bool:
        if now - self._last_attempt < CONNECT_EVERY or not self._can_connect():
            return False
        self._last_attempt = now
        try:
            subscription = _Subscription(self._client().connection_pool)
            subscription.subscribe(self.key)
        except (RedisError, OSError) as exc:
            logger.warning("blocked addresses: cannot subscribe, reading counters: %s", exc)
            return False
        self._subscription = subscription
        self._synced = False
        return True

    def _handle(self, message: dict[str, Any], now: float) -> None:
        kind = message["type"]
        if kind == "message":
            data = message["data"]
            text = data.decode() if isinstance(data, bytes) else str(data)
            ends, _, address = text.partition(" ")
            self.note(address, float(ends))
        elif kind == "subscribe":
            # Confirmed: whatever was announced before it is in the set by now.
            entries: list[Any] = self._client().zrangebyscore(self.key, time.time(), "+inf",
                                                              withscores=True)
            for member, ends_at in entries:
                self.note(member.decode() if isinstance(member, bytes) else member, ends_at)
            self._synced = True
            self._last_pong = now
            self._prune()
        elif kind == "pong":
            self._last_pong = now

    def _prune(self) -> None:
        if len(self._until) > _PRUNE_AT:
            ended = time.time()
            self._until = {a: u for a, u in self._until.items() if u > ended}

    def _drop(self) -> None:
        subscription, self._subscription = self._subscription, None
        self._synced = False
        if subscription is not None:
            try:
                subscription.close()
            except (RedisError, OSError):
                logger.debug("closing the lost subscription", exc_info=True)
