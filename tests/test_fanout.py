"""Fan-out reads over every shard, with per-shard errors reported."""

from __future__ import annotations

import pytest

from comments.models import Thread
from routers.fanout import FanoutError, on_every_shard
from shards.tenancy import tenant

pytestmark = pytest.mark.usefixtures("django_db")


def count_fanout_rows(alias: str) -> int:
    return Thread.unscoped.using(alias).filter(url__startswith="/fanout/").count()


def test_fanout_reads_every_shard_concurrently(tenants) -> None:
    for key, n in (("a", 2), ("b", 3)):
        with tenant(tenants[key]):
            for i in range(n):
                Thread.objects.create(url=f"/fanout/{i}")
    outcome = on_every_shard(count_fanout_rows, primary=True)
    assert outcome.complete
    assert outcome.results == {"shard_0": 2, "shard_1": 3}


def test_a_failing_shard_is_reported_not_swallowed(stopped, tenants) -> None:
    stopped("shard_1", mode="fast")
    outcome = on_every_shard(count_fanout_rows, primary=True)
    assert set(outcome.results) == {"shard_0"}
    assert set(outcome.errors) == {"shard_1"}
    with pytest.raises(FanoutError, match="1 shard\\(s\\) failed: shard_1"):
        outcome.raise_for_errors()


def test_fanout_without_a_tenant_runs_without_one(tenants) -> None:
    from shards.tenancy import current_tenant

    with tenant(tenants["a"]):
        outcome = on_every_shard(lambda alias: current_tenant())
    assert outcome.results == {"shard_0": None, "shard_1": None}
