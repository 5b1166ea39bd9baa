"""Site API keys, checked on every request without a control-database read each time.

A key's hash maps to its site's tenant id and key generation, cached per worker for
KEY_CACHE_SECONDS and in Redis for KEY_REDIS_SECONDS (keys of ``settings.SHARDSVC``, defaults in
`shards.runtime.Conf`). Saving a Site (key rotation) marks its old hash as no site's key in
Redis, so a rotated key stops working within KEY_CACHE_SECONDS.

The generation is a property of the key (a rotation makes a new key and a new generation), so a
cached pair is never stale while its key is valid: user tokens are checked against it with no
query of their own.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple, cast

from django.core.cache import cache
from django.db import transaction
from django_redis.cache import RedisCache

from shards import redisguard
from shards.aliases import CONTROL_ALIAS
from shards.runtime import Conf, Slot, runtime
from shards.ttlcache import TtlCache
from sites.models import KEY_PREFIX, Site, hash_key

_NO_SITE = (0, 0)  # cached "this hash is no site's key"


class KeyOwner(NamedTuple):
    tenant_id: int
    generation: int


# What Site.new_key makes: the prefix and token_urlsafe(32), 43 characters of base64url.
KEY_SHAPE = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]{43}")


def _build_key_cache(conf: Conf) -> TtlCache[str, tuple[int, int]]:
    return TtlCache(ttl=conf.key_cache_seconds)


# This worker's cache: key hash -> (tenant id, generation), or _NO_SITE.
_local: Slot[TtlCache[str, tuple[int, int]]] = runtime.slot("site_keys", _build_key_cache)


def _cache_key(key_hash: str) -> str:
    # v2: the value is (tenant id, generation); v1 values were a bare tenant id.
    return f"site-key:v2:{key_hash}"


def owner_of_key(raw_key: str) -> KeyOwner | None:
    """The site (tenant id) this key belongs to and the key's generation, or None."""
    if not KEY_SHAPE.fullmatch(raw_key):
        return None  # can never be a key: no cache entry, no lookup
    key_hash = hash_key(raw_key)
    # One fill per key at a time in this worker; the others wait for it rather than all asking
    # Redis (and the database) at once. No stale answers: a rotated key must stop working
    # within KEY_CACHE_SECONDS.
    tenant_id, generation = _local.get().get_or_fill(key_hash, lambda: _fetch_owner(key_hash))
    return KeyOwner(tenant_id, generation) if tenant_id else None


def known_owner_of_key(raw_key: str) -> KeyOwner | None:
    """The key's site if this worker's cache holds it as a site's key now, else None (not
    known here: a guess, a key not seen lately, an expired entry); no I/O at all. A request
    with such a key puts no lookup at stake, which lets its throttle check wait for a Redis
    read it makes anyway (sites/throttle.py)."""
    if len(raw_key) > 200 or not KEY_SHAPE.fullmatch(raw_key):
        return None
    found, owner = _local.get().lookup(hash_key(raw_key))
    if not found or owner is None or not owner[0]:
        return None
    return KeyOwner(*owner)


def _fetch_owner(key_hash: str) -> tuple[int, int]:
    owner = cache.get(_cache_key(key_hash))
    if owner is not None:
        return owner  # what this module stored: (tenant id, generation)
    # The primary, not a replica: a key made a moment ago must work at once, and the answer is
    # cached right after.
    row = Site.objects.using(CONTROL_ALIAS).filter(api_key_hash=key_hash)
    found_row = row.values_list("tenant_id", "key_generation").first()
    owner = (found_row[0], found_row[1]) if found_row else _NO_SITE
    # add, not set: never overwrite what a rotation wrote meanwhile (see forget).
    cache.add(_cache_key(key_hash), owner, timeout=runtime.conf().key_redis_seconds)
    return owner


def forget(sender: Any, instance: Site, **kwargs: Any) -> None:
    """After a Site is saved (and committed): its current key is looked up afresh, and a key it
    replaced is marked as no site's key in Redis. A mark rather than a delete: a lookup that
    read the row before the rotation committed would otherwise put the old key (and with it
    the old generation's user tokens) back into Redis for KEY_REDIS_SECONDS. Redis may be
    unreachable at that moment: the writes are then replayed once it answers, else a rotated key
    would keep working from Redis for KEY_REDIS_SECONDS after it comes back."""
    current = instance.api_key_hash
    previous = getattr(instance, "_previous_hash", None)
    redis_seconds = runtime.conf().key_redis_seconds

    def invalidate() -> None:
        if previous and previous != current:
            # The raw client raises on failure (the cache itself ignores errors), so a failed
            # mark is deferred rather than lost; the value is encoded as the cache would.
            previous_key = cache.make_key(_cache_key(previous))
            # settings.CACHES makes the default cache django-redis's, which has the client.
            mark = cast(RedisCache, cache).client.encode(_NO_SITE)
            redisguard.write_or_defer(
                previous_key,
                lambda: redisguard.client().set(previous_key, mark, ex=redis_seconds),
            )
        current_key = cache.make_key(_cache_key(current))
        redisguard.write_or_defer(current_key,
                                  lambda: redisguard.client().delete(current_key))
        _local.get().discard(current, previous or "")

    transaction.on_commit(invalidate, using=kwargs.get("using") or CONTROL_ALIAS)
