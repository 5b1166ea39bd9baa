"""What every database needs around its migrations, done by `migrate` itself:

- before: the global id function and this database's generator id (tables use the function as a
  column default, so it must exist first); a shard's generator id comes from the registry in the
  control database, so control is migrated first;
- after: control registers every shard of the topology; on a shard, every sharded table gets
  REPLICA IDENTITY USING its unique (tenant_id, id) index. Logical replication of one tenant's
  rows needs it: with a row filter on tenant_id, PostgreSQL refuses every UPDATE and DELETE on
  the table unless the replica identity covers tenant_id. The table is new and empty here, so the
  ACCESS EXCLUSIVE lock this takes is momentary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError
from django.db import DatabaseError, connections, transaction

from shards import fence, global_ids
from shards.aliases import CONTROL_ALIAS
from shards.runtime import runtime
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.migrate")


def sharded_apps() -> frozenset[str]:
    return frozenset(runtime.conf().sharded_apps)


def ensure_registered(name: str) -> Any:
    """The registry row of a shard, giving it the next free generator id if it is new."""
    # Models: this module is imported while the apps load (shards.apps), before models can be.
    from shards.models import Shard

    with _registry_errors(), transaction.atomic(using=CONTROL_ALIAS):
        existing = Shard.objects.using(CONTROL_ALIAS).filter(name=name).first()
        if existing is not None:
            return existing
        # Serialize allocations: two migrate runs must not hand out the same id.
        with connections[CONTROL_ALIAS].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('shardsvc.registry'))")
        last = Shard.objects.using(CONTROL_ALIAS).order_by("-generator_id").first()
        next_id = (last.generator_id if last else global_ids.CONTROL_GENERATOR_ID) + 1
        if next_id > global_ids.MAX_GENERATOR_ID:
            raise CommandError("no global id generator left for a new shard")
        return Shard.objects.using(CONTROL_ALIAS).create(name=name, generator_id=next_id)


def register_shards(names: Sequence[str]) -> dict[str, int]:
    """The generator id of each shard in `names`, registering new ones, in one transaction."""
    from shards.models import Shard

    with _registry_errors(), transaction.atomic(using=CONTROL_ALIAS):
        known = dict(Shard.objects.using(CONTROL_ALIAS).filter(name__in=list(names))
                     .values_list("name", "generator_id"))
        for name in names:
            if name not in known:
                known[name] = ensure_registered(name).generator_id
    return known


@contextmanager
def _registry_errors() -> Iterator[None]:
    try:
        yield
    except DatabaseError as exc:
        if "shards_shard" in str(exc):
            raise CommandError(
                "the control database is not migrated yet: run "
                "`manage.py migrate --database default` (or migrate_shards) before the shards"
            ) from exc
        raise


def before_migrate(sender: Any, using: str, **kwargs: Any) -> None:
    """`shard_generators` (name -> generator id), when the sender has it: migrate_shards reads
    the registry for all its shards at once (register_shards) instead of once per shard."""
    shard_map = get_shard_map()
    server = shard_map.server(using)
    if server.role != "primary":
        raise CommandError(f"{using} is a replica: replicas are never migrated, they follow "
                           "their primary")
    if using == CONTROL_ALIAS:
        global_ids.install(using, generator_id=global_ids.CONTROL_GENERATOR_ID, name=using)
        return
    generator_id = (kwargs.get("shard_generators") or {}).get(using)
    if generator_id is None:
        generator_id = ensure_registered(using).generator_id
    global_ids.install(using, generator_id=generator_id, name=using)


def after_migrate(sender: Any, using: str, **kwargs: Any) -> None:
    if using == CONTROL_ALIAS:
        for name in get_shard_map().shard_names:
            ensure_registered(name)
        return
    models = sharded_models()
    # One transaction, so one commit (a wait for the disk) rather than one per statement.
    with transaction.atomic(using=using):
        for model in models:
            set_replica_identity(using, model)
        fence.install(using, [m._meta.db_table for m in models])


def sharded_models() -> list[Any]:
    # Models: this module is imported while the apps load (shards.apps), before models can be.
    from shards.sharded import ShardedModel

    return [m for m in apps.get_models() if issubclass(m, ShardedModel)]


def replica_identity_index(model: Any) -> str:
    for constraint in model._meta.constraints:
        if constraint.name.endswith("_tenant_uniq"):
            return constraint.name
    raise ImproperlyConfigured(f"{model._meta.label} lost its (tenant_id, id) unique constraint")


def set_replica_identity(alias: str, model: Any) -> None:
    table = model._meta.db_table
    index = replica_identity_index(model)
    quote = connections[alias].ops.quote_name
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT c.relreplident, i.indexrelid::regclass::text FROM pg_class c "
            "LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisreplident "
            "WHERE c.oid = to_regclass(%s)",
            [table],
        )
        row = cursor.fetchone()
        if row is None:
            return  # not created on this database (yet)
        if row == ("i", index):
            return
        cursor.execute(
            f"ALTER TABLE {quote(table)} REPLICA IDENTITY USING INDEX {quote(index)}"
        )
        logger.info("%s: %s replica identity set to %s", alias, table, index)


def check_sharded_apps() -> None:
    """A sharded model outside SHARDED_APPS (or the reverse) would be migrated to the wrong
    databases; refuse to start instead."""
    # Models: this module is imported while the apps load (shards.apps), before models can be.
    from shards.sharded import ShardedModel

    declared = sharded_apps()
    for model in apps.get_models(include_auto_created=True):
        label = model._meta.app_label
        is_sharded = issubclass(model, ShardedModel)
        if is_sharded and label not in declared:
            raise ImproperlyConfigured(
                f"{model._meta.label} is a ShardedModel but app {label!r} is not in "
                "settings.SHARDSVC['SHARDED_APPS']: add it there"
            )
        if label in declared and not is_sharded and not model._meta.auto_created:
            raise ImproperlyConfigured(
                f"{model._meta.label} lives in sharded app {label!r} but is not a ShardedModel: "
                "derive it from shards.sharded.ShardedModel or move it to a control app"
            )
