"""bench_move's and bench_migrate's targets: pure functions, unit-tested
(tests/unit/test_move_report.py), no I/O."""

from __future__ import annotations

from collections.abc import Sequence

from tests.benchmarks.perf_report import Target

# A paced load counts as reaching its rate within this share (the pacing loses a little to
# scheduling even on an idle box); below it, latency targets are not claimed.
RATE_TOLERANCE = 0.95


def percentile(values: Sequence[float], q: float) -> float:
    """The value at quantile `q` (nearest rank, lower side); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def overlapping(writes: Sequence[tuple[float, float]], start: float, end: float) -> list[float]:
    """Latencies of the writes `(started, seconds)` whose execution overlapped [start, end]:
    the writes a pause in that window could have held up."""
    return [seconds for began, seconds in writes if began <= end and began + seconds >= start]


def gated(target: Target, achieved: float, wanted: float) -> Target:
    """`target` as measured, unless the load fell short of `wanted`: then it is not claimed
    (reported as FAIL, whatever the value) and the note says why. A latency measured under
    less load than the target names proves nothing about that load."""
    if achieved >= RATE_TOLERANCE * wanted:
        return target
    note = f"load short: {achieved:.0f}/s of {wanted:.0f}/s, not claimed"
    note = f"{note}; {target.note}" if target.note else note
    return _Unclaimed(target.name, target.value, target.unit, target.at_least,
                      target.at_most, note)


class _Unclaimed(Target):
    @property
    def verdict(self) -> str:
        return "FAIL"
