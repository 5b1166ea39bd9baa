"""Who blocks a migration's lock wait, seen while it waits (`pg_blocking_pids`).

Once `lock_timeout` fires, the wait is over and PostgreSQL no longer says who blocked it; the
oldest open transactions are only a guess. So while a migration runs, a watcher asks, from a
connection of its own, which sessions block the migration's backend, and keeps the last answer
for the error message. It connects only once the migration has waited a while: the many
migrations that finish in milliseconds never open it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from shards import pg

logger = logging.getLogger("shardsvc.migrate")

BLOCKERS_SQL = """
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename, '?'),
       coalesce(a.state, '?'), extract(epoch FROM now() - a.xact_start)::float8,
       left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 100)
FROM unnest(pg_blocking_pids(%s)) AS b(pid)
JOIN pg_stat_activity a ON a.pid = b.pid
ORDER BY a.xact_start NULLS LAST
"""


@dataclass(frozen=True)
class Blocker:
    pid: int
    application_name: str
    user: str
    state: str
    open_seconds: float | None
    query: str

    def describe(self) -> str:
        name = self.application_name or "(none set)"
        age = "" if self.open_seconds is None else f", open {self.open_seconds:.0f}s"
        return (f"pid {self.pid} (application_name '{name}', user {self.user}, "
                f"{self.state}{age}: {self.query or '?'})")


def describe_blockers(blockers: list[Blocker]) -> str:
    if not blockers:
        return ""
    return "blocked by " + "; ".join(b.describe() for b in blockers)


class BlockerWatch:
    """`with BlockerWatch(dsn, backend_pid, after=0.5) as watch: ...; watch.blockers`."""

    def __init__(self, dsn: str, backend_pid: int, *, after: float,
                 interval: float = 0.2) -> None:
        self._dsn = dsn
        self._pid = backend_pid
        self._after = after
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"blockers-{backend_pid}",
                                        daemon=True)
        self.blockers: list[Blocker] = []

    def __enter__(self) -> BlockerWatch:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        if self._stop.wait(self._after):
            return
        try:
            with pg.connect(self._dsn, connect_timeout=3,
                            application_name="shardsvc migrate_shards: blockers") as conn:
                while not self._stop.is_set():
                    rows: list[Any] = conn.execute(BLOCKERS_SQL, [self._pid]).fetchall()
                    if rows:  # the last sessions seen blocking: the ones the message names
                        self.blockers = [Blocker(int(r[0]), r[1], r[2], r[3], r[4], r[5])
                                         for r in rows]
                    self._stop.wait(self._interval)
        except Exception:  # diagnostics only: the migration goes on without them
            logger.debug("watching the blockers of backend %s failed", self._pid,
                         exc_info=True)
