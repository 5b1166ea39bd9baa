"""The monitoring stack on the live topology: every tier scraped, and the "replica down" and
"leaked slot" alerts firing from real faults (scrapes every second, every `for:` 2 s)."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from deploy.topology import LocalTopology, ServiceProcess
from tests.prometheus_api import (
    TEST_PARAMS,
    api,
    firing,
    monitoring_started,
    query,
    unhealthy_targets,
    wait_for,
)


@pytest.fixture(scope="module")
def prometheus(topology: LocalTopology, service: ServiceProcess) -> Iterator[str]:
    with monitoring_started(topology) as url:
        yield url


def test_every_tier_is_scraped(prometheus: str, topology: LocalTopology) -> None:
    wait_for(lambda: api(prometheus, "targets")["activeTargets"]
             and not unhealthy_targets(prometheus),
             timeout=30, what="every target up",
             detail=lambda: unhealthy_targets(prometheus))
    jobs = {t["labels"]["job"] for t in api(prometheus, "targets")["activeTargets"]}
    assert jobs == {"shardsvc", "postgres", "pgbouncer", "redis", "node", "prometheus"}
    servers = query(prometheus, "pg_up == 1")
    assert {s["metric"]["alias"] for s in servers} == {n.alias for n in topology.layout.nodes()}
    # Roles are recorded from what each server reports; without Patroni they are the ones
    # the servers were started with.
    started = {(n.cluster, n.alias, n.role) for n in topology.layout.nodes()}
    wait_for(lambda: {(s["metric"]["cluster"], s["metric"]["alias"], s["metric"]["role"])
                      for s in query(prometheus, "cluster_role:pg_server:info")} == started,
             timeout=30, what="every server's live role recorded",
             detail=lambda: query(prometheus, "cluster_role:pg_server:info"))
    # The service's own samples arrive, and the recording rules turn them into per-shard series.
    for _ in range(5):
        urllib.request.urlopen(f"http://{topology.app_hosts()[0].upstream}/readyz", timeout=10)
    wait_for(lambda: query(prometheus, "cluster_role:shardsvc_db_queries:rate1m"),
             timeout=30, what="per-shard query rate recorded")
    assert query(prometheus, "pgbouncer_waiting_clients")
    assert query(prometheus, "redis_up == 1")
    assert query(prometheus, "node_filesystem_avail_bytes > 0")


def test_a_stopped_replica_fires_replica_down(prometheus: str, stopped) -> None:
    assert not firing(prometheus, "PostgresReplicaDown")
    began = time.monotonic()
    stopped("shard_1_replica_1")
    alerts = wait_for(lambda: firing(prometheus, "PostgresReplicaDown"), timeout=60,
                      what="PostgresReplicaDown firing")
    print(f"PostgresReplicaDown fired {time.monotonic() - began:.1f} s after the stop "
          f"(for: {TEST_PARAMS.alert_for}, scrape every {TEST_PARAMS.scrape_interval})")
    assert [(a["labels"]["alias"], a["labels"]["cluster"], a["labels"]["role"])
            for a in alerts] == [("shard_1_replica_1", "shard_1", "replica")]
    assert not firing(prometheus, "PostgresPrimaryDown")


def test_a_leaked_slot_fires_and_clears_once_dropped(prometheus: str, admin) -> None:
    slot = f"leaked_{uuid.uuid4().hex[:8]}"
    conn = admin("shard_0")
    conn.autocommit = True
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
    try:
        began = time.monotonic()
        alerts = wait_for(lambda: firing(prometheus, "ReplicationSlotInactive", slot_name=slot),
                          timeout=60, what="ReplicationSlotInactive firing")
        print(f"ReplicationSlotInactive fired {time.monotonic() - began:.1f} s after the slot "
              f"was made (for: {TEST_PARAMS.alert_for})")
        assert alerts[0]["labels"]["alias"] == "shard_0"
        assert "move_tenant --abort" in alerts[0]["annotations"]["description"]
    finally:
        conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    wait_for(lambda: not firing(prometheus, "ReplicationSlotInactive", slot_name=slot),
             timeout=60, what="the alert resolved once the slot is dropped")
