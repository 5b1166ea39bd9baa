"""Which failed reads on a primary wait and are routed again (shards/sharded.py): the errors a
held write waits through as "unreachable", asked of the same classifier (project/db_faults.py).
The errors are the driver's own classes."""

from __future__ import annotations

import psycopg
import psycopg.errors as pg_errors
import pytest
from django.db import IntegrityError, OperationalError

from project.db_faults import is_connection_lost
from project.pgpool.errors import DeadlineExceeded, pool_timeout
from shards import sharded


def django_error(driver: psycopg.Error, wrapper: type[Exception] = OperationalError) -> Exception:
    try:
        raise wrapper(str(driver)) from driver
    except Exception as exc:
        return exc


UNREACHABLE = [
    psycopg.OperationalError("connection refused"),  # no SQLSTATE: refused, reset, cut
    pg_errors.ProtocolViolation("server login has been failing"),  # PgBouncer's 08P01
    pg_errors.AdminShutdown("terminating connection"),  # 57P01
    pg_errors.CrashShutdown("crash"),  # 57P02
    pg_errors.CannotConnectNow("the database system is starting up"),  # 57P03
    # measured: Patroni stopping the primary under a query, through PgBouncer
    psycopg.InternalError("received 2 results from command 'BEGIN'"),
]
NOT_UNREACHABLE = [
    pg_errors.QueryCanceled("statement timeout"),
    pg_errors.ReadOnlySqlTransaction("read-only"),  # a read never gets it; never waited on
    psycopg.ProgrammingError("syntax"),
    psycopg.InternalError("some other confusion of the driver's"),
]


@pytest.mark.parametrize("driver", UNREACHABLE, ids=lambda e: type(e).__name__)
def test_a_lost_primary_is_waited_on(driver: psycopg.Error) -> None:
    exc = django_error(driver)
    assert is_connection_lost(exc) is True


@pytest.mark.parametrize("driver", NOT_UNREACHABLE, ids=lambda e: type(e).__name__)
def test_errors_about_the_query_are_not(driver: psycopg.Error) -> None:
    exc = django_error(driver)
    assert is_connection_lost(exc) is False


def test_the_pool_timeout_and_the_deadline_are_not() -> None:
    # OperationalErrors too, but about this process, not the server: waiting would only add
    # to a request that is already late.
    for exc in (pool_timeout("shard_0", 20, 5.0), DeadlineExceeded("past the deadline")):
        assert is_connection_lost(exc) is False
    assert is_connection_lost(IntegrityError("duplicate")) is False


def test_reads_and_writes_ask_one_classifier() -> None:
    # One list of "the server is gone" errors: a read retried where a write would not be held
    # (or the other way round) would be a drift between two copies.
    assert sharded.is_connection_lost is is_connection_lost
