"""Shared by the replica health tests: the checker built on the harness topology's map, and
waits on replica states. Test modules bind the fixtures they use to names of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from deploy.topology import LocalTopology
from routers.replicas import APPLICATION_NAME, ReplicaHealth
from shards.lsn import parse_lsn
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


def checker_backends(topology: LocalTopology, alias: str) -> list[int]:
    with topology.admin_connect(topology.node(alias)) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [APPLICATION_NAME]
        ).fetchall()
    return [pid for (pid,) in rows]
