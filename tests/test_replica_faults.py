"""Replica health under real faults: a stopped replica, a hung one, a lagging one.

Tests assert behaviour with deadlines, never timings; what a fault took is printed (pytest -s).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg

from deploy.topology import LocalTopology
from routers.replicas import ReplicaState
from shards.lsn import current_lsn
from tests import replica_checks
from tests.client import wait_until
from tests.replica_checks import (
    LAGGY,
    STOPPED,
    all_healthy,
    checker_backends,
    wait_streaming,
)

# The shared fixtures, bound here so pytest finds them for this module's tests.
make_health = replica_checks.make_health
shard_map = replica_checks.shard_map


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

        def idle_past_max_lag() -> bool:
            # Lag read from the replay timestamp alone would now exceed max_lag.
            with topology.admin_connect(topology.node(STOPPED)) as conn:
                return bool(conn.execute(
                    "SELECT now() - coalesce(pg_last_xact_replay_timestamp(), "
                    "pg_postmaster_start_time()) > interval '1 second'").fetchone()[0])

        wait_until(idle_past_max_lag, timeout=15, what=f"{STOPPED} idle for over max_lag")
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


def test_hung_replica_is_reported_and_the_check_returns(topology, make_health, shard_map) -> None:
    """A server that accepts but never answers (SIGSTOP'd backend) must not stall the checker."""
    health = make_health(check_timeout=1.0)
    wait_until(lambda: all_healthy(health, shard_map), timeout=15, what="every replica healthy")
    pids = checker_backends(topology, STOPPED)
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
        def excluded_while_written_to() -> ReplicaState | None:
            # A write each check: the delayed replica falls further behind it.
            primary.execute("INSERT INTO replica_lag_probe (v) VALUES ('x')")
            health.check_once()
            state = health.state(LAGGY)
            if state is not None and state.reachable and health.usable_replicas("shard_0") == []:
                return state
            return None

        seen_lag = wait_until(excluded_while_written_to, timeout=15,
                              what="the delayed replica to be excluded").lag_seconds
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
