"""The router's decision table (routers/router.py), with replica health answered from a script.

Replica health is the real `ReplicaHealth` (its fitness rules are part of the table: reachable,
in recovery, within the lag bound, replayed past the position, freshly checked) with only its
one query replaced. The router reads it from the runtime registry (shards.runtime), which would
build and start a checker against the real servers; the `health` fixture injects this one there
instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from django.db import connections
from django.db import router as django_router

from comments.models import Thread
from routers.context import use_primary
from routers.replicas import ReplicaHealth, ReplicaState
from routers.router import ShardRouter, choose_read_alias, explain_read_choice
from routers.state import routing_scope
from routers.writes import WriteTracker
from shards.directory import TenantEntry
from shards.errors import CrossShardRelation, NoTenantContext, WrongTenant
from shards.models import Tenant
from shards.runtime import runtime
from shards.tenancy import tenant
from shards.topology import get_shard_map

ON_SHARD_0 = TenantEntry(id=101, slug="alpha", shard="shard_0", state="active", version=1,
                         min_lsn=0)
ON_SHARD_1 = TenantEntry(id=202, slug="bravo", shard="shard_1", state="active", version=1,
                         min_lsn=0)


@dataclass
class Answer:
    """What a replica's health query returns (or that it cannot be reached)."""

    reachable: bool = True
    in_recovery: bool = True
    replay_lsn: int = 1000
    lag_seconds: float = 0.0
    age: float = 0.0  # how long ago the answer came


class ScriptedHealth(ReplicaHealth):
    """ReplicaHealth whose check query answers from `answers` instead of a server."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        super().__init__(get_shard_map(), max_lag=5.0, interval=0.5, stale_after=3.0)
        self.answers = answers

    def _query(self, check: Any) -> ReplicaState:
        answer = self.answers.get(check.server.alias, Answer())
        if not answer.reachable:
            raise psycopg.OperationalError("connection refused")
        return ReplicaState(
            alias=check.server.alias, cluster=check.cluster, reachable=True,
            in_recovery=answer.in_recovery, replay_lsn=answer.replay_lsn,
            lag_seconds=answer.lag_seconds, checked_at=time.monotonic() - answer.age,
        )

    def _sample(self, check: Any) -> int | None:
        return None  # no primary position: the scripted answers carry their lag

    def answer(self, alias: str, **facts: Any) -> None:
        """Set what `alias` answers and run one round of checks."""
        self.answers[alias] = Answer(**facts)
        self.check_once()


@pytest.fixture
def health() -> Iterator[ScriptedHealth]:
    scripted = ScriptedHealth({})
    scripted.check_once()
    with runtime.injected("replica_health", scripted):
        yield scripted
    scripted.stop()


@pytest.fixture
def shard_router() -> ShardRouter:
    return ShardRouter()


# ----- writes ------------------------------------------------------------------------------


def test_writes_go_to_the_tenant_shard_primary(shard_router: ShardRouter) -> None:
    with tenant(ON_SHARD_0):
        assert shard_router.db_for_write(Thread) == "shard_0"
    with tenant(ON_SHARD_1):
        assert shard_router.db_for_write(Thread) == "shard_1"


def test_control_models_are_written_to_the_control_primary(shard_router: ShardRouter) -> None:
    assert shard_router.db_for_write(Tenant) == "default"
    with tenant(ON_SHARD_1):
        assert shard_router.db_for_write(Tenant) == "default"


def run_write(alias: str, sql: str = 'UPDATE "comments_thread" SET "title" = %s') -> None:
    """What a connection's write tracker sees when `sql` runs on `alias` (no server)."""
    WriteTracker(alias)(lambda *args: None, sql, ("t",), False, {})


def test_asking_where_to_write_does_not_mark_the_request(shard_router: ShardRouter,
                                                         health: ScriptedHealth) -> None:
    # get_or_create asks for the write alias and may find its row: nothing was written.
    with tenant(ON_SHARD_0), routing_scope() as routing:
        assert shard_router.db_for_write(Thread) == "shard_0"
        assert routing.written == set()
        assert shard_router.db_for_read(Thread) == "shard_0_replica_1"


def test_a_write_marks_its_cluster_written_for_the_request(shard_router: ShardRouter,
                                                           health: ScriptedHealth) -> None:
    with tenant(ON_SHARD_0), routing_scope() as routing:
        assert shard_router.db_for_read(Thread) == "shard_0_replica_1"
        run_write(shard_router.db_for_write(Thread))
        assert routing.written == {"shard_0"}
        assert explain_read_choice("shard_0") == ("shard_0", "wrote_in_request")
        # Only the written cluster: another shard's replica still serves.
        assert explain_read_choice("shard_1") == ("shard_1_replica_1", "replica")
    with tenant(ON_SHARD_0), routing_scope():
        assert shard_router.db_for_read(Thread) == "shard_0_replica_1"  # a new request


# ----- reads -------------------------------------------------------------------------------


def test_a_read_goes_to_a_healthy_replica(shard_router: ShardRouter,
                                          health: ScriptedHealth) -> None:
    with tenant(ON_SHARD_1), routing_scope() as routing:
        assert shard_router.db_for_read(Thread) == "shard_1_replica_1"
        assert shard_router.db_for_read(Tenant) == "default_replica_1"
    assert routing.reads == {("shard_1_replica_1", "replica"): 1,
                             ("default_replica_1", "replica"): 1}


def test_the_settings_router_is_this_router(health: ScriptedHealth) -> None:
    health.answer("shard_0_replica_1", reachable=False)
    with tenant(ON_SHARD_0):
        assert django_router.db_for_read(Thread) == "shard_0"
        assert django_router.db_for_write(Thread) == "shard_0"


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        ({"reachable": False}, "unreachable"),
        ({"in_recovery": False}, "promoted: no longer follows its primary"),
        ({"lag_seconds": 5.5}, "lag beyond REPLICA_MAX_LAG"),
        ({"lag_seconds": math.inf}, "lag unknown"),
        ({"age": 3.5}, "last check older than stale_after"),
    ],
)
def test_an_unfit_replica_is_not_used(shard_router: ShardRouter, health: ScriptedHealth,
                                      facts: dict[str, Any], why: str) -> None:
    health.answer("shard_0_replica_1", **facts)
    with tenant(ON_SHARD_0):
        assert shard_router.db_for_read(Thread) == "shard_0", why
        assert explain_read_choice("shard_0") == ("shard_0", "no_healthy_replica")
    # The other shard's replica is unaffected.
    assert explain_read_choice("shard_1") == ("shard_1_replica_1", "replica")


def test_lag_at_the_bound_is_still_fit(health: ScriptedHealth) -> None:
    health.answer("shard_0_replica_1", lag_seconds=5.0)
    assert explain_read_choice("shard_0") == ("shard_0_replica_1", "replica")


def test_a_replica_marked_failed_by_a_request_is_skipped(health: ScriptedHealth) -> None:
    health.mark_failed("shard_0_replica_1", "OperationalError: server closed the connection")
    assert explain_read_choice("shard_0") == ("shard_0", "no_healthy_replica")
    health.check_once()  # a check begun after the failure vouches for it again
    assert explain_read_choice("shard_0") == ("shard_0_replica_1", "replica")


# ----- causal tokens and the tenant's minimum position ----------------------------------------


def test_a_causal_token_needs_a_replica_that_replayed_past_it(health: ScriptedHealth) -> None:
    health.answer("shard_0_replica_1", replay_lsn=5000)
    with routing_scope() as routing:
        routing.tokens["shard_0"] = 5000
        assert explain_read_choice("shard_0") == ("shard_0_replica_1", "replica")
        routing.tokens["shard_0"] = 5001
        assert explain_read_choice("shard_0") == ("shard_0", "no_replica_caught_up")
        # A token for another shard does not hold this one back.
        assert explain_read_choice("shard_1") == ("shard_1_replica_1", "replica")
    health.answer("shard_0_replica_1", replay_lsn=5001)
    with routing_scope() as routing:
        routing.tokens["shard_0"] = 5001
        assert explain_read_choice("shard_0") == ("shard_0_replica_1", "replica")


def test_the_tenant_min_lsn_holds_reads_back_too(shard_router: ShardRouter,
                                                 health: ScriptedHealth) -> None:
    health.answer("shard_0_replica_1", replay_lsn=7000)
    behind = TenantEntry(id=303, slug="moved", shard="shard_0", state="active", version=2,
                         min_lsn=7001)
    with tenant(behind), routing_scope() as routing:
        assert shard_router.db_for_read(Thread) == "shard_0"
        routing.tokens["shard_0"] = 10  # the higher of token and min_lsn counts
        assert shard_router.db_for_read(Thread) == "shard_0"
        assert routing.reads == {("shard_0", "no_replica_caught_up"): 2}
    with tenant(ON_SHARD_0), routing_scope() as routing:
        routing.tokens["shard_0"] = 7001
        assert shard_router.db_for_read(Thread) == "shard_0"
        routing.tokens["shard_0"] = 6999
        assert shard_router.db_for_read(Thread) == "shard_0_replica_1"


def test_a_distrusted_token_sends_every_read_to_primaries(health: ScriptedHealth) -> None:
    with routing_scope() as routing:
        routing.distrust_replicas = True
        assert explain_read_choice("shard_0") == ("shard_0", "bad_token")
        assert explain_read_choice("default") == ("default", "bad_token")


def test_without_request_state_reads_still_use_replicas(health: ScriptedHealth) -> None:
    """Background work outside a request has no tokens: replicas, and nothing is recorded."""
    assert choose_read_alias("shard_1") == "shard_1_replica_1"
    assert choose_read_alias("shard_1", min_lsn=10**6) == "shard_1"


# ----- pinned and in-transaction reads -------------------------------------------------------


def test_pinned_reads_go_to_the_primary_until_the_outermost_unpins(
        health: ScriptedHealth) -> None:
    with use_primary():
        with use_primary():
            assert explain_read_choice("shard_0") == ("shard_0", "pinned")
        assert explain_read_choice("shard_0") == ("shard_0", "pinned")
    assert explain_read_choice("shard_0") == ("shard_0_replica_1", "replica")


def test_a_read_inside_a_transaction_stays_on_its_primary(
        health: ScriptedHealth, monkeypatch: pytest.MonkeyPatch) -> None:
    # What transaction.atomic(using="shard_0") sets, without opening a real connection.
    monkeypatch.setattr(connections["shard_0"], "in_atomic_block", True)
    assert explain_read_choice("shard_0") == ("shard_0", "in_transaction")
    assert explain_read_choice("shard_1") == ("shard_1_replica_1", "replica")
    with use_primary():  # pinning is checked first
        assert explain_read_choice("shard_0") == ("shard_0", "pinned")


# ----- the tenant -----------------------------------------------------------------------------


def test_a_sharded_query_without_a_tenant_is_an_error(shard_router: ShardRouter) -> None:
    with pytest.raises(NoTenantContext):
        shard_router.db_for_read(Thread)
    with pytest.raises(NoTenantContext):
        shard_router.db_for_write(Thread)


def test_a_row_loaded_earlier_knows_its_shard_without_a_tenant(
        shard_router: ShardRouter, health: ScriptedHealth) -> None:
    row = Thread(tenant_id=ON_SHARD_1.id)
    row._state.db = "shard_1_replica_1"
    assert shard_router.db_for_write(Thread, instance=row) == "shard_1"
    assert shard_router.db_for_read(Thread, instance=row) == "shard_1_replica_1"


def test_a_row_of_another_tenant_is_refused(shard_router: ShardRouter) -> None:
    row = Thread(tenant_id=ON_SHARD_1.id)
    refused = pytest.raises(WrongTenant, match="of tenant 202 used while tenant alpha")
    with tenant(ON_SHARD_0), refused:
        shard_router.db_for_write(Thread, instance=row)
    with tenant(ON_SHARD_1):
        assert shard_router.db_for_write(Thread, instance=row) == "shard_1"


# ----- relations and migrations ----------------------------------------------------------


def loaded(db: str | None) -> Any:
    return SimpleNamespace(_state=SimpleNamespace(db=db), _meta=Thread._meta)


def test_relations_stay_within_one_cluster(shard_router: ShardRouter) -> None:
    assert shard_router.allow_relation(loaded("shard_0"), loaded("shard_0_replica_1")) is True
    assert shard_router.allow_relation(loaded("default"), loaded("default_replica_1")) is True
    with pytest.raises(CrossShardRelation, match="never cross shards"):
        shard_router.allow_relation(loaded("shard_0"), loaded("shard_1_replica_1"))
    with pytest.raises(CrossShardRelation):
        shard_router.allow_relation(loaded("default"), loaded("shard_0"))
    assert shard_router.allow_relation(loaded(None), loaded("shard_0")) is None


@pytest.mark.parametrize(
    ("alias", "app", "allowed"),
    [
        ("default", "auth", True),
        ("default", "shards", True),
        ("default", "comments", False),
        ("shard_0", "comments", True),
        ("shard_1", "comments", True),
        ("shard_0", "auth", False),
        ("shard_0", "shards", False),
        ("shard_0_replica_1", "comments", False),
        ("default_replica_1", "auth", False),
    ],
)
def test_allow_migrate(shard_router: ShardRouter, alias: str, app: str, allowed: bool) -> None:
    assert shard_router.allow_migrate(alias, app) is allowed
