"""The per-worker replica health checker against the real harness topology: its checks, its
states, its thread. Real faults (a stopped, hung or lagging replica): test_replica_faults.py.

Tests assert behaviour with deadlines, never timings; what a fault took is printed (pytest -s).
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from typing import Any

import pytest

from routers.replica_probe import CHECK_QUERY
from routers.replica_state import describe_unhealthy
from routers.replicas import (
    ReplicaHealth,
    get_replica_health,
)
from shards.errors import UnknownAlias, UnknownShard
from shards.lsn import current_lsn, format_lsn, insert_lsn, parse_lsn
from shards.runtime import runtime
from shards.topology import ShardMap
from tests import replica_checks
from tests.client import wait_until
from tests.replica_checks import (
    FAR_FUTURE,
    LAGGY,
    all_healthy,
    checker_backends,
    replica_aliases,
)

# The shared fixtures, bound here so pytest finds them for this module's tests.
make_health = replica_checks.make_health
shard_map = replica_checks.shard_map

# ----- LSNs and construction --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["16/B374D848", "0/0", "0/1", "FFFFFFFF/FFFFFFFF", "1/0"])
def test_lsn_round_trip_matches_postgres(text: str, admin) -> None:
    value = parse_lsn(text)
    assert format_lsn(value) == text
    row = admin("shard_0").execute("SELECT (%s::pg_lsn - '0/0'::pg_lsn)::text", [text]).fetchone()
    assert value == int(row[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 0},
        {"interval": -1},
        {"interval": math.nan},
        {"max_lag": -0.1},
        {"max_lag": math.inf},
        {"check_timeout": 0},
        {"stale_after": 0.5, "interval": 0.5},
        {"stale_after": "3"},
    ],
)
def test_constructor_rejects_bad_settings(shard_map: ShardMap, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ReplicaHealth(shard_map, **kwargs)


def test_constructor_is_keyword_only(shard_map: ShardMap) -> None:
    with pytest.raises(TypeError):
        ReplicaHealth(shard_map, 0.5)  # type: ignore[misc]
    with pytest.raises(TypeError, match="ShardMap"):
        ReplicaHealth("shard_0")  # type: ignore[arg-type]


# ----- a healthy topology -----------------------------------------------------------------------


def test_every_replica_reachable_in_recovery_and_caught_up(make_health, shard_map) -> None:
    health = make_health()
    wait_until(lambda: all_healthy(health, shard_map), timeout=15, what="every replica healthy")
    for alias, state in health.states().items():
        assert state.alias == alias
        assert state.cluster == shard_map.cluster_of(alias).name
    assert health.usable_replicas("shard_0") == ["shard_0_replica_1"]
    assert health.usable_replicas("shard_1") == ["shard_1_replica_1"]
    assert health.usable_replicas("default") == ["default_replica_1"]
    assert health.state("shard_0") is None  # primaries are not tracked


def test_unknown_names_raise(make_health) -> None:
    health = make_health()
    with pytest.raises(UnknownShard, match="shard_0_replica_1"):
        health.usable_replicas("shard_0_replica_1")
    with pytest.raises(UnknownAlias):
        health.mark_failed("nope", "boom")
    health.mark_failed("shard_0", "boom")  # a primary: nothing to skip it for
    assert health.state("shard_0") is None


def test_min_lsn_filters_replicas_that_have_not_replayed_it(make_health, shard_map, admin) -> None:
    health = make_health()
    wait_until(lambda: all_healthy(health, shard_map), timeout=15, what="every replica healthy")
    replayed = health.state(LAGGY).replay_lsn
    assert health.usable_replicas("shard_0", min_lsn=replayed) == [LAGGY]
    assert health.usable_replicas("shard_0", min_lsn=FAR_FUTURE) == []
    assert health.usable_replicas("shard_0", min_lsn=replayed + (1 << 40)) == []

    # Read-your-writes: a fresh write's LSN excludes the replica until it has replayed it.
    primary = admin("shard_0")
    primary.execute("CREATE TABLE IF NOT EXISTS replica_lsn_probe (v text)")
    try:
        primary.execute("INSERT INTO replica_lsn_probe VALUES ('x')")
        # The insert position: past the commit record even under synchronous_commit=off, when
        # the write position may not have moved yet.
        written = insert_lsn(primary)
        assert written > replayed

        def replayed_write() -> bool:
            health.check_once()
            return health.usable_replicas("shard_0", min_lsn=written) == [LAGGY]

        wait_until(replayed_write, timeout=15, what=f"{LAGGY} replaying {format_lsn(written)}")
    finally:
        primary.execute("DROP TABLE replica_lsn_probe")


def test_mark_failed_excludes_at_once_until_the_next_good_check(make_health, shard_map) -> None:
    health = make_health()
    wait_until(lambda: all_healthy(health, shard_map), timeout=15, what="every replica healthy")
    health.mark_failed(LAGGY, "server closed the connection unexpectedly")
    assert health.usable_replicas("shard_0") == []
    state = health.state(LAGGY)
    assert not state.reachable and state.error == "server closed the connection unexpectedly"
    assert health.usable_replicas("shard_1") == ["shard_1_replica_1"]
    health.check_once()
    assert health.usable_replicas("shard_0") == [LAGGY]


# ----- the background thread --------------------------------------------------------------------


def test_background_checks_refresh_states_and_stale_states_are_not_trusted(make_health) -> None:
    health = make_health(interval=0.1, stale_after=1.0)
    health.start()
    thread = health._thread
    health.start()  # idempotent
    assert health._thread is thread and health.running

    def refreshed_twice() -> bool:
        state = health.state(LAGGY)
        return state is not None and state.checked_at > first + 0.1

    wait_until(lambda: health.state(LAGGY) is not None, timeout=10, what="a first check")
    first = health.state(LAGGY).checked_at
    wait_until(refreshed_twice, timeout=10, what="the thread checking again")
    wait_until(lambda: health.usable_replicas("shard_0") == [LAGGY], timeout=10,
               what=f"{LAGGY} usable")

    health.stop()
    assert not health.running and not thread.is_alive()
    # A stopped checker stops vouching: after stale_after its last answers no longer count.
    wait_until(lambda: health.usable_replicas("shard_0") == [], timeout=5,
               what="stale states ignored")


def test_dropped_instance_stops_its_thread_and_closes_connections(shard_map, topology) -> None:
    health = ReplicaHealth(shard_map, interval=0.1)
    health.check_once()
    health.start()
    thread = health._thread
    assert thread is not None and thread.is_alive()
    before = len(checker_backends(topology, LAGGY))
    del health
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    wait_until(lambda: len(checker_backends(topology, LAGGY)) == before - 1, timeout=5,
               what="the dropped checker's connection closed")


def test_forked_child_runs_its_own_checker_without_touching_the_parents(make_health) -> None:
    health = make_health(interval=0.1, stale_after=1.0)
    health.check_once()
    health.start()
    wait_until(lambda: health.usable_replicas("shard_0") == [LAGGY], timeout=10,
               what=f"{LAGGY} usable")
    parent_conn = health._res.conns[LAGGY]
    parent_backend = parent_conn.info.backend_pid

    forked_at = time.monotonic()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code only
        code = 1
        try:
            health.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                state = health.state(LAGGY)
                if (state is not None and state.checked_at > forked_at + 0.2
                        and health.usable_replicas("shard_0") == [LAGGY]
                        and health._res.conns.get(LAGGY) is not parent_conn
                        and health._thread is not None
                        and health._thread is not threading.main_thread()):
                    code = 0
                    break
                time.sleep(0.05)
            health.stop()
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's checker did not run on its own"
    # The child neither used nor terminated the parent's session.
    health.check_once()
    assert health._res.conns[LAGGY] is parent_conn
    assert not parent_conn.closed and parent_conn.info.backend_pid == parent_backend
    assert health.usable_replicas("shard_0") == [LAGGY]


# ----- the process-wide accessor ----------------------------------------------------------------


@pytest.mark.usefixtures("django_db")
def test_get_replica_health_builds_once_from_settings_and_starts(shard_map) -> None:
    from django.conf import settings
    from django.test import override_settings

    runtime.reset()
    try:
        health = get_replica_health()
        assert get_replica_health() is health
        assert health.running
        # A first check ran synchronously: the first request already has data.
        assert set(health.states()) == replica_aliases(shard_map)
        assert health.max_lag == runtime.conf().replica_max_lag
        assert health.interval == runtime.conf().replica_check_interval

        changed = {**settings.SHARDSVC, "REPLICA_MAX_LAG": 1.5, "REPLICA_CHECK_INTERVAL": 0.2}
        with override_settings(SHARDSVC=changed):
            assert not health.running  # the settings change dropped it
            other = get_replica_health()
            assert other is not health
            assert (other.max_lag, other.interval) == (1.5, 0.2)
        assert not other.running
    finally:
        runtime.reset()
    assert not health.running


# ----- lag after an idle period -----------------------------------------------------------------


def test_an_idle_replica_does_not_read_as_lagging_after_the_first_write(
    make_health, topology, admin,
) -> None:
    """Lag comes from WAL positions against the primary's: after idling for longer than
    max_lag, the first write must not make the caught-up replica read as lagging by the idle
    time (the age of its last replayed commit), neither while the write replays nor after."""
    replica, max_lag = "shard_1_replica_1", 1.0
    health = make_health(max_lag=max_lag)
    primary = admin("shard_1")
    primary.execute("CREATE TABLE IF NOT EXISTS idle_lag_probe (id bigint, v text)")
    try:
        def idle_past_max_lag() -> bool:
            with topology.admin_connect(topology.node(replica)) as conn:
                return bool(conn.execute(
                    "SELECT now() - pg_last_xact_replay_timestamp() > %s * interval '1 second'",
                    [2 * max_lag]).fetchone()[0])

        wait_until(idle_past_max_lag, timeout=30, what=f"{replica} idle for over 2 x max_lag")
        health.check_once()
        assert health.usable_replicas("shard_1") == [replica]

        # The first write after the idle, checked straight away and while it replays.
        writer = threading.Thread(target=lambda: admin("shard_1").execute(
            "INSERT INTO idle_lag_probe SELECT g, repeat('x', 200) "
            "FROM generate_series(1, 20000) g"))
        seen, old_readings = [], []
        with topology.admin_connect(topology.node(replica)) as old_style:
            writer.start()
            while writer.is_alive() or len(seen) < 20:
                health.check_once()
                seen.append(health.state(replica))
                old_readings.append(float(old_style.execute(CHECK_QUERY).fetchone()[2] or 0))
            writer.join()
        written = current_lsn(primary)
        unhealthy = [(s, describe_unhealthy(s, max_lag)) for s in seen
                     if describe_unhealthy(s, max_lag) is not None]
        print(f"\n[replica health] {len(seen)} checks around the first write after the idle: "
              f"max lag {max(s.lag_seconds for s in seen):.3f} s, max bytes behind "
              f"{max(s.lag_bytes for s in seen)}; the replay-timestamp reading peaked at "
              f"{max(old_readings):.2f} s")
        assert unhealthy == []
        assert all(s.reachable and s.in_recovery for s in seen)

        def caught_up() -> bool:
            health.check_once()
            state = health.state(replica)
            return state.replay_lsn >= written and state.lag_bytes == 0

        wait_until(caught_up, timeout=15, what=f"{replica} caught up, 0 bytes behind")
        assert health.state(replica).lag_seconds == 0
        assert health.usable_replicas("shard_1", min_lsn=written) == [replica]
    finally:
        primary.execute("DROP TABLE IF EXISTS idle_lag_probe")
