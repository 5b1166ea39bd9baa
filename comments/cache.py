"""Hot thread pages in Redis.

Keys carry the site's directory version (a move never serves a page cached from the old shard),
and each page is stored with the thread's write mark it was built at: the WAL position of the
thread's latest write on the shard primary. A write raises the mark, so a page built before it
no longer matches and is rebuilt; one MGET reads the mark and the page together. A page is
filled only from a database that has replayed the mark (the request's causal minimum is raised
to it), so a reader racing a writer cannot cache a page that misses the write. Concurrent
misses on one page elect one filler with a Redis lock; the others wait for its page instead of
all reading the database. Within a worker, concurrent misses of one page at one mark go through
that election once: the others wait in the process for its outcome (a waiter polling Redis
cost two round trips every POLL; on pages written 25 times a second, as many reads waited as
filled).

Pages are kept as the JSON bytes the endpoint answers with (rendered through its schema once,
when the page is built), so a hit is returned as it is stored: no parsing, no re-validation.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from comments import live
from comments.metrics import record_cache
from routers.router import position_out_of_reach
from routers.state import current_state
from shards import redisguard
from shards.directory import TenantEntry
from shards.redisguard import RedisUnavailable
from shards.ttlcache import TtlCache
from sites.throttle import DeferredRead

logger = logging.getLogger("shardsvc.cache")

PAGE_TTL = 300
MARK_TTL = 86_400
FILL_LOCK_MS = 5_000
WAIT_FOR_FILL = 2.0
POLL = 0.01

# The misses in flight in this process, by page and mark: single-flight only (nothing is kept:
# ttl 0), so a second miss of a page at a mark waits for the first one's page.
_MISSES: TtlCache[tuple[str, int], tuple[bytes, str]] = TtlCache(ttl=0, max_entries=1_000)

_RAISE_MARK = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return tonumber(ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return current
"""


# A write's two Redis updates in one round trip: _RAISE_MARK on KEYS[1] (ARGV[1], ARGV[2]), then
# the thread's live event (comments.live.Event): appended to its history stream KEYS[2]
# (payload ARGV[3], kept to ARGV[5] entries for ARGV[6] seconds) and published on ARGV[4].
_RAISE_MARK_AND_PUBLISH = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[4], id .. ' ' .. ARGV[3])
return id
"""


def _record(result: str) -> None:
    record_cache("thread_page", result == "hit")


def _mark_key(entry: TenantEntry, thread_id: int) -> str:
    return f"shardsvc:mark:{entry.id}:{entry.version}:{thread_id}"


def raise_mark(entry: TenantEntry, thread_id: int, lsn: int | None, *,
               event: live.Event | None = None) -> None:
    """After a committed write to the thread: newer pages only, from fresh enough databases;
    with `event`, the thread's live event is published in the same Redis call.

    If Redis cannot take it now, the raise is replayed once Redis answers (raising a mark is
    idempotent and never lowers it); until then readers bypass Redis or, on another worker that
    reaches Redis, may see the page from before this write. The event is best effort: never
    replayed (pages see the change on reload).
    """
    key = _mark_key(entry, thread_id)
    position = lsn or 1
    if event is not None:
        try:
            redisguard.client().eval(
                _RAISE_MARK_AND_PUBLISH, 2, key, event.history, position, MARK_TTL,
                event.payload, event.channel, live.HISTORY, live.HISTORY_SECONDS)
            return
        except RedisError as exc:
            live.not_published(exc)
            # The mark alone is kept to replay: a request waits for a failing Redis once, so
            # this second try fails at once (shards.redisguard).
    redisguard.write_or_defer(
        key, lambda: redisguard.client().eval(_RAISE_MARK, 1, key, position, MARK_TTL),
        rank=position,
    )


Fill = Callable[[], bytes]


def _stored(raw: bytes | str) -> bytes:
    # The raw client answers bytes (no decode_responses); typed as either.
    return raw if isinstance(raw, bytes) else raw.encode()


def _bypass(fill: Fill, exc: RedisError) -> tuple[bytes, str]:
    if not isinstance(exc, RedisUnavailable):  # the breaker logs its own opening once
        logger.warning("cache: Redis unavailable, reading the database: %s", exc)
    _record("bypass")
    return fill(), "bypass"


def _page_key(entry: TenantEntry, thread_id: int, variant: str) -> str:
    # v3: one key per page variant, holding "<mark>\n<the rendered answer>" (v2 keys held the
    # answer alone, one per mark).
    return f"shardsvc:page:v3:{entry.id}:{entry.version}:{thread_id}:{variant}"


def _page_at(raw: bytes | str | None, mark: int) -> bytes | None:
    """The stored answer if it was built at `mark` (the thread's write mark as the caller read
    it) or later: a page built at a later mark has every write up to it. A caller waiting
    for a fill may find one built after a write it has not seen; never one built before."""
    if raw is None:
        return None
    head, newline, body = _stored(raw).partition(b"\n")
    if not newline or not head.isdigit():
        return None
    return body if int(head) >= mark else None


def cached_page(entry: TenantEntry, thread_id: int, variant: str, fill: Fill, *,
                also: DeferredRead | None = None) -> tuple[bytes, str]:
    """(the page's JSON bytes, "hit" | "fill" | "wait" | "bypass"); `fill` builds and renders
    the page. Redis failing at any step means "bypass": the page comes from the database and
    Redis is left alone. `also`: the request's throttle check, read in the same round trip
    and settled before anything else (it raises Throttled for a blocked address)."""
    key = _page_key(entry, thread_id, variant)
    try:
        client = redisguard.client()
        # The mark and the page in one round trip: the page is current if built at the mark.
        if also is None:
            raw_mark, raw = client.mget(_mark_key(entry, thread_id), key)
        else:
            raw_mark, raw, counter = client.mget(_mark_key(entry, thread_id), key, also.key)
    except RedisError as exc:
        if also is not None:
            also.settle(None, unavailable=True)
        return _bypass(fill, exc)
    if also is not None:
        also.settle(counter)
    mark = int(raw_mark or 0)
    page = _page_at(raw, mark)
    if page is not None:
        _record("hit")
        return page, "hit"

    led = False

    def miss() -> tuple[bytes, str]:
        nonlocal led
        led = True
        return _miss(client, entry, key, mark, fill)

    outcome = _MISSES.get_or_fill((key, mark), miss, wait=WAIT_FOR_FILL)
    if led:
        return outcome
    _record("hit")  # another request of this worker read it for this one
    return outcome[0], "wait"


def _miss(client: Any, entry: TenantEntry, key: str, mark: int,
          fill: Fill) -> tuple[bytes, str]:
    """A page not in Redis at `mark`: filled by this request if it wins the election, else
    the elected filler's page."""
    state = current_state()
    if state is not None and mark:
        if position_out_of_reach(entry.shard, mark):
            # The primary is failing over or gone, and no replica has the mark: the last
            # positions of a primary that died may never reach one. The page comes from a
            # replica for this reader (who carries no position of its own past it, or the
            # router sends the read to the primary), and is not stored: a page that may miss a
            # write is never cached.
            _record("bypass")
            return fill(), "bypass"
        state.require_position(entry.shard, mark)
    lock = f"{key}:{mark}:fill"
    try:
        # The election and one more look, in one round trip: another filler may have stored the
        # page and dropped its lock between our read and our lock.
        pipe = client.pipeline(transaction=False)
        pipe.set(lock, "1", nx=True, px=FILL_LOCK_MS)
        pipe.get(key)
        elected, raw = pipe.execute()
    except RedisError as exc:
        return _bypass(fill, exc)
    page = _page_at(raw, mark)
    if page is not None:
        if elected:
            with contextlib.suppress(RedisError):  # else it expires after FILL_LOCK_MS
                client.delete(lock)
        _record("hit")
        return page, "hit"
    if elected:
        return _fill_elected(client, key, mark, lock, fill)
    return _wait_for_filler(client, key, mark, lock, fill)


def _fill_elected(client: Any, key: str, mark: int, lock: str,
                  fill: Fill) -> tuple[bytes, str]:
    try:
        page = fill()
    except BaseException:
        with contextlib.suppress(RedisError):  # else it expires after FILL_LOCK_MS
            client.delete(lock)
        raise
    try:
        # Stored, then the lock dropped (in this order: waiters look for the page once the
        # lock is gone), in one round trip. A slower filler of an older mark may overwrite
        # the page later: readers at the newer mark then rebuild it. Never served to a reader
        # of a later mark.
        pipe = client.pipeline(transaction=False)
        pipe.set(key, b"%d\n" % mark + page, ex=PAGE_TTL)
        pipe.delete(lock)
        pipe.execute()
    except RedisError as exc:
        logger.debug("cache: page not stored: %s", exc)  # the lock expires by itself
        _record("bypass")
        return page, "bypass"
    _record("fill")
    return page, "fill"


def _wait_for_filler(client: Any, key: str, mark: int, lock: str,
                     fill: Fill) -> tuple[bytes, str]:
    deadline = time.monotonic() + WAIT_FOR_FILL
    while time.monotonic() < deadline:
        time.sleep(POLL)  # a gevent sleep under the worker: other requests run meanwhile
        try:
            # In one round trip, the page read after the lock check: a filler stores the page
            # before it drops the lock.
            pipe = client.pipeline(transaction=False)
            pipe.exists(lock)
            pipe.get(key)
            filling, raw = pipe.execute()
            page = _page_at(raw, mark)
        except RedisError as exc:
            return _bypass(fill, exc)
        if page is not None:
            _record("hit")
            return page, "wait"
        if not filling:
            break  # the filler failed: read it ourselves
    _record("bypass")
    return fill(), "bypass"
