"""Replica lag from WAL positions (routers.wal_lag) and the state a check's positions give
(routers.replica_state): an idle period never reads as lag, stuck replay does."""

from __future__ import annotations

import math

import pytest

from routers.replica_state import ReplicaPositions, describe_unhealthy, state_from_positions
from routers.wal_lag import WalTimeline, bytes_behind

MAX_LAG = 5.0


def positions(replay: int | None, receive: int | None = None, *, at: float,
              in_recovery: bool = True) -> ReplicaPositions:
    return ReplicaPositions(in_recovery=in_recovery, replay_lsn=replay, receive_lsn=receive,
                            answered_at=at)


def test_bytes_behind_is_zero_when_caught_up_or_ahead() -> None:
    assert bytes_behind(0x5000, 0x4000) == 0x1000
    assert bytes_behind(0x5000, 0x5000) == 0
    assert bytes_behind(0x5000, 0x6000) == 0  # replayed past a sample taken just before


def test_a_caught_up_replica_reads_no_lag_however_long_the_idle() -> None:
    timeline = WalTimeline()
    timeline.observe(0x5000, at=100.0, authoritative=True)
    # An hour of idle checks: the primary stays at 0x5000, the replica has replayed it.
    for minute in range(60):
        timeline.observe(0x5000, at=100.0 + 60 * minute, authoritative=True)
    assert len(timeline) == 1
    assert timeline.lag_seconds(0x5000, now=3700.0) == 0.0


def test_the_first_write_after_idle_reads_as_lag_since_it_was_seen_not_since_the_idle() -> None:
    timeline = WalTimeline()
    timeline.observe(0x5000, at=100.0, authoritative=True)
    timeline.observe(0x9000, at=3700.0, authoritative=True)  # the first write in an hour
    # Caught up to before the write: behind by the time since the write was first seen.
    assert timeline.lag_seconds(0x5000, now=3700.25) == pytest.approx(0.25)
    assert timeline.lag_seconds(0x9000, now=3700.25) == 0.0


def test_stuck_replay_reads_as_growing_lag() -> None:
    timeline = WalTimeline()
    for second in range(10):
        timeline.observe(0x1000 * (second + 1), at=float(second), authoritative=True)
    assert timeline.lag_seconds(0x1000, now=9.0) == pytest.approx(8.0)  # 0x2000 seen at 1.0
    assert timeline.lag_seconds(0x1000, now=20.0) == pytest.approx(19.0)
    assert timeline.lag_seconds(0x0, now=9.0) == pytest.approx(9.0)


def test_receive_positions_are_lower_bounds_and_a_lower_primary_position_restarts() -> None:
    timeline = WalTimeline()
    timeline.observe(0x8000, at=1.0, authoritative=True)
    timeline.observe(0x6000, at=2.0)  # a replica's receive position, behind the primary
    assert timeline.latest == 0x8000 and len(timeline) == 1
    timeline.observe(0x9000, at=3.0)  # ahead of the last primary sample: the cluster got there
    assert timeline.latest == 0x9000
    timeline.observe(0x100, at=4.0, authoritative=True)  # a different primary (a restore)
    assert timeline.latest == 0x100 and len(timeline) == 1
    assert timeline.lag_seconds(0x100, now=5.0) == 0.0


def test_old_samples_are_dropped_but_a_replica_behind_them_stays_far_behind() -> None:
    timeline = WalTimeline(horizon=10.0)
    for second in range(100):
        timeline.observe(second + 1, at=float(second), authoritative=True)
    assert len(timeline) <= 12
    assert timeline.lag_seconds(0, now=99.0) >= 10.0
    with pytest.raises(ValueError, match="horizon"):
        WalTimeline(horizon=0)


def test_state_from_positions_after_an_idle_period() -> None:
    timeline = WalTimeline()
    timeline.observe(0x5000, at=100.0, authoritative=True)
    # Idle for an hour, then a write: the replica has received it and is replaying it.
    found = positions(0x5000, 0x9000, at=3700.0)
    timeline.observe(0x9000, at=3700.0)
    state = state_from_positions("shard_0_replica_1", "shard_0", found, timeline)
    assert state.reachable and state.in_recovery
    assert state.lag_seconds == 0.0 and state.lag_bytes == 0x4000
    assert describe_unhealthy(state, MAX_LAG) is None
    # Replayed: caught up, nothing behind.
    state = state_from_positions("shard_0_replica_1", "shard_0",
                                 positions(0x9000, 0x9000, at=3700.1), timeline)
    assert (state.lag_seconds, state.lag_bytes, state.replay_lsn) == (0.0, 0, 0x9000)


def test_state_transitions_from_positions() -> None:
    timeline = WalTimeline()
    timeline.observe(0x5000, at=0.0, authoritative=True)
    timeline.observe(0x6000, at=1.0, authoritative=True)
    stuck = state_from_positions("r", "c", positions(0x5000, 0x5000, at=7.0), timeline)
    assert stuck.lag_seconds == pytest.approx(6.0)
    assert describe_unhealthy(stuck, MAX_LAG) == "lag 6.00 s > max_lag 5 s"
    promoted = state_from_positions("r", "c", positions(0x6000, None, at=7.0, in_recovery=False),
                                    timeline)
    assert describe_unhealthy(promoted, MAX_LAG) == (
        "not in recovery (promoted?): it no longer follows its primary")
    fresh = state_from_positions("r", "c", positions(None, None, at=7.0), timeline)
    assert math.isinf(fresh.lag_seconds) and fresh.replay_lsn == 0
    assert describe_unhealthy(fresh, MAX_LAG) is not None
