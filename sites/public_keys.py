"""Publishable keys and the browser origins each site allows, checked on every request without a
control-database read each time.

A publishable key (`pk_...`) sits in the site's web pages, so it proves nothing about who calls:
it only names the site. What it may do is limited where it is checked (comments/auth.py) to what
a browser page needs, and only from a page of one of the site's `allowed_origins`, which the CORS
answers (sites/cors.py) read from here too. Both lookups are cached per worker for
KEY_CACHE_SECONDS and in Redis for KEY_REDIS_SECONDS; saving a Site drops its entries, so a
changed origin list or a new key applies within KEY_CACHE_SECONDS.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from django.core.cache import cache
from django.db import transaction

from shards.aliases import CONTROL_ALIAS
from shards.runtime import Conf, Slot, runtime
from shards.ttlcache import TtlCache
from sites.models import PUBLIC_KEY_PREFIX, Site

# What Site.new_public_key makes: the prefix and token_urlsafe(18), 24 characters of base64url.
PUBLIC_KEY_SHAPE = re.compile(re.escape(PUBLIC_KEY_PREFIX) + r"[A-Za-z0-9_-]{24}")
MAX_ORIGINS = 20
# scheme://host[:port], nothing else: what browsers send in the Origin header.
_ORIGIN_SHAPE = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?")


class PublicKeyOwner(NamedTuple):
    tenant_id: int
    generation: int  # of the site's secret key: user tokens are checked against it
    origins: frozenset[str]


# Cached: (tenant id, generation, origins); tenant id 0 when no site has the key.
_Entry = tuple[int, int, tuple[str, ...]]
_NONE: _Entry = (0, 0, ())


def _build_cache(conf: Conf) -> TtlCache[str, _Entry]:
    return TtlCache(ttl=conf.key_cache_seconds)


_local: Slot[TtlCache[str, _Entry]] = runtime.slot("site_public_keys", _build_cache)


def normalize_origin(raw: str) -> str:
    """The origin as a browser sends it (lower-case scheme and host, no path, no default port),
    or ValueError saying what an origin looks like."""
    value = raw.strip().lower().rstrip("/")
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or not _ORIGIN_SHAPE.fullmatch(value) or parts.path:
        raise ValueError(f"{raw[:100]!r} is not an origin: write scheme://host[:port], "
                         "e.g. https://blog.example or http://localhost:8080")
    default = {"http": 80, "https": 443}[parts.scheme]
    if parts.port == default:
        value = f"{parts.scheme}://{parts.hostname}"
    return value


def _lookup(cache_key: str, load: Any) -> _Entry:
    """This worker's entry, else Redis's, else the control primary's row (cached in both); one
    fill per key at a time, as for secret keys (sites/keys.py)."""

    def fill() -> _Entry:
        stored = cache.get(f"site-public:v1:{cache_key}")
        if stored is None:
            # The primary, not a replica: a key or origin set a moment ago must work at once.
            row = load(Site.objects.using(CONTROL_ALIAS))
            stored = (row[0], row[1], tuple(row[2] or ())) if row else _NONE
            cache.add(f"site-public:v1:{cache_key}", stored,
                      timeout=runtime.conf().key_redis_seconds)
        return (int(stored[0]), int(stored[1]), tuple(stored[2]))

    return _local.get().get_or_fill(cache_key, fill)


_FIELDS = ("tenant_id", "key_generation", "allowed_origins")


def owner_of_public_key(raw_key: str) -> PublicKeyOwner | None:
    """The site a publishable key names, with its allowed origins; None for no site's key."""
    if not PUBLIC_KEY_SHAPE.fullmatch(raw_key):
        return None  # can never be a key: no cache entry, no lookup
    tenant_id, generation, origins = _lookup(
        f"key:{raw_key}",
        lambda rows: rows.filter(public_key=raw_key).values_list(*_FIELDS).first())
    return PublicKeyOwner(tenant_id, generation, frozenset(origins)) if tenant_id else None


def allowed_origins(tenant_id: int) -> frozenset[str]:
    """The browser origins a site's pages are served from (none: no browser may call)."""
    _, _, origins = _lookup(
        f"site:{tenant_id}",
        lambda rows: rows.filter(tenant_id=tenant_id).values_list(*_FIELDS).first())
    return frozenset(origins)


def forget(sender: Any, instance: Site, **kwargs: Any) -> None:
    """After a Site is saved (and committed): its key and origins are looked up afresh. A key it
    replaced stays cached as the site's for at most KEY_CACHE_SECONDS (publishable keys are
    public: replacing one is about tidiness, not a leak)."""
    keys = [f"site:{instance.tenant_id}"]
    if instance.public_key:
        keys.append(f"key:{instance.public_key}")
    previous = getattr(instance, "_previous_public_key", None)
    if previous:
        keys.append(f"key:{previous}")

    def invalidate() -> None:
        cache.delete_many([f"site-public:v1:{key}" for key in keys])
        _local.get().discard(*keys)

    transaction.on_commit(invalidate, using=kwargs.get("using") or CONTROL_ALIAS)
