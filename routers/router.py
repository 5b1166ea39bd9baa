"""The database router: where every query goes. No SQL here, no settings reads per call: the
shard map, the current tenant and the replica health (the runtime registry's, shards.runtime,
so a test can inject a fake) are all in memory.

    write                              -> the tenant's shard primary (control models: default)
    read inside atomic() on the primary -> that primary
    read after a write in this request  -> that primary
    read with a causal token            -> a replica that replayed past it, else the primary
    read                                -> a healthy replica within the lag bound, else primary
"""

from __future__ import annotations

import random
from typing import Any

from django.db import connections
from django.db.models import Model

from routers.context import primary_pinned
from routers.state import current_state
from shards.aliases import CONTROL_ALIAS
from shards.errors import CrossShardRelation, NoTenantContext, WrongTenant
from shards.preparation import sharded_apps
from shards.runtime import replica_health
from shards.sharded import ShardedModel
from shards.tenancy import current_tenant
from shards.topology import get_shard_map


def is_sharded(model: type) -> bool:
    return issubclass(model, ShardedModel)


class ShardRouter:
    def _cluster(self, model: type[Model], hints: dict[str, Any]) -> tuple[str, int]:
        """(cluster name, the tenant's minimum WAL position) for a query on `model`."""
        if not is_sharded(model):
            return CONTROL_ALIAS, 0
        entry = current_tenant()
        instance = hints.get("instance")
        owner = getattr(instance, "tenant_id", None) if instance is not None else None
        if entry is None:
            # A row loaded earlier (e.g. a related object) knows its shard; anything else is a
            # query nobody scoped, and guessing a shard would be a silent wrong answer.
            loaded_from = getattr(getattr(instance, "_state", None), "db", None)
            if owner is not None and loaded_from:
                return get_shard_map().cluster_of(loaded_from).name, 0
            raise NoTenantContext(model._meta.label)
        if owner is not None and owner != entry.id:
            raise WrongTenant(
                f"{model._meta.label} of tenant {owner} used while tenant {entry.slug} "
                f"({entry.id}) is current"
            )
        return entry.shard, entry.min_lsn

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        # Only where: the request counts as having written once SQL that writes has run
        # (routers.writes), not when a write is merely planned (get_or_create finding its row).
        cluster, _ = self._cluster(model, hints)
        return cluster  # a cluster's name is its primary's alias

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        cluster, min_lsn = self._cluster(model, hints)
        return choose_read_alias(cluster, min_lsn=min_lsn)

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        db1, db2 = obj1._state.db, obj2._state.db
        if not db1 or not db2:
            return None
        shard_map = get_shard_map()
        if shard_map.cluster_of(db1).name != shard_map.cluster_of(db2).name:
            raise CrossShardRelation(
                f"{obj1._meta.label} on {db1} and {obj2._meta.label} on {db2} are on different "
                "databases: relations never cross shards"
            )
        return True

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool:
        server = get_shard_map().server(db)
        if server.role != "primary":
            return False
        if app_label in sharded_apps():
            return db != CONTROL_ALIAS
        return db == CONTROL_ALIAS


def choose_read_alias(cluster: str, *, min_lsn: int = 0) -> str:
    """The alias a read on `cluster` should use, and the reason, recorded for metrics."""
    alias, reason = explain_read_choice(cluster, min_lsn=min_lsn)
    state = current_state()
    if state is not None:
        state.note_read(alias, reason)
    return alias


def position_out_of_reach(cluster: str, position: int) -> bool:
    """No server of `cluster` can serve a read that must see `position` now: no usable replica
    has replayed it and the primary is not answering (failing over, or gone)."""
    return replica_health().out_of_reach(cluster, position)


def explain_read_choice(cluster: str, *, min_lsn: int = 0) -> tuple[str, str]:
    if primary_pinned():
        return cluster, "pinned"
    if connections[cluster].in_atomic_block:
        return cluster, "in_transaction"
    state = current_state()
    if state is not None:
        if state.wrote_to(cluster):
            return cluster, "wrote_in_request"
        if state.distrust_replicas:
            return cluster, "bad_token"
        min_lsn = state.min_position(cluster, min_lsn)
    usable = replica_health().usable_replicas(cluster, min_lsn=min_lsn)
    if not usable:
        return cluster, "no_replica_caught_up" if min_lsn else "no_healthy_replica"
    return random.choice(usable), "replica"
