"""What the parts of a tenant move (the cutover, the verification, the failover handling) use
of `migrations_tools.moves.Mover`, which they are mixed into and which provides it."""

from __future__ import annotations

from typing import Any

import psycopg

from migrations_tools.move_jobs import MoveSettings
from migrations_tools.tenant_rows import Progress
from shards.models import MoveJob


class MoverParts:
    """Declared here for the type checker; Mover sets or defines each of them."""

    job: MoveJob
    settings: MoveSettings
    progress: Progress
    tables: list[str]
    name: str
    source_dsn: str
    target_dsn: str
    crash_at: str | None
    _target_snapshot: psycopg.Connection[Any] | None
    _continuous_deadline: float | None

    @property
    def source(self) -> psycopg.Connection[Any]:
        raise NotImplementedError

    @property
    def target(self) -> psycopg.Connection[Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _set(self, state: str | None = None, **fields: Any) -> None:
        raise NotImplementedError

    def _report(self, **items: Any) -> None:
        raise NotImplementedError

    def _wait_applied(self, lsn: int, deadline: float) -> None:
        raise NotImplementedError

    def drop_replication(self) -> None:
        raise NotImplementedError
