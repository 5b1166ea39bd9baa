"""/healthz and /readyz against real servers, including stopped ones."""

from __future__ import annotations

from tests.client import get, wait_until


def test_readyz_reports_every_alias_healthy(topology, service) -> None:
    answer = get(f"{service.url}/readyz")
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


def test_a_stopped_replica_degrades_but_keeps_ready(service, stopped) -> None:
    stopped("shard_1_replica_1")
    answer = get(f"{service.url}/readyz")
    assert answer.status == 200
    assert answer.body["status"] == "degraded"
    assert answer.body["databases"]["shard_1_replica_1"]["reachable"] is False
    assert answer.body["databases"]["shard_1"]["writable"] is True


def test_a_stopped_primary_makes_readyz_503_but_healthz_stays_up(service, stopped) -> None:
    stopped("shard_0")
    answer = get(f"{service.url}/readyz", timeout=20)
    assert answer.status == 503
    assert answer.body["status"] == "unavailable"
    databases = answer.body["databases"]
    assert databases["shard_0"]["reachable"] is False
    assert databases["shard_0"]["error"]
    assert databases["shard_1"]["writable"] is True
    assert databases["default"]["writable"] is True
    assert get(f"{service.url}/healthz").status == 200


def test_readyz_recovers_after_the_primary_returns(service) -> None:
    # Runs after the fixture above restarted shard_0.
    answer = wait_until(
        lambda: (a := get(f"{service.url}/readyz")).status == 200 and a, timeout=30,
        what="readyz 200",
    )
    assert answer.body["databases"]["shard_0"]["writable"] is True
