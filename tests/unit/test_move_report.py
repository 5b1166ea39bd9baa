"""bench_move's and bench_migrate's target arithmetic (tests/benchmarks/move_report.py)."""

from __future__ import annotations

import math

from tests.benchmarks.move_report import gated, overlapping, percentile
from tests.benchmarks.perf_report import Target


def test_percentile_takes_the_nearest_rank_and_is_nan_without_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 100.0
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0
    assert math.isnan(percentile([], 0.5))


def test_overlapping_keeps_the_writes_running_during_the_window() -> None:
    writes = [
        (9.0, 0.5),   # ended before the window
        (9.5, 1.0),   # ran into it
        (10.2, 0.1),  # inside
        (10.9, 2.0),  # started inside, ended after
        (11.5, 0.1),  # started after
    ]
    assert overlapping(writes, 10.0, 11.0) == [1.0, 0.1, 2.0]
    assert overlapping([], 0.0, 1.0) == []


def test_a_target_met_under_the_asked_load_is_claimed() -> None:
    target = Target("p99", 120.0, "ms", at_most=300.0)
    kept = gated(target, achieved=196.0, wanted=200.0)
    assert kept.verdict == "PASS"
    assert kept.line().startswith("PASS")


def test_a_target_met_under_too_little_load_is_not_claimed() -> None:
    target = Target("p99", 120.0, "ms", at_most=300.0, note="40 writes")
    short = gated(target, achieved=88.0, wanted=200.0)
    assert short.verdict == "FAIL"
    line = short.line()
    assert line.startswith("FAIL")
    assert "load short: 88/s of 200/s, not claimed; 40 writes" in line
    assert "120 ms" in line


def test_a_missed_target_stays_failed_whatever_the_load() -> None:
    target = Target("max", 1500.0, "ms", at_most=1000.0)
    assert gated(target, achieved=200.0, wanted=200.0).verdict == "FAIL"
    assert gated(target, achieved=10.0, wanted=200.0).verdict == "FAIL"
