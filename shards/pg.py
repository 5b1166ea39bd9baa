"""Plain psycopg connections for admin work (topology, migrations, moves).

PgBouncer 1.18 in transaction mode has no protocol-level prepared statements, and psycopg
prepares a query after five runs by default: every plain connection goes through here so
`prepare_threshold=None` is never forgotten, whether it talks to PgBouncer or not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, LiteralString, TypeAlias

import psycopg
from psycopg import sql

# psycopg.abc's Query without Python 3.14's template strings, which take no separate parameters.
Query: TypeAlias = LiteralString | bytes | sql.SQL | sql.Composed
Params: TypeAlias = Sequence[Any] | Mapping[str, Any]


def connect(dsn: str, *, autocommit: bool = True, connect_timeout: int = 5,
            **kwargs: Any) -> psycopg.Connection[Any]:
    if kwargs.get("prepare_threshold") is not None:
        raise ValueError("prepare_threshold must stay None: PgBouncer has no prepared statements")
    kwargs["prepare_threshold"] = None
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=connect_timeout, **kwargs)


def fetch_row(conn: psycopg.Connection[Any], query: Query,
              params: Params | None = None) -> tuple[Any, ...]:
    """The row of a query that always returns exactly one (an aggregate, a function call)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError("a query that returns one row returned none")
    return row


def fetch_value(conn: psycopg.Connection[Any], query: Query, params: Params | None = None) -> Any:
    """The first column of ``fetch_row``: a count, an LSN, a function's result."""
    return fetch_row(conn, query, params)[0]
