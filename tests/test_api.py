"""The comments API end to end: Gunicorn + gevent + PgBouncer + real shards and replicas."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from routers import causal
from tests.api_client import SiteClient, create_site
from tests.client import get, request

pytestmark = pytest.mark.usefixtures("django_db")


@pytest.fixture(scope="module")
def site_a(service, topology) -> SiteClient:
    return create_site(service, topology, prefix="a", shard="shard_0").as_user("ann", "Ann")


@pytest.fixture(scope="module")
def site_b(service, topology) -> SiteClient:
    return create_site(service, topology, prefix="b", shard="shard_1").as_user("bob", "Bob")


# ----- ops


def test_create_site_places_it_and_lists_it(service, topology) -> None:
    ops = {"X-Ops-Token": topology.ops_token()}
    made = request("POST", f"{service.url}/api/ops/sites", body={"slug": "placed-1",
                   "name": "Placed"}, headers=ops)
    assert made.status == 201, made.body
    assert made.body["shard"] in {"shard_0", "shard_1"}
    assert made.body["api_key"].startswith("sk_")
    # The causal token of the write makes the listing read its own write, replica or not.
    listing = request("GET", f"{service.url}/api/ops/sites?limit=500",
                      headers={**ops, causal.HEADER: made.headers[causal.HEADER]})
    assert listing.status == 200
    mine = [s for s in listing.body["items"] if s["slug"] == "placed-1"]
    assert mine == [{"slug": "placed-1", "name": "Placed", "shard": made.body["shard"],
                     "created_at": made.body["created_at"]}]


def test_ops_errors(service, topology, site_a) -> None:
    ops = {"X-Ops-Token": topology.ops_token()}
    url = f"{service.url}/api/ops/sites"
    assert request("POST", url, body={"slug": "x1", "name": "X"}).status == 401
    assert request("POST", url, body={"slug": "x1", "name": "X"},
                   headers={"X-Ops-Token": "wrong"}).status == 401
    dup = request("POST", url, body={"slug": site_a.slug, "name": "Dup"}, headers=ops)
    assert dup.status == 409 and "already exists" in dup.body["message"]
    bad_shard = request("POST", url, body={"slug": "nowhere-1", "name": "N", "shard": "shard_9"},
                        headers=ops)
    assert bad_shard.status == 422 and "shard_9" in bad_shard.body["message"]
    bad_slug = request("POST", url, body={"slug": "Bad Slug!", "name": "N"}, headers=ops)
    assert bad_slug.status == 422


# ----- threads and comments


def test_thread_get_or_create_is_idempotent(site_a) -> None:
    first = site_a.call("PUT", "/threads", {"url": "https://a.test/page-1", "title": "One"})
    again = site_a.call("PUT", "/threads", {"url": "https://a.test/page-1", "title": "Other"})
    assert (first.status, again.status) == (201, 200)
    assert first.body["id"] == again.body["id"]
    assert again.body["title"] == "One"
    got = site_a.call("GET", f"/threads/{first.body['id']}")
    assert got.status == 200 and got.body["url"] == "https://a.test/page-1"


def test_comments_replies_and_tree(site_a) -> None:
    thread = site_a.thread()
    root = site_a.comment(thread, "root")
    reply = site_a.comment(thread, "reply", parent_id=root["id"])
    nested = site_a.comment(thread, "nested", parent_id=reply["id"])
    assert (root["depth"], reply["depth"], nested["depth"]) == (0, 1, 2)
    page = site_a.call("GET", f"/threads/{thread}/comments")
    assert page.status == 200
    [top] = page.body["items"]
    assert top["id"] == root["id"]
    assert top["replies"][0]["id"] == reply["id"]
    assert top["replies"][0]["replies"][0]["body"] == "nested"
    counts = site_a.call("GET", f"/threads/counts?ids={thread}&ids=999")
    assert counts.body == {"counts": {str(thread): 3}}


def test_ids_are_strings_that_survive_a_round_trip(site_a) -> None:
    """Ids pass 2**53 (JavaScript's exact integers): every answer writes them as strings, and
    requests take them back as strings, in paths, bodies and queries."""
    thread = site_a.thread()
    root = site_a.comment(thread, "root")
    reply = site_a.comment(thread, "reply", parent_id=root["id"])
    for value in (thread, root["id"], reply["id"], reply["thread_id"], reply["parent_id"]):
        assert isinstance(value, str) and value.isdigit(), value
    assert int(root["id"]) > 2**53  # a JSON number would be rounded by a browser
    assert (reply["thread_id"], reply["parent_id"]) == (thread, root["id"])
    edited = site_a.call("PATCH", f"/comments/{reply['id']}", {"body": "edited"}, user=True)
    assert edited.status == 200 and edited.body["id"] == reply["id"]
    voted = site_a.call("PUT", f"/comments/{root['id']}/vote", {"value": 1}, user=True)
    assert voted.body == {"comment_id": root["id"], "value": 1, "score": 1}
    got = site_a.call("GET", f"/threads/{thread}")
    assert got.body["id"] == thread
    counts = site_a.call("GET", f"/threads/counts?ids={thread}")
    assert counts.body == {"counts": {thread: 2}}
    # A number where an id goes is refused: it may already have been rounded.
    as_number = site_a.call("POST", f"/threads/{thread}/comments",
                            {"body": "x", "parent_id": int(root["id"])}, user=True)
    assert as_number.status == 422 and "string" in as_number.body["message"]


@pytest.mark.parametrize("order", ["newest", "oldest", "top"])
def test_cursor_pagination_walks_every_comment_once(site_a, order) -> None:
    thread = site_a.thread()
    made = [site_a.comment(thread, f"c{i}")["id"] for i in range(7)]
    if order == "top":
        voter = site_a.as_user("voter")
        for cid in made[:3]:
            assert voter.call("PUT", f"/comments/{cid}/vote", {"value": 1}, user=True).status == 200
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        query = f"?order={order}&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = site_a.call("GET", f"/threads/{thread}/comments{query}")
        assert page.status == 200, page.body
        seen += [c["id"] for c in page.body["items"]]
        cursor = page.body["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 7
    if order == "newest":
        assert seen == sorted(made, reverse=True)
    elif order == "oldest":
        assert seen == sorted(made)
    else:
        assert set(seen[:3]) == set(made[:3])


def test_edit_and_soft_delete_own_comment(site_a) -> None:
    thread = site_a.thread()
    mine = site_a.comment(thread, "typo")
    reply = site_a.as_user("other").comment(thread, "a reply", parent_id=mine["id"])
    edited = site_a.call("PATCH", f"/comments/{mine['id']}", {"body": "fixed"}, user=True)
    assert edited.status == 200
    assert edited.body["body"] == "fixed" and edited.body["edited_at"]
    assert site_a.call("DELETE", f"/comments/{mine['id']}", user=True).status == 204
    page = site_a.call("GET", f"/threads/{thread}/comments").body
    [top] = page["items"]
    assert top["deleted"] is True and top["body"] == ""
    assert top["replies"][0]["id"] == reply["id"]  # replies keep their place
    assert site_a.call("GET", f"/threads/{thread}").body["comment_count"] == 1
    assert site_a.call("DELETE", f"/comments/{mine['id']}", user=True).status == 404


def test_votes_are_idempotent_per_user(site_a) -> None:
    thread = site_a.thread()
    cid = site_a.comment(thread)["id"]
    up = site_a.as_user("v1")
    down = site_a.as_user("v2")
    assert up.call("PUT", f"/comments/{cid}/vote", {"value": 1}, user=True).body["score"] == 1
    assert up.call("PUT", f"/comments/{cid}/vote", {"value": 1}, user=True).body["score"] == 1
    assert down.call("PUT", f"/comments/{cid}/vote", {"value": -1}, user=True).body["score"] == 0
    assert up.call("PUT", f"/comments/{cid}/vote", {"value": -1}, user=True).body["score"] == -2
    assert up.call("PUT", f"/comments/{cid}/vote", {"value": 0}, user=True).body["score"] == -1
    bad = up.call("PUT", f"/comments/{cid}/vote", {"value": 2}, user=True)
    assert bad.status == 422


# ----- bad input: each class has its answer


def test_unknown_and_malformed_site(site_a) -> None:
    unknown = request("GET", f"{site_a.base}/sites/no-such-site-42/threads/1",
                      headers={"X-Api-Key": site_a.key})
    assert unknown.status == 404 and unknown.body["error"] == "unknown_tenant"
    malformed = request("GET", f"{site_a.base}/sites/NOT_A_SLUG/threads/1",
                        headers={"X-Api-Key": site_a.key})
    assert malformed.status == 400


@pytest.mark.parametrize("path", [
    "/threads/abc", "/threads/-5", "/threads/0", "/threads/99999999999999999999999",
    "/threads/1/comments?order=sideways", "/threads/1/comments?limit=0",
    "/threads/1/comments?limit=1000", "/threads/counts?ids=x",
])
def test_malformed_ids_and_parameters_are_422(site_a, path) -> None:
    answer = site_a.call("GET", path)
    assert answer.status == 422, answer.body
    assert answer.body["error"] == "invalid" and answer.body["message"]


def test_malformed_cursor_is_400(site_a) -> None:
    thread = site_a.thread()
    for cursor in ["garbage", "WyJ0b3AiLDEsMl0", "%00"]:
        answer = site_a.call("GET", f"/threads/{thread}/comments?order=newest&cursor={cursor}")
        assert answer.status == 400, (cursor, answer.body)
        assert answer.body["error"] == "bad_cursor"


@pytest.mark.parametrize("body", ["", "   \n\t", "x" * 10_001, "nul\x00byte", None, 42])
def test_bad_comment_bodies_are_422(site_a, body) -> None:
    thread = site_a.thread()
    answer = site_a.call("POST", f"/threads/{thread}/comments", {"body": body}, user=True)
    assert answer.status == 422, answer.body


def test_invalid_json_is_a_4xx_json_error(site_a) -> None:
    thread = site_a.thread()
    answer = request("POST", f"{site_a.root}/threads/{thread}/comments",
                     headers={"X-Api-Key": site_a.key, "X-User-Token": site_a.user_token,
                              "Content-Type": "application/json"},
                     body=None)
    assert answer.status in (400, 422)
    raw = request("POST", f"{site_a.root}/threads/{thread}/comments", body="{not json",
                  headers={"X-Api-Key": site_a.key, "X-User-Token": site_a.user_token})
    assert raw.status in (400, 422) and isinstance(raw.body, dict)


def test_oversized_request_is_413(site_a) -> None:
    thread = site_a.thread()
    answer = site_a.call("POST", f"/threads/{thread}/comments", {"body": "x" * 70_000},
                         user=True)
    assert answer.status == 413 and answer.body["error"] == "too_large"


def test_wrong_or_missing_credentials_are_401(site_a, site_b) -> None:
    thread = site_a.thread()
    assert site_a.call("GET", f"/threads/{thread}", key="sk_wrong").status == 401
    assert site_a.call("GET", f"/threads/{thread}", key="").status == 401
    no_user = site_a.call("POST", f"/threads/{thread}/comments", {"body": "hi"})
    assert no_user.status == 401 and "X-User-Token" in no_user.body["message"]
    forged = site_a.call("POST", f"/threads/{thread}/comments", {"body": "hi"},
                         headers={"X-User-Token": "forged:token"})
    assert forged.status == 401
    other_site_user = site_a.call("POST", f"/threads/{thread}/comments", {"body": "hi"},
                                  headers={"X-User-Token": site_b.user_token})
    assert other_site_user.status == 401 and "another site" in other_site_user.body["message"]


def test_another_users_comment_is_403(site_a) -> None:
    thread = site_a.thread()
    theirs = site_a.as_user("someone-else").comment(thread, "theirs")
    assert site_a.call("PATCH", f"/comments/{theirs['id']}", {"body": "mine now"},
                       user=True).status == 403
    assert site_a.call("DELETE", f"/comments/{theirs['id']}", user=True).status == 403


def test_site_isolation_probing_gives_404_only(site_a, site_b) -> None:
    b_thread = site_b.thread("https://b.test/secret")
    b_comment = site_b.comment(b_thread, "secret")
    probes = [
        site_a.call("GET", f"/threads/{b_thread}"),
        site_a.call("GET", f"/threads/{b_thread}/comments"),
        site_a.call("POST", f"/threads/{b_thread}/comments", {"body": "x"}, user=True),
        site_a.call("PATCH", f"/comments/{b_comment['id']}", {"body": "x"}, user=True),
        site_a.call("DELETE", f"/comments/{b_comment['id']}", user=True),
        site_a.call("PUT", f"/comments/{b_comment['id']}/vote", {"value": 1}, user=True),
        # Site A's key on site B's URLs:
        request("GET", f"{site_b.root}/threads/{b_thread}", headers={"X-Api-Key": site_a.key}),
        request("GET", f"{site_b.root}/threads/{b_thread}/comments",
                headers={"X-Api-Key": site_a.key}),
        request("POST", f"{site_b.root}/threads/{b_thread}/comments", body={"body": "x"},
                headers={"X-Api-Key": site_a.key, "X-User-Token": site_a.user_token}),
    ]
    assert [p.status for p in probes] == [404] * len(probes), [p.body for p in probes]
    counts = site_a.call("GET", f"/threads/counts?ids={b_thread}")
    assert counts.body == {"counts": {}}
    # ...and site B's data is untouched.
    assert site_b.call("GET", f"/threads/{b_thread}").body["comment_count"] == 1


def test_write_to_a_site_whose_primary_is_down_is_503(service, topology, site_a, site_b,
                                                        stopped) -> None:
    b_thread = site_b.thread()
    stopped("shard_1")
    down = site_b.call("POST", f"/threads/{b_thread}/comments", {"body": "x"}, user=True)
    assert down.status == 503, down.body
    assert down.headers.get("Retry-After")
    assert down.body["error"] == "database_unavailable"
    a_thread = site_a.thread()
    assert site_a.call("POST", f"/threads/{a_thread}/comments", {"body": "still fine"},
                       user=True).status == 201


# ----- caching


def test_pages_are_cached_and_writes_show_at_once(site_a) -> None:
    thread = site_a.thread()
    site_a.comment(thread, "one")
    first = site_a.call("GET", f"/threads/{thread}/comments")
    second = site_a.call("GET", f"/threads/{thread}/comments")
    assert first.headers["X-Cache"] == "fill"
    assert second.headers["X-Cache"] == "hit"
    assert second.body == first.body
    site_a.comment(thread, "two")
    third = site_a.call("GET", f"/threads/{thread}/comments")
    assert [c["body"] for c in third.body["items"]] == ["two", "one"]  # the author sees it


def test_a_cached_page_is_answered_as_the_endpoint_rendered_it(site_a, service) -> None:
    thread = site_a.thread()
    site_a.comment(thread, "rendered once")
    first = site_a.call("GET", f"/threads/{thread}/comments")
    second = site_a.call("GET", f"/threads/{thread}/comments")
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("fill", "hit")
    for answer in (first, second):
        assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert second.body == first.body
    # Rendered by the schema (ninja's encoder: milliseconds and "Z"), not the raw page dict.
    created = first.body["items"][0]["created_at"]
    assert created.endswith("Z") and len(created) == len("2026-01-01T00:00:00.000Z"), created
    # The endpoint's documented answer is still the page schema.
    schema = get(f"{service.url}/api/openapi.json").body
    ok = schema["paths"]["/api/sites/{site}/threads/{thread_id}/comments"]["get"]["responses"]
    assert ok["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CommentPageOut"}


def test_concurrent_misses_fill_the_cache_once(site_a) -> None:
    thread = site_a.thread()
    for i in range(5):
        site_a.comment(thread, f"c{i}")
    url = f"{site_a.root}/threads/{thread}/comments?order=oldest&limit=7"
    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(
            lambda _: request("GET", url, headers={"X-Api-Key": site_a.key,
                                                    causal.HEADER: site_a.causal_token}),
            range(40)))
    assert {a.status for a in answers} == {200}
    how = [a.headers["X-Cache"] for a in answers]
    assert how.count("fill") == 1, how
    assert "bypass" not in how
    assert len({len(a.body["items"]) for a in answers}) == 1


def test_openapi_schema_is_served(service) -> None:
    schema = get(f"{service.url}/api/openapi.json")
    assert schema.status == 200
    paths = schema.body["paths"]
    assert "/api/sites/{site}/threads/{thread_id}/comments" in paths
    assert "/api/ops/sites" in paths
