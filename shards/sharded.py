"""The base of every sharded model: a tenant key, a global id, tenant-scoped managers, and reads
that survive a replica dying under them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.db import OperationalError, connections, models

from project.db_faults import is_connection_lost
from shards.errors import NoTenantContext, WrongTenant
from shards.global_ids import NextGlobalId
from shards.runtime import replica_health, runtime
from shards.tenancy import current_tenant
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.routing")
T = TypeVar("T")

# A read that fails on a replica is tried again (the failed replica is excluded at once), then
# lands on the primary at the latest: one replica plus the primary, with a spare attempt.
READ_ATTEMPTS = 3
# A read that finds the primary unreachable (a failover: the old primary is dead, and its only
# replica has just been promoted, so no replica is left to read from until PgBouncer points at
# the new primary) waits and is routed again, for up to FAILOVER_HOLD_SECONDS, as writes are
# held. Reads are idempotent, so any such read may run again. Waits (first, longest) in seconds.
PRIMARY_WAITS = (0.05, 0.2)  # routers.write_hold.FAILOVER_WAITS, for the same reasons


def _is_replica(alias: str) -> bool:
    return get_shard_map().server(alias).role == "replica"


class ShardedQuerySet(models.QuerySet):
    """Reads routed to a replica are retried elsewhere when the replica fails mid-request."""

    # QuerySet's own state, set in its __init__, which django-stubs leaves out: the database the
    # caller chose (using()), and whether the query must go to the primary (select_for_update).
    _db: str | None
    _for_write: bool

    def _retrying_read(self, operation: Callable[[], T]) -> T:
        if self._db is not None or self._for_write:
            return operation()  # the caller chose the database: no second guessing

        def pinned(alias: str) -> T:
            self._db = alias  # the router's choice, pinned for this attempt
            try:
                return operation()
            finally:
                self._db = None

        return retrying_read(lambda: self.db, pinned)

    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._retrying_read(super()._fetch_all)

    def count(self) -> int:
        if self._result_cache is not None:
            return len(self._result_cache)
        return self._retrying_read(super().count)

    def exists(self) -> bool:
        if self._result_cache is not None:
            return bool(self._result_cache)
        return self._retrying_read(super().exists)

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._retrying_read(lambda: super(ShardedQuerySet, self).aggregate(*args, **kwargs))

    def bulk_create(self, objs: Iterable[Any], *args: Any, **kwargs: Any) -> list[Any]:
        objs = list(objs)
        for obj in objs:
            obj.claim_for_current_tenant()
        return super().bulk_create(objs, *args, **kwargs)


def retrying_read(choose: Callable[[], str], operation: Callable[[str], T]) -> T:
    """`operation` on the alias `choose` returns (the router's choice for a read), again on
    another when it fails: a failed replica is excluded at once and the read routed again, up
    to READ_ATTEMPTS; a primary that cannot be reached (failing over) is waited for, within the
    failover hold. Reads only: they may run again."""
    attempt = 0
    started = time.monotonic()
    delay = PRIMARY_WAITS[0]
    while True:
        alias = choose()
        try:
            return operation(alias)
        except OperationalError as exc:
            attempt += 1
            if _is_replica(alias):
                if attempt >= READ_ATTEMPTS:
                    raise
                _drop_replica(alias, exc)
                continue
            hold = runtime.conf().failover_hold_seconds
            if (not is_connection_lost(exc) or connections[alias].in_atomic_block
                    or time.monotonic() + delay - started >= hold):
                raise
            _close(alias)
            time.sleep(delay)  # cooperative under gevent
            delay = min(delay * 1.5, PRIMARY_WAITS[1])


def _drop_replica(alias: str, exc: Exception) -> None:
    logger.warning("read on %s failed, retrying elsewhere: %s", alias, exc)
    replica_health().mark_failed(alias, str(exc))
    _close(alias)


def _close(alias: str) -> None:
    try:
        connections[alias].close()
    except Exception:  # the connection is already broken; the pool frees its slot
        logger.debug("closing the failed connection to %s", alias, exc_info=True)



# The managers' base is made at run time (from_queryset): mypy rejects a dynamic base [misc], and
# the plugin's typing of a named from_queryset() class loses ShardedQuerySet in get_queryset().
class ShardedManager(models.Manager.from_queryset(ShardedQuerySet)):  # type: ignore[misc]
    """The default manager: every query is scoped to the current tenant."""

    def get_queryset(self) -> ShardedQuerySet:
        entry = current_tenant()
        if entry is None:
            raise NoTenantContext(self.model._meta.label)
        queryset = super().get_queryset()
        # Scoped in place (what .filter() does to its copy): the queryset is new and nobody
        # else holds it, and this runs for every query of the service.
        queryset.query.add_q(models.Q(tenant_id=entry.id))
        return queryset


class UnscopedManager(models.Manager.from_queryset(ShardedQuerySet)):  # type: ignore[misc]
    """All tenants' rows of one shard: for admin and fan-out, with an explicit `.using()`."""


class ShardedModel(models.Model):
    id = models.BigIntegerField(primary_key=True, db_default=NextGlobalId(), editable=False)
    tenant_id = models.BigIntegerField(editable=False)

    objects = ShardedManager()
    unscoped = UnscopedManager()

    class Meta:
        abstract = True
        # The replica identity for logical replication (tenant moves): unique, over NOT NULL
        # columns, and covering tenant_id, which the publication's row filter uses.
        constraints = [
            models.UniqueConstraint(
                fields=["tenant_id", "id"], name="%(app_label)s_%(class)s_tenant_uniq"
            )
        ]

    def claim_for_current_tenant(self) -> None:
        """Stamp a new row with the current tenant, or refuse a row of another tenant."""
        entry = current_tenant()
        if entry is None:
            raise NoTenantContext(self._meta.label)
        if self.tenant_id is None:
            self.tenant_id = entry.id
        elif self.tenant_id != entry.id:
            raise WrongTenant(
                f"{self._meta.label} {self.pk} belongs to tenant {self.tenant_id}, but the "
                f"current tenant is {entry.slug} ({entry.id}): switch with `with tenant(...)`"
            )

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.claim_for_current_tenant()
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        self.claim_for_current_tenant()
        return super().delete(*args, **kwargs)
