"""migrate_shards' durations and its execution policy: pure functions, no server."""

from __future__ import annotations

import pytest

from migrations_tools.safety import ExecutionPolicy, parse_duration


def test_durations_and_policy_bounds() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("15min") == 900
    assert parse_duration("2") == 2
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")
    with pytest.raises(ValueError, match="lock_timeout must be above 0"):
        ExecutionPolicy(lock_timeout=0)
    policy = ExecutionPolicy(lock_timeout=1, retries=2, retry_delay=0.5, jitter=0.2)
    assert policy.startup_options() == "-c lock_timeout=1000 -c statement_timeout=900000"
    assert [policy.base_delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert policy.worst_case_lock_wait() == pytest.approx(3 * 1 + 1.5 * 1.2)
