"""The leader follower's decision for one poll: which member PgBouncer's entry should name, and
whether a leader is in doubt (then it polls every DOUBT_INTERVAL). Patroni's answers and the
write check are stand-ins here; tests/test_patroni.py runs the follower against real members."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import leader_follower
from deploy.layout import Node
from deploy.topology import LocalLayout, LocalTopology


@pytest.fixture
def topo(tmp_path: Path) -> LocalTopology:
    layout = LocalLayout(root=tmp_path, base_port=26000, ha=True, shards=1, replicas=1)
    return LocalTopology(layout, echo=lambda message: None)


def answers(monkeypatch: pytest.MonkeyPatch, topo: LocalTopology, leads: dict[str, str | None],
            writable: set[str]) -> None:
    """Patroni says member `leads[cluster]` leads it (None: no member); `writable` take writes."""
    nodes = {topo.rest_url(n): n for n in topo.layout.nodes()}

    def find_leader(member_urls: list[str], *, timeout: float = 0.5) -> str | None:
        alias = leads[nodes[member_urls[0]].cluster]
        return next((url for url, n in nodes.items() if n.alias == alias), None)

    def accepts_writes(node: Node) -> bool:
        return node.alias in writable

    monkeypatch.setattr(leader_follower.patroni, "find_leader", find_leader)
    monkeypatch.setattr(leader_follower, "accepts_writes", accepts_writes)


def test_settled_cluster_keeps_its_entry_and_is_not_in_doubt(
        topo: LocalTopology, monkeypatch: pytest.MonkeyPatch) -> None:
    leaders = {"default": "default_m0", "shard_0": "shard_0_m0"}
    answers(monkeypatch, topo, dict(leaders), {"default_m0", "shard_0_m0"})
    assert leader_follower.follow_once(topo, leaders) == (leaders, False)


def test_no_leader_keeps_the_entry_in_doubt(topo: LocalTopology,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    leaders = {"default": "default_m0", "shard_0": "shard_0_m0"}
    answers(monkeypatch, topo, {"default": "default_m0", "shard_0": None}, {"default_m0"})
    assert leader_follower.follow_once(topo, leaders) == (leaders, True)


def test_new_leader_is_followed_once_it_takes_writes(topo: LocalTopology,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    leaders = {"default": "default_m0", "shard_0": "shard_0_m0"}
    promoted = {"default": "default_m0", "shard_0": "shard_0_m1"}
    # /primary answers 200 before the promotion ends: not yet, and polled sooner.
    answers(monkeypatch, topo, promoted, {"default_m0"})
    assert leader_follower.follow_once(topo, leaders) == (leaders, True)
    answers(monkeypatch, topo, promoted, {"default_m0", "shard_0_m1"})
    assert leader_follower.follow_once(topo, leaders) == (promoted, False)
