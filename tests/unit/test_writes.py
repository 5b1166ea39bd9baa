"""`is_write` (routers/writes.py): which statements mark a shard as written in this request."""

from __future__ import annotations

import pytest

from routers.writes import is_write


@pytest.mark.parametrize(
    "sql",
    [
        'INSERT INTO "comments_comment" ("id") VALUES (%s)',
        'UPDATE "comments_thread" SET "title" = %s',
        'DELETE FROM "comments_comment" WHERE "id" = %s',
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "CREATE TABLE t (id int)",
        "ALTER TABLE t ADD COLUMN x int",
        "DROP TABLE t",
        "TRUNCATE t",
        "COPY t FROM STDIN",
        "insert into t values (1)",  # case does not matter
        "  \n\tDELETE FROM t",  # nor leading whitespace
        "WITH moved AS (SELECT id FROM s) INSERT INTO t SELECT id FROM moved",
        "WITH gone AS (SELECT 1) DELETE FROM t WHERE id IN (SELECT * FROM gone)",
        "with x as (select 1) update t set a = 1",
        # A data-modifying CTE, written as PostgreSQL's docs write it: no space after "(".
        "WITH gone AS (DELETE FROM t WHERE id = 1 RETURNING id) SELECT * FROM gone",
        "WITH x AS (\nUPDATE t SET a = 1 RETURNING id)\nSELECT count(*) FROM x",
    ],
)
def test_writes_are_recognised(sql: str) -> None:
    assert is_write(sql) is True


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT "comments_comment"."id" FROM "comments_comment"',
        "  select 1",
        "WITH recent AS (SELECT id FROM t) SELECT * FROM recent",
        "SHOW transaction_isolation",
        "SET LOCAL statement_timeout = 1000",
        "EXPLAIN SELECT 1",
        "SELECT pg_current_wal_insert_lsn()",
        "",
        "   ",
        "SELECTED_INSERT",  # a word that merely starts like a read
    ],
)
def test_reads_and_session_statements_are_not_writes(sql: str) -> None:
    assert is_write(sql) is False
