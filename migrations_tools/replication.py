"""Logical replication of one tenant's rows between two shard primaries, over direct DSNs.

Names: publication, subscription and slot of a move all share `shardsvc_move_<job id>`, so
anything left behind by a crash can be found and removed by name (see
migrations_tools.fleet_status).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from shards import pg

logger = logging.getLogger("shardsvc.moves")

PREFIX = "shardsvc_move_"


def connect(dsn: str, *, purpose: str) -> psycopg.Connection[Any]:
    return pg.connect(dsn, application_name=f"shardsvc {purpose}"[:63])


def create_publication(source: psycopg.Connection[Any], name: str, tables: list[str],
                       tenant_id: int) -> None:
    exists = source.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [name]).fetchone()
    if exists:
        return
    # The row filter only sends this tenant's rows; the tables' replica identity covers
    # tenant_id (see shards.preparation), so UPDATE and DELETE keep working for everyone.
    parts = sql.SQL(", ").join(
        sql.SQL("{} WHERE (tenant_id = {})").format(sql.Identifier(t), sql.Literal(tenant_id))
        for t in tables
    )
    source.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
        sql.Identifier(name), parts))


def subscription_exists(target: psycopg.Connection[Any], name: str) -> bool:
    return target.execute("SELECT 1 FROM pg_subscription WHERE subname = %s",
                          [name]).fetchone() is not None


def create_subscription(target: psycopg.Connection[Any], name: str, source_dsn: str, *,
                        copy_data: bool = True) -> None:
    """The move's subscription. With `copy_data` it creates its slot and copies the rows
    itself; without, it streams from the slot `name` that the mover's own copy created
    (see migrations_tools.initial_copy)."""
    if subscription_exists(target, name):
        return
    # synchronous_commit=on: the slot's confirmed_flush_lsn then follows what is applied
    # closely (off, it trails by hundreds of milliseconds and lengthens the cutover).
    flag = sql.SQL("true" if copy_data else "false")
    target.execute(sql.SQL(
        "CREATE SUBSCRIPTION {name} CONNECTION {dsn} PUBLICATION {name} "
        "WITH (copy_data = {flag}, create_slot = {flag}, slot_name = {slot}, "
        "synchronous_commit = 'on')"
    ).format(name=sql.Identifier(name), dsn=sql.Literal(source_dsn), slot=sql.Literal(name),
             flag=flag))


def initial_sync_done(target: psycopg.Connection[Any], name: str) -> bool:
    total, ready = pg.fetch_row(
        target,
        "SELECT count(*), count(*) FILTER (WHERE r.srsubstate = 'r') FROM pg_subscription s "
        "JOIN pg_subscription_rel r ON r.srsubid = s.oid WHERE s.subname = %s",
        [name],
    )
    return total > 0 and total == ready


def confirmed_lsn(source: psycopg.Connection[Any], slot: str) -> int | None:
    """How far the target has applied (and flushed) the source's WAL, as an integer."""
    row = source.execute(
        "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
        "WHERE slot_name = %s", [slot]
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def drop_subscription(target: psycopg.Connection[Any], name: str, *,
                      source_reachable: bool = True) -> bool:
    """Drop the subscription (and, through it, its slots on the source). With the source
    unreachable, detach the slot first: it must then be dropped on the source later."""
    row = target.execute("SELECT oid FROM pg_subscription WHERE subname = %s", [name]).fetchone()
    if row is None:
        return False
    ident = sql.Identifier(name)
    if not source_reachable:
        target.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
        target.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
    target.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
    return True


def system_identifier(conn: psycopg.Connection[Any]) -> int:
    return int(pg.fetch_value(conn, "SELECT system_identifier FROM pg_control_system()"))


def drop_publication(source: psycopg.Connection[Any], name: str) -> bool:
    row = source.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", [name]).fetchone()
    if row is None:
        return False
    source.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
    return True


def drop_slots(source: psycopg.Connection[Any], name: str, subscription_oid: int | None,
               subscriber_sysid: int | None = None) -> int:
    """The move's slot and any table-sync slots an aborted initial copy left
    (`pg_<subscription oid>_sync_<relid>_<subscriber system id>`). An orphan slot holds WAL
    forever."""
    patterns = [name]
    like = None
    if subscription_oid and subscriber_sysid:
        like = f"pg_{subscription_oid}_sync_%_{subscriber_sysid}"
    rows = source.execute(
        "SELECT slot_name, active_pid FROM pg_replication_slots "
        "WHERE slot_name = %s OR (%s::text IS NOT NULL AND slot_name LIKE %s)",
        [patterns[0], like, like],
    ).fetchall()
    for slot, active_pid in rows:
        if active_pid:
            source.execute("SELECT pg_terminate_backend(%s)", [active_pid])
        source.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    return len(rows)
