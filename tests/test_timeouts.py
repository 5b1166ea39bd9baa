"""Bounded waits through the service: statement_timeout, lock_timeout and the request deadline
for a pooler or server that stops answering (how the timeouts reach each query behind PgBouncer
transaction pooling: tests/test_set_local.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from deploy import processes as proc
from deploy.topology import LocalTopology, ServiceProcess
from tests.api_client import UNREACHED_THROTTLES, SiteClient, create_site
from tests.client import Response, get, get_many, wait_until

pytestmark = pytest.mark.usefixtures("django_db")

# The dedicated service's bounds: short, so the tests are quick.
STATEMENT_TIMEOUT = 1.5
LOCK_TIMEOUT = 1.0
DEADLINE = 3.0
# A small pool with a short wait, so a slot the timeouts failed to free shows up as a 503.
POOL_MAX_CONNS = 8
POOL_TIMEOUT = 1.0
# What README promises for a request whose database hangs: the deadline plus the backstop's
# second; plus slack for a busy two-core test machine.
REQUEST_BOUND = DEADLINE + 1.0 + 1.5


@pytest.fixture(scope="module")
def timeouts_service(topology: LocalTopology) -> Iterator[ServiceProcess]:
    svc = topology.start_service(
        name="timeouts", port=topology.layout.http_port + 7,
        SHARDSVC_WORKERS="1", SHARDSVC_URLCONF="tests.urls",
        SHARDSVC_DB_STATEMENT_TIMEOUT=str(STATEMENT_TIMEOUT),
        SHARDSVC_DB_LOCK_TIMEOUT=str(LOCK_TIMEOUT),
        SHARDSVC_REQUEST_DEADLINE=str(DEADLINE),
        SHARDSVC_POOL_MAX_CONNS=str(POOL_MAX_CONNS), SHARDSVC_POOL_TIMEOUT=str(POOL_TIMEOUT),
        **UNREACHED_THROTTLES,  # its load writes as one user
    )
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def site(timeouts_service: ServiceProcess, topology: LocalTopology) -> SiteClient:
    return create_site(timeouts_service, topology, prefix="timeouts", shard="shard_0").as_user(
        "u-timeouts", "Tim")


# -- through the service ---------------------------------------------------------------------


def _timed(call) -> tuple[Response, float]:
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


def test_statement_timeout_answers_503_with_the_reason(timeouts_service) -> None:
    answer, took = _timed(lambda: get(
        f"{timeouts_service.url}/_diag/sleep?alias=shard_0&seconds={STATEMENT_TIMEOUT + 3}"))
    assert answer.status == 503, answer.body
    assert answer.body["error"] == "database_timeout"
    assert "statement_timeout" in answer.body["message"]
    assert answer.headers["Retry-After"]
    assert took < STATEMENT_TIMEOUT + 1.0, took
    # Short queries on the same worker and alias are not affected.
    ok = get(f"{timeouts_service.url}/_diag/sleep?alias=shard_0&seconds=0.1")
    assert ok.status == 200, ok.body


def _assert_every_pool_slot_is_free(service: ServiceProcess, *aliases: str) -> None:
    """MAX_CONNS requests holding a connection each, longer than POOL_TIMEOUT: one slot still
    held by a timed-out request would leave one of them waiting into a PoolTimeout 503."""
    hold = POOL_TIMEOUT + 0.2
    assert hold < STATEMENT_TIMEOUT
    for alias in aliases:
        answers = get_many([f"{service.url}/_diag/sleep?alias={alias}&seconds={hold}"]
                           * POOL_MAX_CONNS)
        assert [a.status for a in answers] == [200] * POOL_MAX_CONNS, [a.body for a in answers]


def _comment_count(admin, thread_id: int) -> int:
    return admin("shard_0").execute(
        "SELECT comment_count FROM comments_thread WHERE id = %s", [thread_id]).fetchone()[0]


def test_a_request_blocked_on_a_row_lock_gets_503_within_lock_timeout(
        timeouts_service, site, admin) -> None:
    locked = site.thread()
    other = site.thread()
    before = _comment_count(admin, locked)
    holder = admin("shard_0")
    holder.execute("BEGIN")
    holder.execute("SELECT id FROM comments_thread WHERE id = %s FOR UPDATE", [locked])
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            blocked = [pool.submit(_timed, lambda: site.call(
                "POST", f"/threads/{locked}/comments", {"body": "blocked"}, user=True))
                for _ in range(3)]
            # Meanwhile the rest of the shard keeps working, on the same worker and pool.
            others = [pool.submit(_timed, lambda i=i: site.call(
                "POST", f"/threads/{other}/comments", {"body": f"free {i}"}, user=True))
                for i in range(10)]
            blocked_results = [f.result() for f in blocked]
            other_results = [f.result() for f in others]
    finally:
        holder.execute("ROLLBACK")
    for answer, took in blocked_results:
        assert answer.status == 503, answer.body
        assert answer.body["error"] == "database_timeout"
        assert answer.headers["Retry-After"]
        assert took < LOCK_TIMEOUT + 1.0, took
    # lock_timeout bounds each lock wait, not their sum: a request queued behind another waiter
    # waits for the tuple lock, then for the holder, and may meet statement_timeout first.
    reasons = [a.body["message"] for a, _ in blocked_results]
    assert all("lock_timeout" in r or "statement_timeout" in r for r in reasons), reasons
    assert any("lock_timeout" in r for r in reasons), reasons
    assert [a.status for a, _ in other_results] == [201] * 10
    assert _comment_count(admin, locked) == before  # nothing written
    # The connections of the timed-out requests were freed: the pool serves the locked thread.
    assert site.call("POST", f"/threads/{locked}/comments", {"body": "after"},
                     user=True).status == 201
    assert _comment_count(admin, locked) == before + 1
    _assert_every_pool_slot_is_free(timeouts_service, "shard_0")


@dataclass
class Outcome:
    client: int
    started: float
    status: int
    error: str
    seconds: float


def _pgbouncer_pid(topology: LocalTopology) -> int:
    pid = proc.read_pid(topology.pgbouncer_dir / "pgbouncer.pid")
    assert pid is not None
    return pid


def test_a_paused_pgbouncer_costs_requests_a_bounded_503_and_the_service_recovers(
        timeouts_service, topology, site) -> None:
    threads = [site.thread() for _ in range(3)]
    for thread_id in threads:
        site.comment(thread_id, "warm")
    outcomes: list[Outcome] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(i: int) -> None:
        # Reads (possibly cache hits) and writes, each with a client timeout far past the bound.
        while not stop.is_set():
            thread_id = threads[i % len(threads)]
            started = time.monotonic()
            if i % 2:
                answer = site.call("GET", f"/threads/{thread_id}/comments")
            else:
                answer = site.call("POST", f"/threads/{thread_id}/comments", {"body": "load"},
                                   user=True)
            took = time.monotonic() - started
            error = answer.body.get("error", "") if isinstance(answer.body, dict) else ""
            with lock:
                outcomes.append(Outcome(i, started, answer.status, error, took))

    pid = _pgbouncer_pid(topology)
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(client, i) for i in range(8)]
        try:  # SIGCONT in `finally` is harmless when the pause never began
            wait_until(lambda: len({o.client for o in outcomes}) == 8, timeout=30,
                       what="load before the pause: every client answered")
            paused_at = time.monotonic()
            os.kill(pid, signal.SIGSTOP)

            def every_client_came_back() -> bool:
                # Writers always need the database; a reader may be served from the cache.
                with lock:
                    return all(any(o.client == i and o.started > paused_at for o in outcomes)
                               for i in range(8))

            wait_until(every_client_came_back, timeout=4 * REQUEST_BOUND,
                       what="every client's request to end while PgBouncer is paused")
        finally:
            os.kill(pid, signal.SIGCONT)
            stop.set()
        for future in futures:
            future.result(timeout=4 * REQUEST_BOUND)

    assert not [o for o in outcomes if o.status >= 500 and o.status != 503], outcomes
    assert {o.status for o in outcomes} <= {200, 201, 503}, outcomes
    slowest = max(o.seconds for o in outcomes)
    assert slowest < REQUEST_BOUND, slowest
    timeouts = [o for o in outcomes if o.status == 503]
    assert timeouts, "the pause did not reach any request"
    assert {o.error for o in timeouts} <= {"database_timeout", "database_unavailable"}
    assert any(o.error == "database_timeout" for o in timeouts)

    # Recovery by itself: writes and reads succeed again within seconds.
    wait_until(lambda: site.call("POST", f"/threads/{threads[0]}/comments", {"body": "back"},
                                 user=True).status == 201,
               timeout=15, interval=0.25, what="writes to succeed after SIGCONT")
    for thread_id in threads:
        answer = site.call("GET", f"/threads/{thread_id}")
        assert answer.status == 200, answer.body
    # The connections the deadline cut were discarded and their slots freed.
    _assert_every_pool_slot_is_free(timeouts_service, "shard_0", "default")
