"""The per-worker replica health checker against the real harness topology: real stops, real lag.

Tests assert behaviour with deadlines, never timings; what a fault took is printed (pytest -s).
"""

from __future__ import annotations

import gc
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from deploy.topology import LocalTopology
from routers.replicas import (
    APPLICATION_NAME,
    ReplicaHealth,
    get_replica_health,
    reset_replica_health,
)
from shards.errors import UnknownAlias, UnknownShard
from shards.lsn import current_lsn, format_lsn, parse_lsn
from shards.topology import ShardMap, load_shard_map
from tests.client import wait_until

LAGGY = "shard_0_replica_1"
STOPPED = "shard_1_replica_1"
FAR_FUTURE = parse_lsn("FFFFFFFF/FFFFFFFF")


@pytest.fixture(scope="module")
def shard_map(topology: LocalTopology) -> ShardMap:
    # Straight from the topology file: only get_replica_health() needs Django settings.
    return load_shard_map(topology.layout.topology_file)


@pytest.fixture
def make_health(shard_map: ShardMap) -> Iterator[Callable[..., ReplicaHealth]]:
    made: list[ReplicaHealth] = []

    def make(**kwargs: Any) -> ReplicaHealth:
        health = ReplicaHealth(shard_map, **kwargs)
        made.append(health)
        return health

    yield make
    for health in made:
        health.stop()


def replica_aliases(shard_map: ShardMap) -> set[str]:
    return {s.alias for c in shard_map.clusters for s in c.replicas}


def all_healthy(health: ReplicaHealth, shard_map: ShardMap) -> bool:
    health.check_once()
    states = health.states()
    return set(states) == replica_aliases(shard_map) and all(
        s.reachable and s.in_recovery and s.error is None and s.replay_lsn > 0
        and s.lag_seconds <= health.max_lag
        for s in states.values()
    )


def wait_streaming(topology: LocalTopology, replica: str, *, timeout: float = 30) -> None:
    """Until the replica's primary shows it streaming: later tests share this topology."""
    primary = topology.node(replica).cluster

    def streaming() -> bool:
        with topology.admin_connect(topology.node(primary)) as conn:
            row = conn.execute(
                "SELECT state FROM pg_stat_replication WHERE application_name = %s", [replica]
            ).fetchone()
            return row is not None and row[0] == "streaming"

    wait_until(streaming, timeout=timeout, interval=0.2, what=f"{replica} streaming again")


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
        written = current_lsn(primary)
        assert written > replayed

        def replayed_write() -> bool:
            health.check_once()
            return health.usable_replicas("shard_0", min_lsn=written) == [LAGGY]

        wait_until(replayed_write, timeout=15, what=f"{LAGGY} replaying {format_lsn(written)}")
    finally:
        primary.execute("DROP TABLE replica_lsn_probe")


# ----- faults -----------------------------------------------------------------------------------


def test_stopped_replica_drops_out_and_comes_back(topology, make_health, shard_map) -> None:
    health = make_health()  # default interval, as a worker runs it
    health.check_once()
    health.start()
    wait_until(lambda: health.usable_replicas("shard_1") == [STOPPED], timeout=15,
               what=f"{STOPPED} usable")
    try:
        stop_began = time.monotonic()
        topology.stop_node(STOPPED, mode="immediate")
        stopped = time.monotonic()
        wait_until(lambda: health.usable_replicas("shard_1") == [], timeout=15, interval=0.02,
                   what=f"{STOPPED} excluded")
        excluded = time.monotonic()
        state = health.state(STOPPED)
        assert state is not None and not state.reachable
        assert state.error and "OperationalError" in state.error
        # Only that replica: the others keep serving.
        assert health.usable_replicas("shard_0") == ["shard_0_replica_1"]

        topology.start_node(STOPPED)
        started = time.monotonic()
        wait_until(lambda: health.usable_replicas("shard_1") == [STOPPED], timeout=30,
                   interval=0.02, what=f"{STOPPED} usable again")
        back = time.monotonic()
        state = health.state(STOPPED)
        assert state.reachable and state.in_recovery and state.error is None
        # Restarted on an idle shard, its receive LSN sits behind replay until the primary
        # writes: that must not read as lag growing past max_lag.
        strict = make_health(max_lag=0.5)
        time.sleep(1.0)
        strict.check_once()
        assert strict.state(STOPPED).lag_seconds == 0
        assert strict.usable_replicas("shard_1") == [STOPPED]
        print(
            f"\n[replica health] pg_ctl stop -m immediate took {stopped - stop_began:.2f} s; "
            f"excluded {excluded - stopped:.2f} s after it returned; "
            f"usable again {back - started:.2f} s after pg_ctl start returned"
        )
    finally:
        health.stop()
        topology.start_node(STOPPED)  # no-op when running
        wait_streaming(topology, STOPPED)


def _backends_of_checker(topology: LocalTopology, alias: str) -> list[int]:
    with topology.admin_connect(topology.node(alias)) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [APPLICATION_NAME]
        ).fetchall()
    return [pid for (pid,) in rows]


def test_hung_replica_is_reported_and_the_check_returns(topology, make_health, shard_map) -> None:
    """A server that accepts but never answers (SIGSTOP'd backend) must not stall the checker."""
    health = make_health(check_timeout=1.0)
    wait_until(lambda: all_healthy(health, shard_map), timeout=15, what="every replica healthy")
    pids = _backends_of_checker(topology, STOPPED)
    assert pids, "the checker keeps a connection per replica"
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        began = time.monotonic()
        health.check_once()
        took = time.monotonic() - began
        state = health.state(STOPPED)
        assert state is not None and not state.reachable
        assert "no answer within 1 s" in (state.error or "")
        assert health.usable_replicas("shard_1") == []
        assert health.usable_replicas("shard_0") == ["shard_0_replica_1"]
        assert took < 10, f"check_once hung for {took:.1f} s"
        print(f"\n[replica health] check_once with a hung replica returned in {took:.2f} s")
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    def reconnected() -> bool:
        health.check_once()
        return health.usable_replicas("shard_1") == [STOPPED]

    wait_until(reconnected, timeout=15, what=f"{STOPPED} usable after SIGCONT")


def _set_apply_delay(topology: LocalTopology, conn: psycopg.Connection[Any], value: str) -> str:
    """Set recovery_min_apply_delay on a standby; returns how ("ALTER SYSTEM" or "auto.conf")."""
    try:
        if value:
            conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{value}'")
        else:
            conn.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        how = "ALTER SYSTEM"
    except psycopg.Error:
        # Fallback if a standby refuses ALTER SYSTEM: edit the file it writes.
        auto = topology.node(LAGGY).datadir / "postgresql.auto.conf"
        lines = [line for line in auto.read_text().splitlines()
                 if not line.startswith("recovery_min_apply_delay")]
        if value:
            lines.append(f"recovery_min_apply_delay = '{value}'")
        auto.write_text("\n".join(lines) + "\n")  # root keeps the postgres owner on rewrite
        how = "auto.conf"
    conn.execute("SELECT pg_reload_conf()")
    expected = value or "0"
    wait_until(
        lambda: conn.execute("SHOW recovery_min_apply_delay").fetchone()[0] == expected,
        timeout=10, what=f"recovery_min_apply_delay = {expected}",
    )
    return how


def test_lagging_replica_is_excluded_then_returns(topology, make_health, admin) -> None:
    health = make_health(max_lag=0.5)
    replica, primary = admin(LAGGY), admin("shard_0")
    primary.execute("CREATE TABLE IF NOT EXISTS replica_lag_probe (id bigserial, v text)")
    how = _set_apply_delay(topology, replica, "2s")
    try:
        seen_lag = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            primary.execute("INSERT INTO replica_lag_probe (v) VALUES ('x')")
            health.check_once()
            state = health.state(LAGGY)
            if state is not None and state.reachable and health.usable_replicas("shard_0") == []:
                seen_lag = state.lag_seconds
                break
            time.sleep(0.1)
        assert seen_lag is not None, "the delayed replica was never excluded"
        assert seen_lag > 0.5
        assert health.state(LAGGY).in_recovery
        # The same replica with a looser bound is still fine: it lags, it is not down.
        assert seen_lag < 60
        print(f"\n[replica health] recovery_min_apply_delay set by {how}; "
              f"excluded at lag {seen_lag:.2f} s")
    finally:
        _set_apply_delay(topology, replica, "")
        primary.execute("DROP TABLE IF EXISTS replica_lag_probe")
        target = current_lsn(primary)

        def caught_up() -> bool:
            health.check_once()
            return health.usable_replicas("shard_0", min_lsn=target) == [LAGGY]

        wait_until(caught_up, timeout=20, what=f"{LAGGY} caught up after the delay is reset")


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
    before = len(_backends_of_checker(topology, LAGGY))
    del health
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    wait_until(lambda: len(_backends_of_checker(topology, LAGGY)) == before - 1, timeout=5,
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

    reset_replica_health()
    try:
        health = get_replica_health()
        assert get_replica_health() is health
        assert health.running
        # A first check ran synchronously: the first request already has data.
        assert set(health.states()) == replica_aliases(shard_map)
        assert health.max_lag == getattr(settings, "REPLICA_MAX_LAG", 5.0)
        assert health.interval == getattr(settings, "REPLICA_CHECK_INTERVAL", 0.5)

        with override_settings(REPLICA_MAX_LAG=1.5, REPLICA_CHECK_INTERVAL=0.2):
            assert not health.running  # the settings change dropped it
            other = get_replica_health()
            assert other is not health
            assert (other.max_lag, other.interval) == (1.5, 0.2)
        assert not other.running
    finally:
        reset_replica_health()
    assert not health.running
