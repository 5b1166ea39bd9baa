"""The request's routing state (routers/state.py): what each method changes, and who reads it."""

from __future__ import annotations

import pytest

from routers import causal
from routers.state import (
    RoutingState,
    begin_request,
    current_state,
    end_request,
    request_tenant,
    routing_scope,
)
from routers.writes import WriteTracker
from shards.directory import TenantEntry

ALPHA = TenantEntry(id=101, slug="alpha", shard="shard_0", state="active", version=3, min_lsn=0)
SHARDS = ("default", "shard_0", "shard_1")


def test_require_position_only_raises_the_requirement() -> None:
    state = RoutingState()
    state.require_position("shard_0", 500)
    state.require_position("shard_0", 200)  # an older mark never weakens a newer token
    state.require_position("shard_1", 7)
    assert state.tokens == {"shard_0": 500, "shard_1": 7}
    state.require_position("shard_0", 501)
    assert state.tokens["shard_0"] == 501


def test_min_position_is_the_higher_of_the_floor_and_the_request() -> None:
    state = RoutingState()
    state.require_position("shard_0", 50)
    assert state.min_position("shard_0") == 50
    assert state.min_position("shard_0", 80) == 80  # the tenant's own minimum wins when higher
    assert state.min_position("shard_0", 10) == 50
    assert state.min_position("shard_1", 10) == 10


def test_accept_tokens_merges_positions_and_versions_and_drops_unknown_shards() -> None:
    state = RoutingState()
    state.accept_tokens(
        [({"shard_0": 10, "shard_9": 99}, {101: 2}), ({"shard_0": 30, "shard_1": 5}, {101: 1})],
        SHARDS,
    )
    assert state.tokens == {"shard_0": 30, "shard_1": 5}
    assert state.tenant_versions == {101: 2}
    assert state.distrust_replicas is False


def test_a_token_that_did_not_decode_distrusts_replicas_but_keeps_the_good_one() -> None:
    state = RoutingState()
    good = causal.decode(causal.encode({"shard_0": 42}))
    state.accept_tokens([good, causal.decode("forged")], SHARDS)
    assert state.distrust_replicas is True
    assert state.tokens == {"shard_0": 42}


def test_note_write_marks_the_shard_and_drops_its_remembered_position() -> None:
    state = RoutingState()
    state.remember_position("shard_0", 900)
    state.remember_position("shard_1", 100)
    assert state.position_after_writes("shard_0") == 900
    state.note_write("shard_0")
    assert state.wrote_to("shard_0") and not state.wrote_to("shard_1")
    # A later write moves the primary on: the position read before it is no longer enough.
    assert state.position_after_writes("shard_0") is None
    assert state.position_after_writes("shard_1") == 100


def test_only_sql_that_writes_marks_the_request_written() -> None:
    ran: list[str] = []

    def execute(sql: str, params: object, many: bool, context: object) -> str:
        ran.append(sql)
        return "result"

    tracker = WriteTracker("shard_1")
    with routing_scope() as state:
        assert tracker(execute, "SELECT 1", None, False, {}) == "result"
        assert state.written == set()
        tracker(execute, "INSERT INTO t VALUES (1)", None, False, {})
        assert state.written == {"shard_1"}
    assert ran == ["SELECT 1", "INSERT INTO t VALUES (1)"]


def test_a_write_that_fails_marks_nothing() -> None:
    def execute(*args: object) -> None:
        raise RuntimeError("refused")

    with routing_scope() as state:
        with pytest.raises(RuntimeError):
            WriteTracker("shard_0")(execute, "DELETE FROM t", None, False, {})
        assert state.written == set()


def test_placement_is_stale_when_the_client_saw_a_newer_version() -> None:
    state = RoutingState()
    assert not state.placement_is_stale(ALPHA)
    state.saw_tenant_version(ALPHA.id, ALPHA.version)
    assert not state.placement_is_stale(ALPHA)
    state.saw_tenant_version(ALPHA.id, ALPHA.version + 1)
    assert state.placement_is_stale(ALPHA)
    state.saw_tenant_version(ALPHA.id, 1)  # never lowered
    assert state.tenant_versions[ALPHA.id] == ALPHA.version + 1


def test_note_read_counts_each_decision() -> None:
    state = RoutingState()
    state.note_read("shard_0_replica_1", "replica")
    state.note_read("shard_0_replica_1", "replica")
    state.note_read("shard_0", "wrote_in_request")
    assert state.reads == {("shard_0_replica_1", "replica"): 2,
                           ("shard_0", "wrote_in_request"): 1}


def test_the_request_state_outlives_the_middleware_until_the_request_ends() -> None:
    state = RoutingState()
    state.set_tenant(ALPHA)
    begin_request(state)
    try:
        # What metrics and the request log see after the response.
        assert current_state() is state
        assert request_tenant() == ALPHA
    finally:
        end_request()
    assert current_state() is None
    assert request_tenant() is None


def test_routing_scopes_nest_and_restore() -> None:
    with routing_scope() as outer:
        with routing_scope() as inner:
            assert current_state() is inner and inner is not outer
        assert current_state() is outer
    assert current_state() is None
