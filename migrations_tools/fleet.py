"""Admin reads of every server straight over its direct DSN, many at once (status, leaks).

Direct, not through PgBouncer or the service's pools: ops want what each server says now, and a
dead server must fail fast (a short connect timeout) instead of queueing in PgBouncer.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from shards import pg

CONNECT_TIMEOUT = 3


def one_line(exc: BaseException) -> str:
    """An error as one line for a table cell: its type and its words."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def connect(dsn: str, purpose: str) -> psycopg.Connection[Any]:
    return pg.connect(dsn, connect_timeout=CONNECT_TIMEOUT,
                      application_name=f"shardsvc status: {purpose}"[:63])


def parallel(function: Any, items: Iterable[Any]) -> None:
    """Run `function` over `items` in threads (at most 32), waiting for all."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(len(items), 32)) as pool:
        list(pool.map(function, items))
