"""The cluster-wide lock: migrations and tenant moves never overlap.

    with cluster_lock("migrate_shards"):        # or "move_tenant acme"
        ...

It is a PostgreSQL *session* advisory lock on the control primary, taken over the control's
direct DSN: behind PgBouncer's transaction pooling a session lock would stay on a server
connection that other clients then use. A session lock is released by PostgreSQL when its
connection ends, so a process that dies never leaves the cluster locked.

Next to the lock, a row in `shardsvc_cluster_lock` says who holds it (user@host, pid, purpose,
since when), so a second caller fails at once with a message naming the holder. The row is only
believed while its backend really holds the advisory lock (checked in pg_locks): a row left by a
killed process is ignored. The table is created on first use, not by a Django migration,
because migrate_shards takes the lock before the control database is migrated.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from migrations_tools.errors import ClusterLockHeld, ClusterLockLost
from migrations_tools.failover import (
    LEADER_WAIT,
    NoLeader,
    connection_lost,
    first_line,
    wait_for_leader,
)
from shards import pg
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.migrate.lock")

# Two-int advisory keys live in their own key space (objsubid 2 in pg_locks), apart from the
# one-bigint keys other code takes with hashtext(); the first int names this project.
LOCK_NAMESPACE = 0x53485356  # "SHSV"
LOCK_ID = 1
TABLE = "shardsvc_cluster_lock"
POLL_INTERVAL = 0.25
# How long a lock whose session was lost waits for a control primary to take it again on.
RETAKE_WAIT = LEADER_WAIT

_HOLDER_SQL = """
SELECT l.pid, a.usename, a.application_name, host(a.client_addr), a.backend_start
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass(frozen=True)
class LockHolder:
    """Who holds the cluster lock, as recorded when it was taken."""

    purpose: str
    who: str  # user@host pid N
    since: dt.datetime
    backend_pid: int

    def describe(self) -> str:
        age = (dt.datetime.now(dt.UTC) - self.since).total_seconds()
        since = self.since.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"{self.who} ({self.purpose}) since {since} ({_age(age)} ago; "
            f"backend pid {self.backend_pid} on the control primary)"
        )


class ClusterLock:
    """The held lock; `ensure_held()` proves it still is before each irreversible step.

    A lock whose session was lost (the control primary failed over or restarted, the session
    was terminated) is taken again on the control primary that answers now, if nobody took it
    meanwhile: long work survives a failover of the control cluster as it does one of a shard.
    Work already under way when the session went on unprotected for those seconds, as it would
    have without the retake; nothing new starts before the lock is held again."""

    def __init__(self, conn: psycopg.Connection[Any], holder: LockHolder, dsn: str) -> None:
        self._conn = conn
        self._dsn = dsn
        self._mutex = threading.Lock()  # one psycopg connection, used from worker threads
        self.holder = holder
        self.retakes: list[str] = []  # why the lock was taken again, one line per retake

    def ensure_held(self) -> None:
        with self._mutex:
            try:
                row = self._conn.execute(
                    _HOLDER_SQL + " AND l.pid = pg_backend_pid()", [LOCK_NAMESPACE, LOCK_ID]
                ).fetchone()
            except psycopg.Error as exc:
                if not connection_lost(exc):
                    raise ClusterLockLost(
                        f"lost the cluster lock ({self.holder.purpose}): checking it failed "
                        f"({exc}). Nothing more is started; rerun the command."
                    ) from exc
                self._retake(exc)
                return
        if row is None:
            raise ClusterLockLost(
                f"lost the cluster lock ({self.holder.purpose}): its session no longer holds it"
            )

    def _retake(self, lost: psycopg.Error) -> None:
        purpose = self.holder.purpose
        why = first_line(lost)
        self._conn.close()
        try:
            wait_for_leader(self._dsn, what="the control cluster", timeout=RETAKE_WAIT)
        except NoLeader as exc:
            raise ClusterLockLost(
                f"lost the cluster lock ({purpose}): its connection to the control primary "
                f"failed ({why}) and {exc}. Nothing more is started; rerun the command when "
                "the control database is reachable."
            ) from lost
        conn = _connect(self._dsn, purpose)
        if not _scalar(conn, "SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, LOCK_ID]):
            holder = _read_holder(conn)
            conn.close()
            raise ClusterLockLost(
                f"lost the cluster lock ({purpose}) with its connection ({why}), and "
                f"{holder.describe() if holder else 'another session'} holds it now. Nothing "
                "more is started; rerun the command once that one has finished."
            ) from lost
        self._conn = conn
        self.holder = _record_holder(conn, purpose)
        self.retakes.append(f"cluster lock taken again after its session was lost ({why})")
        logger.warning("%s: %s", purpose, self.retakes[-1])

    def release(self) -> None:
        _release(self._conn, self.holder.purpose)


# The lock session's application_name: the prefix, then the purpose (cut to 63 bytes).
_APPLICATION_PREFIX = "shardsvc lock: "


def _control_dsn() -> str:
    return get_shard_map().control.primary.direct_dsn


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _connect(dsn: str, purpose: str) -> psycopg.Connection[Any]:
    # Keepalives: a silently dropped connection must not make us believe we still hold the lock
    # for long; the server side drops the session (and the lock) the same way.
    return pg.connect(
        dsn,
        application_name=f"{_APPLICATION_PREFIX}{purpose}"[:63],
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )


def _read_holder(conn: psycopg.Connection[Any]) -> LockHolder | None:
    row = conn.execute(_HOLDER_SQL, [LOCK_NAMESPACE, LOCK_ID]).fetchone()
    if row is None:
        return None
    pid, user, application, client, backend_start = row
    recorded = None
    if _table_exists(conn):
        recorded = conn.execute(
            f"SELECT purpose, who, since FROM {TABLE} WHERE backend_pid = %s", [pid]
        ).fetchone()
    if recorded is not None:
        purpose, who, since = recorded
        return LockHolder(purpose=purpose, who=who, since=since, backend_pid=pid)
    # Taken a moment ago (row not written yet: the session's name carries the purpose) or by
    # hand with pg_advisory_lock.
    return LockHolder(
        purpose=(application or "unknown purpose").removeprefix(_APPLICATION_PREFIX),
        who=f"{user or '?'}@{client or 'local socket'}",
        since=backend_start or dt.datetime.now(dt.UTC),
        backend_pid=pid,
    )


def current_holder(*, dsn: str | None = None) -> LockHolder | None:
    """Who holds the cluster lock now, or None."""
    with pg.connect(dsn or _control_dsn(), application_name="shardsvc lock check") as conn:
        return _read_holder(conn)


@contextmanager
def cluster_lock(purpose: str, *, wait: float = 0.0,
                 dsn: str | None = None) -> Iterator[ClusterLock]:
    """Hold the cluster-wide lock for the block, or raise ClusterLockHeld naming the holder.

    `purpose` says what the holder does ("migrate_shards", "move_tenant acme"); `wait` is how
    long to keep trying (seconds) before giving up; `dsn` overrides the control primary's direct
    DSN from the topology.
    """
    conn = _connect(dsn or _control_dsn(), purpose)
    try:
        deadline = time.monotonic() + wait
        while True:
            acquired = _scalar(
                conn, "SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, LOCK_ID]
            )
            if acquired:
                break
            if time.monotonic() >= deadline:
                raise ClusterLockHeld(purpose, _read_holder(conn))
            time.sleep(POLL_INTERVAL)
        lock = ClusterLock(conn, _record_holder(conn, purpose), dsn or _control_dsn())
        logger.debug("cluster lock taken: %s", lock.holder.describe())
    except BaseException:
        _release(conn, purpose)
        raise
    try:
        yield lock
    finally:
        lock.release()  # its session now: a retake replaced the first one


def _record_holder(conn: psycopg.Connection[Any], purpose: str) -> LockHolder:
    """Write who holds the lock beside it (the caller holds it)."""
    # Only the lock holder gets here, so creating the table cannot race.
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} ("
        " backend_pid integer PRIMARY KEY, purpose text NOT NULL, who text NOT NULL,"
        " since timestamptz NOT NULL DEFAULT now())"
    )
    who = _who()
    with conn.transaction():
        # Rows of holders that died: their sessions (and locks) are gone.
        conn.execute(f"DELETE FROM {TABLE}")
        since = _scalar(
            conn,
            f"INSERT INTO {TABLE} (backend_pid, purpose, who) "
            "VALUES (pg_backend_pid(), %s, %s) RETURNING since",
            [purpose, who],
        )
    return LockHolder(purpose=purpose, who=who, since=since, backend_pid=conn.info.backend_pid)


def _release(conn: psycopg.Connection[Any], purpose: str) -> None:
    try:
        if not conn.closed:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            if _table_exists(conn):
                conn.execute(f"DELETE FROM {TABLE} WHERE backend_pid = pg_backend_pid()")
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, LOCK_ID])
    except psycopg.Error:
        # Closing the session below releases the lock anyway.
        logger.warning("releasing the cluster lock (%s) failed; closing its session", purpose,
                       exc_info=True)
    finally:
        conn.close()


def _table_exists(conn: psycopg.Connection[Any]) -> bool:
    return _scalar(conn, "SELECT to_regclass(%s)", [TABLE]) is not None


def _scalar(conn: psycopg.Connection[Any], sql: str, params: list[Any]) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, "a one-row query returned nothing"
    return row[0]
