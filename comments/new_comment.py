"""A top-level comment written in two round trips to its shard's primary.

Through the ORM a comment took four: psycopg's BEGIN, the thread's count update (with the
transaction's SET LOCALs), the INSERT, and the COMMIT with the primary's WAL position after it
(routers.causal.write_transaction). Here it is two messages of the simple query protocol:

    SET LOCAL ...; SET LOCAL ...; BEGIN;                 -- the connection's timeouts
    WITH counted AS (UPDATE <thread> SET comment_count = comment_count + 1
                     WHERE <tenant and id> RETURNING 1)
    INSERT INTO <comment> (<columns>) SELECT <values> FROM counted RETURNING id

    COMMIT; SELECT <the WAL insert position>             -- as write_transaction sends it

No thread row (another tenant's, or none): the UPDATE counts nothing, so nothing is inserted
either, and the INSERT returns no row.

Why not one message (the COMMIT would fit in the first): a connection lost under a message that
commits leaves its outcome unknown (`CommitOutcomeUnknown`: a 503 the client must not retry
blindly), while a connection lost before the COMMIT is sent certainly committed nothing, which
is what lets retry_writes hold and retry a write through a failover (PgBouncer answers a stopped
primary's clients with the same error it gives for a server lost mid-statement). Any error of
the first message leaves the transaction to roll back, here, before retry_writes tries again.

The values are the ORM's: each field's `pre_save` and `get_db_prep_save`, as Django's insert
compiler computes them (`created_at` is set here, not by the database); the id comes from the
column's database default, the global id generator. Both messages go through a Django cursor,
so query metrics and statement timeouts see them, and the write tracker sees the COMMIT (its
first message begins with BEGIN, which the tracker does not take for a write: the write is
noted here).
"""

from __future__ import annotations

from typing import Any

from django.db import connections
from django.db.models import Field

from comments.models import Comment, Thread
from project.pgpool.timeouts import rollback_quietly
from routers.causal import COMMIT_AND_POSITION_SQL
from routers.state import current_state
from shards.row_by_id import RowById

_THREADS = RowById(Thread)
# (statement, the fields whose values fill its INSERT's parameters), built on first use.
_statement: tuple[str, list[Field[Any, Any]]] | None = None


def _compile(alias: str) -> tuple[str, list[Field[Any, Any]]]:
    global _statement
    quote = connections[alias].ops.quote_name
    fields = [f for f in Comment._meta.concrete_fields if not f.primary_key]
    pk = Comment._meta.pk
    assert pk is not None
    count, _ = _THREADS.add_statement(alias, 0, "comment_count", 1)
    _statement = (
        f"BEGIN; WITH counted AS ({count} RETURNING 1) "
        f"INSERT INTO {quote(Comment._meta.db_table)} "
        f"({', '.join(quote(str(f.column)) for f in fields)}) "
        f"SELECT {', '.join(['%s'] * len(fields))} FROM counted "
        f"RETURNING {quote(str(pk.column))}",
        fields,
    )
    return _statement


def post_top_level(shard: str, thread_id: int, *, author: str, author_name: str,
                   body: str) -> Comment | None:
    """The current tenant's new top-level comment of thread `thread_id` on `shard`'s primary,
    with the thread's count raised, committed; None (nothing written) if there is no such
    thread. Must not run inside a transaction (it begins and commits its own)."""
    connection = connections[shard]
    if connection.in_atomic_block:
        raise RuntimeError("post_top_level commits by itself: call it outside atomic()")
    sql, fields = _statement or _compile(shard)
    comment = Comment(thread_id=thread_id, parent=None, root_id=None, depth=0,
                      author=author, author_name=author_name, body=body)
    comment.claim_for_current_tenant()
    _, count_params = _THREADS.add_statement(shard, thread_id, "comment_count", 1)
    values = [f.get_db_prep_save(f.pre_save(comment, True), connection) for f in fields]
    state = current_state()
    with connection.cursor() as cursor:
        try:
            cursor.execute(sql, [*count_params, *values])
            cursor.nextset()  # past the BEGIN's result, to the INSERT's
            row = cursor.fetchone()
        except BaseException:
            # A server's error leaves the transaction aborted; a lost connection has none left.
            if connection.connection is not None:
                rollback_quietly(connection.connection)
            raise
        if state is not None:
            state.note_write(shard)
        cursor.execute(COMMIT_AND_POSITION_SQL)
        cursor.nextset()  # past the COMMIT's result, to the position's
        position = int(cursor.fetchone()[0])
    if state is not None:
        state.remember_position(shard, position)
    if row is None:
        return None
    comment.id = row[0]
    comment._state.adding = False
    comment._state.db = shard
    return comment
