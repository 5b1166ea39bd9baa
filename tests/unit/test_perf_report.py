"""The performance benchmark's pure parts: wrk output, counter lines, Lua literals, targets,
shares and report lines (tests/benchmarks/perf_report.py, wrk.py, perf_phases.py)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from tests.benchmarks.perf_phases import lua
from tests.benchmarks.perf_report import (
    Target,
    hit_rate,
    loadavg_text,
    number,
    parse_loadavg,
    ratio,
    replica_shares,
    table,
)
from tests.benchmarks.wrk import BenchmarkFailed, parse_counters, parse_wrk

WRK_OUTPUT = """\
Running 8s test @ http://127.0.0.1:28002
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    58.12ms   20.01ms 312.55ms   80.00%
  Latency Distribution
     50%   55.20ms
     75%   66.10ms
     90%   80.00ms
     99%    1.20s
  8779 requests in 8.01s, 3.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:   1096.02
Transfer/sec:    396.23KB
REQUESTS statuses=200:8775,503:4 cache=hit:8000,fill:775
"""


def test_wrk_output_is_read_with_units_errors_and_the_counter_line() -> None:
    result = parse_wrk("a", WRK_OUTPUT)
    assert (result.requests, result.rps, result.seconds) == (8779, 1096.02, 8.01)
    assert (result.p50_ms, result.p99_ms) == (55.2, 1200.0)
    assert (result.non_2xx, result.socket_errors, result.failed) == (4, 5, 9)
    assert parse_counters(WRK_OUTPUT, "REQUESTS") == {
        "statuses": {"200": 8775, "503": 4}, "cache": {"hit": 8000, "fill": 775}}
    assert parse_counters("LOADMIX statuses=200:5 cache= with_token=7\n", "LOADMIX") == {
        "statuses": {"200": 5}, "cache": {}, "with_token": {"": 7}}


def test_wrk_output_without_a_figure_or_counter_line_is_refused() -> None:
    with pytest.raises(BenchmarkFailed, match="Requests/sec"):
        parse_wrk("a", WRK_OUTPUT.replace("Requests/sec", "Reqs"))
    with pytest.raises(BenchmarkFailed, match="no LOADMIX line"):
        parse_counters(WRK_OUTPUT, "LOADMIX")


def test_lua_literals_quote_strings_and_nest() -> None:
    assert lua({"requests": [{"method": "GET", "headers": {"X-Api-Key": 'k"1'}}],
                "fresh": True, "body": None, "n": 3}) == (
        '{["requests"] = {{["method"] = "GET", ["headers"] = {["X-Api-Key"] = "k\\"1"}}}, '
        '["fresh"] = true, ["body"] = nil, ["n"] = 3}')
    with pytest.raises(TypeError):
        lua(object())


def test_targets_judge_their_bound_and_say_so() -> None:
    assert Target("ratio", 0.96, "x", at_least=0.95).verdict == "PASS"
    assert Target("ratio", 0.94, "x", at_least=0.95).verdict == "FAIL"
    assert Target("p99", 100.0, "ms", at_most=100).verdict == "PASS"
    assert Target("p99", math.nan, "ms", at_most=100).verdict == "FAIL"  # never measured
    assert Target("p99", None, "ms", at_most=100).verdict == "SKIP"
    line = Target("mixed 90/10 p99", 2180.0, "ms", at_most=100, note="2 runs").line()
    assert line.startswith("FAIL  mixed 90/10 p99 ")
    assert line.endswith("2,180 ms   target <= 100 ms   (2 runs)")
    with pytest.raises(ValueError, match="exactly one"):
        Target("both", 1.0, "x", at_least=1, at_most=2)


def test_numbers_keep_the_digits_they_deserve() -> None:
    assert [number(0.413, "x"), number(99.96, "%"), number(7.6, "us"), number(60.1, "/s"),
            number(2180, "ms")] == ["0.41x", "100.0%", "7.60 us", "60.1 /s", "2,180 ms"]
    assert math.isnan(ratio(1.0, 0.0))


def test_replica_shares_count_shard_reads_free_to_use_a_replica() -> None:
    reads = {
        ("default", "replica", "replica"): 1000.0,  # control reads: not shard reads
        ("shard_0", "replica", "replica"): 600.0,
        ("shard_0", "primary", "no_healthy_replica"): 150.0,
        ("shard_1", "primary", "no_replica_caught_up"): 200.0,  # a position no replica had
        ("shard_1", "primary", "wrote_in_request"): 50.0,
    }
    free, of_all, total = replica_shares(reads)
    assert free == pytest.approx(80.0)  # 600 / (600 + 150)
    assert of_all == pytest.approx(60.0)  # 600 / 1000
    assert total == 1000.0
    assert replica_shares({}) == (0.0, 0.0, 0)


def test_hit_rate_counts_pages_answered_from_redis() -> None:
    assert hit_rate({"hit": 70, "wait": 10, "fill": 15, "bypass": 5}) == pytest.approx(80.0)
    assert hit_rate({}) == 0.0


def test_loadavg_is_read_and_reported() -> None:
    load = parse_loadavg("4.56 2.79 2.09 3/420 12345\n")
    assert load == (4.56, 2.79, 2.09)
    assert loadavg_text(load, 2) == "4.56 2.79 2.09 (1/5/15 min, 2 cores)"
    with pytest.raises(ValueError, match="not a load average"):
        parse_loadavg("")


def test_tables_align_their_columns() -> None:
    assert table(["run", "req/s"], [["plain #1", "1,048.0"], ["service #1", "534.2"]]) == [
        "run           req/s",
        "----------  -------",
        "plain #1    1,048.0",
        "service #1    534.2",
    ]


PLAIN = Path(__file__).resolve().parents[1] / "benchmarks" / "plain_django"


@pytest.mark.parametrize("module", sorted(p.name for p in PLAIN.glob("*.py")))
def test_the_plain_baseline_imports_nothing_of_the_service(module: str) -> None:
    tree = ast.parse((PLAIN / module).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    service = {"project", "routers", "shards", "sites", "comments", "migrations_tools", "deploy"}
    assert not roots & service, imported
    assert all(name.startswith("tests.benchmarks.plain_django") for name in imported
               if name.startswith("tests")), imported
