"""Isolation between two sites on ONE shard, where routing cannot hide a leak: the rows of both
sit in the same tables of the same database, so only the tenant filter keeps them apart.

Every probe reads where the other site's rows certainly are (the primary, or a replica that has
replayed past the writes, by the writer's causal token), and a positive control shows the row is
visible there, so a 404 cannot come from a replica that had not replayed the row yet.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from comments.models import Comment, Thread
from routers.context import use_primary
from routers.state import routing_scope
from shards.tenancy import tenant
from tests.api_client import SiteClient, create_site

pytestmark = pytest.mark.usefixtures("django_db")


@pytest.fixture
def same_shard_sites(service, topology) -> Iterator[tuple[SiteClient, SiteClient]]:
    owner = create_site(service, topology, prefix="iso-own", shard="shard_0")
    other = create_site(service, topology, prefix="iso-oth", shard="shard_0")
    assert owner.shard == other.shard == "shard_0"
    yield owner.as_user("owner", "Owner"), other.as_user("prober", "Prober")
    ids = [site_tenant_id(site) for site in (owner, other)]
    with topology.admin_connect(topology.node("shard_0")) as conn:
        for table in ("comments_vote", "comments_comment", "comments_thread"):
            conn.execute(f"DELETE FROM {table} WHERE tenant_id = ANY(%s)", [ids])


def site_tenant_id(site: SiteClient) -> int:
    from shards.models import Tenant

    return Tenant.objects.using("default").get(slug=site.slug).id


def test_a_site_never_reaches_the_rows_of_a_site_on_the_same_shard(same_shard_sites) -> None:
    owner, other = same_shard_sites
    thread = owner.thread()
    comment = owner.comment(thread, "owner's words")
    # The prober carries the owner's causal token: its reads go to the primary of shard_0 or
    # to a replica that has replayed the owner's writes. The token is per shard, not per site.
    other.causal_token = owner.causal_token
    # Positive control: at that same freshness the rows are there, for their owner.
    assert owner.call("GET", f"/threads/{thread}").status == 200
    assert owner.call("GET", f"/threads/{thread}/comments").body["items"][0]["id"] == comment["id"]

    probes = [
        ("GET", f"/threads/{thread}", None),
        ("GET", f"/threads/{thread}/comments", None),
        ("POST", f"/threads/{thread}/comments", {"body": "into another site's thread"}),
        ("PATCH", f"/comments/{comment['id']}", {"body": "rewritten by another site"}),
        ("PUT", f"/comments/{comment['id']}/vote", {"value": 1}),
        ("DELETE", f"/comments/{comment['id']}", None),
    ]
    for method, path, body in probes:
        other.causal_token = owner.causal_token  # never weakened by an earlier probe's answer
        answer = other.call(method, path, body, user=True)
        assert answer.status == 404, (method, path, answer.status, answer.body)
        assert answer.body["error"] == "not_found", answer.body
    other.causal_token = owner.causal_token
    counts = other.call("GET", f"/threads/counts?ids={thread}")
    assert counts.status == 200 and counts.body["counts"] == {}, counts.body

    # Nothing of the owner's changed.
    page = owner.call("GET", f"/threads/{thread}/comments").body["items"]
    assert [(c["id"], c["body"], c["score"], c["replies"]) for c in page] == [
        (comment["id"], "owner's words", 0, [])]
    assert owner.call("GET", f"/threads/{thread}").body["comment_count"] == 1


def test_the_scoped_managers_never_return_another_tenants_row_on_the_same_shard(
    tenants,
) -> None:
    a, c = tenants["a"], tenants["c"]
    assert a.shard == c.shard
    with tenant(a), routing_scope():
        thread = Thread.objects.create(url="/same-shard-isolation")
        comment = Comment.objects.create(thread=thread, author="u", body="a's words")
    try:
        with tenant(c), routing_scope(), use_primary():
            # Positive control: the primary this context reads from holds both rows.
            assert Thread.unscoped.filter(id=thread.id).count() == 1
            assert Comment.unscoped.filter(id=comment.id).count() == 1
            for model, row in ((Thread, thread), (Comment, comment)):
                with pytest.raises(model.DoesNotExist):
                    model.objects.get(id=row.id)
                with pytest.raises(model.DoesNotExist):
                    model.objects.get(pk=row.pk)
                with pytest.raises(model.DoesNotExist):
                    model.objects.all().get(id=row.id)
                assert model.objects.filter(id=row.id).first() is None
                assert not model.objects.filter(id=row.id).exists()
                assert model.objects.filter(id=row.id).count() == 0
                assert model.objects.in_bulk([row.id]) == {}
            assert Thread.objects.filter(url="/same-shard-isolation").update(title="x") == 0
            assert Comment.objects.filter(id=comment.id).delete()[0] == 0
        with tenant(a), routing_scope(), use_primary():
            assert Thread.objects.get(id=thread.id).title == ""
            assert Comment.objects.get(id=comment.id).body == "a's words"
    finally:
        with tenant(a):
            Comment.objects.filter(id=comment.id).delete()
            Thread.objects.filter(id=thread.id).delete()
