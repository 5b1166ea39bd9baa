"""`rebalance` against the session topology: plan only, and an apply that fails cleanly when
the cluster lock is held. The planner itself is tested without servers in
tests/unit/test_rebalance_planner.py; moving tenants for real onto a new shard is
tests/test_add_shard.py."""

from __future__ import annotations

import io
import time
import uuid

import pytest
from django.core.management import CommandError, call_command

# --- the command against the session topology -------------------------------------------------


@pytest.fixture
def heavy_tenants(topology, django_db, admin):
    """Two tenants with 6000 and 4000 threads on shard_0, inserted directly; removed after.
    Large next to what other tests leave on the shared topology, so the plan never depends
    on which tests ran before."""
    from shards.directory import create_tenant
    from shards.models import Tenant

    suffix = uuid.uuid4().hex[:6]
    sizes = (6000, 4000)
    made = [create_tenant(f"heavy{n}-{suffix}", shard="shard_0") for n in sizes]
    conn = admin("shard_0")
    for entry, count in zip(made, sizes, strict=True):
        conn.execute(
            "INSERT INTO comments_thread (tenant_id, url, title, created_at, comment_count) "
            "SELECT %s, 'https://heavy.example/' || g, '', now(), 0 "
            "FROM generate_series(1, %s) g", [entry.id, count])
    yield made
    for entry in made:
        conn.execute("DELETE FROM comments_thread WHERE tenant_id = %s", [entry.id])
        Tenant.objects.using("default").filter(id=entry.id).delete()


def test_plan_prints_moves_and_the_expected_result_and_changes_nothing(heavy_tenants) -> None:
    from shards.models import MoveJob, Tenant

    before = dict(Tenant.objects.using("default").values_list("id", "shard"))
    jobs = MoveJob.objects.using("default").count()
    out = io.StringIO()
    call_command("rebalance", "--plan", "--recent", "10min", stdout=out)
    text = out.getvalue()
    assert "move(s), run one at a time in this order:" in text, text
    assert "shard_0 -> shard_1" in text
    assert "expected result:" in text and "VS TARGET" in text
    assert "plan only: nothing was changed" in text
    assert dict(Tenant.objects.using("default").values_list("id", "shard")) == before
    assert MoveJob.objects.using("default").count() == jobs


def test_apply_stops_with_a_clear_error_when_a_move_cannot_start(heavy_tenants) -> None:
    from migrations_tools.lock import cluster_lock
    from shards.models import MoveJob, Tenant

    before = dict(Tenant.objects.using("default").values_list("id", "shard"))
    jobs = MoveJob.objects.using("default").count()
    started = time.monotonic()
    with cluster_lock("test holds the lock"), pytest.raises(CommandError) as failed:
        call_command("rebalance", "--apply", "--pause", "0", stdout=io.StringIO())
    message = str(failed.value)
    assert message.startswith("move 1/"), message
    assert "cannot take the cluster lock" in message and "test holds the lock" in message
    assert "0 move(s) done before it" in message
    assert "move_tenant" in message and "--abort" in message
    assert time.monotonic() - started < 30
    assert dict(Tenant.objects.using("default").values_list("id", "shard")) == before
    assert MoveJob.objects.using("default").count() == jobs
    with pytest.raises(CommandError, match="--tolerance"):
        call_command("rebalance", "--tolerance", "1.5", stdout=io.StringIO())
