"""Verification of a move resumed after the flip, when the target's snapshot taken at the flip
is gone with the command that held it.

The source is frozen since the fence (its rows are fenced for good after the flip), but the
target has served the tenant since: new rows, updates, deletes. What can still be compared is
every target row *not written since the flip*: the flip recorded the target's transaction
snapshot (`MoveJob.flip_snapshot`), and a row whose `xmin` that snapshot sees has not been
inserted or updated since. So, per table:

- target: rows unchanged since the flip (checksummed), and the ids of rows written since;
- source: every row except those ids (an updated row's flip-time content is gone: its
  existence on the target is all that is known, and it is counted, not compared).

Equal buckets prove the copy for every row that still exists unchanged. A bucket that differs
may be a row deleted since the flip, or one the copy lost: the two cannot be told apart, so
the move ends "unverified" and keeps the source rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrations_tools.verify import table_checksums

# The snapshot (the statement's one parameter, in this join) and two figures of the current
# xid, computed once per statement for UNCHANGED:
# - cur: the current xid, 64-bit, whose epoch widens a row's 32-bit xmin;
# - settled: the age of the snapshot's xmin. A row whose xmin is older (a greater age) was
#   committed or aborted before the snapshot was taken: visible in it, no need to ask
#   pg_visible_in_snapshot(), whose casts cost more than the scan (a 230k-row range: 126 ms
#   with them for every row, 50 ms with this test first).
CURRENT_XID = sql.SQL(
    "CROSS JOIN (SELECT s.snap, pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS cur, "
    "age((pg_snapshot_xmin(s.snap)::text::bigint %% 4294967296)::text::xid) AS settled "
    "FROM (SELECT %s::pg_snapshot AS snap) s) x")
# Whether the row's xmin is visible in the snapshot: its 32-bit xmin widened to the 64-bit xid
# that pg_visible_in_snapshot() takes (the epoch is that of the current xid, or the one before
# for an xid numerically above it: written before the last wraparound). Frozen and special
# xids (< 3) come out old, hence visible (age() gives them the largest age).
UNCHANGED = sql.SQL(
    "(age(t.xmin) > x.settled OR pg_visible_in_snapshot(greatest((x.cur >> 32 << 32) + "
    "t.xmin::text::bigint - CASE WHEN t.xmin::text::bigint > (x.cur & 4294967295) THEN "
    "4294967296 ELSE 0 END, 0)::text::xid8, x.snap))")


@dataclass
class ResumedDiff:
    table: str
    source_rows: int  # source rows compared (all but those written on the target since)
    target_rows: int  # target rows unchanged since the flip
    written_since: int  # target rows inserted or updated since the flip: not comparable
    bad_buckets: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.source_rows == self.target_rows and not self.bad_buckets


def current_snapshot(conn: psycopg.Connection[Any]) -> str:
    """The transaction snapshot of `conn` as text (call it inside the snapshot's transaction)."""
    row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
    assert row is not None
    return str(row[0])


def compare_since_flip(source: psycopg.Connection[Any], target: psycopg.Connection[Any],
                       tables: list[str], tenant_id: int, flip_snapshot: str
                       ) -> list[ResumedDiff]:
    """Compare the frozen source with the target's rows unchanged since `flip_snapshot`.
    `target` must be in a REPEATABLE READ transaction, so that the ids written since and the
    checksums of the others come from one snapshot."""
    diffs = []
    for table in tables:
        written = [int(r[0]) for r in target.execute(
            sql.SQL("SELECT t.id FROM {} t {} WHERE NOT {} AND t.tenant_id = %s").format(
                sql.Identifier(table), CURRENT_XID, UNCHANGED),
            [flip_snapshot, tenant_id]).fetchall()]
        after = table_checksums(target, table, tenant_id, joined=CURRENT_XID,
                                condition=UNCHANGED, params=[flip_snapshot])
        # NOT IN over a subquery: PostgreSQL hashes it, where `<> ALL(array)` scans per row.
        before = table_checksums(source, table, tenant_id,
                                 condition=sql.SQL("t.id NOT IN (SELECT unnest(%s::bigint[]))"),
                                 params=[written])
        bad = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        diffs.append(ResumedDiff(table, sum(c for c, _ in before.values()),
                                 sum(c for c, _ in after.values()), len(written), bad))
    return diffs
