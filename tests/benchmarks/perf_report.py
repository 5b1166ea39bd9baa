"""The performance benchmark's arithmetic and report lines: pure functions, unit-tested
(tests/unit/test_perf_report.py), no I/O."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Router reasons (routers/router.py) of shard reads sent to a primary although nothing in the
# request required one: no position (causal token or cache mark), no write, no transaction.
FREE_TO_PRIMARY = "no_healthy_replica"


@dataclass(frozen=True)
class Target:
    """One target of the benchmark: `value` measured, against `at_least` or `at_most`."""

    name: str
    value: float | None  # None: not measured in this run (the line says so)
    unit: str
    at_least: float | None = None
    at_most: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError(f"{self.name}: give exactly one of at_least and at_most")

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "SKIP"
        if self.at_least is not None:
            return "PASS" if self.value >= self.at_least else "FAIL"
        assert self.at_most is not None
        return "PASS" if self.value <= self.at_most else "FAIL"

    def line(self) -> str:
        op, bound = (">=", self.at_least) if self.at_least is not None else ("<=", self.at_most)
        assert bound is not None
        measured = "not run" if self.value is None else number(self.value, self.unit)
        text = (f"{self.verdict}  {self.name:<46} {measured:>12}   target {op} "
                f"{number(bound, self.unit)}")
        return f"{text}   ({self.note})" if self.note else text


def number(value: float, unit: str) -> str:
    """A figure with its unit, as many digits as it deserves."""
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.1f}%"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.1f} {unit}" if abs(value) >= 10 else f"{value:.2f} {unit}"


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def mean(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.fmean(items) if items else float("nan")


def share(part: float, whole: float) -> float:
    """Percent; 0 of 0 is reported as 0, not as a division error."""
    return 100.0 * part / whole if whole else 0.0


def replica_shares(reads: Mapping[tuple[str, str, str], float]) -> tuple[float, float, float]:
    """From `shardsvc_read_routing_total` deltas keyed (cluster, target, reason):
    (% of shard reads free to use a replica that a replica served, % of all shard reads that a
    replica served, all shard reads). A read is free to use a replica unless its request wrote,
    ran it in a transaction, or carried a position (causal token, cache mark) no replica had
    reached; the primary's share of the free ones is the reason `no_healthy_replica`. Reads that
    carried a position a replica had reached count among the replica's (the counters do not tell
    them apart), so the first share is an upper bound of the token-less reads' share."""
    shard = {k: v for k, v in reads.items() if k[0] != "default"}
    total = sum(shard.values())
    replica = sum(v for k, v in shard.items() if k[1] == "replica")
    to_primary = sum(v for k, v in shard.items() if k[1] != "replica" and k[2] == FREE_TO_PRIMARY)
    return share(replica, replica + to_primary), share(replica, total), total


def hit_rate(cache: Mapping[str, int]) -> float:
    """% of comment pages answered from Redis (X-Cache hit, or wait: another request's fill)."""
    return share(cache.get("hit", 0) + cache.get("wait", 0), sum(cache.values()))


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """/proc/loadavg -> the 1, 5 and 15 minute load averages."""
    parts = text.split()
    if len(parts) < 3:
        raise ValueError(f"not a load average: {text!r}")
    return float(parts[0]), float(parts[1]), float(parts[2])


def loadavg_text(load: tuple[float, float, float], cores: int) -> str:
    return f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min, {cores} cores)"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join((c.rjust(w) if i else c.ljust(w))
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]
