"""Session setup run once per new physical connection.

geventpool replaces Django's ``pool`` property and ``get_new_connection``, so Django's
``_configure_connection`` never runs: the time zone, ``assume_role`` and ``isolation_level`` were
silently dropped. This does the same work as Django, once per physical connection rather than
per checkout. It holds plain values, never the wrapper: a pool outlives the request (and the
greenlet) whose wrapper created it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql


def application_name_for(argv: Sequence[str], pid: int) -> str:
    """What this process calls itself in pg_stat_activity: `shardsvc-<command>` for
    `manage.py <command>`, else `shardsvc-web-<pid>` (a Gunicorn worker), so that a DBA can
    tell who holds a lock."""
    if len(argv) > 1 and os.path.basename(argv[0]) == "manage.py":
        return f"shardsvc-{argv[1]}"[:63]
    return f"shardsvc-web-{pid}"


@dataclass(frozen=True)
class SessionSetup:
    timezone_name: str | None
    set_time_zone_sql: str
    assume_role: str | None = None
    isolation_level: IsolationLevel | None = None

    def __call__(self, conn: psycopg.Connection[Any]) -> None:
        if not conn.info.parameter_status("application_name"):
            # Read per connection: a worker forks after the settings are loaded. PgBouncer
            # tracks application_name and sets it on whichever server connection serves us.
            conn.execute("SELECT set_config('application_name', %s, false)",
                         [application_name_for(sys.argv, os.getpid())])
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
