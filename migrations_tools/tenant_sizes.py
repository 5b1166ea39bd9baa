"""Rows and bytes of a few tenants, read from their shards (the admin's tenant list).

One query per shard and table for all the tenants asked about, over the service's own
connections (the page is served by a worker); a shard that cannot answer leaves its tenants
unmeasured instead of failing the page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import DatabaseError, connections

from migrations_tools.tenant_rows import sharded_tables
from shards.errors import UnknownShard
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.admin")


def tenant_sizes(tenants: Iterable[Any]) -> dict[int, tuple[int, int]]:
    """tenant id -> (rows, bytes of row data: pg_column_size of each row) on its shard."""
    by_shard: dict[str, list[int]] = {}
    for tenant in tenants:
        by_shard.setdefault(tenant.shard, []).append(tenant.pk)
    tables = sharded_tables()
    found: dict[int, tuple[int, int]] = {}
    for shard, ids in by_shard.items():
        try:
            alias = get_shard_map().shard(shard).primary.alias
            measured = {tenant_id: (0, 0) for tenant_id in ids}
            connection = connections[alias]
            with connection.cursor() as cursor:
                for table in tables:
                    cursor.execute(
                        "SELECT tenant_id, count(*), coalesce(sum(pg_column_size(t.*)), 0) "
                        f"FROM {connection.ops.quote_name(table)} t "
                        "WHERE tenant_id = ANY(%s) GROUP BY tenant_id", [ids])
                    for tenant_id, rows, size in cursor.fetchall():
                        before = measured[int(tenant_id)]
                        measured[int(tenant_id)] = (before[0] + int(rows),
                                                    before[1] + int(size))
        except (DatabaseError, UnknownShard):
            logger.warning("could not measure the tenants of %s", shard, exc_info=True)
            continue
        found.update(measured)
    return found
