"""The connection pool under gevent: the scenarios of tests/unit/gevent_pool.py, run once in a
monkey-patched process of their own (patching this process would change every other test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gevent_results() -> dict[str, Any]:
    """The scenarios of tests/unit/gevent_pool.py, run once in a gevent-patched process."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.unit.gevent_pool"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def scenario(results: dict[str, Any], name: str) -> Any:
    outcome = results[name]
    assert "error" not in outcome, f"scenario {name} failed: {outcome.get('error')}"
    return outcome["result"]


def test_greenlet_burst_stays_under_the_cap(gevent_results: dict[str, Any]) -> None:
    burst = scenario(gevent_results, "burst")
    assert burst["errors"] == []
    assert burst["max_connecting"] == burst["max_size"]
    assert burst["made"] == burst["max_size"]
    assert burst["served"] == burst["callers"]


def test_greenlet_waiters_are_served_in_arrival_order(gevent_results: dict[str, Any]) -> None:
    assert scenario(gevent_results, "fifo") == list(range(6))


def test_a_waiter_killed_as_it_is_granted_passes_the_grant_on(
        gevent_results: dict[str, Any]) -> None:
    killed = scenario(gevent_results, "killed_granted")
    assert killed["killed_got"] is None
    assert killed["next_got"] == killed["held"]  # the same connection, handed on
    assert killed["stats"] == {"size": 1, "in_use": 1, "idle": 0, "waiting": 0}


def test_a_waiter_killed_in_the_queue_leaves_it(gevent_results: dict[str, Any]) -> None:
    left = scenario(gevent_results, "killed_waiting")
    assert left["waiting_after_kill"] == 0
    assert left["stats_after_return"] == {"size": 1, "in_use": 0, "idle": 1, "waiting": 0}
