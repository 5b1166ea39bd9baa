"""A top-level comment in two round trips (comments/new_comment.py), against the real topology:
the row and the thread's count the ORM's transaction wrote, two statements, a WAL position at
which a replica has the comment, nothing written for a thread that is not the tenant's, and an
error that rolls the whole write back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db import DataError, connections, transaction
from django.db.models import Model

from comments import new_comment
from comments.models import Comment, Thread
from routers.state import routing_scope
from shards.tenancy import tenant
from tests.client import wait_until
from tests.statements import statements

pytestmark = pytest.mark.usefixtures("django_db")

_COLUMNS = ["tenant_id", "thread_id", "parent_id", "root_id", "author", "author_name", "body",
            "created_at", "edited_at", "deleted", "score", "depth"]


def row(model: type[Model], alias: str, pk: int) -> dict[str, Any]:
    return model._base_manager.using(alias).filter(pk=pk).values(*_COLUMNS).get()


def count_of(thread: Thread) -> int:
    return Thread.unscoped.using("shard_0").get(id=thread.id).comment_count


@pytest.fixture
def thread(tenants: dict[str, Any]) -> Thread:
    with tenant(tenants["a"]):
        return Thread.objects.create(url=f"/one-round-trip/{uuid.uuid4()}", title="t")


def test_the_comment_and_count_are_the_orms_in_one_statement(tenants, thread) -> None:
    with tenant(tenants["a"]), routing_scope() as routing, statements("shard_0") as sent:
        posted = new_comment.post_top_level("shard_0", thread.id, author="ann",
                                            author_name="Ann", body="one trip")
        assert posted is not None and len(sent) == 2
        assert sent[0].startswith("BEGIN; INSERT") and sent[1].startswith("UPDATE")
        assert "; COMMIT; SELECT" in sent[1]
        assert routing.wrote_to("shard_0")
        assert routing.position_after_writes("shard_0") is not None
    with tenant(tenants["a"]):
        by_orm = Comment.objects.create(thread_id=thread.id, author="ann", author_name="Ann",
                                        body="one trip")
    mine, theirs = row(Comment, "shard_0", posted.pk), row(Comment, "shard_0", by_orm.pk)
    assert mine["created_at"] == posted.created_at
    assert {**mine, "created_at": None} == {**theirs, "created_at": None}
    assert {c: getattr(posted, c) for c in _COLUMNS} == mine
    assert posted._state.db == "shard_0" and not posted._state.adding
    assert posted.pk != by_orm.pk and posted.pk > thread.pk  # the global id generator's
    assert count_of(thread) == 1  # the ORM's create above does not count


def test_the_threads_row_is_free_until_the_commits_message(tenants, thread, admin) -> None:
    """Another writer of the same thread does not wait for this one's round trip: the thread's
    row is locked only by the message that also commits."""
    free_between: list[bool] = []
    other = admin("shard_0")

    def probe(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("UPDATE"):  # the second message, about to be sent
            with other.transaction():  # fails with LockNotAvailable if the row is locked
                locked = other.execute("SELECT 1 FROM comments_thread WHERE id = %s "
                                       "FOR NO KEY UPDATE NOWAIT", [thread.id]).fetchone()
                free_between.append(locked == (1,))
        return execute(sql, params, many, context)

    with (tenant(tenants["a"]), routing_scope(),
          connections["shard_0"].execute_wrapper(probe)):
        posted = new_comment.post_top_level("shard_0", thread.id, author="ann",
                                            author_name="Ann", body="no lock held")
    assert posted is not None and free_between == [True]
    assert count_of(thread) == 1


def test_a_replica_at_the_remembered_position_has_the_comment(tenants, thread) -> None:
    with tenant(tenants["a"]), routing_scope() as routing:
        posted = new_comment.post_top_level("shard_0", thread.id, author="ann",
                                            author_name="Ann", body="replayed")
        position = routing.position_after_writes("shard_0")
    assert posted is not None and position is not None
    replica = connections["shard_0_replica_1"]

    def replayed() -> bool:
        with replica.cursor() as cursor:
            cursor.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn")
            return int(cursor.fetchone()[0]) >= position

    wait_until(replayed, timeout=30, what="the replica at the write's position")
    assert Comment.unscoped.using("shard_0_replica_1").filter(id=posted.pk).exists()


def test_no_comment_for_a_thread_the_tenant_does_not_have(tenants, thread) -> None:
    before = Comment.unscoped.using("shard_0").count()
    with tenant(tenants["c"]), routing_scope():  # same shard, another tenant
        assert new_comment.post_top_level("shard_0", thread.id, author="x", author_name="",
                                          body="not mine") is None
    with tenant(tenants["a"]), routing_scope():
        assert new_comment.post_top_level("shard_0", -1, author="x", author_name="",
                                          body="nowhere") is None
    assert Comment.unscoped.using("shard_0").count() == before
    assert count_of(thread) == 0


def test_an_error_rolls_back_the_count_and_leaves_the_connection_usable(tenants,
                                                                         thread) -> None:
    with tenant(tenants["a"]), routing_scope():
        with pytest.raises(DataError):  # author is varchar(150)
            new_comment.post_top_level("shard_0", thread.id, author="x" * 151,
                                       author_name="", body="too long")
        assert not connections["shard_0"].connection.info.transaction_status  # IDLE
        assert count_of(thread) == 0
        assert new_comment.post_top_level("shard_0", thread.id, author="x", author_name="",
                                          body="fits") is not None
    assert count_of(thread) == 1


def test_it_refuses_to_run_inside_a_transaction(tenants, thread) -> None:
    with (tenant(tenants["a"]), routing_scope(), transaction.atomic(using="shard_0"),
          pytest.raises(RuntimeError, match="outside atomic")):
        new_comment.post_top_level("shard_0", thread.id, author="x", author_name="",
                                   body="inside")
