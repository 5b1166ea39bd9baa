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

A fence must not outlive the command that set it: a command killed between fencing and
lifting would leave the leader refusing every write (or, once demoted, a standby that refuses
writes the day it is promoted). So a session of its own holds the fence, open from before it is
set until after it is lifted, with a session advisory lock (FENCE_LOCK) that dies with it. A
fence (default_transaction_read_only in postgresql.auto.conf: under Patroni nothing else
writes there, settings by hand go through `patronictl edit-config` into postgresql.conf) whose
lock is free is stale: `lift_if_stale` takes the lock (so no switchover fences the server
meanwhile) and lifts it, and the leader follower (deploy/leader_follower.py) calls it on every
member every few seconds. The holder dies with the old leader's shutdown, so the follower may
lift the fence on the restarted member before the command does: it is a standby then,
read-only anyway.
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
# The session advisory lock a fence's holder keeps (a fixed key of the project's own), and its
# application_name, for pg_stat_activity's reader.
FENCE_LOCK = 0x5377_6F46  # "SwoF"
FENCE_HOLDER = "shardsvc switchover fence"

FENCED_SQL = """
    SELECT EXISTS (SELECT 1 FROM pg_file_settings
                   WHERE name = 'default_transaction_read_only'
                     AND sourcefile LIKE '%/postgresql.auto.conf')
"""

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
    long the drain took. The fence is lifted on exit, whatever the outcome, once the server
    accepts a connection again; if this process dies first, `lift_if_stale` lifts it."""
    # The holder: connected before the fence is set, closed after it is lifted.
    holder = pg.connect(dsn, connect_timeout=2, application_name=FENCE_HOLDER)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", [FENCE_LOCK])
        # This session must be able to work whatever the server's default becomes.
        holder.execute("SET default_transaction_read_only = off")
        holder.execute("CHECKPOINT")
        holder.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        holder.execute("SELECT pg_reload_conf()")
        time.sleep(SIGNAL_SECONDS)
        fenced_at = pg.fetch_value(holder, "SELECT clock_timestamp()")
        started = time.monotonic()
        while (pg.fetch_value(holder, IN_FLIGHT_SQL, [fenced_at])
               and time.monotonic() - started < DRAIN_SECONDS):
            time.sleep(0.01)
        drained = time.monotonic() - started
    except BaseException:
        try:
            lift(dsn)
        finally:
            holder.close()
        raise
    try:
        yield drained
    finally:
        try:
            lift(dsn)
        finally:
            holder.close()


def _reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
    conn.execute("SELECT pg_reload_conf()")


def lift(dsn: str, *, timeout: float = LIFT_SECONDS) -> None:
    """Reset the fence on the server at `dsn`, retrying while it restarts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with pg.connect(dsn, connect_timeout=2) as conn:
                _reset(conn)
            return
        except psycopg.Error as exc:
            if time.monotonic() >= deadline:
                where = conninfo_to_dict(dsn)  # host and port only: a DSN may hold a password
                logger.error("could not lift the write fence on %s:%s: %s; run ALTER SYSTEM "
                             "RESET default_transaction_read_only and SELECT pg_reload_conf() "
                             "on that server (the leader follower does it too once it can "
                             "connect)", where.get("host"), where.get("port"), exc)
                raise
            time.sleep(0.2)


def lift_if_stale(dsn: str) -> bool:
    """Lift a switchover's fence on the server at `dsn` when no session holds it any more (its
    command died); True if it did. Raises psycopg.Error when the server cannot be reached."""
    with pg.connect(dsn, connect_timeout=2) as conn:
        if not pg.fetch_value(conn, FENCED_SQL):
            return False
        if not pg.fetch_value(conn, "SELECT pg_try_advisory_lock(%s)", [FENCE_LOCK]):
            return False  # its command is alive and will lift it
        try:
            _reset(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [FENCE_LOCK])
    return True
