"""``statement_timeout`` and ``lock_timeout`` on every query, behind PgBouncer transaction pooling.

Behind transaction pooling a client connection is lent a server connection for one transaction
only, so session state (``SET statement_timeout``, libpq ``options``) lands on whichever server
connection the client had at that moment and then stays there for other clients. ``SET LOCAL``
lasts exactly one transaction, which is exactly what PgBouncer lends, so every transaction these
connections run starts with it, in the same message as the transaction's first query: Django's
cursors bind parameters on the client and use the simple query protocol, which runs several
statements from one message, so ``SET LOCAL ...; SET LOCAL ...; <query>`` adds no round trip.

- In autocommit mode the message is one implicit transaction, which the SET LOCALs last for;
  PostgreSQL commits it after the last statement, or rolls it back whole on an error.
- Inside ``atomic()`` psycopg has just sent its own ``BEGIN`` (with the isolation level); later
  queries of the transaction go out unchanged.

PostgreSQL (13+) times each statement of such a message separately, so the query gets the whole
``statement_timeout``. The cursor is left on the query's result, as if it had run alone.
``executemany`` (a pipeline, no multi-statement messages) pays an extra round trip instead.

Role or database defaults (``ALTER ROLE app SET statement_timeout``) survive pooling too, but they
are one value per role for every process that logs in as it, set outside the settings that
describe the service, and they reach a server connection only when PgBouncer opens it. Here the
Django settings are the only source of the values.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from psycopg import ClientCursor
from psycopg.pq import TransactionStatus

logger = logging.getLogger("project.pgpool")


def _milliseconds(seconds: float) -> int:
    # PostgreSQL reads a bare number as milliseconds; 0 switches the timeout off.
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def set_local_sql(*, statement_timeout: float, lock_timeout: float) -> str:
    return (
        f"SET LOCAL statement_timeout = {_milliseconds(statement_timeout)}; "
        f"SET LOCAL lock_timeout = {_milliseconds(lock_timeout)}"
    )


if TYPE_CHECKING:
    # What the mixin is mixed into, for the type checker; at run time the base comes last in
    # the generated class's bases (timeouts_cursor_class).
    _CursorBase = ClientCursor[Any]
else:
    _CursorBase = object


class TimeoutsCursorMixin(_CursorBase):
    """Mixed into Django's client-side-binding cursor class by ``timeouts_cursor_class``."""

    # Set on the generated class.
    set_local: str

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        conn = self.connection
        if conn.pgconn.transaction_status != TransactionStatus.IDLE or kwargs:
            # Inside a transaction that began with our SET LOCAL: it still holds.
            return super().execute(query, params, **kwargs)
        text = f"{self.set_local}; {self.mogrify(query, params)}"
        super().execute(text)
        self.nextset()
        self.nextset()
        return self

    def executemany(self, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> Any:
        conn = self.connection
        if conn.pgconn.transaction_status != TransactionStatus.IDLE:
            return super().executemany(query, params_seq, **kwargs)
        autocommit = conn.autocommit
        conn.execute(f"BEGIN; {self.set_local}" if autocommit else self.set_local,
                     prepare=False)
        try:
            result = super().executemany(query, params_seq, **kwargs)
        except BaseException:
            if autocommit:
                rollback_quietly(conn)
            raise
        if autocommit:
            conn.commit()
        return result


@functools.cache
def timeouts_cursor_class(base: type, *, statement_timeout: float,
                          lock_timeout: float) -> type:
    """A subclass of ``base`` (Django's cursor class) that runs every query under the timeouts."""
    if not issubclass(base, ClientCursor):
        raise TypeError(
            f"{base.__name__} binds parameters on the server; statement and lock timeouts need "
            "Django's default client-side binding (remove 'server_side_binding' from OPTIONS)"
        )
    return type(
        f"Timeouts{base.__name__}",
        (TimeoutsCursorMixin, base),
        {"set_local": set_local_sql(statement_timeout=statement_timeout,
                                    lock_timeout=lock_timeout)},
    )


def rollback_quietly(conn: Any) -> None:
    """End the failed query's transaction (psycopg connection `conn`), if one is still open,
    keeping the query's own error for the caller."""
    if conn.closed or conn.pgconn.transaction_status not in (
        TransactionStatus.INTRANS,
        TransactionStatus.INERROR,
    ):
        # ACTIVE: interrupted mid-query (the pool discards such a connection); nothing to do.
        return
    try:
        conn.rollback()
    except Exception:
        logger.debug("rollback after a failed autocommit query failed", exc_info=True)
