"""The connection pool under gevent: the scenarios of tests/unit/gevent_pool.py, run once in a
monkey-patched process of their own (patching this process would change every other test)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.patched_scenarios import run_scenarios, scenario


@pytest.fixture(scope="module")
def gevent_results() -> dict[str, Any]:
    return run_scenarios("tests.unit.gevent_pool")


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
