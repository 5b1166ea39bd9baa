"""A top-level comment written in two round trips to its shard's primary.

Through the ORM a comment took four: psycopg's BEGIN, the thread's count update (with the
transaction's SET LOCALs), the INSERT, and the COMMIT with the primary's WAL position after it
(routers.causal.write_transaction). Here it is two messages of the simple query protocol:

    SET LOCAL ...; SET LOCAL ...; BEGIN;                 -- the connection's timeouts
    INSERT INTO <comment> (<columns>) SELECT <values> FROM <thread>
        WHERE <tenant and id> RETURNING id

    UPDATE <thread> SET comment_count = comment_count + 1 WHERE <tenant and id>;
    COMMIT; SELECT <the WAL insert position>             -- as write_transaction sends it

No thread row (another tenant's, or none): nothing is inserted, the INSERT returns no row, and
the transaction is rolled back instead.

The count is raised in the second message, beside its COMMIT, because its UPDATE locks the
thread's row until the transaction ends, and every comment of that thread waits for that lock.
Taken in the first message, the lock was held across a round trip to the client: measured
after a switchover released ~400 held writes of 4 threads at once, the 4 lock holders sat "idle
in transaction" while ~65 writers waited on them, the service's busy workers slow to send their
COMMITs; the backlog took 3-4 s to drain, and one write ran into statement_timeout. Beside the
COMMIT the lock lasts the UPDATE and the commit (its WAL flush and the synchronous standby's
answer), with no client in between. The first message reads the thread without locking it
(the comment's foreign key is checked at COMMIT, under a share lock the UPDATE's does not block).

Why not one message (the COMMIT would fit in the first): a connection lost under a message that
commits leaves its outcome unknown (`CommitOutcomeUnknown`: a 503 the client must not retry
blindly), while a connection lost before the COMMIT is sent certainly committed nothing, which
is what lets retry_writes hold and retry a write through a failover (PgBouncer answers a stopped
primary's clients with the same error it gives for a server lost mid-statement). Any error of
either message leaves the transaction to roll back, here, before retry_writes tries again (an
error the server answers with, such as a lock timeout of the UPDATE, committed nothing).

The values are the ORM's: each field's `pre_save` and `get_db_prep_save`, as Django's insert
compiler computes them (`created_at` is set here, not by the database); the id comes from the
column's database default, the global id generator. Both messages go through a Django cursor,
so query metrics and statement timeouts see them, and the write tracker sees the second one
(an UPDATE outside atomic(): a write that commits, whose outcome a lost connection hides) while
its first message begins with BEGIN, which the tracker does not take for a write: the write is
noted here.
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
# (INSERT statement, the fields whose values fill its parameters), built on first use.
_statement: tuple[str, list[Field[Any, Any]]] | None = None


def _compile(alias: str) -> tuple[str, list[Field[Any, Any]]]:
    global _statement
    quote = connections[alias].ops.quote_name
    fields = [f for f in Comment._meta.concrete_fields if not f.primary_key]
    pk = Comment._meta.pk
    thread_pk = Thread._meta.pk
    assert pk is not None and thread_pk is not None
    tenant_column = Thread._meta.get_field("tenant_id").column
    _statement = (
        f"BEGIN; INSERT INTO {quote(Comment._meta.db_table)} "
        f"({', '.join(quote(str(f.column)) for f in fields)}) "
        f"SELECT {', '.join(['%s'] * len(fields))} FROM {quote(Thread._meta.db_table)} "
        f"WHERE {quote(str(tenant_column))} = %s AND {quote(str(thread_pk.column))} = %s "
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
    count_sql, count_params = _THREADS.add_statement(shard, thread_id, "comment_count", 1)
    values = [f.get_db_prep_save(f.pre_save(comment, True), connection) for f in fields]
    state = current_state()
    with connection.cursor() as cursor:
        try:
            cursor.execute(sql, [*values, comment.tenant_id, thread_id])
            cursor.nextset()  # past the BEGIN's result, to the INSERT's
            row = cursor.fetchone()
            if row is None:
                rollback_quietly(connection.connection)
                return None
            if state is not None:
                state.note_write(shard)
            cursor.execute(f"{count_sql}; {COMMIT_AND_POSITION_SQL}", count_params)
            cursor.nextset()  # past the UPDATE's result, to the COMMIT's
            cursor.nextset()  # to the position's
            position = int(cursor.fetchone()[0])
        except BaseException:
            # A server's error leaves the transaction aborted; a lost connection has none left.
            if connection.connection is not None:
                rollback_quietly(connection.connection)
            raise
    if state is not None:
        state.remember_position(shard, position)
    comment.id = row[0]
    comment._state.adding = False
    comment._state.db = shard
    return comment
