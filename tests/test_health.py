"""/healthz, /readyz and /readyz/shards against real servers, including stopped ones."""

from __future__ import annotations

from tests.client import get, wait_until


def test_readyz_shards_reports_every_alias_healthy(topology, service) -> None:
    answer = get(f"{service.url}/readyz/shards")
    assert answer.status == 200, answer.body
    databases = answer.body["databases"]
    assert set(databases) == {n.alias for n in topology.layout.nodes()}
    for node in topology.layout.nodes():
        entry = databases[node.alias]
        assert entry["reachable"] is True
        assert entry["role"] == node.role
        if node.role == "primary":
            assert entry["writable"] is True
        else:
            assert entry["in_recovery"] is True
            assert entry["lag_seconds"] >= 0


def test_readyz_says_the_host_can_serve(topology, service) -> None:
    answer = get(f"{service.url}/readyz")
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "ready"
    assert answer.body["directory"]["writable"] is True
    assert answer.body["shards"] == topology.layout.shards


def test_a_stopped_replica_degrades_but_keeps_ready(service, stopped) -> None:
    stopped("shard_1_replica_1")
    answer = get(f"{service.url}/readyz/shards")
    assert answer.status == 200
    assert answer.body["status"] == "degraded"
    assert answer.body["databases"]["shard_1_replica_1"]["reachable"] is False
    assert answer.body["databases"]["shard_1"]["writable"] is True
    assert get(f"{service.url}/readyz").status == 200


def test_a_stopped_primary_makes_shards_503_but_keeps_the_host_ready(service, stopped) -> None:
    stopped("shard_0")
    answer = get(f"{service.url}/readyz/shards", timeout=20)
    assert answer.status == 503
    assert answer.body["status"] == "unavailable"
    databases = answer.body["databases"]
    assert databases["shard_0"]["reachable"] is False
    assert databases["shard_0"]["error"]
    assert databases["shard_1"]["writable"] is True
    assert databases["default"]["writable"] is True
    # One shard down never takes the host out of a load balancer's rotation.
    ready = get(f"{service.url}/readyz", timeout=20)
    assert ready.status == 200, ready.body
    assert ready.body["status"] == "ready"
    assert get(f"{service.url}/healthz").status == 200
    metrics = get(f"{service.url}/metrics").body
    assert 'shardsvc_database_up{alias="shard_0",role="primary"} 0.0' in metrics
    assert 'shardsvc_database_up{alias="shard_1",role="primary"} 1.0' in metrics


def test_a_stopped_control_primary_makes_the_host_unready(service, stopped) -> None:
    stopped("default")
    answer = get(f"{service.url}/readyz", timeout=20)
    assert answer.status == 503
    assert answer.body["status"] == "unready"
    assert answer.body["directory"]["reachable"] is False


def test_readyz_recovers_after_the_primary_returns(service) -> None:
    # Runs after the fixtures above restarted shard_0 and default.
    answer = wait_until(
        lambda: (a := get(f"{service.url}/readyz/shards")).status == 200 and a, timeout=30,
        what="readyz/shards 200",
    )
    assert answer.body["databases"]["shard_0"]["writable"] is True
    assert get(f"{service.url}/readyz").status == 200
