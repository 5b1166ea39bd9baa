"""A tenant's rows on one shard: which tables hold them, counting them, deleting them in batches.

Moves delete a moved tenant's rows from the source; `move_tenant`, `rebalance` and `shard_status`
count them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from shards import pg
from shards.preparation import sharded_models

Progress = Callable[[str], None]


def sharded_tables() -> list[str]:
    """Tables of sharded models, those that reference others first (the order to delete in)."""
    models = sharded_models()
    tables = {m._meta.db_table: m for m in models}

    def depth(model: Any, seen: frozenset[str] = frozenset()) -> int:
        parents = [f.related_model for f in model._meta.get_fields()
                   if f.many_to_one and f.concrete and f.related_model is not model
                   and f.related_model._meta.db_table in tables
                   and f.related_model._meta.db_table not in seen]
        return 1 + max((depth(p, seen | {model._meta.db_table}) for p in parents), default=0)

    return sorted(tables, key=lambda t: (-depth(tables[t]), t))


def tenant_rows(conn: psycopg.Connection[Any], tables: list[str], tenant_id: int) -> int:
    total = 0
    for table in tables:
        total += pg.fetch_value(
            conn,
            sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(sql.Identifier(table)),
            [tenant_id],
        )
    return total


def delete_tenant_rows(conn: psycopg.Connection[Any], tables: list[str], tenant_id: int, *,
                       batch: int, pause: float, progress: Progress | None = None) -> int:
    """Delete a tenant's rows in small transactions, children first and newest first (a reply's
    id is always above its parent's), past the fence of a moved tenant."""
    deleted = 0
    for table in tables:
        query = sql.SQL(
            "DELETE FROM {t} WHERE tenant_id = %s AND id IN "
            "(SELECT id FROM {t} WHERE tenant_id = %s ORDER BY id DESC LIMIT %s)"
        ).format(t=sql.Identifier(table))
        while True:
            with conn.transaction():
                conn.execute("SET LOCAL shardsvc.fence_bypass = 'on'")
                count = conn.execute(query, [tenant_id, tenant_id, batch]).rowcount
            deleted += count
            if count < batch:
                break
            if progress:
                progress(f"deleted {deleted} rows")
            time.sleep(pause)
    return deleted
