"""The comment write path through the real service: the fewest statements on the shard primary,
the WAL position read in the COMMIT's own message, and read-your-writes still exact with a
replica that lags."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.topology import LocalTopology, ServiceProcess
from routers import causal
from tests.api_client import SiteClient, create_site
from tests.test_metrics import scrape
from tests.test_read_routing import set_apply_delay

pytestmark = pytest.mark.usefixtures("django_db")


@pytest.fixture(scope="module")
def site(service: ServiceProcess, topology: LocalTopology) -> SiteClient:
    return create_site(service, topology, prefix="w", shard="shard_0").as_user("wes", "Wes")


@pytest.fixture
def lagging_replica(topology: LocalTopology) -> Iterator[str]:
    set_apply_delay(topology, "shard_0_replica_1", "2s")
    try:
        yield "shard_0_replica_1"
    finally:
        set_apply_delay(topology, "shard_0_replica_1", None)


def primary_statements(service: ServiceProcess) -> float:
    return scrape(service).value("shardsvc_db_query_seconds_count", cluster="shard_0",
                                 role="primary")


def test_a_comment_costs_two_statements_on_the_primary(service: ServiceProcess,
                                                       site: SiteClient) -> None:
    thread = site.thread()
    site.comment(thread, "warm")  # the worker's key and directory caches are filled
    before = primary_statements(service)
    answer = site.call("POST", f"/threads/{thread}/comments", {"body": "counted"}, user=True)
    assert answer.status == 201, answer.body
    # comments/new_comment.py: BEGIN with the count's UPDATE (which also finds and locks the
    # thread) and the INSERT in one statement; then the COMMIT with the WAL position after it.
    assert primary_statements(service) - before == 2
    assert causal.HEADER in answer.headers
    missing = site.call("POST", "/threads/1/comments", {"body": "nowhere"}, user=True)
    assert missing.status == 404
    # A reply reads its parent first: the count's UPDATE, the parent's SELECT, the INSERT,
    # the COMMIT with the position.
    before = primary_statements(service)
    reply = site.call("POST", f"/threads/{thread}/comments",
                      {"body": "reply", "parent_id": answer.body["id"]}, user=True)
    assert reply.status == 201, reply.body
    assert primary_statements(service) - before == 4


def test_the_writer_reads_its_own_comments_while_the_replica_lags(
        service: ServiceProcess, site: SiteClient, lagging_replica: str) -> None:
    thread = site.thread()
    for i in range(20):
        posted = site.comment(thread, f"seen {i}")
        page = site.call("GET", f"/threads/{thread}/comments?limit=1")
        assert page.status == 200, page.body
        assert page.body["items"][0]["id"] == posted["id"], (i, page.body)
    counts = site.call("GET", f"/threads/counts?ids={thread}")
    assert counts.body["counts"] == {str(thread): 20}
