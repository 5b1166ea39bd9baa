"""Row-by-row comparison of one tenant's rows on two databases (in the spirit of Vitess VDiff):
per table, row counts and checksums of every row's full text over id buckets, so a difference
names the table and the bucket to look at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

BUCKETS = 16
_NOTHING = sql.SQL("")
_EVERY_ROW = sql.SQL("true")


@dataclass
class TableDiff:
    table: str
    source_rows: int
    target_rows: int
    bad_buckets: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.source_rows == self.target_rows and not self.bad_buckets


def table_checksums(conn: psycopg.Connection[Any], table: str, tenant_id: int, *,
                    joined: sql.Composable = _NOTHING,
                    condition: sql.Composable = _EVERY_ROW,
                    params: list[Any] | None = None) -> dict[int, tuple[int, int]]:
    """bucket -> (rows, checksum). The row's text form covers every column, in table order
    (identical on both sides: the same migrations made both tables). `joined` and `condition`
    narrow the rows (`t` is the table), with `params` for their placeholders, in order."""
    query = sql.SQL(
        "SELECT abs(t.id %% {n}) AS bucket, count(*), "
        "coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) "
        "FROM {table} t {joined} WHERE ({condition}) AND t.tenant_id = %s GROUP BY 1"
    ).format(n=sql.Literal(BUCKETS), table=sql.Identifier(table), joined=joined,
             condition=condition)
    rows = conn.execute(query, [*(params or []), tenant_id]).fetchall()
    return {int(b): (int(c), int(s)) for b, c, s in rows}


def compare(source: psycopg.Connection[Any], target: psycopg.Connection[Any],
            tables: list[str], tenant_id: int, *, condition: sql.Composable = _EVERY_ROW,
            params: list[Any] | None = None) -> list[TableDiff]:
    """Per table, the tenant's rows (those meeting `condition`) on both sides, by bucket."""
    diffs = []
    for table in tables:
        a = table_checksums(source, table, tenant_id, condition=condition, params=params)
        b = table_checksums(target, table, tenant_id, condition=condition, params=params)
        bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        diffs.append(TableDiff(table, sum(c for c, _ in a.values()),
                               sum(c for c, _ in b.values()), bad))
    return diffs
