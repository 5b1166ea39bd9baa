"""The SQL probe of one replica: its query, the connection it runs on, and how a waiter that
gives up unsticks it.

Probes run over each replica's *direct* DSN: when a server dies, PgBouncer keeps
already-connected clients queued for `query_wait_timeout`, so a probe through it would hang
where a direct connection fails at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from routers.replica_state import ReplicaState
from shards import pg
from shards.lsn import parse_lsn
from shards.topology import Server

APPLICATION_NAME = "shardsvc-replica-health"

# Lag is 0 when everything received is replayed: an idle primary sends no commits, so
# `now() - pg_last_xact_replay_timestamp()` alone would grow forever on a caught-up replica.
# `<=`, not `=`: after a standby restarts, the receive LSN restarts at the segment boundary,
# BEHIND replay (measured: receive 0/3000000, replay 0/3001628), and stays there until the
# primary writes; with `=` an idle shard's restarted replica read as lagging for ever.
# NULL (-> math.inf) while streaming has not started and nothing was replayed since startup.
CHECK_QUERY = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "CASE WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
    "ELSE extract(epoch from now() - pg_last_xact_replay_timestamp()) END"
)


@dataclass(eq=False)
class Check:
    """One in-flight check of one replica, shared by the thread doing it and whoever waits."""

    server: Server
    cluster: str
    started: float
    pid: int
    thread: threading.Thread | None = None
    # The connection the thread is using, so a waiter that gives up can shut its socket down.
    conn: psycopg.Connection[Any] | None = None
    # Guards `conn` against being closed (and its fd reused) while a waiter shuts it down.
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False


class Connections:
    """The probes' connections by alias and the checker's stop flag: what the background thread
    and the checker's finalizer share, without a reference to the checker."""

    def __init__(self) -> None:
        self.conns: dict[str, psycopg.Connection[Any]] = {}
        self.stop = threading.Event()

    def close(self) -> None:
        self.stop.set()
        for conn in list(self.conns.values()):
            with contextlib.suppress(Exception):
                conn.close()
        self.conns.clear()


def probe(check: Check, res: Connections, *, timeout: float) -> ReplicaState:
    """Run CHECK_QUERY on the replica of `check`, reusing (or opening) its connection in `res`.

    Raises whatever the connection or the query raised; the connection is then dropped, so the
    next probe reconnects.
    """
    alias = check.server.alias
    conn = res.conns.get(alias)
    try:
        if conn is None or conn.closed or conn.broken:
            res.conns.pop(alias, None)
            # psycopg rounds connect_timeout up to 2 s (as libpq does); the checker stops
            # waiting after `timeout` anyway, the thread just finishes in the background.
            conn = pg.connect(
                check.server.direct_dsn,
                autocommit=True,
                connect_timeout=max(1, math.ceil(timeout)),
                application_name=APPLICATION_NAME,
            )
            res.conns[alias] = conn
        with check.lock:
            check.conn = conn
        # SET LOCAL: the timeout ends with the transaction, so nothing lingers on the session.
        statement_timeout = sql.SQL("SET LOCAL statement_timeout = {}").format(
            sql.Literal(max(1, int(timeout * 1000)))
        )
        with conn.transaction():
            conn.execute(statement_timeout)
            row = conn.execute(CHECK_QUERY).fetchone()
    except BaseException:
        # Reconnect next time: the session may be broken or mid-protocol. (Compare before
        # popping: a greenlet copied by a fork must not drop the child's new connection.)
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
    assert row is not None
    in_recovery, replay, lag = row
    return ReplicaState(
        alias=alias,
        cluster=check.cluster,
        reachable=True,
        in_recovery=bool(in_recovery),
        replay_lsn=parse_lsn(replay) if replay else 0,
        lag_seconds=max(0.0, float(lag)) if lag is not None else math.inf,
        checked_at=time.monotonic(),
    )


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
