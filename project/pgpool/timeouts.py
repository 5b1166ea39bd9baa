"""``statement_timeout`` and ``lock_timeout`` on every query, behind PgBouncer transaction pooling.

Behind transaction pooling a client connection is lent a server connection for one transaction
only, so session state (``SET statement_timeout``, libpq ``options``) lands on whichever server
connection the client had at that moment and then stays there for other clients. ``SET LOCAL``
lasts exactly one transaction, which is exactly what PgBouncer lends, so every transaction these
connections run starts with it:

- inside ``atomic()``, before the first query: psycopg's own ``BEGIN`` (with the isolation level),
  then ``SET LOCAL ...; SET LOCAL ...`` in one message: one extra round trip per transaction;
- an autocommit query runs in a transaction of its own: ``BEGIN; SET LOCAL ...; SET LOCAL ...``
  in one message (the simple query protocol runs several statements in one round trip), the
  query, ``COMMIT``: two extra round trips, the price of per-client timeouts that no other
  client can inherit.

Role or database defaults (``ALTER ROLE app SET statement_timeout``) survive pooling too and cost
nothing per query, but they are one value per role for every process that logs in as it, set
outside the settings that describe the service, and they reach a server connection only when
PgBouncer opens it. Here the Django settings are the only source of the values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from psycopg.pq import TransactionStatus

logger = logging.getLogger("project.pgpool")

Execute = Callable[[Any, Any, bool, dict[str, Any]], Any]


def _milliseconds(seconds: float) -> int:
    # PostgreSQL reads a bare number as milliseconds; 0 switches the timeout off.
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


class QueryTimeouts:
    """A Django execute wrapper (``connection.execute_wrappers``) that runs every query under
    ``SET LOCAL statement_timeout`` / ``lock_timeout`` in seconds (0: no limit)."""

    def __init__(self, *, statement_timeout: float, lock_timeout: float) -> None:
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        settings = (
            f"SET LOCAL statement_timeout = {_milliseconds(statement_timeout)}; "
            f"SET LOCAL lock_timeout = {_milliseconds(lock_timeout)}"
        )
        # atomic(): psycopg sends BEGIN, with the isolation level, before this.
        self.set_local = settings.encode()
        # Autocommit queries: plain BEGIN, the server's default isolation, as their implicit
        # transaction had.
        self.begin_autocommit = f"BEGIN; {settings}".encode()

    def __call__(
        self, execute: Execute, sql: Any, params: Any, many: bool, context: dict[str, Any]
    ) -> Any:
        wrapper = context["connection"]
        conn = wrapper.connection
        if conn is None or conn.info.transaction_status != TransactionStatus.IDLE:
            # Already inside a transaction this wrapper opened: its SET LOCAL holds.
            return execute(sql, params, many, context)
        if not conn.autocommit:
            # The first query of an atomic() block: psycopg begins the transaction first.
            with wrapper.wrap_database_errors:
                conn.execute(self.set_local, prepare=False)
            return execute(sql, params, many, context)
        with wrapper.wrap_database_errors:
            conn.execute(self.begin_autocommit, prepare=False)
        try:
            result = execute(sql, params, many, context)
        except BaseException:
            _rollback_quietly(conn)
            raise
        with wrapper.wrap_database_errors:
            conn.commit()
        return result


def _rollback_quietly(conn: Any) -> None:
    """End the failed query's transaction, keeping the query's own error for the caller."""
    if conn.closed or conn.info.transaction_status not in (
        TransactionStatus.INTRANS,
        TransactionStatus.INERROR,
    ):
        # ACTIVE: interrupted mid-query (the pool discards such a connection); nothing to do.
        return
    try:
        conn.rollback()
    except Exception:
        logger.debug("rollback after a failed autocommit query failed", exc_info=True)
