"""The connection pool's queue and slots (project/pgpool/pool.py), with stand-in connections.

Threads here are real threads (the pool takes its primitives from `threading` when it is made);
tests/unit/test_pool_gevent.py runs the greenlet cases in a monkey-patched process of its own.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db.utils import OperationalError
from psycopg.pq import TransactionStatus

from project.pgpool import registry
from project.pgpool.errors import PoolTimeout
from project.pgpool.pool import ConnectionPool, PoolKey
from tests.client import wait_until
from tests.unit.pool_fakes import Connector, FakeConnection

REPO = Path(__file__).resolve().parents[2]


def make_pool(connector: Connector, **options: Any) -> ConnectionPool:
    options.setdefault("max_size", 2)
    options.setdefault("timeout", 10.0)
    return ConnectionPool(name="unit", connect=connector, **options)


def until(predicate: Callable[[], object], what: str) -> None:
    wait_until(predicate, timeout=10, interval=0.001, what=what)


class Caller(threading.Thread):
    """One getconn in a thread; `then` runs with the connection (or the error) it got."""

    def __init__(self, pool: ConnectionPool,
                 then: Callable[[FakeConnection], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.pool = pool
        self.then = then
        self.conn: FakeConnection | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.conn = self.pool.getconn()  # type: ignore[assignment]
        except BaseException as exc:
            self.error = exc
            return
        if self.then is not None:
            self.then(self.conn)

    def result(self) -> FakeConnection | BaseException | None:
        self.join(10)
        assert not self.is_alive(), "a pool caller is still blocked"
        return self.error if self.error is not None else self.conn


def queue_callers(pool: ConnectionPool, count: int,
                  then: Callable[[int, FakeConnection], None]) -> list[Caller]:
    """Start `count` callers one after the other, each queued before the next starts, so their
    arrival order is known."""
    callers = []
    already = pool.stats().waiting
    for index in range(count):
        caller = Caller(pool, lambda conn, i=index: then(i, conn))
        caller.start()
        until(lambda n=already + index + 1: pool.stats().waiting == n, f"caller {index} to queue")
        callers.append(caller)
    return callers


@pytest.fixture
def connector() -> Iterator[Connector]:
    made = Connector()
    yield made
    if made.gate is not None:
        made.gate.set()  # never leave a thread parked in connect


# ----- capacity ----------------------------------------------------------------------------


def test_a_cold_burst_never_opens_more_than_max_size(connector: Connector) -> None:
    pool = make_pool(connector, max_size=3)
    connector.gate = threading.Event()
    callers = [Caller(pool, pool.putconn) for _ in range(12)]  # type: ignore[arg-type]
    for caller in callers:
        caller.start()
    # Everyone has arrived: three connects are in flight, the other nine wait in the queue.
    until(lambda: connector.connecting == 3 and pool.stats().waiting == 9, "the burst to queue")
    assert pool.stats().size == 3
    connector.gate.set()
    results = [caller.result() for caller in callers]
    assert all(isinstance(r, FakeConnection) for r in results)
    assert connector.max_connecting == 3
    assert connector.made == 3, "waiters must be served the returned connections"
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.in_use, stats.waiting) == (3, 3, 0, 0)


def test_idle_connections_are_reused_most_recent_first(connector: Connector) -> None:
    pool = make_pool(connector, max_size=2)
    first, second = pool.getconn(), pool.getconn()
    pool.putconn(first)
    pool.putconn(second)
    assert pool.getconn() is second
    assert connector.made == 2


def test_returns_beyond_reuse_are_closed(connector: Connector) -> None:
    pool = make_pool(connector, max_size=3, reuse=1)
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
    assert [c.closed for c in conns] == [False, True, True]  # type: ignore[attr-defined]
    assert (pool.stats().size, pool.stats().idle) == (1, 1)


def test_max_size_below_one_is_refused(connector: Connector) -> None:
    with pytest.raises(ValueError, match="max_size must be at least 1"):
        make_pool(connector, max_size=0)


# ----- fairness ----------------------------------------------------------------------------


def test_waiters_get_returned_connections_in_arrival_order(connector: Connector) -> None:
    pool = make_pool(connector, max_size=1)
    held = pool.getconn()
    served: list[int] = []

    def serve(index: int, conn: FakeConnection) -> None:
        served.append(index)
        pool.putconn(conn)  # type: ignore[arg-type]

    callers = queue_callers(pool, 5, serve)
    pool.putconn(held)
    for caller in callers:
        assert caller.result() is held  # one connection, handed along the queue
    assert served == [0, 1, 2, 3, 4]
    assert connector.made == 1


def test_freed_slots_go_to_waiters_in_arrival_order(connector: Connector) -> None:
    """A connection that is discarded on return frees its slot: the oldest waiter connects."""
    pool = make_pool(connector, max_size=1)
    held = pool.getconn()
    served: list[int] = []

    def serve(index: int, conn: FakeConnection) -> None:
        served.append(index)
        conn.close()  # lost while in use: its slot passes on
        pool.putconn(conn)  # type: ignore[arg-type]

    callers = queue_callers(pool, 4, serve)
    held.close()
    pool.putconn(held)
    for caller in callers:
        assert isinstance(caller.result(), FakeConnection)
    assert served == [0, 1, 2, 3]
    assert connector.made == 5
    assert pool.stats().size == 0


def test_a_newcomer_queues_behind_waiters_even_when_a_slot_is_free(
        connector: Connector) -> None:
    pool = make_pool(connector, max_size=1)
    held = pool.getconn()
    served: list[str] = []
    leave = threading.Event()

    def hold_then_return(index: int, conn: FakeConnection) -> None:
        served.append("waiter")
        leave.wait(10)
        pool.putconn(conn)  # type: ignore[arg-type]

    waiter = queue_callers(pool, 1, hold_then_return)[0]
    pool.putconn(held)  # handed to the waiter, never idle for a newcomer to take
    until(lambda: served == ["waiter"], "the waiter to be served")
    newcomer = Caller(pool, lambda conn: served.append("newcomer"))
    newcomer.start()
    until(lambda: pool.stats().waiting == 1, "the newcomer to queue")
    leave.set()
    assert newcomer.result() is held
    assert waiter.result() is held
    assert served == ["waiter", "newcomer"]


# ----- timeouts ------------------------------------------------------------------------------


def test_a_wait_that_runs_out_raises_pool_timeout_and_keeps_the_slot(
        connector: Connector) -> None:
    pool = make_pool(connector, max_size=1, timeout=0.05)
    held = pool.getconn()
    with pytest.raises(PoolTimeout, match=r"'unit' exhausted: all 1 connections") as caught:
        pool.getconn()
    assert isinstance(caught.value, OperationalError)  # handled like a database outage
    stats = pool.stats()
    assert (stats.size, stats.in_use, stats.waiting) == (1, 1, 0)
    pool.putconn(held)
    assert pool.getconn() is held  # the slot and its connection are intact
    assert connector.made == 1


# ----- failures ------------------------------------------------------------------------------


def test_a_connect_error_frees_the_slot(connector: Connector) -> None:
    pool = make_pool(connector, max_size=1)
    connector.fail.append(psycopg.OperationalError("connection refused"))
    with pytest.raises(psycopg.OperationalError, match="connection refused"):
        pool.getconn()
    assert pool.stats().size == 0
    conn = pool.getconn()
    assert isinstance(conn, FakeConnection)
    assert pool.stats().size == 1


def test_a_connect_error_passes_the_slot_to_a_waiter(connector: Connector) -> None:
    pool = make_pool(connector, max_size=1)
    connector.gate = threading.Event()
    connector.fail.append(psycopg.OperationalError("connection refused"))
    first = Caller(pool)
    first.start()
    until(lambda: connector.connecting == 1, "the first connect")
    second = Caller(pool)
    second.start()
    until(lambda: pool.stats().waiting == 1, "the second caller to queue")
    connector.gate.set()
    assert isinstance(first.result(), psycopg.OperationalError)
    assert isinstance(second.result(), FakeConnection)
    assert pool.stats().size == 1


def test_a_configure_error_closes_the_connection_and_frees_the_slot(
        connector: Connector) -> None:
    def configure(conn: Any) -> None:
        raise psycopg.OperationalError("SET failed")

    pool = make_pool(connector, max_size=1, configure=configure)
    with pytest.raises(psycopg.OperationalError, match="SET failed"):
        pool.getconn()
    assert pool.stats().size == 0
    assert connector.open_now() == 0


@pytest.mark.parametrize(
    "breakage",
    ["closed", "active", "unknown", "rollback_fails"],
)
def test_a_broken_connection_returned_is_closed_and_frees_its_slot(
        connector: Connector, breakage: str) -> None:
    pool = make_pool(connector, max_size=1)
    conn = pool.getconn()
    if breakage == "closed":
        conn.close()
    elif breakage == "active":  # a query still running: its caller was killed
        conn.info.transaction_status = TransactionStatus.ACTIVE
    elif breakage == "unknown":
        conn.info.transaction_status = TransactionStatus.UNKNOWN
    else:
        conn.info.transaction_status = TransactionStatus.INERROR
        conn.rollback_fails = True  # type: ignore[attr-defined]
    pool.putconn(conn)
    assert conn.closed
    assert pool.stats().size == 0
    assert pool.getconn() is not conn


def test_a_connection_returned_in_a_transaction_is_rolled_back_and_kept(
        connector: Connector) -> None:
    pool = make_pool(connector, max_size=1)
    conn = pool.getconn()
    conn.info.transaction_status = TransactionStatus.INTRANS
    pool.putconn(conn)
    assert conn.rollbacks == 1  # type: ignore[attr-defined]
    assert conn.autocommit is True  # idle connections never open a transaction
    assert pool.getconn() is conn


def test_an_idle_connection_whose_server_went_away_is_replaced_in_its_slot(
        connector: Connector) -> None:
    pool = make_pool(connector, max_size=1)
    conn = pool.getconn()
    pool.putconn(conn)
    conn.lose()  # type: ignore[attr-defined]
    fresh = pool.getconn()
    assert fresh is not conn and conn.closed
    assert pool.stats().size == 1


def test_a_long_idle_connection_is_checked_with_a_query(connector: Connector) -> None:
    pool = make_pool(connector, max_size=1, check_idle_after=0.0)
    conn = pool.getconn()
    pool.putconn(conn)
    assert pool.getconn() is conn
    assert conn.executed == ["SELECT 1"]  # type: ignore[attr-defined]


def test_a_connection_the_pool_did_not_hand_out_is_closed_not_kept(
        connector: Connector) -> None:
    pool = make_pool(connector, max_size=1)
    stranger = FakeConnection(99)
    pool.putconn(stranger)  # type: ignore[arg-type]
    assert stranger.closed
    assert pool.stats() == pool.stats().__class__(size=0, in_use=0, idle=0, waiting=0,
                                                  max_size=1)


def test_a_connection_dropped_without_return_frees_its_slot(
        connector: Connector, caplog: pytest.LogCaptureFixture) -> None:
    pool = make_pool(connector, max_size=1)
    conn = pool.getconn()
    served: list[FakeConnection] = []
    waiter = queue_callers(pool, 1, lambda i, c: served.append(c))[0]
    with caplog.at_level(logging.WARNING, logger="project.pgpool"):
        del conn
        gc.collect()
    fresh = waiter.result()
    assert isinstance(fresh, FakeConnection) and served == [fresh]
    assert connector.made == 2  # the waiter connected in the freed slot
    assert pool.stats().size == 1
    assert "garbage collected without being returned" in caplog.text


def test_retire_closes_idle_connections_and_keeps_no_more(connector: Connector) -> None:
    pool = make_pool(connector, max_size=2)
    idle, busy = pool.getconn(), pool.getconn()
    pool.putconn(idle)
    pool.retire()
    assert idle.closed
    pool.putconn(busy)
    assert busy.closed
    assert pool.stats().size == 0


def test_the_pool_counts_its_timeouts_and_metrics_publish_them_once(
        connector: Connector) -> None:
    from prometheus_client import REGISTRY

    from project import metrics
    from project.pgpool import timeout_counts

    pool = ConnectionPool(name="unit-counted", connect=connector, max_size=1, timeout=0.01)
    held = pool.getconn()
    before = timeout_counts().get("unit-counted", 0)
    for _ in range(2):
        with pytest.raises(PoolTimeout):
            pool.getconn()
    assert timeout_counts()["unit-counted"] == before + 2
    pool.putconn(held)
    pool.getconn()  # a checkout that is served counts nothing
    assert timeout_counts()["unit-counted"] == before + 2

    def published() -> float:
        value = REGISTRY.get_sample_value("shardsvc_pool_timeouts_total",
                                          {"alias": "unit-counted"})
        return value or 0.0

    metrics._sample_pool_timeouts()
    assert published() == before + 2
    metrics._sample_pool_timeouts()  # a second sample adds nothing new
    assert published() == before + 2


def test_a_new_address_for_an_alias_retires_the_pool_of_the_old_one(connector: Connector) -> None:
    old_key = PoolKey("shard_9", "127.0.0.1", "6001", "app", "app")
    new_key = old_key._replace(port="6002")
    other_key = PoolKey("shard_8", "127.0.0.1", "6001", "app", "app")
    try:
        old = registry.get_pool(old_key, lambda: make_pool(connector))
        other = registry.get_pool(other_key, lambda: make_pool(connector))
        idle, busy = old.getconn(), old.getconn()
        old.putconn(idle)
        kept = other.getconn()
        other.putconn(kept)

        new = registry.get_pool(new_key, lambda: make_pool(connector))

        assert new is not old
        assert registry.get_pool(new_key, lambda: make_pool(connector)) is new
        assert idle.closed  # the old server's idle connection is not kept
        old.putconn(busy)  # a request that checked out before the change still returns it
        assert busy.closed and old.stats().size == 0
        assert old_key not in registry.pool_stats()
        assert not kept.closed  # another alias's pool is untouched
        assert registry.get_pool(other_key, lambda: make_pool(connector)) is other
    finally:
        for key in (old_key, new_key, other_key):
            registry.retire_pool(key)
