"""Replicas and PostgreSQL timelines (routers/replica_checker.py): after a failover, a replica
still on an older timeline than its cluster has reached serves no read, whatever position it
replayed (that position may be on another history); one that follows the new timeline does.
tests/test_timeline_tokens.py promotes a real replica."""

from __future__ import annotations

import time
from typing import Any

from routers.replica_checker import ReplicaHealth
from routers.replica_probe import PrimaryPosition
from routers.replica_state import ReplicaPositions, ReplicaState
from shards.topology import get_shard_map

REPLICA = "shard_0_replica_1"


class Scripted(ReplicaHealth):
    """Probes answer what the test sets: the replica's positions, the primary's timeline."""

    def __init__(self) -> None:
        super().__init__(get_shard_map())
        self.replica_timeline: int | None = 1
        self.primary_timeline: int | None = 1

    def _query(self, check: Any) -> ReplicaState:
        found = ReplicaPositions(in_recovery=True, replay_lsn=5000, receive_lsn=5000,
                                 answered_at=time.monotonic(),
                                 timeline=self.replica_timeline if check.server.alias == REPLICA
                                 else 1)
        return self._state_from(check, found)

    def _sample(self, check: Any) -> PrimaryPosition | None:
        if check.cluster != "shard_0" or self.primary_timeline is None:
            return None
        return PrimaryPosition(lsn=5000, timeline=self.primary_timeline)


def test_a_replica_behind_its_clusters_timeline_is_not_used() -> None:
    health = Scripted()
    health.check_once()
    assert health.usable_replicas("shard_0", min_lsn=4000) == [REPLICA]

    health.primary_timeline = 2  # a promotion: the primary is on a new timeline
    health.check_once()
    assert health.usable_replicas("shard_0", min_lsn=4000) == []
    assert health.usable_replicas("shard_0") == []

    health.replica_timeline = 2  # it streams from the new primary now
    health.check_once()
    assert health.usable_replicas("shard_0", min_lsn=4000) == [REPLICA]
    assert health.state(REPLICA).timeline == 2


def test_a_replica_keeps_its_timeline_while_it_does_not_stream() -> None:
    health = Scripted()
    health.check_once()
    # The primary is down (no sample) and the replica's walreceiver stopped: it stays usable
    # for the positions it replayed, as it was.
    health.primary_timeline = None
    health.replica_timeline = None
    health.check_once()
    assert health.state(REPLICA).timeline == 1
    assert health.usable_replicas("shard_0", min_lsn=4000) == [REPLICA]


def test_the_newest_timeline_seen_anywhere_counts() -> None:
    # The topology's primary DSN still leads to the old primary; the replica already follows a
    # newer one: it is the one on the newest history, so it serves.
    health = Scripted()
    health.replica_timeline = 3
    health.check_once()
    assert health.usable_replicas("shard_0", min_lsn=4000) == [REPLICA]
