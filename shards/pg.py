"""Plain psycopg connections for admin work (topology, migrations, moves).

PgBouncer 1.18 in transaction mode has no protocol-level prepared statements, and psycopg
prepares a query after five runs by default: every plain connection goes through here so
`prepare_threshold=None` is never forgotten, whether it talks to PgBouncer or not.
"""

from __future__ import annotations

from typing import Any

import psycopg


def connect(dsn: str, *, autocommit: bool = True, connect_timeout: int = 5,
            **kwargs: Any) -> psycopg.Connection[Any]:
    if kwargs.get("prepare_threshold") is not None:
        raise ValueError("prepare_threshold must stay None: PgBouncer has no prepared statements")
    kwargs["prepare_threshold"] = None
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=connect_timeout, **kwargs)
