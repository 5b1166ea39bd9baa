"""Continuous verification of a move: while the target catches up, compare id ranges whose rows
are no longer being inserted, so that problems show before the cutover and the verification
at the flip skips every range that has not changed since it was compared.

Ids are time-ordered (`shards.global_ids`): the ids made more than a settling time ago take no
new rows. A range is compared at one point of the source's history: its checksums are read in
a REPEATABLE READ transaction whose snapshot is kept, and the target is read once it has
applied everything that snapshot saw. Equal: the range is verified *as of that snapshot*.
Later, on the frozen source, a range is still verified when it holds the same number of rows
and none written since the snapshot (xmin not visible in it): then no change reached it, on the
source or (through replication, the only writer of the tenant there) on the target.

A range that differs while its source rows did not change since the snapshot is a real
difference: the move stops before the cutover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrations_tools.verify import table_checksums
from migrations_tools.verify_resumed import CURRENT_XID, UNCHANGED, current_snapshot
from shards.global_ids import first_id_at
from shards.lsn import insert_lsn

IN_RANGE = sql.SQL("t.id >= %s AND t.id < %s")


def plan_ranges(lo: int, hi: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into at most `parts` half-open ranges of (nearly) equal width, in order,
    covering it exactly; none when it is empty."""
    if hi <= lo or parts < 1:
        return []
    parts = min(parts, hi - lo)
    width, extra = divmod(hi - lo, parts)
    ranges, start = [], lo
    for index in range(parts):
        end = start + width + (1 if index < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def settled_below(now_ms: int, settle_seconds: float) -> int:
    """The first id made `settle_seconds` before `now_ms`: ids below it take no new rows."""
    return first_id_at(now_ms - round(settle_seconds * 1000))


def lowest_id(conn: psycopg.Connection[Any], tables: list[str], tenant_id: int) -> int | None:
    found = []
    for table in tables:
        row = conn.execute(sql.SQL("SELECT min(id) FROM {} WHERE tenant_id = %s").format(
            sql.Identifier(table)), [tenant_id]).fetchone()
        if row is not None and row[0] is not None:
            found.append(int(row[0]))
    return min(found) if found else None


@dataclass
class SourceSide:
    snapshot: str
    lsn: int  # past every commit the snapshot sees: the target must have applied it
    checksums: dict[str, dict[int, tuple[int, int]]]

    def rows(self) -> dict[str, int]:
        return {t: sum(c for c, _ in buckets.values()) for t, buckets in self.checksums.items()}


def read_source(conn: psycopg.Connection[Any], tables: list[str], tenant_id: int,
                id_range: tuple[int, int]) -> SourceSide:
    """The range's checksums on the source, and the snapshot they were read in."""
    isolation = conn.isolation_level
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with conn.transaction():
            snapshot = current_snapshot(conn)
            checksums = {t: table_checksums(conn, t, tenant_id, condition=IN_RANGE,
                                            params=list(id_range)) for t in tables}
            lsn = insert_lsn(conn)
    finally:
        conn.isolation_level = isolation
    return SourceSide(snapshot, lsn, checksums)


def read_target(conn: psycopg.Connection[Any], tables: list[str], tenant_id: int,
                id_range: tuple[int, int]) -> dict[str, dict[int, tuple[int, int]]]:
    return {t: table_checksums(conn, t, tenant_id, condition=IN_RANGE, params=list(id_range))
            for t in tables}


def unchanged_since(conn: psycopg.Connection[Any], tables: list[str], tenant_id: int,
                    id_range: tuple[int, int], snapshot: str, rows: dict[str, int]) -> bool:
    """Whether the source's rows in the range are those the snapshot saw: the same count in
    every table and none inserted or updated since."""
    for table in tables:
        count, written = conn.execute(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE NOT {}) FROM {} t {} "
                    "WHERE t.tenant_id = %s AND {}").format(
                UNCHANGED, sql.Identifier(table), CURRENT_XID, IN_RANGE),
            [snapshot, tenant_id, *id_range]).fetchone() or (0, 0)
        if int(written) or int(count) != rows.get(table, 0):
            return False
    return True


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open ranges sorted, with those that touch or overlap joined."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def outside(ranges: list[tuple[int, int]]) -> tuple[sql.Composable, list[Any]]:
    """A checksum condition (and its parameters) leaving out `ranges`: verified ranges are
    mostly neighbours, so joined they make a condition of a term or two per row."""
    merged = merge_ranges(ranges)
    if not merged:
        return sql.SQL("true"), []
    terms = sql.SQL(" OR ").join(sql.SQL("(t.id >= %s AND t.id < %s)") for _ in merged)
    return sql.SQL("NOT ({})").format(terms), [bound for pair in merged for bound in pair]
