"""Comment pages read with statements written once (comments/page_reads.py), against the real
topology: the same pages, byte for byte, as the ORM's querysets built them, in every order and
through every cursor; one message of three statements on one server per page; the tenant's
scope; the router's choice of server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.db.models import Q, QuerySet
from django.utils import timezone

from comments import cursors, page_reads
from comments.models import Comment, Thread
from comments.schemas import page_json
from comments.service import comment_dict
from routers.context import use_primary
from routers.replicas import get_replica_health
from routers.state import routing_scope
from shards.tenancy import tenant
from tests.client import wait_until
from tests.statements import statements

pytestmark = pytest.mark.usefixtures("django_db")


def orm_page(thread_id: int, order: str, cursor: str | None, limit: int) -> dict[str, Any]:
    """The page as the ORM's querysets built it before page_reads: the reference."""
    roots: QuerySet[Comment] = Comment.objects.filter(thread_id=thread_id, parent__isnull=True)
    if order == "newest":
        roots = roots.order_by("-id")
        if cursor:
            (last_id,) = cursors.decode(cursor, order)
            roots = roots.filter(id__lt=last_id)
    elif order == "oldest":
        roots = roots.order_by("id")
        if cursor:
            (last_id,) = cursors.decode(cursor, order)
            roots = roots.filter(id__gt=last_id)
    else:
        roots = roots.order_by("-score", "-id")
        if cursor:
            score, last_id = cursors.decode(cursor, order)
            roots = roots.filter(Q(score__lt=score) | Q(score=score, id__lt=last_id))
    page = list(roots[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    items = [comment_dict(c) for c in page]
    by_id = {item["id"]: item for item in items}
    if page:
        replies = Comment.objects.filter(root_id__in=list(by_id)).order_by("id")
        for reply in replies[:page_reads.MAX_REPLIES_PER_PAGE]:
            node = comment_dict(reply)
            by_id[node["id"]] = node
            parent = by_id.get(reply.parent_id)
            if parent is not None:
                parent["replies"].append(node)
    next_cursor = None
    if more and page:
        last = page[-1]
        next_cursor = cursors.encode(order, [last.score, last.id] if order == "top"
                                     else [last.id])
    return {"items": items, "next_cursor": next_cursor}


@pytest.fixture(scope="module")
def thread(tenants: dict[str, Any]) -> Thread:
    """Seven roots with tied and distinct scores, one deleted, one edited; replies three deep
    on some of them."""
    with tenant(tenants["a"]):
        made = Thread.objects.create(url=f"/page-reads/{uuid.uuid4()}", title="pages")
        roots = []
        for n, score in enumerate([3, 1, 3, 0, -2, 3, 1]):
            roots.append(Comment.objects.create(thread=made, author=f"u{n}", author_name="Ü",
                                                body=f"root {n} \"quoted\"", score=score))
        roots[2].deleted = True
        roots[2].save()
        roots[4].edited_at = timezone.now()
        roots[4].save()
        for root in (roots[0], roots[3], roots[6]):
            parent = root
            for depth in range(1, 4):
                parent = Comment.objects.create(thread=made, parent=parent, root_id=root.id,
                                                depth=depth, author="r", body=f"re {depth}")
        Comment.objects.create(thread=made, parent=roots[0], root_id=roots[0].id, depth=1,
                               author="r", body="second reply")
    return made


@pytest.mark.parametrize("order", ["newest", "oldest", "top"])
@pytest.mark.parametrize("limit", [1, 3, 7, 20])
def test_every_page_is_the_orms(tenants, thread, order: str, limit: int) -> None:
    with tenant(tenants["a"]), use_primary():
        cursor, pages = None, 0
        while True:
            mine = page_reads.comment_page(thread.id, order, cursor, limit)
            theirs = orm_page(thread.id, order, cursor, limit)
            assert mine == theirs
            assert page_json(mine) == page_json(theirs)
            pages += 1
            cursor = mine["next_cursor"]
            if cursor is None:
                break
        assert pages == -(-7 // limit)  # every root shown once, no empty last page


def test_one_message_per_page_also_for_an_empty_thread(tenants, thread) -> None:
    with tenant(tenants["a"]), use_primary(), statements("shard_0") as sent:
        page_reads.comment_page(thread.id, "newest", None, 20)
        assert len(sent) == 1
        empty = Thread.objects.create(url=f"/page-reads/{uuid.uuid4()}", title="empty")
        sent.clear()
        assert page_reads.comment_page(empty.id, "top", None, 20) == {"items": [],
                                                                        "next_cursor": None}
        assert len(sent) == 1


def test_another_tenants_thread_is_not_found_here(tenants, thread) -> None:
    with tenant(tenants["c"]), use_primary():  # same shard, another tenant
        assert page_reads.comment_page(thread.id, "newest", None, 20) is None
        assert page_reads.comment_page(2**62, "newest", None, 20) is None


def test_a_reader_without_a_token_reads_the_page_from_the_replica(tenants, thread) -> None:
    health = get_replica_health()
    health.check_once()
    assert health.usable_replicas("shard_0") == ["shard_0_replica_1"]
    with tenant(tenants["a"]), use_primary():
        expected = orm_page(thread.id, "top", None, 20)

    def on_replica() -> bool:
        with (tenant(tenants["a"]), routing_scope(),
              statements("shard_0_replica_1") as sent):
            page = page_reads.comment_page(thread.id, "top", None, 20)
        return len(sent) == 1 and page == expected

    wait_until(on_replica, timeout=30, what="the page read from the replica")
