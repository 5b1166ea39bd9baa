"""Server-Sent Events of a thread, from the gevent workers.

Each open page holds one HTTP response here and one small queue, nothing else: no database
connection (released before streaming), no Redis connection of its own. One greenlet per worker
holds one Redis pub/sub connection, pattern-subscribed to every thread channel, and hands each
message to the queues of that exact channel (comments/live.py names channels by tenant and
thread, so a page of one site is never handed another site's event).

A page that reconnects sends the last event id it saw (Last-Event-ID, which EventSource sends by
itself, or ?since=): the thread's Redis stream replays what came after it, then live events follow,
each sent once. If the hub's own subscription drops, every stream of the worker replays from its
last id once it is back, so a Redis blip loses no event either.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import gevent
import redis
from gevent.queue import Empty, Full, Queue
from redis.exceptions import RedisError

from comments import live
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.live")

HEARTBEAT_SECONDS = 15  # below nginx's 35 s proxy_read_timeout, and finds closed pages
# A stream ends after this long and the browser reconnects with its Last-Event-ID: a restarting
# worker's streams move to the new workers within this bound, not never.
MAX_STREAM_SECONDS = 300
QUEUE_SIZE = 200
REPLAY_LIMIT = 500
RESYNC = "resync"  # put in every queue after the hub's subscription came back


class LiveHub:
    """One per worker: the Redis subscription and the open streams' queues by channel."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: dict[str, set[Queue[Any]]] = defaultdict(set)
        self.runner: gevent.Greenlet | None = None
        self.connected = False
        # History reads (a new page's start, replays): short commands on a small shared pool.
        self.reader = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=20, timeout=2, socket_connect_timeout=1, socket_timeout=2,
            decode_responses=True))

    def subscribe(self, name: str) -> Queue[Any]:
        if self.runner is None or self.runner.dead:
            self.runner = gevent.spawn(self._run)
        queue: Queue[Any] = Queue(maxsize=QUEUE_SIZE)
        self.queues[name].add(queue)
        return queue

    def unsubscribe(self, name: str, queue: Queue[Any]) -> None:
        held = self.queues.get(name)
        if held is not None:
            held.discard(queue)
            if not held:
                del self.queues[name]

    def open_streams(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def dispatch(self, name: str, data: str) -> None:
        """Hand a published message ("<event id> <json>") to the queues of exactly `name`."""
        for queue in list(self.queues.get(name, ())):
            try:
                queue.put_nowait(data)
            except Full:
                # A page that stopped reading: it replays from its last id when it reads again.
                _put_resync(queue)

    def resync_all(self) -> None:
        for held in list(self.queues.values()):
            for queue in list(held):
                _put_resync(queue)

    def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=2,
                                              socket_timeout=None, health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe(live.CHANNEL_PREFIX + "*")
                if not self.connected:
                    self.connected = True
                    self.resync_all()  # events published while we were away
                backoff = 0.2
                for message in pubsub.listen():
                    if message.get("type") == "pmessage":
                        name, data = message["channel"], message["data"]
                        self.dispatch(name.decode() if isinstance(name, bytes) else name,
                                      data.decode() if isinstance(data, bytes) else data)
            except (RedisError, OSError) as exc:
                self.connected = False
                logger.warning("live: Redis subscription lost (%s), retrying in %.1f s",
                               exc, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


def _put_resync(queue: Queue[Any]) -> None:
    """Replace whatever waits in the queue by one resync: the stream then replays everything
    after the last event it sent, from the thread's history, in order."""
    queue.queue.clear()
    queue.put_nowait(RESYNC)


_hub: LiveHub | None = None


def hub() -> LiveHub:
    global _hub
    if _hub is None:
        _hub = LiveHub(get_shard_map().redis_url)
    return _hub


def _frame(event_id: str, data: str) -> bytes:
    return f"id: {event_id}\nevent: comment\ndata: {data}\n\n".encode()


def _history(tenant_id: int, thread_id: int, after: str | None) -> list[tuple[str, str]]:
    """The thread's events after `after`, oldest first; with None, only its latest event."""
    client = hub().reader
    key = live.history_key(tenant_id, thread_id)
    rows: list[tuple[str, dict[str, str]]] = (
        client.xrange(key, min=f"({after}", count=REPLAY_LIMIT) if after is not None
        else client.xrevrange(key, count=1))  # type: ignore[assignment]
    return [(row_id, fields["e"]) for row_id, fields in rows]


def _newer(event_id: str, than: str) -> bool:
    a, b = (tuple(int(x) for x in value.split("-")) for value in (event_id, than))
    return a > b


def event_stream(tenant_id: int, thread_id: int, since: str | None) -> Iterator[bytes]:
    """The SSE body of one open page: a replay after `since`, then live events and heartbeats."""
    name = live.channel(tenant_id, thread_id)
    the_hub = hub()
    queue = the_hub.subscribe(name)  # before reading the history: nothing falls between
    ends = time.monotonic() + MAX_STREAM_SECONDS
    try:
        last = since
        if last is None:
            # A new page starts after the thread's latest event: anything later reaches it live
            # or, if the hub was not subscribed yet, by the replay its (re)connection triggers.
            try:
                latest = _history(tenant_id, thread_id, None)
            except RedisError as exc:
                logger.warning("live: history unavailable (%s)", exc)
                latest = []
            last = latest[0][0] if latest else "0-0"
        # An id with no data sets the page's Last-Event-ID without an event; the browser
        # retries after `retry` ms when the stream ends or drops.
        yield f"retry: 1000\nid: {last}\n: open\n\n".encode()
        pending = RESYNC if since else None
        while time.monotonic() < ends:
            if pending == RESYNC:
                try:
                    for event_id, data in _history(tenant_id, thread_id, last):
                        last = event_id
                        yield _frame(event_id, data)
                except RedisError as exc:
                    logger.warning("live: replay failed (%s)", exc)
            elif pending is not None and pending != RESYNC:
                event_id, _, data = pending.partition(" ")
                if _newer(event_id, last):
                    last = event_id
                    yield _frame(event_id, data)
            try:
                pending = queue.get(timeout=HEARTBEAT_SECONDS)
            except Empty:
                pending = None
                yield b": keep-alive\n\n"
    finally:
        the_hub.unsubscribe(name, queue)
