"""The tenant directory: tenant -> shard, read through two caches.

Authoritative rows live in the control database (`shards.models.Tenant`). Lookups go through an
in-process cache (per worker, `DIRECTORY_LOCAL_TTL` seconds) and Redis (`DIRECTORY_REDIS_TTL`;
both keys of ``settings.SHARDSVC``, defaults in `shards.runtime.Conf`), and only then to a
control replica (the primary only for a slug the replica does not know yet). Every change made
through this module or a `Tenant.save()` is written through to Redis with its version, and Redis
keeps the higher version, so a stale replica read can never overwrite a newer placement.

Bound: a placement change made through Django is seen by every worker within DIRECTORY_LOCAL_TTL
(plus the time one refill takes: while a worker refills an expired entry, its other requests
for that tenant use the expired one); one made with raw SQL within DIRECTORY_LOCAL_TTL +
DIRECTORY_REDIS_TTL. Routing correctness does not depend on that bound: a tenant's old shard
refuses its writes once it moves (fencing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

from django.db import transaction
from redis.exceptions import RedisError

from shards import redisguard
from shards.aliases import CONTROL_ALIAS
from shards.errors import MalformedTenantKey, UnknownTenant
from shards.placement import choose_shard
from shards.redisguard import RedisUnavailable
from shards.runtime import Conf, Slot, runtime
from shards.topology import get_shard_map
from shards.ttlcache import TtlCache

logger = logging.getLogger("shardsvc.directory")

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_TENANT_ID = (1 << 63) - 1
_LOCAL_MAX_ENTRIES = 100_000

# Set the value only if Redis holds nothing or an older version of it.
_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '"version": (%d+)'))
  if version and version > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


@dataclass(frozen=True)
class TenantEntry:
    """What routing needs to know about a tenant; immutable, safe to share between greenlets."""

    id: int
    slug: str
    shard: str
    state: str
    version: int
    min_lsn: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> TenantEntry:
        return cls(**json.loads(raw))

    @classmethod
    def from_model(cls, row: Any) -> TenantEntry:
        return cls(id=row.id, slug=row.slug, shard=row.shard, state=row.state,
                   version=row.version, min_lsn=row.min_lsn)


def parse_key(key: str | int) -> tuple[str, str | int]:
    """("id", 123) or ("slug", "acme"); MalformedTenantKey for anything else."""
    if isinstance(key, int) and not isinstance(key, bool):
        if 0 < key <= MAX_TENANT_ID:
            return "id", key
        raise MalformedTenantKey(f"tenant id {key} is out of range")
    if isinstance(key, str) and SLUG_RE.match(key):
        return "slug", key
    raise MalformedTenantKey(
        f"{key!r} is not a tenant slug: use 1-63 lowercase letters, digits and inner hyphens"
    )


class TenantDirectory:
    def __init__(self, *, local_ttl: float, redis_ttl: int, negative_ttl: float = 1.0) -> None:
        if local_ttl < 0 or redis_ttl < 1 or negative_ttl < 0:
            raise ValueError("directory TTLs must be positive")
        self.local_ttl = local_ttl
        self.redis_ttl = redis_ttl
        self.negative_ttl = negative_ttl
        self._local: TtlCache[tuple[str, str | int], TenantEntry | None] = TtlCache(
            ttl=local_ttl, max_entries=_LOCAL_MAX_ENTRIES)

    # --- reads ---
    def lookup(self, key: str | int, *, fresh: bool = False) -> TenantEntry:
        """The tenant's entry; `fresh` skips this worker's cache (after a write hit a fence)."""
        parsed = parse_key(key)
        if fresh:
            # Taken before the fetch: an entry's age counts from when it was asked for.
            now = self._local.clock()
            entry = self._fetch(parsed)
            self._remember(parsed, entry, now)
            if entry is not None:
                # Under its other key too: requests name a tenant by slug, a held write looks
                # it up by id. Left stale, the slug's entry would send this worker's next
                # requests to the old shard, each held by its fence, until it expired (170 ms
                # of such writes after a move's flip, measured).
                for other in (("id", entry.id), ("slug", entry.slug)):
                    if other != parsed:
                        self._remember(other, entry, now)
        else:
            # One fill per key at a time in this worker; requests arriving meanwhile use the
            # entry that just expired (fencing keeps a stale placement safe), so an expiry
            # costs one Redis read, not one per request in flight.
            entry = self._local.get_or_fill(
                parsed, lambda: self._fetch(parsed), ttl_of=self._ttl_of,
                stale_for=self.local_ttl)
        if entry is None:
            raise UnknownTenant(key)
        return entry

    def _fetch(self, parsed: tuple[str, str | int]) -> TenantEntry | None:
        return self._from_redis(parsed) or self._from_database(parsed)

    def _ttl_of(self, entry: TenantEntry | None) -> float:
        return self.local_ttl if entry is not None else self.negative_ttl

    def _remember(self, parsed: tuple[str, str | int], entry: TenantEntry | None,
                  now: float) -> None:
        self._local.put(parsed, entry, ttl=self._ttl_of(entry), since=now)

    def _from_redis(self, parsed: tuple[str, str | int]) -> TenantEntry | None:
        try:
            raw = redisguard.client().get(_redis_key(parsed))
        except RedisError as exc:  # Redis down must not take routing down with it
            if not isinstance(exc, RedisUnavailable):  # the breaker logs its opening once
                logger.warning("directory: Redis read failed, reading the database: %s", exc)
            return None
        return TenantEntry.from_json(raw) if raw else None

    def _from_database(self, parsed: tuple[str, str | int]) -> TenantEntry | None:
        # Models: this module is imported while the apps load (shards.apps), before models can be.
        from shards.models import Tenant

        kind, value = parsed
        lookup = {"id": value} if kind == "id" else {"slug": value}
        # Replica first (the router picks a caught-up one); a tenant created a moment ago may
        # not be there yet, so ask the primary before calling it unknown.
        row = Tenant.objects.filter(**lookup).first()
        if row is None:
            row = Tenant.objects.using(CONTROL_ALIAS).filter(**lookup).first()
        if row is None:
            return None
        entry = TenantEntry.from_model(row)
        with contextlib.suppress(RedisError):  # only a cache fill: the next miss fills it
            self._publish_redis(entry)
        return entry

    # --- writes ---
    def publish(self, entry: TenantEntry) -> None:
        """Make a changed entry visible: Redis (if newer) and this worker's cache at once.

        A change Redis cannot take now is replayed once it answers (the write keeps the higher
        version, so a late replay never undoes a newer placement); until then other workers may
        read the old entry from Redis for up to DIRECTORY_REDIS_TTL, and fencing keeps that safe.
        """
        redisguard.write_or_defer(f"tenant:{entry.id}", lambda: self._publish_redis(entry),
                                  rank=entry.version)
        now = self._local.clock()
        self._remember(("id", entry.id), entry, now)
        self._remember(("slug", entry.slug), entry, now)

    def _publish_redis(self, entry: TenantEntry) -> None:
        """Raises redis.RedisError when Redis cannot take it."""
        client = redisguard.client()
        for parsed in (("id", entry.id), ("slug", entry.slug)):
            client.eval(_SET_IF_NEWER, 1, _redis_key(parsed), entry.version,
                        entry.to_json(), self.redis_ttl)


def _redis_key(parsed: tuple[str, str | int]) -> str:
    return f"shardsvc:tenant:{parsed[0]}:{parsed[1]}"


def _build_directory(conf: Conf) -> TenantDirectory:
    return TenantDirectory(local_ttl=conf.directory_local_ttl, redis_ttl=conf.directory_redis_ttl)


_directory: Slot[TenantDirectory] = runtime.slot("directory", _build_directory)


def get_directory() -> TenantDirectory:
    """This process's directory, built from the runtime registry (shards.runtime) on first use."""
    return _directory.get()


def lookup(key: str | int, *, fresh: bool = False) -> TenantEntry:
    return get_directory().lookup(key, fresh=fresh)


def create_tenant(slug: str, *, shard: str | None = None) -> TenantEntry:
    """Register a new tenant on `shard`, or on the one the placement policy picks."""
    # Models: this module is imported while the apps load (shards.apps), before models can be.
    from shards.models import Tenant

    parse_key(slug)
    if shard is None:
        shard = choose_shard()
    else:
        get_shard_map().shard(shard)  # UnknownShard for a name not in the topology
    # The id comes back from the database default (RETURNING); the post_save signal publishes
    # the entry to the caches once the transaction commits.
    row = Tenant.objects.using(CONTROL_ALIAS).create(slug=slug, shard=shard)
    return TenantEntry.from_model(row)


def set_placement(tenant_id: int, shard: str, *, min_lsn: int | None = None,
                  state: str | None = None) -> TenantEntry:
    """Move a tenant in the directory: new shard, version + 1. Returns the new entry."""
    # Models: this module is imported while the apps load (shards.apps), before models can be.
    from shards.models import Tenant

    get_shard_map().shard(shard)  # UnknownShard for a name not in the topology
    with transaction.atomic(using=CONTROL_ALIAS):
        row = Tenant.objects.using(CONTROL_ALIAS).select_for_update().get(id=tenant_id)
        row.shard = shard
        if min_lsn is not None:
            row.min_lsn = min_lsn
        if state is not None:
            row.state = state
        row.save()  # bumps the version when the shard changes; published on commit
    return TenantEntry.from_model(row)


def on_tenant_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Write every saved placement through to the caches, also from the admin or a shell."""
    transaction.on_commit(
        lambda: get_directory().publish(TenantEntry.from_model(instance)),
        using=kwargs.get("using") or CONTROL_ALIAS,
    )
