"""Site API keys, checked on every request without a control-database read each time.

A key's hash maps to its site's tenant id, cached per worker for KEY_CACHE_SECONDS and in Redis.
Saving a Site (key rotation) drops both its old and new hash from Redis, so a rotated key stops
working within KEY_CACHE_SECONDS.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.core.cache import cache

from shards import redisguard
from sites.models import Site, hash_key

KEY_CACHE_SECONDS = 10.0
REDIS_SECONDS = 300
_NO_SITE = 0  # cached "this hash is no site's key"
_local: dict[str, tuple[float, int]] = {}
_lock = threading.Lock()


def _cache_key(key_hash: str) -> str:
    return f"site-key:{key_hash}"


def tenant_for_key(raw_key: str) -> int | None:
    """The tenant id of the site this key belongs to, or None for no site's key."""
    key_hash = hash_key(raw_key)
    now = time.monotonic()
    hit = _local.get(key_hash)
    if hit is None or hit[0] <= now:
        tenant_id = cache.get(_cache_key(key_hash))
        if tenant_id is None:
            # The primary, not a replica: a key made a moment ago must work at once, and
            # the answer is cached right after.
            row = Site.objects.using("default").filter(api_key_hash=key_hash)
            tenant_id = row.values_list("tenant_id", flat=True).first() or _NO_SITE
            cache.set(_cache_key(key_hash), tenant_id, timeout=REDIS_SECONDS)
        with _lock:
            if len(_local) > 100_000:
                _local.clear()
            _local[key_hash] = (now + KEY_CACHE_SECONDS, tenant_id)
        hit = _local[key_hash]
    return hit[1] or None


def forget(sender: Any, instance: Site, **kwargs: Any) -> None:
    for key_hash in {instance.api_key_hash, getattr(instance, "_previous_hash", None)}:
        if key_hash:
            # Redis may be unreachable now: the delete is then replayed once it answers, else a
            # rotated key would keep working from Redis for REDIS_SECONDS after it comes back.
            redis_key = cache.make_key(_cache_key(key_hash))
            redisguard.write_or_defer(redis_key, lambda k=redis_key: redisguard.client().delete(k))
            with _lock:
                _local.pop(key_hash, None)
