"""Notice every write on a primary, however it was issued (ORM with an explicit `.using()`,
`update()`, raw SQL), so read-your-writes never depends on the router having been asked.

An execute wrapper on each connection looks at the statement's first word: a string check,
no SQL of its own. The same wrapper names a write whose outcome a lost connection hid: a
COMMIT sent as a statement (`routers.causal.write_transaction`) or a write in autocommit mode
(Django's own COMMIT is the backend's, `project.pgpool.base`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError

from project.db_faults import commit_outcome_unknown
from project.pgpool.errors import CommitOutcomeUnknown
from routers.state import current_state
from shards.topology import get_shard_map

_WRITES = ("INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "ALTER", "DROP", "TRUNCATE", "COPY")
# A data-modifying statement anywhere in a WITH query, e.g. `WITH x AS (DELETE ... RETURNING id)`.
# A word inside a string literal counts too: that only sends the request's reads to the primary.
_WRITE_IN_WITH = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)


def is_write(sql: str) -> bool:
    head = sql.lstrip()[:8].upper()
    if head.startswith(_WRITES):
        return True
    if head.startswith("WITH"):
        return _WRITE_IN_WITH.search(sql) is not None
    return False


def commits(sql: str, connection: Any) -> bool:
    """Running `sql` on `connection` may commit: a COMMIT, or a write outside a transaction."""
    if sql.lstrip()[:6].upper() == "COMMIT":
        return True
    return is_write(sql) and not getattr(connection, "in_atomic_block", False)


def _primary_clusters() -> frozenset[str]:
    return frozenset(c.name for c in get_shard_map().clusters)


class WriteTracker:
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool,
                 context: dict[str, Any]) -> Any:
        try:
            result = execute(sql, params, many, context)
        except DatabaseError as exc:
            if commit_outcome_unknown(exc) and commits(sql, context.get("connection")):
                raise CommitOutcomeUnknown(self.cluster) from exc
            raise
        if is_write(sql):
            state = current_state()
            if state is not None:
                state.note_write(self.cluster)
        return result


def install(sender: Any, connection: Any, **kwargs: Any) -> None:
    """connection_created handler: track writes on primaries (a cluster's primary alias is the
    cluster's name). Runs on every checkout from the pool, so it must not stack wrappers."""
    if connection.alias not in _primary_clusters():
        return
    if not any(isinstance(w, WriteTracker) for w in connection.execute_wrappers):
        connection.execute_wrappers.append(WriteTracker(connection.alias))
