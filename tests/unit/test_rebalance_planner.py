"""The rebalance planner, a pure function over measured tenant sizes: no database."""

from __future__ import annotations

import pytest

from migrations_tools.rebalance import (
    ShardInfo,
    TenantLoad,
    format_plan,
    plan_rebalance,
    recent_id_threshold,
    target_level,
    within_tolerance,
)


def tenants(placement: dict[str, list[int]], *, start: int = 1) -> list[TenantLoad]:
    out = []
    for shard, sizes in placement.items():
        for size in sizes:
            out.append(TenantLoad(start, f"t{start}", shard, size, recent=size // 10))
            start += 1
    return out


def shards(*names: str, closed: tuple[str, ...] = ()) -> list[ShardInfo]:
    return [ShardInfo(n, n not in closed) for n in names]


def weights_after(plan) -> dict[str, int]:
    return {name: load.weight(plan.by) for name, load in plan.after.items()}


def test_a_new_empty_shard_is_filled_to_the_mean_in_few_moves() -> None:
    plan = plan_rebalance(tenants({"s0": [30, 20, 10], "s1": [30, 20, 10], "s2": []}),
                          shards("s0", "s1", "s2"))
    assert [(m.source, m.target, m.rows) for m in plan.moves] == [
        ("s0", "s2", 20), ("s1", "s2", 20)]
    assert weights_after(plan) == {"s0": 40, "s1": 40, "s2": 40}
    assert plan.balanced(plan.after) and not plan.balanced(plan.before)
    assert plan.outcome == "within tolerance"
    text = "\n".join(format_plan(plan))
    assert "1. t2  s0 -> s2  20 rows" in text
    assert "spread (rows): 60 -> 0; balanced: yes" in text


def test_every_move_reduces_the_spread_and_the_result_is_within_tolerance() -> None:
    sizes = {"s0": [200, 150, 120, 100, 80, 60, 40, 30, 20, 10], "s1": [120, 80, 35],
             "s2": [10], "s3": []}
    plan = plan_rebalance(tenants(sizes), shards("s0", "s1", "s2", "s3"), tolerance=0.1)
    assert plan.moves
    loads = {s: sum(v) for s, v in sizes.items()}
    for move in plan.moves:
        assert move.weight < loads[move.source] - loads[move.target]  # never overshoots
        loads[move.source] -= move.weight
        loads[move.target] += move.weight
    assert loads == weights_after(plan)
    assert plan.spread(plan.after) < plan.spread(plan.before)
    assert len({m.tenant_id for m in plan.moves}) == len(plan.moves)  # each moved once
    assert sum(loads.values()) == sum(sum(v) for v in sizes.values())
    assert within_tolerance(loads, list(loads), plan.mean, 0.1), loads


def test_closed_shards_receive_nothing_but_may_be_drained() -> None:
    plan = plan_rebalance(tenants({"s0": [40, 30], "s1": [10], "s2": [60, 50, 5]}),
                          [*shards("s0", "s1", "s2", closed=("s1", "s2")), ShardInfo("s3")])
    assert plan.moves
    assert {m.target for m in plan.moves} <= {"s0", "s3"}
    # s1 (closed, light) keeps its load; the rest share what is left.
    assert plan.mean == pytest.approx((195 - 10) / 3)
    assert weights_after(plan)["s1"] == 10
    assert any(m.source == "s2" for m in plan.moves)
    # Nowhere to go: everything open is full of what cannot move.
    none = plan_rebalance(tenants({"s0": [100], "s1": [1]}), shards("s0", "s1", closed=("s1",)))
    assert none.moves == []


def test_tolerance_decides_what_is_balanced_enough() -> None:
    sizes = tenants({"s0": [100, 5], "s1": [95]})
    assert plan_rebalance(sizes, shards("s0", "s1"), tolerance=0.1).moves == []
    assert plan_rebalance(sizes, shards("s0", "s1"), tolerance=0.1).outcome == \
        "already within tolerance"
    tight = plan_rebalance(sizes, shards("s0", "s1"), tolerance=0.0)
    assert [(m.slug, m.target) for m in tight.moves] == [("t2", "s1")]
    assert weights_after(tight) == {"s0": 100, "s1": 100}


def test_tenants_too_large_moving_or_over_max_moves_stay() -> None:
    # One tenant as large as the difference: moving it would not reduce the spread.
    plan = plan_rebalance(tenants({"s0": [100], "s1": []}), shards("s0", "s1"))
    assert plan.moves == [] and "no move reduces the spread" in plan.outcome
    # A tenant with an unfinished move is never planned.
    moving = [TenantLoad(1, "busy", "s0", 50, movable=False), TenantLoad(2, "idle", "s0", 10)]
    plan = plan_rebalance(moving, shards("s0", "s1"))
    assert [m.slug for m in plan.moves] == ["idle"]
    many = tenants({"s0": [10] * 10, "s1": []})
    assert len(plan_rebalance(many, shards("s0", "s1")).moves) == 5
    capped = plan_rebalance(many, shards("s0", "s1"), max_moves=2)
    assert len(capped.moves) == 2 and capped.outcome == "stopped at --max-moves 2"
    assert plan_rebalance(many, shards("s0", "s1"), max_moves=0).moves == []


def test_recent_load_can_be_balanced_instead_of_size() -> None:
    # Equal sizes, but s0 gets all the recent inserts.
    loads = [TenantLoad(1, "hot1", "s0", 100, recent=90), TenantLoad(2, "hot2", "s0", 100,
                                                                      recent=80),
             TenantLoad(3, "cold1", "s1", 100, recent=1), TenantLoad(4, "cold2", "s1", 100,
                                                                      recent=1)]
    assert plan_rebalance(loads, shards("s0", "s1")).moves == []
    by_recent = plan_rebalance(loads, shards("s0", "s1"), by="recent")
    assert by_recent.moves and by_recent.moves[0].target == "s1"
    with pytest.raises(ValueError, match="unknown weight"):
        plan_rebalance(loads, shards("s0", "s1"), by="cpu")
    with pytest.raises(ValueError, match="outside the topology"):
        plan_rebalance(loads, shards("s0"))


def test_target_level_and_recent_threshold() -> None:
    assert target_level({"a": 90, "b": 30, "c": 0}, ["a", "b", "c"]) == 40
    assert target_level({"a": 90, "b": 30, "c": 0}, ["a", "b"]) == 60  # c closed, empty
    assert target_level({"a": 90, "b": 30, "c": 80}, ["a", "b"]) == pytest.approx(200 / 3)
    from shards.global_ids import EPOCH_MS

    now = EPOCH_MS + 10_000
    assert recent_id_threshold(4, now_ms=now) == 6_000 << 23
    assert recent_id_threshold(3600, now_ms=now) == 0
