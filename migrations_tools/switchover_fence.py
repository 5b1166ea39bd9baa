"""Writes stopped and flushed on the leader before a planned switchover.

Patroni's switchover stops the old leader with a fast shutdown: every backend is terminated,
also one whose COMMIT is waiting for the synchronous standby. Such a commit may have landed,
so its client can only be told "outcome unknown" (503 `write_outcome_unknown`), and the
shutdown checkpoint, which flushes everything written since the last one, lengthens the pause.

So before asking Patroni, on the leader itself:
1. CHECKPOINT while writes still flow (nothing waits on it);
2. fence: `ALTER SYSTEM SET default_transaction_read_only = on` and a reload. A write begun
   after that fails at its first statement with SQLSTATE 25006, before anything is committed,
   which the service holds and retries on the new leader (routers/write_hold.py);
3. wait until no client transaction begun before the fence is left (bounded: a long one is
   cut by the shutdown as before). The shutdown checkpoint then has only the few writes since
   step 1 to flush (a second CHECKPOINT here was measured: it did not shorten the pause).

ALTER SYSTEM writes only that server's postgresql.auto.conf (no WAL: the candidate is not
fenced) and is allowed on a standby, so the fence is lifted on the old leader after it has
rejoined as a standby, or at once when the switchover does not happen.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shards import pg
from shards.shardmap import Cluster

logger = logging.getLogger("shardsvc.switchover")

# In-flight transactions are waited for this long at most: the service's own statements are
# bounded by its statement timeout (5 s by default), most take milliseconds.
DRAIN_SECONDS = 2.0
# Time for every backend to receive the reload signal, which the postmaster forwards
# asynchronously; a backend applies it before running its next command.
SIGNAL_SECONDS = 0.05
# How long lifting the fence retries while the old leader restarts as a standby.
LIFT_SECONDS = 60.0

IN_FLIGHT_SQL = """
    SELECT count(*) FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
      AND xact_start < %s
"""


def member_dsn(cluster: Cluster, member: dict[str, Any]) -> str:
    """The admin DSN of one member (from Patroni's /cluster answer): the cluster's direct DSN,
    pointed at that member's host and port alone."""
    params = conninfo_to_dict(cluster.primary.direct_dsn)
    params.pop("target_session_attrs", None)
    params.update(host=str(member["host"]), port=str(member["port"]))
    return make_conninfo("", **params)


@contextlib.contextmanager
def writes_fenced(dsn: str) -> Iterator[float]:
    """Checkpoint, fence and drain the leader at `dsn` (see the module docstring); yields how
    long the drain took. The fence is lifted on exit, whatever the
    outcome, once the server accepts a connection again."""
    conn = pg.connect(dsn, connect_timeout=2)
    try:
        # This session must be able to work whatever the server's default becomes.
        conn.execute("SET default_transaction_read_only = off")
        conn.execute("CHECKPOINT")
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(SIGNAL_SECONDS)
        fenced_at = pg.fetch_value(conn, "SELECT clock_timestamp()")
        started = time.monotonic()
        while (pg.fetch_value(conn, IN_FLIGHT_SQL, [fenced_at])
               and time.monotonic() - started < DRAIN_SECONDS):
            time.sleep(0.01)
        drained = time.monotonic() - started
    except BaseException:
        conn.close()
        lift(dsn)
        raise
    conn.close()
    try:
        yield drained
    finally:
        lift(dsn)


def lift(dsn: str, *, timeout: float = LIFT_SECONDS) -> None:
    """Reset the fence on the server at `dsn`, retrying while it restarts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with pg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
                conn.execute("SELECT pg_reload_conf()")
            return
        except psycopg.Error as exc:
            if time.monotonic() >= deadline:
                where = conninfo_to_dict(dsn)  # host and port only: a DSN may hold a password
                logger.error("could not lift the write fence on %s:%s: %s; run ALTER SYSTEM "
                             "RESET default_transaction_read_only and SELECT pg_reload_conf() "
                             "on that server", where.get("host"), where.get("port"), exc)
                raise
            time.sleep(0.2)
