"""A replica whose primary is gone (routers/replica_checker.py): the primary's last positions,
WAL written after the last bytes the replica received, will never reach it. Its lag is taken as
of the primary's last answer, so it keeps serving reads through a failover; a position only the
gone primary had is out of reach. tests/test_primary_gone.py stops a real primary."""

from __future__ import annotations

import time
from typing import Any

import pytest

from routers.replica_checker import ReplicaHealth
from routers.replica_probe import PrimaryPosition
from routers.replica_state import ReplicaPositions, ReplicaState
from shards.topology import get_shard_map

REPLICA = "shard_0_replica_1"
MAX_LAG = 0.5
STALE_AFTER = 1.0


class Scripted(ReplicaHealth):
    """Probes answer what the test sets: shard_0's primary position (None: no answer), and its
    replica's replay and receive position and whether it streams."""

    def __init__(self) -> None:
        super().__init__(get_shard_map(), interval=0.1, max_lag=MAX_LAG, stale_after=STALE_AFTER)
        self.primary_lsn: int | None = 9000
        self.replica_lsn = 9000
        self.streaming = True

    def _query(self, check: Any) -> ReplicaState:
        found = ReplicaPositions(in_recovery=True, replay_lsn=self.replica_lsn,
                                 receive_lsn=self.replica_lsn, answered_at=time.monotonic(),
                                 timeline=1 if self.streaming else None)
        return self._state_from(check, found)

    def _sample(self, check: Any) -> PrimaryPosition | None:
        if check.cluster == "shard_0" and self.primary_lsn is None:
            raise ConnectionRefusedError("connection refused")
        return PrimaryPosition(lsn=self.primary_lsn or 9000, timeline=1)


@pytest.fixture
def health() -> Scripted:
    health = Scripted()
    health.replica_lsn = 8000  # 1,000 bytes behind, received and replayed so far
    health.check_once()
    assert health.usable_replicas("shard_0") == [REPLICA]
    return health


def test_a_replica_cut_off_with_its_primary_keeps_the_lag_it_had(health: Scripted) -> None:
    # The primary dies: the replica's WAL receiver stops, the last 1,000 bytes never arrive.
    health.primary_lsn = None
    health.streaming = False
    time.sleep(MAX_LAG + STALE_AFTER)
    health.check_once()
    state = health.state(REPLICA)
    assert state is not None and state.lag_seconds <= MAX_LAG, state
    assert state.lag_bytes == 1000  # still said: the bytes it never received
    assert health.usable_replicas("shard_0") == [REPLICA]


def test_a_streaming_replica_whose_primary_we_cannot_reach_still_lags(health: Scripted) -> None:
    # Only this process lost the primary; the replica still receives from it, and is behind.
    health.primary_lsn = None
    time.sleep(MAX_LAG + 0.05)
    health.check_once()
    assert health.usable_replicas("shard_0") == []


def test_a_replica_cut_off_from_a_primary_that_still_answers_lags(health: Scripted) -> None:
    health.streaming = False
    health.primary_lsn = 9500  # the primary goes on writing; the replica gets none of it
    time.sleep(MAX_LAG + 0.05)
    # Two rounds: within one, the replica's check may finish before the primary's sample
    # (lag errs low by up to one interval, routers/wal_lag.py).
    health.check_once()
    health.check_once()
    assert health.usable_replicas("shard_0") == []


def test_a_position_only_the_gone_primary_had_is_out_of_reach(health: Scripted) -> None:
    assert not health.out_of_reach("shard_0", 8500)  # the primary answers: it can serve
    health.primary_lsn = None
    health.streaming = False
    health.check_once()
    assert not health.out_of_reach("shard_0", 8500)  # silent, but not for stale_after yet
    time.sleep(STALE_AFTER + 0.05)
    health.check_once()
    assert health.out_of_reach("shard_0", 8500)
    assert not health.out_of_reach("shard_0", 8000)  # the replica has replayed it
    assert not health.out_of_reach("shard_0", 0)  # no position asked
    health.mark_failed(REPLICA, "connection refused")  # no usable replica: nothing instead
    assert not health.out_of_reach("shard_0", 8500)
