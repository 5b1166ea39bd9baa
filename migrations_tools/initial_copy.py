"""A move's initial copy, done by the mover instead of the subscription's table sync.

The subscription's own copy (`copy_data = true`) runs one text COPY per table in a table-sync
worker, and the mover could only follow it by counting the target's rows, a scan of every
uncommitted row once a second. Here the mover creates the move's slot itself with an exported
snapshot, copies each table's tenant rows as of that snapshot in binary (no text parsing on
either side; relayed in blocks, see `copy_relay.py`), one table per session at once, and then
subscribes with `copy_data = false` from that slot: replication resumes exactly where the
snapshot ends, as the table sync's hand-off would.

The target sessions run with `session_replication_role = replica`, as the apply and table-sync
workers do, so the target's per-row triggers (the fence, foreign key checks) do not fire for rows
that were valid on the source. That setting needs a superuser (or, on PostgreSQL 15, a role
granted it); without it `supported()` says so and the move uses the subscription's copy.

An exported snapshot lives only as long as the replication session that made it: a copy cut
short (crash, error) cannot be continued, so it is started over (slot dropped, rows removed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from migrations_tools.copy_relay import relay
from shards import pg

# Rows a table's copy has written so far, by table; read by the progress callback.
Counts = dict[str, int]


def supported(target: psycopg.Connection[Any]) -> bool:
    """Whether the target session may skip per-row triggers (session_replication_role)."""
    try:
        with target.transaction():
            target.execute("SET LOCAL session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


@contextmanager
def exported_snapshot(source_dsn: str, slot: str, *, purpose: str) -> Iterator[str]:
    """Create the logical slot `slot` on the source and yield the name of the snapshot it was
    created at; the snapshot stays importable until the block ends."""
    conn = pg.connect(source_dsn, replication="database",
                      application_name=f"shardsvc {purpose}"[:63])
    try:
        row = conn.execute(sql.SQL(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')"
        ).format(sql.Identifier(slot))).fetchone()
        if row is None or not row[2]:
            raise RuntimeError(f"CREATE_REPLICATION_SLOT {slot} exported no snapshot")
        yield str(row[2])
    finally:
        conn.close()


def columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", [table],
    ).fetchall()
    return [r[0] for r in rows]


def copy_table(source_dsn: str, target_dsn: str, snapshot: str, table: str, tenant_id: int,
               counts: Counts, *, purpose: str) -> int:
    """One table's rows of the tenant, as of `snapshot`, in one target transaction."""
    name = f"shardsvc {purpose}"[:63]
    with pg.connect(source_dsn, autocommit=False, application_name=name) as src, \
            pg.connect(target_dsn, autocommit=False, application_name=name) as dst:
        src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        dst.execute("SET LOCAL session_replication_role = replica")
        names = columns(dst, table)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in names)
        copy_out = sql.SQL(
            "COPY (SELECT {cols} FROM {table} WHERE tenant_id = {tenant}) TO STDOUT "
            "(FORMAT binary)"
        ).format(cols=cols, table=sql.Identifier(table), tenant=sql.Literal(tenant_id))
        copy_in = sql.SQL("COPY {table} ({cols}) FROM STDIN (FORMAT binary)").format(
            table=sql.Identifier(table), cols=cols)
        rows = relay(src, dst, copy_out.as_bytes(src), copy_in.as_bytes(dst))
        dst.commit()
        src.rollback()
    counts[table] = rows
    return rows


def rows_in_flight(target: psycopg.Connection[Any], purpose: str) -> int:
    """Rows the copies still running have written (not yet committed) on the target."""
    return int(pg.fetch_value(
        target,
        "SELECT coalesce(sum(p.tuples_processed), 0) FROM pg_stat_progress_copy p "
        "JOIN pg_stat_activity a ON a.pid = p.pid WHERE a.application_name = %s",
        [f"shardsvc {purpose}"[:63]],
    ))


def copy_tenant(source_dsn: str, target_dsn: str, slot: str, tables: list[str], tenant_id: int,
                *, purpose: str, on_progress: Callable[[int], None] | None = None,
                every: float = 1.0) -> int:
    """Create `slot` and copy the tenant's rows of every table as of its snapshot; the rows
    copied. The slot is left for the subscription (`copy_data = false`) to stream from.
    `on_progress(rows of the tables finished)` is called every `every` seconds meanwhile."""
    counts: Counts = {}
    with exported_snapshot(source_dsn, slot, purpose=purpose) as snapshot, \
            ThreadPoolExecutor(max_workers=len(tables) or 1,
                               thread_name_prefix="move-copy") as pool:
        futures = [pool.submit(copy_table, source_dsn, target_dsn, snapshot, table, tenant_id,
                               counts, purpose=purpose) for table in tables]
        while wait(futures, timeout=every).not_done:
            if on_progress is not None:
                on_progress(sum(counts.values()))
        return sum(f.result() for f in futures)

