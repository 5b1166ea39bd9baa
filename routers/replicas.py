"""Per-worker replica health: which replicas of a cluster may serve a read right now.

    health = get_replica_health()                    # built and started on first use
    health.usable_replicas("shard_0", min_lsn=token)  # ["shard_0_replica_1"] or []
    health.mark_failed("shard_0_replica_1", str(exc)) # a request saw it fail: skip it now

The parts live in their own modules: `replica_state` (one check's result, and the state from a
probe's positions), `wal_lag` (lag in bytes and seconds from WAL positions), `replica_probe` (the
SQL a check runs on a replica and on its primary, and its connection), `native_threads` (the
OS threads the checks run on, outside the worker's gevent loop), `replica_checker`
(`ReplicaHealth`, the background checker) and `replica_runner` (its thread and fork safety).
This module is what the rest of the service imports, and the factory the runtime registry
(``shards.runtime``, ``SHARDSVC["REPLICA_HEALTH_FACTORY"]``) builds the process's checker
with; a test hands the router a fake with ``runtime.injected("replica_health", fake)``.
"""

from __future__ import annotations

import weakref

from routers.replica_checker import ReplicaHealth
from routers.replica_probe import APPLICATION_NAME, CHECK_QUERY
from routers.replica_state import ReplicaState
from shards.live_topology import TopologyFollower
from shards.runtime import Conf, ReplicaHealthSource, replica_health
from shards.topology import ShardMap, get_shard_map


def build_replica_health(conf: Conf) -> ReplicaHealth:
    """The registry's factory: a checker over the shard map, with the Conf's lag bound and
    interval. The registry runs its first check synchronously and starts it on first use.

    Its thread also follows the topology file (`shards.live_topology`): after each round it
    polls the file (at most once a second) and moves the process, this checker included, to
    a changed map."""
    shard_map = get_shard_map()
    health = ReplicaHealth(shard_map, max_lag=conf.replica_max_lag,
                           interval=conf.replica_check_interval)
    # Weakly: the follower lives on the checker, which must stay collectable.
    retarget = weakref.WeakMethod(health.retarget)

    def follow(new: ShardMap) -> None:
        method = retarget()
        if method is not None:
            method(new)

    health.after_round = TopologyFollower(shard_map.source, listeners=(follow,)).poll
    return health


def get_replica_health() -> ReplicaHealthSource:
    """This process's replica health (built, checked once and started on first use; also in a
    worker forked from a preloaded master), or the fake a test injected."""
    return replica_health()


__all__ = [
    "APPLICATION_NAME",
    "CHECK_QUERY",
    "ReplicaHealth",
    "ReplicaState",
    "build_replica_health",
    "get_replica_health",
]
