"""The SQL probes of one server: what a check asks a replica (and its primary), the connection it
runs on, and how a waiter that gives up unsticks it.

Probes run on the checker's native threads (`routers.native_threads`) with libpq's blocking
calls (`psycopg.pq`: connect, exec): they release the GIL while they wait and never go through
gevent's patched `select`, which in a native thread would start a gevent hub of its own.

Probes use each server's *direct* DSN: when a server dies, PgBouncer keeps already-connected
clients queued for `query_wait_timeout`, so a probe through it would hang where a direct
connection fails at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo

from routers.native_threads import NativeEvent, NativeThread, native_lock
from routers.replica_state import ReplicaPositions
from shards.lsn import parse_lsn
from shards.topology import Server

APPLICATION_NAME = "shardsvc-replica-health"

# What a check reads on a replica: positions only. Lag is computed from them and the primary's
# position (`routers.wal_lag`), never from the replay timestamp.
# The timeline of the WAL it receives (NULL while it does not stream; the walreceiver's row
# is readable by superusers and pg_read_all_stats) tells a replica left on an old timeline
# after a failover from one that follows the new primary.
REPLICA_QUERY = (
    b"SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    b"pg_last_wal_receive_lsn()::text, "
    b"(SELECT received_tli FROM pg_stat_wal_receiver)::text"
)
# The primary's current position and timeline (the first 8 hex digits of its WAL file's name:
# pg_control_checkpoint() lags a promotion until the next checkpoint); NULL from a server in
# recovery (it is no primary).
PRIMARY_QUERY = (
    b"SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, "
    b"CASE WHEN pg_is_in_recovery() THEN NULL "
    b"ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END"
)

# Ops' one-shot reading of a replica (`shard_status`), from the replica alone: lag is 0 when
# everything received is replayed, else the age of the last replayed commit. `<=`, not `=`:
# after a standby restarts, the receive LSN restarts at the segment boundary, BEHIND replay
# (measured: receive 0/3000000, replay 0/3001628). NULL (-> math.inf) while streaming has not
# started and nothing was replayed since startup.
CHECK_QUERY = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
    "ELSE extract(epoch from now() - pg_last_xact_replay_timestamp()) END"
)


@dataclass(eq=False)
class Check:
    """One in-flight probe of one server, shared by the thread doing it and whoever waits."""

    server: Server
    cluster: str
    started: float
    pid: int
    thread: NativeThread | None = None
    # The connection the thread is using, so a waiter that gives up can shut its socket down.
    conn: psycopg.Connection[Any] | None = None
    # Guards `conn` against being closed (and its fd reused) while a waiter shuts it down.
    lock: Any = field(default_factory=native_lock)
    done: bool = False


class Connections:
    """The probes' connections by alias and the checker's stop flag: what the background thread
    and the checker's finalizer share, without a reference to the checker."""

    def __init__(self) -> None:
        self.conns: dict[str, psycopg.Connection[Any]] = {}
        self.stop = NativeEvent()

    def close(self) -> None:
        self.stop.set()
        for conn in list(self.conns.values()):
            with contextlib.suppress(Exception):
                conn.close()
        self.conns.clear()

    def abandon(self) -> None:
        """In a forked child: free the connections copied from the parent without ending them.

        They are the parent's sessions. Closing them normally would send the server a Terminate
        and end the parent's session, and merely forgetting them does the same once they are
        garbage collected. Pointing the fd at /dev/null first makes that Terminate harmless
        while freeing the fd number.
        """
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for conn in self.conns.values():
                with contextlib.suppress(Exception):
                    if not conn.closed:
                        os.dup2(devnull, conn.fileno())
                    conn.close()
        finally:
            os.close(devnull)
        self.conns.clear()


def probe_replica(check: Check, res: Connections, *, timeout: float) -> ReplicaPositions:
    """Read the replica's recovery flag and replay/receive positions. Raises what failed
    (psycopg.OperationalError for a refused, reset or timed-out connection)."""
    row = _query(check, res, REPLICA_QUERY, timeout=timeout)
    in_recovery, replay, receive, timeline = row
    return ReplicaPositions(
        in_recovery=in_recovery == b"t",
        replay_lsn=parse_lsn(replay.decode()) if replay else None,
        receive_lsn=parse_lsn(receive.decode()) if receive else None,
        answered_at=time.monotonic(),
        timeline=int(timeline) if timeline else None,
    )


@dataclass(frozen=True)
class PrimaryPosition:
    lsn: int
    timeline: int


def probe_primary(check: Check, res: Connections, *, timeout: float) -> PrimaryPosition | None:
    """The primary's current WAL position and timeline; None if the server is in recovery."""
    lsn, timeline = _query(check, res, PRIMARY_QUERY, timeout=timeout)
    if not lsn or not timeline:
        return None
    return PrimaryPosition(parse_lsn(lsn.decode()), int(timeline, 16))


def _query(check: Check, res: Connections, query: bytes, *,
           timeout: float) -> tuple[bytes | None, ...]:
    """Run a one-row query on the server of `check`, reusing (or opening) its connection.

    On any failure the connection is dropped, so the next probe reconnects.
    """
    alias = check.server.alias
    conn = res.conns.get(alias)
    try:
        if conn is None or conn.closed:
            res.conns.pop(alias, None)
            conn = _connect(check.server, timeout)
            res.conns[alias] = conn
        with check.lock:
            check.conn = conn
        result = conn.pgconn.exec_(query)  # blocking, GIL released
        if result.status != pq.ExecStatus.TUPLES_OK or result.ntuples != 1:
            raise psycopg.OperationalError(
                _message(result.error_message or conn.pgconn.error_message))
        row = tuple(result.get_value(0, i) for i in range(result.nfields))
    except BaseException:
        # Reconnect next time: the session may be broken or mid-protocol. (Compare before
        # popping: a fork's child must not drop a connection of its own.)
        if conn is not None and res.conns.get(alias) is conn:
            del res.conns[alias]
        if conn is not None:
            with check.lock:
                check.conn = None
                with contextlib.suppress(Exception):
                    conn.close()
        raise
    with check.lock:
        check.conn = None
    return row


def _connect(server: Server, timeout: float) -> psycopg.Connection[Any]:
    # libpq rounds connect_timeout up to 2 s; the checker stops waiting after `timeout` anyway
    # and the thread finishes in the background. The statement timeout bounds a server that
    # answers but is stuck (a lock, an overloaded replay).
    conninfo = make_conninfo(
        server.direct_dsn,
        connect_timeout=max(2, math.ceil(timeout)),
        application_name=APPLICATION_NAME,
        options=f"-c statement_timeout={max(1, int(timeout * 1000))}",
    )
    pgconn = pq.PGconn.connect(conninfo.encode())  # blocking, GIL released
    if pgconn.status != pq.ConnStatus.OK:
        message = _message(pgconn.error_message)
        pgconn.finish()
        raise psycopg.OperationalError(message)
    # A psycopg Connection around it, for close(), closed, info and fileno(); queries go
    # through `pgconn.exec_`, which blocks in libpq instead of in psycopg's (patched) wait.
    conn: psycopg.Connection[Any] = psycopg.Connection(pgconn)
    conn.prepare_threshold = None
    return conn


def _message(raw: bytes) -> str:
    return raw.decode(errors="replace").strip() or "the server reported no error message"


def unstick(check: Check) -> None:
    """Make a probe that outlived its timeout fail now.

    A stopped or partitioned server never answers and TCP may take minutes to notice. Shutting
    the socket down (not closing it: the probing thread still owns the fd) makes the thread's
    read fail, so it drops the connection and the next probe reconnects.
    """
    with check.lock:
        conn = check.conn
        if check.done or conn is None or conn.closed:
            return
        with contextlib.suppress(OSError, psycopg.Error):
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()
