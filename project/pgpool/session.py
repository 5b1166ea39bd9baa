"""Session setup run once per new physical connection.

geventpool replaces Django's ``pool`` property and ``get_new_connection``, so Django's
``_configure_connection`` never runs: the time zone, ``assume_role`` and ``isolation_level`` were
silently dropped. This does the same work as Django, once per physical connection rather than
per checkout. It holds plain values, never the wrapper: a pool outlives the request (and the
greenlet) whose wrapper created it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql


@dataclass(frozen=True)
class SessionSetup:
    timezone_name: str | None
    set_time_zone_sql: str
    assume_role: str | None = None
    isolation_level: IsolationLevel | None = None

    def __call__(self, conn: psycopg.Connection[Any]) -> None:
        # Same test as Django's _configure_timezone: with USE_TZ Django reads timestamps as UTC,
        # so a database default like Pacific/Chatham would shift every naive comparison.
        current = conn.info.parameter_status("TimeZone")
        if self.timezone_name and current != self.timezone_name:
            conn.execute(self.set_time_zone_sql, [self.timezone_name])
        if self.assume_role:
            # Quoted as a literal like Django does. Safe only without transaction pooling;
            # options.py refuses that combination.
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Literal(self.assume_role)))
        if self.isolation_level is not None:
            # Client-side in psycopg: it shapes each BEGIN, so it survives PgBouncer too.
            conn.isolation_level = self.isolation_level
        # New connections are in autocommit, so this is a no-op unless a caller changed that;
        # it keeps the settings from being lost to a later rollback.
        conn.commit()
