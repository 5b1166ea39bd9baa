"""Which errors mean "the primary went away" (a failover), and how a server is identified."""

from __future__ import annotations

import psycopg
import pytest
from django.db import utils as django_db

from migrations_tools.errors import MigrationFailed
from migrations_tools.failover import ServerIdentity, connection_lost
from migrations_tools.leaks import ReplicationObjects, find_leaks
from migrations_tools.move_jobs import MoveError


def raised_from(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        raise outer from cause
    except BaseException as exc:  # building a chain to inspect
        return exc


@pytest.mark.parametrize("error", [
    psycopg.OperationalError("connection failed: Connection refused"),
    psycopg.InterfaceError("the connection is closed"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.errors.CrashShutdown("terminating connection because of crash of another process"),
    psycopg.errors.CannotConnectNow("the database system is starting up"),
    psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
    psycopg.errors.ConnectionFailure("connection failure"),
])
def test_a_lost_or_demoted_primary_is_a_lost_connection(error: Exception) -> None:
    assert connection_lost(error)
    # Through Django's wrapper, a move's own error and a migration's failure, as raised.
    assert connection_lost(raised_from(django_db.OperationalError(str(error)), error))
    assert connection_lost(raised_from(MoveError("the initial copy failed"), error))
    assert connection_lost(raised_from(MigrationFailed("comments.0002_x", "boom"), error))


@pytest.mark.parametrize("error", [
    psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
    psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    psycopg.errors.UniqueViolation("duplicate key value"),
    psycopg.errors.UndefinedTable("relation does not exist"),
    MoveError("shard_1 already holds 3 rows of this tenant"),
    MigrationFailed("comments.0002_x", "column exists"),
])
def test_errors_of_the_work_itself_are_not(error: Exception) -> None:
    assert not connection_lost(error)
    assert not connection_lost(raised_from(MoveError("the move failed"), error))


def test_a_promotion_changes_the_identity_and_it_round_trips_through_the_job_report() -> None:
    before = ServerIdentity(7300000000000000001, 3, "127.0.0.1:27110")
    promoted = ServerIdentity(7300000000000000001, 4, "127.0.0.1:27111")
    assert ServerIdentity.from_dict(before.as_dict()) == before
    assert promoted != before
    # The same member after a crash and restart in place: a new timeline as well.
    assert ServerIdentity(before.system_id, 4, before.server) != before
    assert promoted.describe() == "127.0.0.1:27111, timeline 4"


def test_a_moves_slot_on_a_standby_is_a_leak_even_while_the_move_runs() -> None:
    # The failed leader rejoined as a standby with the slot; the move goes on on the new one.
    objects = {"shard_0": ReplicationObjects(
        "shard_0", system_id=1, publications=["shardsvc_move_7"],
        slots=[("shardsvc_move_7", 4242)],
        standby_slots=[("shard_0_replica_1", "shardsvc_move_7")])}
    [leak] = find_leaks(objects, active={"shardsvc_move_7"})
    assert (leak.shard, leak.kind, leak.name, leak.member) == (
        "shard_0", "slot", "shardsvc_move_7", "shard_0_replica_1")
    assert leak.describe() == ("shard_0: slot shardsvc_move_7 (on standby shard_0_replica_1, "
                               "left by a failover)")
