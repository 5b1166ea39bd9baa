"""A shard primary that dies with WAL its replica never received (the plain topology, a real
stop): the replica keeps serving reads, also comment pages whose write mark only the dead
primary reached, and nothing built without the mark is cached. Then the primary comes back.

The replica is kept from receiving the primary's last WAL by stopping (SIGSTOP) the primary's
WAL sender for it before the write, then stopping the primary in immediate mode: the stopped
sender never sends it. tests/unit/test_replica_primary_gone.py holds the checker's rules.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid

import pytest

from comments import cache, service
from comments.models import Comment, Thread
from routers.context import use_primary
from routers.router import explain_read_choice
from routers.state import routing_scope
from shards.lsn import current_lsn, insert_lsn
from shards.runtime import runtime
from shards.tenancy import tenant
from tests import replica_checks
from tests.client import wait_until
from tests.conftest import wait_until_serving
from tests.replica_checks import STOPPED, all_healthy, wait_streaming
from tests.statements import statements

pytestmark = pytest.mark.usefixtures("django_db")

make_health = replica_checks.make_health
shard_map = replica_checks.shard_map

PRIMARY = "shard_1"
MAX_LAG = 1.0
STALE_AFTER = 1.0


def test_a_replica_serves_reads_after_its_primary_died_ahead_of_it(
        topology, make_health, shard_map, admin, tenants) -> None:
    health = make_health(interval=0.2, max_lag=MAX_LAG, stale_after=STALE_AFTER)
    entry = tenants["b"]  # on shard_1
    with tenant(entry), use_primary():
        thread = Thread.objects.create(url=f"/primary-gone/{uuid.uuid4()}", title="gone")
        Comment.objects.create(thread=thread, author="u1", author_name="U", body="before")
    primary = admin(PRIMARY)
    before = insert_lsn(primary)  # past the comment's commit, written out or not yet
    wait_until(lambda: health.check_once() or health.usable_replicas(
        PRIMARY, min_lsn=before) == [STOPPED], timeout=20, what="the replica caught up")

    (sender,) = primary.execute(
        "SELECT pid FROM pg_stat_replication WHERE application_name = %s", [STOPPED]).fetchone()
    os.kill(sender, signal.SIGSTOP)
    try:
        # WAL only the primary will ever have: a thread's write mark goes there.
        primary.execute("SELECT pg_logical_emit_message(false, 'shardsvc-test', 'gone')")
        last = insert_lsn(primary)
        cache.raise_mark(entry, thread.id, last)
        # Written out (the WAL writer's next round), and sampled by the checker.
        wait_until(lambda: health.check_once() or (
            current_lsn(primary) >= last and health.state(STOPPED).lag_bytes > 0),
            timeout=10, what="the checker seeing the primary ahead of its replica")
        primary.close()
        # Immediate: the sender, stopped, gets its signal only when the stop is over.
        topology.stop_node(PRIMARY, mode="immediate")
        stopped = time.monotonic()
    finally:
        # Stopped, it would hold the primary's stop, or a failed test's primary, forever.
        with contextlib.suppress(ProcessLookupError):
            os.kill(sender, signal.SIGKILL)

    try:
        # Past max_lag, and past stale_after of the primary's silence.
        time.sleep(MAX_LAG + STALE_AFTER + 0.5)
        health.check_once()
        state = health.state(STOPPED)
        assert state is not None and state.reachable, state
        assert state.lag_bytes > 0 and state.lag_seconds <= MAX_LAG, state
        assert health.usable_replicas(PRIMARY) == [STOPPED]
        assert health.out_of_reach(PRIMARY, last)

        with runtime.injected("replica_health", health):
            for _ in range(2):  # the second is no hit: the first page was not stored
                with (tenant(entry), routing_scope(), statements(STOPPED) as sent):
                    body, how = service.cached_comment_page(thread.id, "newest", None, 20)
                assert how == "bypass"
                assert b'"before"' in body
                assert len(sent) == 1  # read from the replica
            # A reader whose own token says it wrote past the replica is not served from it.
            with tenant(entry), routing_scope() as routing:
                routing.require_position(PRIMARY, last)
                assert explain_read_choice(PRIMARY) == (PRIMARY, "no_replica_caught_up")
        print(f"\n[primary gone] replica served for {time.monotonic() - stopped:.1f} s after "
              f"the stop, {state.lag_bytes} bytes behind, lag {state.lag_seconds:.2f} s")
    finally:
        topology.start_node(PRIMARY)
        wait_streaming(topology, STOPPED)
        wait_until_serving(topology)
        wait_until(lambda: all_healthy(health, shard_map), timeout=30,
                   what="every replica healthy again")
