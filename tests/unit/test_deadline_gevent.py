"""The request deadline's backstop under gevent: the scenarios of tests/unit/gevent_deadline.py,
run once in a monkey-patched process of their own."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.patched_scenarios import run_scenarios, scenario


@pytest.fixture(scope="module")
def deadline_results() -> dict[str, Any]:
    return run_scenarios("tests.unit.gevent_deadline")


def test_a_wait_on_no_database_ends_in_a_503_naming_the_deadline(
        deadline_results: dict[str, Any]) -> None:
    answer = scenario(deadline_results, "backstop")
    assert answer["status"] == 503, answer
    assert "deadline" in answer["body"]["message"], answer


def test_a_request_answered_in_time_is_left_alone(deadline_results: dict[str, Any]) -> None:
    answer = scenario(deadline_results, "finished_in_time")
    assert answer == {"status": 200, "deadline_inside": [True], "deadline_after": False}
