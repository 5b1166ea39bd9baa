"""psycopg waits through gevent's watchers (project/pgpool/gevent_wait.py), in a monkey-patched
process (tests/probes/gevent_wait.py) against the topology's PgBouncer. The service's own
requests take this path in every other integration test."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from deploy.topology import PROJECT_DIR, LocalTopology
from project.pgpool.base import _connection_class


@pytest.fixture(scope="module")
def probe(topology: LocalTopology) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.probes.gevent_wait", topology.pooled_dsn("shard_0")],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120, check=False,
        env={**topology.settings_env(), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_pools_under_gevent_make_gevent_connections_and_others_psycopgs(
        probe: dict[str, Any]) -> None:
    assert probe["pool_class"] == "GeventConnection"
    assert _connection_class() is psycopg.Connection  # this process is not patched


def test_a_waiting_statement_lets_other_greenlets_run_theirs(probe: dict[str, Any]) -> None:
    seen = probe["others_run_meanwhile"]
    assert seen == {"quick_answers": [0, 1, 2, 3, 4], "quick_done_while_slow_waited": True}


def test_large_answers_and_statements_come_through_whole(probe: dict[str, Any]) -> None:
    seen = probe["large_statements"]
    assert {k: seen[k] for k in ("rows", "last", "echoed", "watchers_after_close")} == {
        "rows": 100_000, "last": 100_000, "echoed": 8_000_000, "watchers_after_close": None}
    # A 10 MB answer is read in many pieces, some of them waited for on the read watcher. The
    # 8 MB statement waits for writing only when the socket's buffer fills before PgBouncer
    # reads it, which depends on the machine's timing.
    assert "R" in seen["watchers"] and set(seen["watchers"]) <= {"R", "W", "RW"}


def test_a_socket_shut_down_under_a_wait_ends_it_with_an_error(probe: dict[str, Any]) -> None:
    assert probe["socket_shut_down"] == {"error": "OperationalError", "ended": True}
