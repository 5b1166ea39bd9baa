"""Failover end to end through the service: the HA topology (control + 2 shards under Patroni,
1 replica each, 3-member etcd) with the service under Gunicorn, and a steady load of comment
writes and reads through the HTTP API on sites of both shards while shard_0's leader fails.

- `kill -9` of shard_0's leader postmaster: every acknowledged comment is on the new leader,
  shard_1 sees no error, reads see no error, and a shard_0 write either succeeds (held through
  the promotion) or gets a 503 with Retry-After only once the hold bound has passed;
- `manage.py switchover shard_0` under the same load: no client error at all.

Outcomes are asserted; pauses are printed (pytest -s), the benchmark's business.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.topology import LocalTopology, ServiceProcess
from tests.ha_cluster import (
    HELD_AT_LEAST,
    Call,
    ServiceLoad,
    SiteUser,
    acked_ids,
    ha_service_topology,
    present_ids,
    wait_for,
    write_pause,
)

pytestmark = pytest.mark.slow

PROJECT_DIR = Path(__file__).resolve().parent.parent
FAILING = "shard_0"
OTHER = "shard_1"
# A light load: enough writes and reads per second that every phase of a failover is hit,
# light enough for 2 shared cores.
WRITES_PER_SECOND = 20
READS_PER_SECOND = 40


@pytest.fixture(scope="module")
def ha() -> Iterator[tuple[LocalTopology, ServiceProcess]]:
    with ha_service_topology("shardsvc-ha-service-") as running:
        yield running


@pytest.fixture(scope="module")
def users(ha: tuple[LocalTopology, ServiceProcess]) -> list[SiteUser]:
    topo, service = ha
    return [SiteUser(service, topo, shard) for shard in (FAILING, FAILING, OTHER, OTHER)]


def errors(calls: list[Call], **match: str) -> list[Call]:
    return [c for c in calls if not c.ok
            and all(getattr(c, key) == value for key, value in match.items())]


def summary(calls: list[Call]) -> str:
    counts = Counter((c.kind, c.shard, c.status, c.code) for c in calls)
    return ", ".join(f"{kind} {shard} {status} {code}: {n}".replace("  ", " ")
                     for (kind, shard, status, code), n in sorted(counts.items()))


def assert_no_other_errors(calls: list[Call]) -> None:
    """The other shard's writes and every read (both shards) answered without an error."""
    assert errors(calls, shard=OTHER) == [], summary(calls)
    assert errors(calls, kind="read") == [], summary(calls)


def test_killed_leader_through_the_service(ha: tuple[LocalTopology, ServiceProcess],
                                           users: list[SiteUser]) -> None:
    topo, _ = ha
    topo.wait_cluster_streaming(FAILING, timeout=60)
    old = topo.leader(FAILING)
    with ServiceLoad(users, WRITES_PER_SECOND, READS_PER_SECOND) as load:
        wait_for(lambda: len(load.succeeded_after("write", FAILING, load.started)) > 20, 30,
                 "shard_0 writes before the kill")
        killed_at = time.monotonic()
        topo.kill_postmaster(old)
        # Writes sent after the kill succeed again (held through the promotion), and go on.
        wait_for(lambda: len(load.succeeded_after("write", FAILING, killed_at)) > 0, 60,
                 "a shard_0 write sent after the kill acknowledged")
        back = min(c.sent for c in load.succeeded_after("write", FAILING, killed_at))
        wait_for(lambda: len(load.succeeded_after("write", FAILING, back)) > 20, 30,
                 "shard_0 writes after the failover")
    calls = load.calls
    new = topo.leader(FAILING)
    assert new != old
    acked = acked_ids(calls, FAILING)
    lost = sorted(acked - present_ids(topo, FAILING, acked))
    failed = errors(calls, kind="write", shard=FAILING)
    pause = write_pause(calls, FAILING, killed_at)
    print(f"\nkill -9 of {old.alias}: shard_0 write pause {pause:.2f} s "
          f"(first write sent after the kill and acked: sent {back - killed_at:.2f} s after); "
          f"{len(acked)} acked, {len(lost)} lost; {summary(calls)}")
    assert lost == []
    assert_no_other_errors(calls)
    for call in failed:
        # Held, then refused with the reason and when to retry; or, a write whose COMMIT was
        # in flight on the killed server, refused at once as of unknown outcome (never retried:
        # it may have committed).
        assert call.status == 503 and call.retry_after, call
        if call.code == "database_unavailable":
            assert call.seconds >= HELD_AT_LEAST, call
        else:
            assert call.code == "write_outcome_unknown", call
    # The shard serves writes on the new leader, from every worker.
    assert all(users[0].write().status == 201 for _ in range(6))
    topo.wait_cluster_streaming(FAILING, timeout=90)


def test_switchover_through_the_service_has_no_client_errors(
        ha: tuple[LocalTopology, ServiceProcess], users: list[SiteUser]) -> None:
    topo, _ = ha
    topo.wait_cluster_streaming(FAILING, timeout=90)
    old = topo.leader(FAILING)
    with ServiceLoad(users, WRITES_PER_SECOND, READS_PER_SECOND) as load:
        wait_for(lambda: len(load.succeeded_after("write", FAILING, load.started)) > 20, 30,
                 "shard_0 writes before the switchover")
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(PROJECT_DIR / "manage.py"), "switchover",
                               FAILING], cwd=PROJECT_DIR, env=topo.service_env(),
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        returned = time.monotonic()
        wait_for(lambda: len(load.succeeded_after("write", FAILING, returned)) > 10, 30,
                 "shard_0 writes after the switchover")
    calls = load.calls
    assert topo.leader(FAILING) != old
    acked = acked_ids(calls, FAILING)
    lost = sorted(acked - present_ids(topo, FAILING, acked))
    print(f"\n{done.stdout.strip()}\nthrough the service: shard_0 write pause "
          f"{write_pause(calls, FAILING, started):.2f} s; {len(acked)} acked, {len(lost)} lost; "
          f"{summary(calls)}")
    assert [c for c in calls if not c.ok] == [], summary(calls)
    assert lost == []
    topo.wait_cluster_streaming(FAILING, timeout=90)
