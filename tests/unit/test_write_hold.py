"""Which failed writes are held and run again (routers/write_hold.py, project/db_faults.py),
and the hold's bound. The errors are the driver's own classes with the SQLSTATEs measured
through PgBouncer during real failovers (tests/test_failover_writes.py makes them for real)."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable

import psycopg
import psycopg.errors as pg_errors
import pytest
from django.conf import settings
from django.db import IntegrityError, OperationalError, ProgrammingError
from django.test import override_settings

from project.db_faults import (
    commit_outcome_unknown,
    is_connection_lost,
    unavailable_reason,
)
from project.pgpool.deadline import Deadline, deadline_scope
from project.pgpool.errors import CommitOutcomeUnknown, DeadlineExceeded, pool_timeout
from routers import write_hold
from routers.write_hold import FENCED, PrimaryUnavailable, hold_reason, retry_writes
from routers.writes import commits
from shards.directory import TenantEntry
from shards.fence import TenantStillFenced
from shards.runtime import runtime
from shards.tenancy import tenant

ALPHA = TenantEntry(id=101, slug="alpha", shard="shard_0", state="active", version=3, min_lsn=0)


def django_error(driver: psycopg.Error, wrapper: type[Exception] = OperationalError) -> Exception:
    """What Django raises for `driver` (its wrapper, raised from the driver's error)."""
    try:
        raise wrapper(str(driver)) from driver
    except Exception as exc:
        return exc


class FenceError(psycopg.Error):
    sqlstate = "SV001"


def lost_during_commit() -> CommitOutcomeUnknown:
    try:
        raise CommitOutcomeUnknown("shard_0") from django_error(
            psycopg.OperationalError("server closed the connection unexpectedly"))
    except CommitOutcomeUnknown as exc:
        return exc


READ_ONLY = pg_errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
HELD = [
    (READ_ONLY, "read-only"),
    (pg_errors.ProtocolViolation("query_wait_timeout"), "unreachable"),
    (pg_errors.ProtocolViolation("server login has been failing, try again later"),
     "unreachable"),
    (psycopg.OperationalError('connection to server at "127.0.0.1", port 6432 failed: '
                              "Connection refused"), "unreachable"),
    (psycopg.OperationalError("server closed the connection unexpectedly"), "unreachable"),
    # measured: Patroni stopping the primary under a write's BEGIN, through PgBouncer
    (psycopg.InternalError("received 2 results from command 'BEGIN'"), "unreachable"),
    (pg_errors.AdminShutdown("terminating connection due to administrator command"),
     "unreachable"),
    (pg_errors.CrashShutdown("terminating connection because of crash of another server "
                             "process"), "unreachable"),
    (pg_errors.CannotConnectNow("the database system is starting up"), "unreachable"),
]


@pytest.mark.parametrize(("driver", "reason"), HELD)
def test_a_read_only_or_unreachable_primary_holds_the_write(driver: psycopg.Error,
                                                             reason: str) -> None:
    assert hold_reason(django_error(driver)) == reason
    assert unavailable_reason(django_error(driver)) == reason


def test_a_fenced_write_is_held_as_before() -> None:
    assert hold_reason(django_error(FenceError("tenant 101 is moving"), IntegrityError)) == FENCED


NOT_HELD: list[Callable[[], BaseException]] = [
    # The write's own fault: running it again changes nothing.
    lambda: django_error(pg_errors.UniqueViolation("duplicate key"), IntegrityError),
    lambda: django_error(pg_errors.UndefinedTable("no such table"), ProgrammingError),
    lambda: django_error(pg_errors.QueryCanceled("canceling statement due to statement timeout")),
    lambda: django_error(pg_errors.LockNotAvailable("canceling statement due to lock timeout")),
    # The service's own bounds, which say nothing about the server.
    lambda: pool_timeout("shard_0", 10, 5.0),
    lambda: DeadlineExceeded("past the deadline"),
    # It may have committed: never again.
    lost_during_commit,
]


@pytest.mark.parametrize("make", NOT_HELD)
def test_other_failures_are_not_held(make: Callable[[], BaseException]) -> None:
    assert hold_reason(make()) is None


def test_connection_lost_looks_through_django_wrappers_only_at_the_driver() -> None:
    assert is_connection_lost(django_error(psycopg.OperationalError("connection refused")))
    assert not is_connection_lost(OperationalError("no driver error behind it"))
    # A driver error that is not about the connection (no SQLSTATE, not operational).
    assert not is_connection_lost(django_error(psycopg.ProgrammingError("bad query")))
    assert not is_connection_lost(django_error(psycopg.InternalError("another driver fault")))


def test_a_commit_the_server_refused_has_a_known_outcome() -> None:
    refused = [pg_errors.SerializationFailure("could not serialize"),
               pg_errors.ForeignKeyViolation("deferred constraint"),
               pg_errors.ReadOnlySqlTransaction("read-only")]
    for driver in refused:
        assert not commit_outcome_unknown(django_error(driver, IntegrityError))
    assert not commit_outcome_unknown(OperationalError("no driver error behind it"))


def test_a_commit_without_the_servers_answer_has_an_unknown_outcome() -> None:
    lost = [pg_errors.AdminShutdown("terminating connection due to administrator command"),
            pg_errors.ProtocolViolation("server conn crashed?"),
            psycopg.OperationalError("server closed the connection unexpectedly"),
            # measured: a backend terminated during COMMIT, through PgBouncer
            psycopg.InternalError("received 2 results from command 'COMMIT'")]
    for driver in lost:
        assert commit_outcome_unknown(django_error(driver))


class Autocommit:
    in_atomic_block = False


class InTransaction:
    in_atomic_block = True


@pytest.mark.parametrize(("sql", "connection", "expected"), [
    ("COMMIT; SELECT pg_current_wal_insert_lsn()", InTransaction(), True),
    ("  commit", InTransaction(), True),
    ('INSERT INTO "t" VALUES (1)', Autocommit(), True),  # autocommit: commits by itself
    ('INSERT INTO "t" VALUES (1)', InTransaction(), False),  # COMMIT comes later
    ('SELECT 1', Autocommit(), False),
])
def test_which_statements_may_commit(sql: str, connection: object, expected: bool) -> None:
    assert commits(sql, connection) is expected


def failing(errors: list[BaseException], result: str = "done") -> tuple[Callable[[], str],
                                                                          list[int]]:
    """A write raising `errors` in turn, then returning `result`; and its attempt count."""
    calls: list[int] = []

    @retry_writes
    def write() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return write, calls


def hold_for(seconds: float) -> override_settings:
    return override_settings(SHARDSVC={**settings.SHARDSVC, "FAILOVER_HOLD_SECONDS": seconds})


def test_a_held_write_runs_again_until_the_primary_takes_it() -> None:
    write, calls = failing([django_error(READ_ONLY),
                            django_error(pg_errors.ProtocolViolation("query_wait_timeout"))])
    with tenant(ALPHA), hold_for(5.0):
        assert write() == "done"
    assert len(calls) == 3


def test_a_held_write_that_went_through_says_how_long_it_was_held(caplog) -> None:
    write, _calls = failing([django_error(READ_ONLY), django_error(READ_ONLY)])
    with tenant(ALPHA), hold_for(5.0), caplog.at_level("INFO", logger="shardsvc.writes"):
        assert write() == "done"
    through = [r.getMessage() for r in caplog.records if "went through" in r.getMessage()]
    assert len(through) == 1, caplog.text
    assert re.fullmatch(rf"write of {ALPHA.slug} went through on shard_0 after \d+ ms held "
                        r"\(3 attempts, \d+ ms asleep; read-only\)", through[0]), through


def test_a_write_that_was_not_held_logs_nothing(caplog) -> None:
    write, _calls = failing([])
    with tenant(ALPHA), caplog.at_level("INFO", logger="shardsvc.writes"):
        assert write() == "done"
    assert not caplog.records


def test_past_the_bound_the_write_fails_with_the_reason() -> None:
    write, calls = failing([django_error(READ_ONLY)] * 1000)
    with tenant(ALPHA), hold_for(0.3), pytest.raises(PrimaryUnavailable) as raised:
        write()
    assert 2 <= len(calls) < 1000
    assert "primary of shard_0" in str(raised.value)
    assert "read-only" in str(raised.value)
    assert isinstance(raised.value.__cause__, OperationalError)


@pytest.mark.parametrize("make", NOT_HELD)
def test_a_write_that_is_not_held_runs_once(make: Callable[[], BaseException]) -> None:
    error = make()
    write, calls = failing([error])
    with tenant(ALPHA), hold_for(5.0), pytest.raises(type(error)):
        write()
    assert len(calls) == 1


def test_the_hold_stops_before_the_request_deadline() -> None:
    write, calls = failing([django_error(READ_ONLY)] * 1000)
    # 0.6 s left, less the reserve kept for the answer: about 0.1 s of holding.
    with (tenant(ALPHA), hold_for(5.0), deadline_scope(Deadline(0.6)),
          pytest.raises(PrimaryUnavailable)):
        write()
    assert len(calls) < 10


def test_a_connection_the_deadline_cut_is_not_held() -> None:
    write, calls = failing([django_error(psycopg.OperationalError("closed unexpectedly"))])
    deadline = Deadline(5.0)
    deadline.expire()
    with tenant(ALPHA), hold_for(5.0), deadline_scope(deadline), pytest.raises(OperationalError):
        write()
    assert len(calls) == 1


def test_without_a_tenant_nothing_is_held() -> None:
    write, calls = failing([django_error(READ_ONLY)])
    with hold_for(5.0), pytest.raises(OperationalError):
        write()
    assert len(calls) == 1


def test_a_fence_that_outlasts_its_bound_names_the_move() -> None:
    fenced = django_error(FenceError("tenant 101 is moving"), IntegrityError)
    write, _calls = failing([fenced] * 1000)
    entry_lookups: list[int] = []

    class Directory:
        def lookup(self, key: int, *, fresh: bool = False) -> TenantEntry:
            entry_lookups.append(key)
            return ALPHA

    conf = {**settings.SHARDSVC, "FENCE_RETRY_SECONDS": 0.2}
    with (tenant(ALPHA), override_settings(SHARDSVC=conf),
          runtime.injected("directory", Directory()), pytest.raises(TenantStillFenced)):
        write()
    assert entry_lookups and set(entry_lookups) == {ALPHA.id}


UNREACHABLE = pg_errors.ProtocolViolation("server login has been failing, try again later")


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Primary:
    """A shard primary that fails writes as unreachable until `back` is set; a write named in
    `broken` fails with an error that is not held once `break_now` is set."""

    def __init__(self) -> None:
        self.back = threading.Event()
        self.break_now = threading.Event()
        self.broken: set[str] = set()
        self.attempts: Counter[str] = Counter()
        self.results: dict[str, object] = {}

    def writer(self, name: str) -> threading.Thread:
        @retry_writes
        def write() -> str:
            self.attempts[name] += 1
            if name in self.broken and self.break_now.is_set():
                raise django_error(pg_errors.UniqueViolation("duplicate key"), IntegrityError)
            if not self.back.is_set():
                raise django_error(UNREACHABLE)
            return name

        def run() -> None:
            with tenant(ALPHA):  # a thread starts without the caller's context
                try:
                    self.results[name] = write()
                except Exception as exc:  # kept for the test to look at
                    self.results[name] = exc

        thread = threading.Thread(target=run)
        thread.start()
        return thread


def prober() -> object:
    outage = write_hold._OUTAGES.get(ALPHA.shard)
    return None if outage is None else outage.prober


def test_writes_of_a_shard_wait_while_one_of_them_tries() -> None:
    primary = Primary()
    with hold_for(10.0):
        first = primary.writer("first")
        until(lambda: prober() is not None, "the first write to try for the others")
        second = primary.writer("second")  # comes while the first one is trying
        tries = primary.attempts["first"]
        until(lambda: primary.attempts["first"] >= tries + 3, "the first write to keep trying")
        assert primary.attempts["second"] == 0  # it waits, and does not try meanwhile
        primary.back.set()
        first.join(10)
        second.join(10)
    assert primary.results == {"first": "first", "second": "second"}
    assert primary.attempts["second"] == 1  # once, when the first one went through
    assert ALPHA.shard not in write_hold._OUTAGES


def test_a_write_that_stops_trying_hands_over_to_one_that_waits() -> None:
    primary = Primary()
    primary.broken.add("first")
    with hold_for(10.0):
        first = primary.writer("first")
        until(lambda: prober() is not None, "the first write to try for the others")
        second = primary.writer("second")
        tries = primary.attempts["first"]
        until(lambda: primary.attempts["first"] >= tries + 2, "the first write to keep trying")
        assert primary.attempts["second"] == 0
        primary.break_now.set()  # the first write fails for a reason of its own
        first.join(10)
        assert isinstance(primary.results["first"], IntegrityError)
        until(lambda: primary.attempts["second"] >= 2, "the second write to try by itself")
        primary.back.set()
        second.join(10)
    assert primary.results["second"] == "second"


def test_a_write_waiting_for_the_prober_fails_at_its_own_bound() -> None:
    primary = Primary()
    with hold_for(0.6):
        first = primary.writer("first")
        until(lambda: prober() is not None, "the first write to try for the others")
        second = primary.writer("second")
        first.join(10)
        second.join(10)
    assert isinstance(primary.results["second"], PrimaryUnavailable)
    assert "unreachable" in str(primary.results["second"])
