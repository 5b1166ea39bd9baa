"""statement_timeout and lock_timeout on every query behind PgBouncer transaction pooling: SET
LOCAL sent with each transaction (project/pgpool/timeouts.py), never leaking to another client of
the same server connection."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from deploy.topology import LocalTopology
from project.pgpool.timeouts import set_local_sql

pytestmark = pytest.mark.usefixtures("django_db")

SHOW = "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), " \
       "pg_backend_pid()"


def _wrapper(statement: float, lock: float):
    """A Django connection to shard_0 through PgBouncer with its own timeouts."""
    from django.db import connections

    from project.pgpool.base import DatabaseWrapper

    settings_dict = copy.deepcopy(connections["shard_0"].settings_dict)
    settings_dict["OPTIONS"].update(STATEMENT_TIMEOUT=statement, LOCK_TIMEOUT=lock)
    return DatabaseWrapper(settings_dict, "shard_0")


def _pooled_dsn(topology: LocalTopology) -> str:
    return f"postgresql://app@127.0.0.1:{topology.layout.pgbouncer_port}/shard_0"


def test_set_local_sql() -> None:
    assert set_local_sql(statement_timeout=5, lock_timeout=0.0004) == (
        "SET LOCAL statement_timeout = 5000; SET LOCAL lock_timeout = 1")
    assert set_local_sql(statement_timeout=0, lock_timeout=2) == (
        "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 2000")


@pytest.mark.parametrize("options", [{"STATEMENT_TIMEOUT": -1}, {"LOCK_TIMEOUT": True},
                                     {"LOCK_TIMEOUT": float("inf")}, {"STATEMENT_TIMEOUT": "5"}])
def test_bad_timeout_options_are_refused(options) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from project.pgpool.options import PoolOptions

    with pytest.raises(ImproperlyConfigured, match=next(iter(options))):
        PoolOptions.from_settings("shard_0", options)


def test_timeouts_need_client_side_binding() -> None:
    from django.db.backends.postgresql.base import Cursor, ServerBindingCursor

    from project.pgpool.timeouts import timeouts_cursor_class

    assert issubclass(timeouts_cursor_class(Cursor, statement_timeout=1, lock_timeout=1), Cursor)
    with pytest.raises(TypeError, match="server_side_binding"):
        timeouts_cursor_class(ServerBindingCursor, statement_timeout=1, lock_timeout=1)


def test_queries_behave_as_if_sent_alone() -> None:
    """The SET LOCAL prefix shares the query's message: results, row counts, parameters, a
    trailing comment and errors are the query's own, and autocommit leaves no transaction."""
    from django.db import DatabaseError, connections, transaction
    from psycopg.pq import TransactionStatus

    conn = connections["shard_0"]
    with conn.cursor() as cursor:
        cursor.execute("SELECT %s || '%%', current_setting('lock_timeout') -- a last comment",
                       ["100"])
        assert cursor.fetchall() == [("100%", "2s")]
        cursor.execute("SELECT generate_series(1, 3)")
        assert cursor.rowcount == 3 and [r[0] for r in cursor.fetchall()] == [1, 2, 3]
        assert conn.connection.info.transaction_status == TransactionStatus.IDLE
        with pytest.raises(DatabaseError) as failure:
            cursor.execute("SELECT 1 / 0")
        assert failure.value.__cause__.sqlstate == "22012"
        assert conn.connection.info.transaction_status == TransactionStatus.IDLE
    with transaction.atomic(using="shard_0"), conn.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout'), "
                       "current_setting('transaction_isolation')")
        assert cursor.fetchone() == ("5s", "read committed")
        cursor.execute("CREATE TEMP TABLE t_rowcount ON COMMIT DROP AS "
                       "SELECT generate_series(1, 4) AS n")
        cursor.execute("UPDATE t_rowcount SET n = n + 1 WHERE n > 1")
        assert cursor.rowcount == 3


@pytest.fixture
def reconnect_after(topology: LocalTopology) -> Iterator[None]:
    """These tests leave session settings on shard_0's server connections (the leak they show):
    have PgBouncer replace those connections afterwards, so later tests start clean."""
    yield
    admin_dsn = f"postgresql://postgres@127.0.0.1:{topology.layout.pgbouncer_port}/pgbouncer"
    with psycopg.connect(admin_dsn, autocommit=True) as console:
        console.execute("RECONNECT shard_0")


@pytest.mark.usefixtures("reconnect_after")
def test_set_local_survives_transaction_pooling_and_session_set_leaks(topology) -> None:
    """One thread, interleaved clients: PgBouncer lends each transaction its most recently freed
    server connection, so consecutive transactions of different clients share one backend."""
    naive = psycopg.connect(_pooled_dsn(topology), autocommit=True, prepare_threshold=None)
    plain = psycopg.connect(_pooled_dsn(topology), autocommit=True, prepare_threshold=None)
    ours = _wrapper(4, 3)
    try:
        # The wrong way: a session SET stays on the server connection the client had...
        naive.execute("SET statement_timeout = '42s'")
        leaked = plain.execute(SHOW).fetchone()
        # ...while the SET LOCAL client sees its own values, in autocommit and in atomic().
        with ours.cursor() as cursor:
            cursor.execute(SHOW)
            autocommit = cursor.fetchone()
        ours.set_autocommit(False)  # what atomic() does first

        with ours.cursor() as cursor:
            cursor.execute(SHOW)
            in_transaction = cursor.fetchone()
        ours.commit()
        ours.set_autocommit(True)
        after = plain.execute(SHOW).fetchone()
    finally:
        naive.close()
        plain.close()
        ours.close()
    assert leaked[0] == "42s" and leaked[2] == after[2], (leaked, after)
    assert autocommit[:2] == ("4s", "3s") and in_transaction[:2] == ("4s", "3s")
    # Same server connection as the leak, and the leak did not reach us; nor ours the others.
    assert autocommit[2] == leaked[2]
    assert after[0] == "42s"


@pytest.mark.usefixtures("reconnect_after")
def test_concurrent_clients_never_see_each_others_timeouts(topology) -> None:
    """Many clients with two different settings, and session-SET clients that pollute server
    connections, all at once through PgBouncer: every SET LOCAL client sees its own values."""
    rounds = 25
    seen: dict[str, set[tuple[str, str]]] = {"fast": set(), "slow": set()}
    pids: dict[str, set[int]] = {"fast": set(), "slow": set()}
    lock = threading.Lock()

    def settled(kind: str, statement: float, lock_timeout: float) -> None:
        conn = _wrapper(statement, lock_timeout)
        try:
            for i in range(rounds):
                if i % 2:
                    with conn.cursor() as cursor:
                        cursor.execute(SHOW)
                        row = cursor.fetchone()
                else:
                    conn.set_autocommit(False)
                    with conn.cursor() as cursor:
                        cursor.execute(SHOW)
                        row = cursor.fetchone()
                        cursor.execute("SELECT pg_sleep(0.005)")
                    conn.commit()
                    conn.set_autocommit(True)
                with lock:
                    seen[kind].add(row[:2])
                    pids[kind].add(row[2])
        finally:
            conn.close()

    def polluter() -> None:
        with psycopg.connect(_pooled_dsn(topology), autocommit=True,
                             prepare_threshold=None) as conn:
            for _ in range(rounds):
                conn.execute("SET statement_timeout = '42s'; SET lock_timeout = '43s'")
                conn.execute("SELECT pg_sleep(0.002)")

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(settled, "fast", 4, 3) for _ in range(6)]
        futures += [pool.submit(settled, "slow", 7, 6) for _ in range(6)]
        futures += [pool.submit(polluter) for _ in range(4)]
        for future in futures:
            future.result()
    assert seen == {"fast": {("4s", "3s")}, "slow": {("7s", "6s")}}
    # They really shared server connections (PgBouncer lent the same backends to both kinds).
    assert pids["fast"] & pids["slow"]


def test_admin_connections_and_server_defaults_are_not_limited(topology, admin) -> None:
    """The timeouts live only in the service's transactions: nothing at role or database level,
    so admin work over direct connections as postgres runs unbounded."""
    conn = admin("shard_0")
    assert conn.execute("SELECT current_user, current_setting('statement_timeout'), "
                        "current_setting('lock_timeout')").fetchone() == ("postgres", "0", "0")
    assert conn.execute("SELECT count(*) FROM pg_db_role_setting").fetchone()[0] == 0
    with psycopg.connect(_pooled_dsn(topology), autocommit=True, prepare_threshold=None) as plain:
        row = plain.execute("SELECT current_user, current_setting('lock_timeout')").fetchone()
    assert row == ("app", "0")
