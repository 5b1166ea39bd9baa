"""The performance benchmark's plain Django baseline (tests/benchmarks/plain_django) answers
like the service's API on the same rows: the same JSON for a thread and a comment page, and
writes that count where the service reads them. Otherwise its ratios would compare different
work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.api_client import create_site
from tests.benchmarks.plain_server import start_plain
from tests.client import get, request


def same_times(value: Any) -> Any:
    """The answer with each timestamp checked to be one and then left out. The plain project
    keeps django-db-geventpool's known defect: its connections never get Django's time zone,
    so on a server whose default is not UTC (the harness sets one) its timestamps are that
    zone's wall time labelled UTC. Plain Django with that pool does the same; it costs nothing
    the benchmark measures."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k.endswith("_at") and isinstance(v, str):
                datetime.fromisoformat(v.replace("Z", "+00:00"))
            else:
                out[k] = same_times(v)
        return out
    if isinstance(value, list):
        return [same_times(v) for v in value]
    return value


def test_the_plain_baseline_serves_the_apis_rows_in_its_shape(topology, service,
                                                              django_db) -> None:
    from shards.models import Tenant

    site = create_site(service, topology, prefix="plain", shard="shard_0").as_user("u1", "U")
    thread_id = site.thread("https://plain.test/page")
    first = site.comment(thread_id, "first")
    site.comment(thread_id, "a reply", parent_id=first["id"])
    site.comment(thread_id, "second")
    tenant_id = Tenant.objects.using("default").get(slug=site.slug).id
    plain = start_plain(topology, alias="shard_0", port=topology.layout.http_port + 20,
                        max_conns=4, workers=1)
    try:
        own = f"{plain.url}/sites/{tenant_id}/threads/{thread_id}"
        api_thread = site.call("GET", f"/threads/{thread_id}")
        plain_thread = get(own)
        assert (api_thread.status, plain_thread.status) == (200, 200)
        assert same_times(plain_thread.body) == same_times(api_thread.body)
        assert plain_thread.body["comment_count"] == 3

        api_page = site.call("GET", f"/threads/{thread_id}/comments?limit=1")
        plain_page = get(f"{own}/comments?limit=1")
        assert same_times(plain_page.body) == same_times(api_page.body)
        assert [c["body"] for c in plain_page.body["items"]] == ["second"]
        # The API's cursor works on the plain page too: the same SQL behind both.
        cursor = api_page.body["next_cursor"]
        api_next = site.call("GET", f"/threads/{thread_id}/comments?limit=1&cursor={cursor}")
        plain_next = get(f"{own}/comments?limit=1&cursor={cursor}")
        assert same_times(plain_next.body) == same_times(api_next.body)
        assert [r["body"] for r in plain_next.body["items"][0]["replies"]] == ["a reply"]

        posted = request("POST", f"{own}/comments", body={"body": "plain", "author": "u1"})
        assert posted.status == 201, posted.body
        assert set(posted.body) == set(first)
        assert get(own).body["comment_count"] == 4
        assert get(f"{own}/comments?cursor=bad").status == 400
        assert get(f"{plain.url}/sites/{tenant_id}/threads/1").status == 404
    finally:
        plain.stop()
