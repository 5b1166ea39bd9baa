"""Where each kind of query goes, decided by the real router against the real topology."""

from __future__ import annotations

import pytest
from django.db import connections, router, transaction

from comments.models import Thread
from routers.context import use_primary
from routers.replicas import get_replica_health
from routers.state import routing_scope
from shards.errors import CrossShardRelation, NoTenantContext, WrongTenant
from shards.models import Tenant
from shards.tenancy import current_tenant, tenant
from tests.client import wait_until

pytestmark = pytest.mark.usefixtures("django_db")


@pytest.fixture(autouse=True)
def replicas_known(django_db) -> None:
    health = get_replica_health()
    health.check_once()
    assert health.usable_replicas("shard_0") == ["shard_0_replica_1"]


def in_recovery(alias: str) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        return cursor.fetchone()[0]


def test_routing_table(tenants) -> None:
    a, b = tenants["a"], tenants["b"]
    with tenant(a), routing_scope():
        assert router.db_for_read(Thread) == "shard_0_replica_1"
        assert router.db_for_read(Tenant) == "default_replica_1"
        assert router.db_for_write(Tenant) == "default"
        with transaction.atomic(using="shard_0"):
            assert router.db_for_read(Thread) == "shard_0"  # read in atomic: stays
        with use_primary(), use_primary():
            assert router.db_for_read(Thread) == "shard_0"
        assert router.db_for_read(Thread) == "shard_0_replica_1"
        # A raw cursor through the router's choice really lands on a replica...
        assert in_recovery(router.db_for_read(Thread)) is True
        assert router.db_for_write(Thread) == "shard_0"
        # Asking where a write would go is not a write: reads stay on the replica...
        assert router.db_for_read(Thread) == "shard_0_replica_1"
        with connections["shard_0"].cursor() as cursor:
            cursor.execute(f"UPDATE {Thread._meta.db_table} SET title = title WHERE false")
        # ...and after a write in the request (SQL that writes ran), on the primary.
        assert router.db_for_read(Thread) == "shard_0"
        assert in_recovery(router.db_for_read(Thread)) is False
    with tenant(b), routing_scope():
        assert router.db_for_read(Thread) == "shard_1_replica_1"
        assert router.db_for_write(Thread) == "shard_1"


def test_causal_token_sends_reads_to_primary_until_replica_catches_up(tenants) -> None:
    with tenant(tenants["a"]), routing_scope() as routing:
        routing.tokens["shard_0"] = 1 << 62  # a position no replica has replayed
        assert router.db_for_read(Thread) == "shard_0"
        routing.tokens["shard_0"] = 1
        assert router.db_for_read(Thread) == "shard_0_replica_1"
        routing.distrust_replicas = True
        assert router.db_for_read(Thread) == "shard_0"


def test_tenant_min_lsn_keeps_reads_off_replicas_behind_it(tenants) -> None:
    from dataclasses import replace

    moved = replace(tenants["a"], min_lsn=1 << 62)
    with tenant(moved), routing_scope():
        assert router.db_for_read(Thread) == "shard_0"


def test_orm_reads_and_writes_land_on_the_tenant_shard(tenants) -> None:
    a, b = tenants["a"], tenants["b"]
    with tenant(a), routing_scope():
        created = Thread.objects.create(url="/routing-table-a")
        assert created._state.db == "shard_0"
        assert created.tenant_id == a.id
        assert Thread.objects.get(id=created.id).url == "/routing-table-a"  # after write: primary
    with tenant(b), routing_scope():
        assert not Thread.objects.filter(id=created.id).exists()  # another tenant: invisible
    assert Thread.unscoped.using("shard_0").filter(id=created.id).count() == 1
    assert Thread.unscoped.using("shard_1").filter(id=created.id).count() == 0


def test_a_row_read_by_id_is_the_orm_read_with_its_statement_compiled_once(tenants) -> None:
    """shards.row_by_id, the API's thread read: same row, same scope, same routing as the ORM."""
    from shards.row_by_id import RowById

    threads = RowById(Thread)
    a, b = tenants["a"], tenants["b"]
    with tenant(a):
        created = Thread.objects.create(url="/row-by-id", title="compiled once")
    wait_until(lambda: Thread.unscoped.using("shard_0_replica_1").filter(id=created.id).exists(),
               timeout=10, what="the replica to replay the thread")
    with tenant(a), routing_scope() as routing:
        row = threads.get(created.id)
        assert row is not None and row._state.db == "shard_0_replica_1"
        assert [alias for alias, _ in routing.reads] == ["shard_0_replica_1"]
        orm = Thread.objects.get(id=created.id)
        assert [(f.attname, getattr(row, f.attname)) for f in Thread._meta.concrete_fields] == \
            [(f.attname, getattr(orm, f.attname)) for f in Thread._meta.concrete_fields]
        assert not row._state.adding
        assert threads.get(-5) is None
        routing.tokens["shard_0"] = 1 << 62  # a position no replica has replayed: the primary
        assert threads.get(created.id)._state.db == "shard_0"
    with tenant(b), routing_scope():
        assert threads.get(created.id) is None  # another tenant's id: not found, on its shard
    with tenant(tenants["c"]), routing_scope():
        assert threads.get(created.id) is None  # another tenant on the same shard: scoped
    with pytest.raises(NoTenantContext):
        threads.get(created.id)


def test_a_counter_added_to_by_id_is_the_orm_update_compiled_once(tenants) -> None:
    """RowById.add, every comment's count update: on the tenant's primary, scoped to it, and
    seen as a write by the request's routing (its later reads go to the primary)."""
    from shards.row_by_id import RowById

    threads = RowById(Thread)
    with tenant(tenants["a"]):
        created = Thread.objects.create(url="/row-by-id-add")
    with tenant(tenants["a"]), routing_scope() as routing:
        assert threads.add(created.id, "comment_count", 3) == 1
        assert threads.add(created.id, "comment_count", -1) == 1
        assert routing.wrote_to("shard_0")
        assert router.db_for_read(Thread) == "shard_0"
        assert threads.add(-5, "comment_count", 1) == 0
    with tenant(tenants["c"]), routing_scope():  # same shard, another tenant: not its row
        assert threads.add(created.id, "comment_count", 100) == 0
    with tenant(tenants["b"]), routing_scope():  # another shard
        assert threads.add(created.id, "comment_count", 100) == 0
    assert Thread.unscoped.using("shard_0").get(id=created.id).comment_count == 2
    with pytest.raises(NoTenantContext):
        threads.add(created.id, "comment_count", 1)


def test_no_tenant_context_is_a_clear_error() -> None:
    assert current_tenant() is None
    with pytest.raises(NoTenantContext, match=r"comments.Thread is sharded.*with tenant"):
        list(Thread.objects.all())
    with pytest.raises(NoTenantContext):
        Thread(url="/nowhere").save()
    with pytest.raises(NoTenantContext):
        router.db_for_read(Thread)


def test_a_row_of_another_tenant_is_refused(tenants) -> None:
    with tenant(tenants["a"]):
        row = Thread.objects.create(url="/owned-by-a")
    with tenant(tenants["c"]), pytest.raises(WrongTenant, match="current tenant is"):
        row.save()
    with tenant(tenants["c"]), pytest.raises(WrongTenant):
        row.delete()


def test_tenant_context_nests_and_restores(tenants) -> None:
    a, b = tenants["a"], tenants["b"]
    with tenant(a):
        with tenant(b.slug) as inner:
            assert current_tenant() == inner == b
            with tenant(a.id):
                assert current_tenant() == a
            assert current_tenant() == b
        assert current_tenant() == a
        with pytest.raises(RuntimeError), tenant(b):
            raise RuntimeError("boom")
        assert current_tenant() == a
    assert current_tenant() is None


def test_relations_never_cross_shards(tenants) -> None:
    from comments.models import Comment

    with tenant(tenants["a"]):
        thread_a = Thread.objects.create(url="/cross-a")
    with tenant(tenants["b"]):
        thread_b = Thread.objects.create(url="/cross-b")
        comment = Comment(author="x", body="y")
        with pytest.raises(WrongTenant):  # tenant a's thread while b is current
            comment.thread = thread_a
    with pytest.raises(CrossShardRelation, match="never cross shards"):
        router.allow_relation(thread_a, thread_b)
    assert router.allow_relation(thread_a, thread_a) is True


def test_migrated_tables_are_where_allow_migrate_says(admin) -> None:
    def tables(alias: str) -> set[str]:
        rows = admin(alias).execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        return {r[0] for r in rows}

    assert {"shards_tenant", "auth_user"} <= tables("default")
    assert "comments_thread" not in tables("default")
    for shard in ("shard_0", "shard_1"):
        assert "comments_thread" in tables(shard)
        assert "auth_user" not in tables(shard)


def test_sharded_tables_use_tenant_id_index_as_replica_identity(admin) -> None:
    row = admin("shard_1").execute(
        "SELECT c.relreplident, i.indexrelid::regclass::text FROM pg_class c "
        "JOIN pg_index i ON i.indrelid = c.oid AND i.indisreplident "
        "WHERE c.oid = 'comments_comment'::regclass"
    ).fetchone()
    assert row == ("i", "comments_comment_tenant_uniq")
